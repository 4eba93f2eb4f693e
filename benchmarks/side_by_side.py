"""regnet_jax vs PyTorch on the same machine, the same architecture and the same synthetic batch, run in turn.

    python benchmarks/side_by_side.py --models=regnety_400mf --batch=32 --modes=train,infer
    python benchmarks/side_by_side.py --device=cuda --dtype=bfloat16 --models=regnety_400mf,regnety_4gf --batch=128

Both frameworks time the same thing: a full SGD training step (forward, backward, momentum update; batch statistics
updated) or an eval-mode forward pass, on a batch already in device memory, warm-up excluded. The rounds are
interleaved so that load from other processes hits all engines alike; the medians and the median of per-step ratios
are printed. The PyTorch model is built from the
same ``ModelSpec`` (benchmarks/torch_regnet.py: same widths, groups, SE, head); on GPU, PyTorch runs AMP
(``autocast``) in the compute dtype and JAX runs the model in that dtype with float32 parameters.

Each engine runs in its own worker process and they take turns (JAX step(s), then PyTorch channels_last, then
PyTorch NCHW, repeat), so that one framework's idle threads never compete with the other's step. Threads: PyTorch
gets ``--threads`` intra-op threads (default: the cores this process may use); XLA:CPU uses one thread per core of
the process's affinity mask, so both use the same cores.
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


def _worker(conn, engine: str, name: str, mode: str, opts: dict[str, Any]) -> None:
    """A process that owns one engine: builds its step, then runs ``n`` timed steps per request."""
    try:
        run, info = _build(engine, name, mode, opts)
        for _ in range(opts["warmup"]):
            run()
    except Exception as e:  # reported by the parent, which owns the terminal
        conn.send(("error", f"{engine}: {type(e).__name__}: {e}"))
        return
    conn.send(("ready", info))
    while (n := conn.recv()) > 0:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        conn.send(times)


def _build(engine: str, name: str, mode: str, opts: dict[str, Any]) -> tuple[Callable[[], Any], str]:
    if engine == "jax":
        import jax

        from regnet_jax import benchmark, zoo

        if opts["device"] == "cuda" and jax.default_backend() != "gpu":
            raise RuntimeError(f"--device=cuda but JAX's backend is {jax.default_backend()!r}: install jax[cuda12] (see gpu_check.sh)")

        config = zoo.get_config(name)
        prep = benchmark.prepare(
            config,
            mode=mode,
            batch=opts["batch"],
            dtype=opts["dtype"],
            resolution=opts["resolution"],
            num_devices=1,
            step_impl=opts["step"],
        )
        run = lambda: jax.block_until_ready(prep.run())  # noqa: E731
        info = f"compiled in {prep.compile_s:.1f} s ({prep.step_impl}, conv {benchmark.layers.get_conv_impl()})"
        return run, info
    os.environ["JAX_PLATFORMS"] = "cpu"  # this process only needs regnet_jax's ModelSpec, never a JAX device
    import torch

    from regnet_jax import zoo

    torch.set_num_threads(opts["threads"])
    if opts["device"] == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device=cuda but torch.cuda.is_available() is False: install a CUDA build of torch")
        torch.backends.cudnn.benchmark = True
    config = zoo.get_config(name)
    run = torch_step(config.model, mode, opts["batch"], opts["resolution"], opts["device"], opts["dtype"], engine == "torch_channels_last")
    return run, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def interleave(name: str, mode: str, engines: list[str], opts: dict[str, Any], progress: Callable[[str], None]) -> dict[str, list[float]]:
    """Seconds per step of each engine, each in its own process, taking turns for ``opts['rounds']`` rounds.

    Separate processes so that one framework's idle worker threads (spinning OpenMP or XLA pool threads) never
    compete with the other's step; the turns make load from other processes hit every engine alike.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    workers = {}
    try:
        for engine in engines:  # started one at a time so that compilation does not overlap another engine's warm-up
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, engine, name, mode, opts), daemon=True)
            proc.start()
            workers[engine] = (proc, parent)
            status, info = parent.recv()
            if status == "error":
                raise RuntimeError(info)
            progress(f"{name} {mode}: {engine} ready ({info})")
        times: dict[str, list[float]] = {e: [] for e in engines}
        for i in range(opts["rounds"]):
            for engine, (_, conn) in workers.items():
                conn.send(opts["steps_per_round"])
                times[engine] += conn.recv()
            progress(
                f"  round {i + 1}/{opts['rounds']}: "
                + ", ".join(f"{e} {statistics.median(v[-opts['steps_per_round'] :]) * 1e3:.0f} ms" for e, v in times.items())
            )
        return times
    finally:
        for proc, conn in workers.values():
            try:
                conn.send(0)
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


def compare(name: str, mode: str, args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    """One model and mode: images/s of each engine, and JAX's speed relative to each PyTorch layout."""
    from regnet_jax import zoo

    resolution = args.resolution or zoo.get_config(name).resolution
    layouts = ["channels_last"] + ([] if args.skip_nchw else ["nchw"])
    opts = dict(
        batch=args.batch, dtype=args.dtype, resolution=resolution, step=args.step, device=args.device, threads=args.threads,
        warmup=args.warmup, rounds=args.rounds, steps_per_round=args.steps_per_round,
    )  # fmt: skip
    times = interleave(name, mode, ["jax"] + [f"torch_{layout}" for layout in layouts], opts, progress)
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
    p.add_argument("--steps_per_round", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--step", default="auto", choices=["auto", "parallel", "local"], help="JAX train step (see regnet_jax.benchmark)")
    p.add_argument("--skip_nchw", action="store_true", help="only PyTorch channels_last (NCHW is slow on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON list on stdout (progress on stderr)")
    args = p.parse_args()

    from importlib.metadata import version

    args.threads = args.threads or len(os.sched_getaffinity(0))
    out = sys.stderr if args.json else sys.stdout
    progress = lambda msg: print(msg, file=out, flush=True)  # noqa: E731
    progress(
        f"jax {version('jax')}, torch {version('torch')} ({args.threads} threads), {args.device}, load average {os.getloadavg()[0]:.2f}"
    )
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            try:
                rows.append(compare(name, mode, args, progress))
            except RuntimeError as e:
                sys.exit(f"error: {e}")
            progress(format_row(rows[-1]))
    if args.json:
        print(json.dumps(rows))
    else:
        print("\nsummary (ratio > 1: regnet_jax is faster)")
        for r in rows:
            print(format_row(r))


if __name__ == "__main__":
    main()
