"""regnet_jax vs PyTorch on the same machine, the same architecture and the same synthetic batch, run in turn.

    python benchmarks/side_by_side.py --models=regnety_400mf --batch=32 --modes=train,infer
    python benchmarks/side_by_side.py --device=cuda --dtype=bfloat16 --models=regnety_400mf,regnety_4gf --batch=128

Both frameworks time the same thing: a full SGD training step (forward, backward, momentum update; batch statistics
updated) or an eval-mode forward pass, on a batch already in device memory, warm-up excluded. The rounds are
interleaved (JAX step, PyTorch channels_last step, PyTorch NCHW step, repeat) so that load from other processes hits
all of them alike; the medians and the median of per-round ratios are printed. The PyTorch model is built from the
same ``ModelSpec`` (benchmarks/torch_regnet.py: same widths, groups, SE, head); on GPU, PyTorch runs AMP
(``autocast``) in the compute dtype and JAX runs the model in that dtype with float32 parameters.

Threads: PyTorch gets ``--threads`` intra-op threads (default: the cores this process may use); XLA:CPU uses one
thread per core of the process's affinity mask, so both use the same cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to PyTorch as well
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def torch_step(model_cfg: Any, mode: str, batch: int, resolution: int, device: str, dtype: str, channels_last: bool) -> Callable[[], None]:
    """A PyTorch train or infer step of the twin model on a synthetic batch; returns a callable that runs and syncs."""
    import torch

    from regnet_jax.models import model_spec
    from torch_regnet import build_torch_model

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_torch_model(model_spec(model_cfg)).to(device).to(memory_format=fmt)
    x = torch.randn(batch, 3, resolution, resolution, device=device).to(memory_format=fmt)
    y = torch.randint(0, model_cfg.num_classes, (batch,), device=device)
    amp = dtype == "bfloat16"
    autocast = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp)  # noqa: E731
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if mode == "infer":
        model.eval()

        def run():
            with torch.no_grad(), autocast():
                model(x)
            sync()

        return run
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5)

    def run():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sync()

    return run


def interleave(runs: dict[str, Callable[[], Any]], rounds: int, warmup: int, progress: Callable[[str], None]) -> dict[str, list[float]]:
    """Seconds per step of each callable, run in turn for ``rounds`` rounds after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(rounds):
        for k, run in runs.items():
            t = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t)
        progress(f"  round {i + 1}/{rounds}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()))
    return times


def compare(name: str, mode: str, args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    """One model and mode: images/s of each engine, and JAX's speed relative to each PyTorch layout."""
    import jax

    from regnet_jax import benchmark, zoo

    config = zoo.get_config(name)
    resolution = args.resolution or config.resolution
    prep = benchmark.prepare(config, mode=mode, batch=args.batch, dtype=args.dtype, resolution=resolution, num_devices=1, step_impl=args.step)
    progress(f"{name} {mode}: JAX step compiled in {prep.compile_s:.1f} s ({prep.step_impl}, conv {benchmark.layers.get_conv_impl()})")
    runs: dict[str, Callable[[], Any]] = {"jax": lambda: jax.block_until_ready(prep.run())}
    layouts = ["channels_last"] + ([] if args.skip_nchw else ["nchw"])
    for layout in layouts:
        runs[f"torch_{layout}"] = torch_step(config.model, mode, args.batch, resolution, args.device, args.dtype, layout == "channels_last")
    times = interleave(runs, args.rounds, args.warmup, progress)
    row: dict[str, Any] = dict(model=name, mode=mode, batch=args.batch, resolution=resolution, dtype=args.dtype, device=args.device)
    for k, v in times.items():
        row[f"{k}_images_per_s"] = args.batch / statistics.median(v)
    for layout in layouts:
        t = np.asarray(times[f"torch_{layout}"])
        row[f"ratio_vs_torch_{layout}"] = float(np.median(t / np.asarray(times["jax"])))  # > 1: JAX is faster
    row["load_average"] = os.getloadavg()[0]
    return row


def format_row(r: dict[str, Any]) -> str:
    parts = [f"{r['model']:<14} {r['mode']:<5} {r['dtype']:<8} jax {r['jax_images_per_s']:8.1f} img/s"]
    for layout in ("channels_last", "nchw"):
        if f"torch_{layout}_images_per_s" in r:
            parts.append(f"torch {layout} {r[f'torch_{layout}_images_per_s']:8.1f} img/s (jax/torch {r[f'ratio_vs_torch_{layout}']:.2f}x)")
    return " | ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="regnety_400mf", help="comma-separated zoo names")
    p.add_argument("--modes", default="train,infer", help="train, infer or both (comma-separated)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=0, help="0: the config's (224)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="PyTorch intra-op threads (0: the usable cores)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--step", default="auto", choices=["auto", "parallel", "local"], help="JAX train step (see regnet_jax.benchmark)")
    p.add_argument("--skip_nchw", action="store_true", help="only PyTorch channels_last (NCHW is slow on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON list on stdout (progress on stderr)")
    args = p.parse_args()

    import jax
    import torch

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    if args.device == "cuda":
        if not torch.cuda.is_available() or jax.default_backend() != "gpu":
            sys.exit(f"error: --device=cuda needs a GPU for both frameworks (torch.cuda: {torch.cuda.is_available()}, jax: {jax.default_backend()})")
        torch.backends.cudnn.benchmark = True
    out = sys.stderr if args.json else sys.stdout
    progress = lambda msg: print(msg, file=out, flush=True)  # noqa: E731
    progress(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} ({threads} threads), load average {os.getloadavg()[0]:.2f}")
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            rows.append(compare(name, mode, args, progress))
            progress(format_row(rows[-1]))
    if args.json:
        print(json.dumps(rows))
    else:
        print("\nsummary (ratio > 1: regnet_jax is faster)")
        for r in rows:
            print(format_row(r))


if __name__ == "__main__":
    main()
