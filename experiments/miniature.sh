#!/usr/bin/env bash
# The miniature: sample, train, collect and analyse three design spaces (AnyNetX_A, AnyNetX_E, RegNetX) on the
# offline digits of the quickstart, on one CPU machine. Usage (from the repository root):
#
#     bash experiments/miniature.sh [OUT_DIR]        # default $TMPDIR (or /tmp)/regnet_miniature; N=12 WORKERS=2 by default
#
# Two in-process launchers split the models (--shard), so that one compiles while the other trains. Rerunning
# the script resumes: finished models are skipped. The report is OUT_DIR/report/analysis.html.
set -euo pipefail
OUT=${1:-${TMPDIR:-/tmp}/regnet_miniature}
N=${N:-12}
WORKERS=${WORKERS:-2}
SPACES=(anynetx_a anynetx_e regnetx)
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
start=$(date +%s)
for space in "${SPACES[@]}"; do
  python -m regnet_jax.sweep setup --config=experiments/miniature.py:"$space" --n="$N" --out="$OUT/$space"
done
worker() {
  for space in "${SPACES[@]}"; do
    python -m regnet_jax.sweep launch --out="$OUT/$space" --in_process --shard="$1/$WORKERS" 2>&1 | sed -u "s/^/[worker $1] /" \
      || echo "[worker $1] some $space models failed (their runs/ID/train.log says why); rerun the script to retry them"
  done
}
pids=()
for ((w = 0; w < WORKERS; w++)); do worker "$w" & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid"; done
sweeps=$(printf "$OUT/%s," "${SPACES[@]}")
python -m regnet_jax.sweep analyze --sweeps="${sweeps%,}" --report_dir="$OUT/report"
echo "miniature: done in $(( ($(date +%s) - start) / 60 )) min; report: $OUT/report/analysis.html"
