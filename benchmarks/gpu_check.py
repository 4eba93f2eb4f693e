"""The GPU check (run by benchmarks/gpu_check.sh): which convolution lowering is fastest on this GPU, and regnet_jax vs
PyTorch AMP on it, fp32 and bf16.

First the lowering sweep: for each model (RegNetY-400MF first, then RegNetY-4GF) the bfloat16 train step with each
convolution lowering (``--lowerings``: xla, blocked, vjp; regnet_jax.models.conv) in its own process, taking turns,
images/s each and the fastest printed. From it the rule below picks the lowering that ``conv_impl='auto'`` uses on
this platform and device kind, and the check writes it with the numbers into the table ``auto`` reads
(``regnet_jax/models/conv_choice.json``; ``--write_choice``; a dry run on the CPU writes a copy in the temporary
directory instead). The rule: the lowering with the best geometric mean over the models of its speed relative to
the fastest lowering of that model; ``xla`` (XLA's native op, cuDNN) unless another is more than ``CHOICE_MARGIN``
faster on that mean.

Then, for each model, mode (train, infer) and dtype (float32, bfloat16) it runs the side-by-side of side_by_side.py (each
framework in its own process, taking turns) and prints images/s of both, the ratio, the FLOP rate JAX achieves and
its fraction of the card's matmul peak measured here in the same dtype (a large square matmul with JAX's default
precision, which is also what the model's convolutions get: TF32 for float32 on Ampere and later; PyTorch's cuDNN
convolutions default to TF32 as well). A deadline keeps the whole run under ``--budget_s``: what does not fit is
reported as skipped.

    python benchmarks/gpu_check.py                         # RegNetY-400MF and RegNetY-4GF, the recipe's per-GPU batches
    python benchmarks/gpu_check.py --device=cpu --models=regnety_200mf --resolution=64 --batches=8 --budget_s=600  # dry run

Every measurement that would start after ``--budget_s`` is skipped; the lowering sweep has the first
``--sweep_budget_s`` of it, and a lowering still compiling ``--grace_s`` after that is stopped (and reported), so that
the side-by-side rows get the rest.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Per-GPU batch of the 100-epoch recipe (1024 / 8 and 512 / 8 images: pycls dds_baselines yamls, TRAIN.BATCH_SIZE over NUM_GPUS 8; docs/fidelity.md#model-zoo).
RECIPE_BATCH = {"regnety_400mf": 128, "regnety_4gf": 64}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHOICE_FILE = os.path.join(REPO, "regnet_jax", "models", "conv_choice.json")
CHOICE_MARGIN = 0.03  # another lowering must beat xla by more than this (geometric mean of relative speeds)
RULE = (f"the lowering with the best geometric mean over the models of images/s relative to the model's fastest "
        f"lowering; xla unless another is more than {CHOICE_MARGIN:.0%} better on that mean")  # fmt: skip


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
    import jax

    conn.send(
        (
            {d: matmul_peak_tflops(d, n) for d in dtypes},
            jax.default_backend(),
            jax.devices()[0].device_kind,
            jax.__version__,
        )
    )


def measure_peaks(dtypes: list[str], n: int) -> tuple[dict[str, float], str, str, str]:
    """Matmul peaks measured in a separate process (so this process never holds GPU memory), with JAX's platform,
    device kind and version there."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_peaks, args=(dtypes, n, child))
    proc.start()
    try:
        return parent.recv()
    finally:
        proc.join(timeout=60)


def choose(images_per_s: dict[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    """The lowering ``RULE`` picks from {model: {lowering: images/s}}, and each lowering's score (geometric mean of
    its relative speed over the models that measured every lowering scored)."""
    lowerings = sorted({i for per in images_per_s.values() for i in per})
    models = [m for m, per in images_per_s.items() if all(i in per for i in lowerings) and per]
    if not models:  # no model measured them all: score the lowerings each model measured
        models, lowerings = list(images_per_s), sorted(set.intersection(*(set(p) for p in images_per_s.values())))
    scores = {
        i: math.exp(statistics.fmean(math.log(images_per_s[m][i] / max(images_per_s[m].values())) for m in models))
        for i in lowerings
    }
    best = max(scores, key=scores.get)
    if "xla" in scores and scores["xla"] >= scores[best] * (1 - CHOICE_MARGIN):
        best = "xla"
    return best, scores


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return (
            out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
            if out.returncode == 0
            else "unknown (no git checkout)"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def write_choice(path: str, platform: str, device_kind: str, choice: str, entry: dict[str, Any]) -> None:
    """Record ``choice`` for ``device_kind`` (with the measurement) and as ``platform``'s default in the table at
    ``path`` (the shipped table when it does not exist yet), keeping the other entries."""
    source = path if os.path.exists(path) else CHOICE_FILE
    try:
        with open(source) as f:
            table = json.load(f)
    except (OSError, ValueError):
        table = {}
    per_platform = table.setdefault(platform, {})
    per_platform[device_kind] = {"default": choice, **entry}
    per_platform["default"] = choice
    per_platform["source"] = (
        f"measured on {device_kind} by benchmarks/gpu_check.py on {entry['date']} (the entry of that device kind)"
    )
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def lowering_sweep(models: list[str], batches: list[int], args: argparse.Namespace, deadline: float, grace_s: float,
                   progress) -> dict[str, Any]:  # fmt: skip
    """The bfloat16 (``--lowering_dtype``) train step of each model with each lowering, interleaved; images/s."""
    import side_by_side

    lowerings = [i.strip() for i in args.lowerings.split(",") if i.strip()]
    out: dict[str, Any] = {
        "images_per_s": {},
        "fastest": {},
        "not_measured": {},
        "batches": {},
        "compile_s": {},
        "skipped": [],
    }
    for name, batch in zip(models, batches):
        if time.perf_counter() > deadline:
            out["skipped"].append(f"lowering sweep {name}")
            continue
        opts = dict(batch=batch, dtype=args.lowering_dtype, resolution=args.resolution, step="auto", device=args.device,
                    threads=os.cpu_count(), warmup=args.warmup, rounds=args.rounds, steps_per_round=args.steps_per_round,
                    conv_impls=lowerings)  # fmt: skip
        engines = [f"jax_{i}" for i in lowerings]
        res = side_by_side.interleave(
            name, "train", engines, opts, progress, start_by=deadline, ready_by=deadline + grace_s
        )
        speeds = {
            e[4:]: batch / statistics.median([t for r in per_round for t in r]) for e, per_round in res["times"].items()
        }
        out["images_per_s"][name] = speeds
        out["batches"][name] = batch
        out["compile_s"][name] = {e[4:]: round(v, 1) for e, v in res["compile_s"].items()}
        if res["not_measured"]:
            out["not_measured"][name] = {e[4:]: why for e, why in res["not_measured"].items()}
        if speeds:
            out["fastest"][name] = max(speeds, key=speeds.get)
            progress(f"{name} {args.lowering_dtype} train step: " + ", ".join(f"{i} {v:.1f} images/s" for i, v in speeds.items())
                     + f"; fastest: {out['fastest'][name]}")  # fmt: skip
    return out


def print_sweep(sweep: dict[str, Any], lowerings: list[str], dtype: str) -> None:
    print(f"\nconvolution lowerings, {dtype} train step (images/s; one process per lowering, taking turns):")
    print(f"{'model':<14} {'batch':>5} " + " ".join(f"{i:>9}" for i in lowerings) + "  fastest")
    for name, speeds in sweep["images_per_s"].items():
        cells = " ".join(f"{speeds[i]:>9.1f}" if i in speeds else f"{'-':>9}" for i in lowerings)
        print(f"{name:<14} {sweep['batches'][name]:>5} {cells}  {sweep['fastest'].get(name, '-')}")
    for name, why in sweep["not_measured"].items():
        for i, reason in why.items():
            print(f"not measured: {name} {i}: {reason}")
    for s in sweep["skipped"]:
        print(f"skipped (over the budget): {s}")


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
    p.add_argument(
        "--sweep_budget_s", type=float, default=200, help="the lowering sweep's part of --budget_s (the same rules)"
    )
    p.add_argument(
        "--grace_s", type=float, default=60, help="stop a lowering still compiling this long after its budget"
    )
    p.add_argument(
        "--lowerings", default="xla,blocked,vjp", help="the convolution lowerings to sweep ('' skips the sweep)"
    )
    p.add_argument("--lowering_dtype", default="bfloat16", help="the compute dtype of the lowering sweep's train step")
    p.add_argument("--write_choice", default="", help="the table 'auto' reads, to record the sweep's choice in (default: "
                   "regnet_jax/models/conv_choice.json on a GPU; a copy in the temporary directory on the CPU); 'none': don't")  # fmt: skip
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
    peaks, platform, device_kind, jax_version = measure_peaks(
        sorted(set(dtypes) | {args.lowering_dtype}), args.matmul_n if args.device == "cuda" else 1024
    )
    print(
        "matmul peak (measured): "
        + ", ".join(f"{d} {v:.1f} TFLOP/s" for d, v in peaks.items())
        + f" on {platform} ({device_kind})",
        flush=True,
    )
    lowerings = [i.strip() for i in args.lowerings.split(",") if i.strip()]
    sweep = None
    if lowerings:  # first: what decides conv_impl='auto' on this device
        sweep_end = start + min(args.sweep_budget_s, args.budget_s)
        sweep = lowering_sweep(models, batches, args, sweep_end, args.grace_s, lambda msg: print(msg, flush=True))
        print_sweep(sweep, lowerings, args.lowering_dtype)
        measured = {m: v for m, v in sweep["images_per_s"].items() if len(v) > 1}
        if measured:
            choice, scores = choose(measured)
            print(f"auto on {platform} ({device_kind}): {choice}  (score = geometric mean of relative speed: "
                  + ", ".join(f"{i} {v:.3f}" for i, v in scores.items()) + f"; rule: {RULE})", flush=True)  # fmt: skip
            path = args.write_choice or (
                CHOICE_FILE
                if args.device == "cuda"
                else os.path.join(tempfile.gettempdir(), "conv_choice_dry_run.json")
            )
            if path != "none":
                entry = dict(
                    images_per_s={m: {i: round(v, 1) for i, v in per.items()} for m, per in measured.items()}, fastest=sweep["fastest"],
                    scores={i: round(v, 4) for i, v in scores.items()}, not_measured=sweep["not_measured"], compile_s=sweep["compile_s"],
                    dtype=args.lowering_dtype, batches=sweep["batches"], resolution=args.resolution, rule=RULE,
                    date=datetime.date.today().isoformat(), commit=_commit(), jax=jax_version, load_average=round(start_load, 2),
                    command="benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
                )  # fmt: skip
                write_choice(path, platform, device_kind, choice, entry)
                print(f"wrote the choice to {path}", flush=True)
        else:
            print("auto: unchanged (no model measured two lowerings)", flush=True)
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
    if sweep is not None:
        print_sweep(sweep, lowerings, args.lowering_dtype)  # again at the end, beside the table above
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"matmul_peak_tflops": peaks, "lowering_sweep": sweep, "rows": rows, "skipped": skipped}, f, indent=1
            )


if __name__ == "__main__":
    main()
