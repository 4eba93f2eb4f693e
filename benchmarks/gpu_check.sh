#!/usr/bin/env bash
# GPU check for regnet_jax on a machine with an NVIDIA GPU (run from the repository root):
#
#   benchmarks/gpu_check.sh [WHEEL_DIR]        # WHEEL_DIR defaults to .whl/
#
# 1. Installs what is missing from the wheels in WHEEL_DIR, offline (pip --no-index): jax with its CUDA plugin
#    (jax, jaxlib, jax-cuda12-plugin, jax-cuda12-pjrt, nvidia-* wheels), a CUDA build of torch, and regnet_jax's
#    dependencies (flax, optax, ml_collections, absl-py, ...). Nothing is installed when both frameworks already
#    see the GPU. regnet_jax itself runs from this checkout (PYTHONPATH), not installed.
# 2. Prints the GPU, then benchmarks/gpu_check.py: RegNetY-400MF and RegNetY-4GF, train and infer, bfloat16 and
#    float32, regnet_jax vs PyTorch (AMP, channels_last) images/s and their ratio, and the fraction of the card's
#    matmul peak (measured here) that each achieves. Measurements stop being started after GPU_CHECK_BUDGET_S
#    seconds (default 400) so that the whole check, installation included, stays under 8 minutes.
#
# Extra arguments after WHEEL_DIR go to gpu_check.py (e.g. --models=regnety_4gf --dtypes=bfloat16).
set -euo pipefail

cd "$(dirname "$0")/.."
WHEELS="${1:-.whl}"
shift || true
START=$(date +%s)
PY="${PYTHON:-python3}"

have_gpu_stack() {
  "$PY" - <<'EOF' 2>/dev/null
import sys
import jax, torch, flax, optax, ml_collections  # noqa: F401
sys.exit(0 if jax.default_backend() == "gpu" and torch.cuda.is_available() else 1)
EOF
}

if ! command -v nvidia-smi >/dev/null; then
  echo "error: nvidia-smi not found: this check needs an NVIDIA GPU with its driver" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if have_gpu_stack; then
  echo "jax (GPU) and torch (CUDA) already installed: nothing to install"
else
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "error: the GPU stack is not installed and $WHEELS/ holds no wheels: give the wheel directory as the first argument" >&2
    exit 2
  fi
  # Named requirements, resolved offline from the directory (extra wheels for other platforms are ignored);
  # override with GPU_CHECK_REQUIREMENTS="..." if the directory holds other versions.
  REQS="${GPU_CHECK_REQUIREMENTS:-jax[cuda12]==0.10.2 flax optax ml_collections absl-py numpy torch}"
  echo "installing from $WHEELS/ (offline): $REQS"
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" $REQS
  if ! have_gpu_stack; then
    echo "error: after installing, jax or torch still does not see the GPU:" >&2
    "$PY" -c "import jax, torch; print('jax backend:', jax.default_backend(), '| torch.cuda:', torch.cuda.is_available())" >&2 || true
    echo "the wheels must include jax[cuda12] (jax-cuda12-plugin, jax-cuda12-pjrt, nvidia-*) and a CUDA build of torch" >&2
    exit 2
  fi
fi
echo "setup took $(( $(date +%s) - START )) s"
"$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices()[0].device_kind, '| torch', torch.__version__, 'cuda', torch.version.cuda)"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # both frameworks share the card
"$PY" benchmarks/gpu_check.py --budget_s="${GPU_CHECK_BUDGET_S:-400}" "$@"
echo "gpu check took $(( $(date +%s) - START )) s"
