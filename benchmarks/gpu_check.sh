#!/usr/bin/env bash
# GPU check for regnet_jax on a machine with an NVIDIA GPU and no network (run from the repository root):
#
#   benchmarks/gpu_check.sh [WHEEL_DIR] [gpu_check.py arguments]    # WHEEL_DIR defaults to .whl/
#   benchmarks/gpu_check.sh --fetch-wheels [WHEEL_DIR]              # on a machine with network: fill WHEEL_DIR
#
# 1. Uses the Python stack already installed (jax with its CUDA plugin, a CUDA build of torch, flax, optax, numpy,
#    absl-py, PyYAML). Only the small pure-Python packages that regnet_jax's benchmark path needs and the machine
#    lacks (GPU_CHECK_WHEELS, default ml_collections) are installed, offline, from WHEEL_DIR into a private folder
#    (pip --no-index --no-deps --target) put on PYTHONPATH; nothing else is installed or upgraded. TensorFlow, TFDS
#    and clu are not needed: the benchmark path never imports them (gpu_check.py checks that).
# 2. Prints the GPU, then benchmarks/gpu_check.py: first the lowering sweep, the bfloat16 train step of RegNetY-400MF
#    then RegNetY-4GF with each convolution lowering (xla, blocked, vjp), images/s and the fastest, and the lowering
#    that conv_impl='auto' is to use on this GPU, written into regnet_jax/models/conv_choice.json (commit it; a dry
#    run writes a copy in the temporary directory); then RegNetY-400MF and RegNetY-4GF, train and infer, bfloat16 and
#    float32, regnet_jax vs PyTorch (AMP, channels_last) images/s and their ratio, and the fraction of the card's
#    matmul peak (measured here) that each achieves. Measurements stop being started after GPU_CHECK_BUDGET_S
#    seconds (default 330; the sweep has the first 200, a lowering still compiling 60 s later is stopped) so that
#    the whole check stays under 8 minutes.
#
# Offline dry run on a CPU-only machine (a venv with CPU jaxlib): GPU_CHECK_DRY_RUN=1 benchmarks/gpu_check.sh .whl
#   --device=cpu --models=regnety_200mf --batches=8 --resolution=64 --dtypes=float32
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS_NEEDED="${GPU_CHECK_WHEELS:-ml_collections==1.1.0}"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  WHEELS="${2:-.whl}"
  mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" $WHEELS_NEEDED
  ls -l "$WHEELS"
  exit 0
fi

WHEELS=".whl"
if [[ $# -gt 0 && "$1" != --* ]]; then
  WHEELS="$1"
  shift
fi
START=$(date +%s)
DRY_RUN="${GPU_CHECK_DRY_RUN:-0}"

if [[ "$DRY_RUN" != 1 ]]; then
  if ! command -v nvidia-smi >/dev/null; then
    echo "error: nvidia-smi not found: this check needs an NVIDIA GPU with its driver (GPU_CHECK_DRY_RUN=1 for a CPU dry run)" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

missing_modules() {
  "$PY" - <<'EOF'
import importlib.util
need = {"jax": "jax", "flax": "flax", "optax": "optax", "torch": "torch", "numpy": "numpy", "absl": "absl-py",
        "yaml": "PyYAML", "ml_collections": "ml_collections"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
}

MISSING="$(missing_modules)"
if [[ -n "$MISSING" ]]; then
  SITE="${TMPDIR:-/tmp}/regnet_jax_gpu_check_site"
  echo "missing: $MISSING; installing from $WHEELS/ (offline, --no-deps) into $SITE"
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "error: $WHEELS/ holds no wheels: run 'benchmarks/gpu_check.sh --fetch-wheels $WHEELS' where there is network" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  MISSING="$(missing_modules)"
  if [[ -n "$MISSING" ]]; then
    echo "error: still missing after installing the wheels: $MISSING (jax, torch, flax, optax must be preinstalled;" \
      "the pure-Python rest can be carried: GPU_CHECK_WHEELS=\"...\" benchmarks/gpu_check.sh --fetch-wheels)" >&2
    exit 2
  fi
fi

if [[ "$DRY_RUN" != 1 ]]; then
  if ! "$PY" -c "import sys, jax, torch; sys.exit(0 if jax.default_backend() == 'gpu' and torch.cuda.is_available() else 1)"; then
    "$PY" -c "import jax, torch; print('jax backend:', jax.default_backend(), '| torch.cuda:', torch.cuda.is_available())" >&2 || true
    echo "error: jax or torch does not see the GPU: this check needs jax with its CUDA plugin and a CUDA build of torch" >&2
    exit 2
  fi
fi
echo "setup took $(( $(date +%s) - START )) s"
"$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices()[0].device_kind, '| torch', torch.__version__, 'cuda', torch.version.cuda)"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # both frameworks share the card
"$PY" benchmarks/gpu_check.py --budget_s="${GPU_CHECK_BUDGET_S:-330}" "$@"
echo "gpu check took $(( $(date +%s) - START )) s"
