"""The GPU check (run by benchmarks/gpu_check.sh): regnet_jax vs PyTorch AMP on one NVIDIA GPU, fp32 and bf16.

For each model, mode (train, infer) and dtype (float32, bfloat16) it runs the side-by-side of side_by_side.py (each
framework in its own process, taking turns) and prints images/s of both, the ratio, the FLOP rate JAX achieves and
its fraction of the card's matmul peak measured here in the same dtype (a large square matmul with JAX's default
precision, which is also what the model's convolutions get: TF32 for float32 on Ampere and later; PyTorch's cuDNN
convolutions default to TF32 as well). A deadline keeps the whole run under ``--budget_s``: what does not fit is
reported as skipped.

    python benchmarks/gpu_check.py                         # RegNetY-400MF and RegNetY-4GF, the recipe's per-GPU batches
    python benchmarks/gpu_check.py --device=cpu --models=regnety_200mf --resolution=64 --batches=8 --budget_s=600  # dry run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Per-GPU batch of the 100-epoch recipe (1024 / 8 and 512 / 8 images: pycls dds_baselines yamls, TRAIN.BATCH_SIZE over NUM_GPUS 8; docs/fidelity.md#model-zoo).
RECIPE_BATCH = {"regnety_400mf": 128, "regnety_4gf": 64}


def matmul_peak_tflops(dtype: str, n: int = 8192, reps: int = 20) -> float:
    """Measured TFLOP/s of an n x n x n matmul in ``dtype`` (2 FLOPs per multiply-add), best of ``reps``."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def _peaks(dtypes: list[str], n: int, conn) -> None:
    conn.send({d: matmul_peak_tflops(d, n) for d in dtypes})


def measure_peaks(dtypes: list[str], n: int) -> dict[str, float]:
    """Matmul peaks measured in a separate process (so this process never holds GPU memory)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_peaks, args=(dtypes, n, child))
    proc.start()
    try:
        return parent.recv()
    finally:
        proc.join(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="regnety_400mf,regnety_4gf")
    p.add_argument(
        "--batches", default="", help="comma-separated batch per model (default: the recipe's per-GPU batch)"
    )
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps_per_round", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--matmul_n", type=int, default=8192)
    p.add_argument("--budget_s", type=float, default=330, help="stop starting new measurements after this many seconds")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = p.parse_args()

    import side_by_side

    from regnet_jax.benchmarking import timing  # noqa: F401  (the JAX workers' import path)
    from regnet_jax.models import complexity, zoo

    start, start_load = time.perf_counter(), os.getloadavg()[0]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [RECIPE_BATCH.get(m, 32) for m in models]
    if len(batches) != len(models):
        sys.exit(f"error: --batches has {len(batches)} entries but --models has {len(models)}")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    peaks = measure_peaks(dtypes, args.matmul_n if args.device == "cuda" else 1024)
    print("matmul peak (measured): " + ", ".join(f"{d} {v:.1f} TFLOP/s" for d, v in peaks.items()), flush=True)
    rows: list[dict[str, Any]] = []
    skipped = []
    # Most wanted first (bfloat16 training of both models), so that the budget cuts the least wanted rows.
    plan = [(dtype, mode, name, batch) for dtype in dtypes for mode in modes for name, batch in zip(models, batches)]
    for dtype, mode, name, batch in plan:
        if time.perf_counter() - start > args.budget_s:
            skipped.append(f"{name} {mode} {dtype}")
            continue
        macs = complexity.count(zoo.get_config(name).model, args.resolution)["flops"]
        ns = argparse.Namespace(
            batch=batch, dtype=dtype, resolution=args.resolution, step="auto", device=args.device, threads=os.cpu_count(),
            warmup=args.warmup, rounds=args.rounds, steps_per_round=args.steps_per_round, skip_nchw=True, start_load=start_load,
        )  # fmt: skip
        row = side_by_side.compare(name, mode, ns, lambda msg: print(msg, flush=True))
        factor = 3 if mode == "train" else 1
        row["jax_tflops"] = 2 * macs * factor * row["jax_images_per_s"] / 1e12
        row["torch_tflops"] = 2 * macs * factor * row["torch_channels_last_images_per_s"] / 1e12
        row["jax_fraction_of_matmul_peak"] = row["jax_tflops"] / peaks[dtype]
        row["torch_fraction_of_matmul_peak"] = row["torch_tflops"] / peaks[dtype]
        rows.append(row)
    print(
        f"\nGPU check ({time.perf_counter() - start:.0f} s); ratio > 1: regnet_jax is faster; torch = AMP in the dtype, channels_last"
    )
    print(
        f"{'model':<14} {'mode':<6} {'dtype':<9} {'batch':>5} {'jax img/s':>10} {'torch img/s':>11} {'ratio':>6} {'jax TFLOP/s':>11} {'of peak':>8} {'torch of peak':>13}"
    )
    for r in rows:
        print(
            f"{r['model']:<14} {r['mode']:<6} {r['dtype']:<9} {r['batch']:>5} {r['jax_images_per_s']:>10.1f} "
            f"{r['torch_channels_last_images_per_s']:>11.1f} {r['ratio_vs_torch_channels_last']:>6.2f} {r['jax_tflops']:>11.1f} "
            f"{r['jax_fraction_of_matmul_peak']:>8.1%} {r['torch_fraction_of_matmul_peak']:>13.1%}"
        )
    for s in skipped:
        print(f"skipped (over the {args.budget_s:.0f} s budget): {s}")
    heavy = sorted(m for m in ("tensorflow", "tensorflow_datasets", "clu") if m in sys.modules)
    print(f"imported on the benchmark path: {', '.join(heavy) if heavy else 'no TensorFlow, TFDS or clu'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_peak_tflops": peaks, "rows": rows, "skipped": skipped}, f, indent=1)


if __name__ == "__main__":
    main()
