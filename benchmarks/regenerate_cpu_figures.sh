#!/usr/bin/env bash
# Regenerates every CPU figure in docs/performance.md (run from the repository root, on an otherwise idle machine):
#
#   benchmarks/regenerate_cpu_figures.sh [OUT_DIR]      # default: benchmark_results/cpu_<date>
#
# Runs the side-by-side (RegNetY-400MF and RegNetX-400MF at batch 32, RegNetY-4GF at batch 16; train and infer;
# 5 interleaved rounds), the per-kind profile of a RegNetY-400MF train step (all cores, and pinned to one core),
# and the per-layer convolution timings, writes their JSON and markdown into OUT_DIR, and replaces the block between
# the CPU-FIGURES markers in docs/performance.md with them (date, commit, machine and load included). Rows measured
# on a busy machine are marked unreliable by the tools themselves. About 30 minutes on 2 cores.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-benchmark_results/cpu_$(date +%Y%m%d_%H%M)}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
START_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" benchmarks/side_by_side.py --models=regnety_400mf,regnetx_400mf --batch=32 --modes=train,infer --skip_nchw \
  --start_load="${START_LOAD%% *}" --markdown="$OUT/side_by_side_b32.md" --json >"$OUT/side_by_side_b32.json"
"$PY" benchmarks/side_by_side.py --models=regnety_4gf --batch=16 --modes=train,infer --skip_nchw \
  --start_load="${START_LOAD%% *}" --markdown="$OUT/side_by_side_4gf.md" --json >"$OUT/side_by_side_4gf.json"
"$PY" benchmarks/profile_step.py --models=regnety_400mf --batch=32 --json="$OUT/profile.json" --markdown="$OUT/profile.md"
"$PY" benchmarks/profile_step.py --models=regnety_400mf --batch=32 --threads=1 --json="$OUT/profile_1core.json" \
  --markdown="$OUT/profile_1core.md"
"$PY" benchmarks/conv_layers.py --model=regnety_400mf --batch=32 --impls=blocked,vjp --torch --json="$OUT/conv_layers.json" \
  --markdown="$OUT/conv_layers.md"

{
  echo "<!-- CPU-FIGURES:BEGIN (written by benchmarks/regenerate_cpu_figures.sh; do not edit by hand) -->"
  echo
  echo "Measured $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)),"
  echo "jax $("$PY" -c 'import jax; print(jax.__version__)'), torch $("$PY" -c 'import torch; print(torch.__version__)'); load average $START_LOAD at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end."
  echo
  echo "Side by side (\`python benchmarks/side_by_side.py --models=regnety_400mf,regnetx_400mf --batch=32 --skip_nchw\` and \`--models=regnety_4gf --batch=16\`):"
  echo
  cat "$OUT/side_by_side_b32.md"
  tail -n +3 "$OUT/side_by_side_4gf.md"
  echo
  echo "Where a RegNetY-400MF train step's time goes (\`python benchmarks/profile_step.py --models=regnety_400mf --batch=32\`; with \`--threads=1\`):"
  echo
  cat "$OUT/profile.md"
  echo
  cat "$OUT/profile_1core.md"
  echo
  echo "Convolution layers of RegNetY-400MF, batch 32, median CPU ms (\`python benchmarks/conv_layers.py --model=regnety_400mf --impls=blocked,vjp --torch\`):"
  echo
  cat "$OUT/conv_layers.md"
  echo
  echo "<!-- CPU-FIGURES:END -->"
} >"$OUT/figures.md"

"$PY" - "$OUT/figures.md" docs/performance.md <<'EOF'
import re, sys
figures, doc = open(sys.argv[1]).read().strip(), open(sys.argv[2]).read()
block = re.compile(r"<!-- CPU-FIGURES:BEGIN.*?<!-- CPU-FIGURES:END -->", re.S)
if not block.search(doc):
    sys.exit(f"error: {sys.argv[2]} has no CPU-FIGURES markers")
open(sys.argv[2], "w").write(block.sub(lambda m: figures, doc))
print(f"wrote the figures into {sys.argv[2]} (and {sys.argv[1]})")
EOF
