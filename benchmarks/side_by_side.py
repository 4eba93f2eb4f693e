"""regnet_jax vs PyTorch on the same machine, the same architecture and the same synthetic batch, run in turn.

    python benchmarks/side_by_side.py --models=regnety_400mf --batch=32 --modes=train,infer
    python benchmarks/side_by_side.py --device=cuda --dtype=bfloat16 --models=regnety_400mf,regnety_4gf --batch=128

Both frameworks time the same thing: a full SGD training step (forward, backward, momentum update; batch statistics
updated) or an eval-mode forward pass, on a batch already in device memory, warm-up excluded. The rounds (at least
5) are interleaved so that load from other processes hits all engines alike. Printed per engine: images/s from the
median step time, the min-max of the step times, the peak resident memory (VmHWM) of the timed steps; the speed
ratio (median torch step / median JAX step; > 1: regnet_jax is faster) and memory ratio. Honest by construction: the
load average before and after is printed, and a row is marked unreliable, with the reason, when the load average was
above half the cores before the measurements began (at the tool's start, or the ``--start_load`` a script running several
tools saw at its own start: the 1-minute average still holds the tool's own earlier rows), when other processes kept more than half the cores busy during it (measured
from /proc/stat minus this tool's own processes), when an engine's round medians differ by more than 20 %, or when
fewer than 5 rounds ran. The PyTorch model is built from the
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
from regnet_jax.core import logs  # noqa: E402

logs.quiet_environment("TF_CPP_MIN_LOG_LEVEL")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def plain_spec(spec: Any) -> dict[str, Any]:
    """A ``ModelSpec`` as plain data (its fields and blocks), for a PyTorch worker that must not import regnet_jax."""
    return {"fields": dataclasses.asdict(spec), "blocks": spec.blocks()}


def spec_namespace(plain: dict[str, Any]) -> types.SimpleNamespace:
    """``plain_spec``'s data as an object with a ModelSpec's attributes and ``blocks()``, all ``torch_regnet`` reads.

    The PyTorch worker builds its model from it without importing regnet_jax, whose import brings jax and flax
    (~130 MB of resident memory that would be counted as PyTorch's)."""
    blocks = plain["blocks"]
    return types.SimpleNamespace(**plain["fields"], blocks=lambda: blocks)


def torch_step(
    spec: Any, mode: str, batch: int, resolution: int, device: str, dtype: str, channels_last: bool
) -> Callable[[], None]:
    """A PyTorch train or infer step of the twin of ``spec`` (a ModelSpec or ``spec_namespace``) on a synthetic batch;
    returns a callable that runs and syncs."""
    import torch
    from torch_regnet import build_torch_model

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_torch_model(spec).to(device).to(memory_format=fmt)
    x = torch.randn(batch, 3, resolution, resolution, device=device).to(memory_format=fmt)
    y = torch.randint(0, spec.num_classes, (batch,), device=device)
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


def _resident_kb(field: str) -> int:
    """VmRSS / VmHWM of this process in kB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_resident() -> None:
    """Restart VmHWM from the current resident size (Linux >= 4.0), so that the peak covers only what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _worker(conn, engine: str, name: str, mode: str, opts: dict[str, Any]) -> None:
    """A process that owns one engine: builds its step, then runs ``n`` timed steps per request (0 ends it, after
    sending the peak resident memory of the timed steps)."""
    try:
        run, info, compile_s = _build(engine, name, mode, opts)
        for _ in range(opts["warmup"]):
            run()
        resident_before = _resident_kb("VmRSS")
        _reset_peak_resident()
    except Exception as e:  # reported by the parent, which owns the terminal
        conn.send(("error", f"{engine}: {type(e).__name__}: {e}", None))
        return
    conn.send(("ready", info, compile_s))
    while (n := conn.recv()) > 0:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        conn.send(times)
    conn.send({"peak_resident_mb": _resident_kb("VmHWM") / 1024, "resident_before_mb": resident_before / 1024})


def _build(engine: str, name: str, mode: str, opts: dict[str, Any]) -> tuple[Callable[[], Any], str, float | None]:
    """The engine's step (run and synced by calling it), a line about it, and JAX's compile seconds."""
    if engine.startswith("jax"):
        import jax

        from regnet_jax.benchmarking import timing
        from regnet_jax.models import conv, zoo

        if opts["conv_impls"]:  # engine 'jax' runs the first lowering, 'jax_<impl>' the others
            conv.set_conv_impl(engine[4:] if engine != "jax" else opts["conv_impls"][0])

        if opts["device"] == "cuda" and jax.default_backend() != "gpu":
            raise RuntimeError(
                f"--device=cuda but JAX's backend is {jax.default_backend()!r}: install jax[cuda12] (see gpu_check.sh)"
            )

        config = zoo.get_config(name)
        prep = timing.prepare(
            config,
            mode=mode,
            batch=opts["batch"],
            dtype=opts["dtype"],
            resolution=opts["resolution"],
            num_devices=1,
            step_impl=opts["step"],
        )
        run = lambda: jax.block_until_ready(prep.run())  # noqa: E731
        impl = conv.get_conv_impl()
        info = f"compiled in {prep.compile_s:.1f} s ({prep.step_impl}, conv {impl}{f' = {conv.resolved_impl()}' if impl == 'auto' else ''})"
        return run, info, prep.compile_s
    import torch  # and no regnet_jax: the parent resolved the architecture (opts['spec'])

    torch.set_num_threads(opts["threads"])
    if opts["device"] == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device=cuda but torch.cuda.is_available() is False: install a CUDA build of torch")
        torch.backends.cudnn.benchmark = True
    spec = spec_namespace(opts["spec"])
    run = torch_step(
        spec, mode, opts["batch"], opts["resolution"], opts["device"], opts["dtype"], engine == "torch_channels_last"
    )
    return run, f"torch {torch.__version__}, {torch.get_num_threads()} threads", None


MIN_ROUNDS = 5
MAX_ROUND_SPREAD = 0.20  # an engine whose round medians differ by more than this is not measured reliably


def _busy_cpu_s() -> float:
    """CPU seconds all processes have used since boot, steal included (time this VM could not run): /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interleave(
    name: str,
    mode: str,
    engines: list[str],
    opts: dict[str, Any],
    progress: Callable[[str], None],
    start_by: float | None = None,
    ready_by: float | None = None,
) -> dict[str, Any]:
    """Each engine in its own process, taking turns for ``opts['rounds']`` rounds of ``opts['steps_per_round']`` steps.

    Separate processes so that one framework's idle worker threads (spinning OpenMP or XLA pool threads) never
    compete with the other's step; the turns make load from other processes hit every engine alike. Returns
    ``times`` (seconds per step, per engine, per round), ``memory`` (per engine: peak resident MB of the timed
    steps), ``others_cores``: the cores that other processes kept busy during the rounds, on average, and
    ``compile_s`` (per JAX engine).

    With a deadline (``time.perf_counter()`` values) an engine is not started after ``start_by`` and is stopped if it
    is not ready (compiled and warmed up) by ``ready_by``; an engine that fails to build is then left out too, not an
    error. Those engines are in ``not_measured`` (engine -> why) and nowhere else.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    workers, compile_s, not_measured = {}, {}, {}
    tolerant = start_by is not None or ready_by is not None
    try:
        for engine in engines:  # started one at a time so that compilation does not overlap another engine's warm-up
            if start_by is not None and time.perf_counter() > start_by:
                not_measured[engine] = "not started: over the time budget"
                continue
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, engine, name, mode, opts), daemon=True)
            proc.start()
            if ready_by is not None and not parent.poll(max(0.0, ready_by - time.perf_counter())):
                proc.terminate()
                proc.join(timeout=30)
                not_measured[engine] = "stopped: not compiled and warmed up within the time budget"
                progress(f"{name} {mode}: {engine} {not_measured[engine]}")
                continue
            workers[engine] = (proc, parent)
            status, info, compile_s[engine] = parent.recv()
            if status == "error":
                if not tolerant:
                    raise RuntimeError(info)
                del workers[engine], compile_s[engine]
                proc.join(timeout=30)
                not_measured[engine] = f"failed: {info}"
                progress(f"{name} {mode}: {engine} {not_measured[engine]}")
                continue
            progress(f"{name} {mode}: {engine} ready ({info})")
        times: dict[str, list[list[float]]] = {e: [] for e in workers}
        ours = lambda: sum(_process_cpu_s(p.pid) for p, _ in workers.values()) + time.process_time()  # noqa: E731
        busy0, ours0, wall0 = _busy_cpu_s(), ours(), time.perf_counter()
        for i in range(opts["rounds"]):
            for engine, (_, conn) in workers.items():
                conn.send(opts["steps_per_round"])
                times[engine].append(conn.recv())
            progress(
                f"  round {i + 1}/{opts['rounds']}: "
                + ", ".join(f"{e} {statistics.median(v[-1]) * 1e3:.0f} ms" for e, v in times.items())
            )
        others_cores = max(0.0, (_busy_cpu_s() - busy0) - (ours() - ours0)) / (time.perf_counter() - wall0)
        memory = {}
        for engine, (_, conn) in workers.items():
            conn.send(0)
            memory[engine] = conn.recv()
        return {
            "times": times,
            "memory": memory,
            "others_cores": others_cores,
            "compile_s": compile_s,
            "not_measured": not_measured,
        }
    finally:
        for proc, conn in workers.values():
            try:
                conn.send(0)
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


def reliability(rounds: dict[str, list[list[float]]], start_load: float, others_cores: float, cores: int) -> list[str]:
    """Why these step times do not measure an idle machine (empty if nothing says so): fewer than MIN_ROUNDS rounds,
    a load average above half the cores before the measurements began, other processes using more than half the cores during it,
    or an engine whose round medians differ by more than MAX_ROUND_SPREAD."""
    reasons = []
    n = min(len(r) for r in rounds.values())
    if n < MIN_ROUNDS:
        reasons.append(f"only {n} rounds (at least {MIN_ROUNDS} needed)")
    if start_load > cores / 2:
        reasons.append(f"load average {start_load:.2f} before the measurements began, above half the {cores} cores")
    if others_cores > cores / 2:
        reasons.append(f"other processes kept {others_cores:.2f} of the {cores} cores busy during the rounds")
    for engine, per_round in rounds.items():
        medians = [statistics.median(r) for r in per_round]
        spread = max(medians) / min(medians) - 1
        if spread > MAX_ROUND_SPREAD:
            reasons.append(f"{engine}'s round medians vary by {spread:.0%} (> {MAX_ROUND_SPREAD:.0%})")
    return reasons


def compare(name: str, mode: str, args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    """One model and mode: per engine images/s, median and spread of the per-step times, peak resident memory; JAX's
    speed and memory relative to each PyTorch layout; and whether the measurement is reliable (``unreliable``)."""
    from regnet_jax.models import model_spec, zoo

    config = zoo.get_config(name)
    resolution = args.resolution or config.resolution
    layouts = ["channels_last"] + ([] if args.skip_nchw else ["nchw"])
    impls = [i.strip() for i in getattr(args, "conv_impls", "").split(",") if i.strip()]
    opts = dict(
        batch=args.batch, dtype=args.dtype, resolution=resolution, step=args.step, device=args.device, threads=args.threads,
        warmup=args.warmup, rounds=args.rounds, steps_per_round=args.steps_per_round, conv_impls=impls,
        spec=plain_spec(model_spec(config.model)),
    )  # fmt: skip
    jax_engines = ["jax"] + [f"jax_{impl}" for impl in impls[1:]]
    load_before = os.getloadavg()[0]
    out = interleave(name, mode, jax_engines + [f"torch_{layout}" for layout in layouts], opts, progress)
    cores = len(os.sched_getaffinity(0))
    row: dict[str, Any] = dict(
        model=name, mode=mode, batch=args.batch, resolution=resolution, dtype=args.dtype, device=args.device,
        rounds=args.rounds, steps_per_round=args.steps_per_round, cores=cores, load_before=load_before,
        load_after=os.getloadavg()[0], others_cores=out["others_cores"], jax_engines=jax_engines,
        conv_impls={e: impl for e, impl in zip(jax_engines, impls)},
    )  # fmt: skip
    medians = {}
    for engine, per_round in out["times"].items():
        steps = [t for r in per_round for t in r]
        medians[engine] = statistics.median(steps)
        row[f"{engine}_images_per_s"] = args.batch / medians[engine]
        row[f"{engine}_ms"] = {"median": medians[engine] * 1e3, "min": min(steps) * 1e3, "max": max(steps) * 1e3}
        row[f"{engine}_round_medians_ms"] = [statistics.median(r) * 1e3 for r in per_round]
        if engine in jax_engines:
            row[f"{engine}_compile_s"] = out["compile_s"][engine]
        mem = out["memory"][engine]
        row[f"{engine}_peak_resident_mb"] = mem["peak_resident_mb"]
        row[f"{engine}_step_growth_mb"] = mem["peak_resident_mb"] - mem["resident_before_mb"]  # activations, workspace
    for engine in jax_engines:
        prefix = "" if engine == "jax" else f"{engine}_"
        for layout in layouts:
            row[f"{prefix}ratio_vs_torch_{layout}"] = medians[f"torch_{layout}"] / medians[engine]  # > 1: JAX is faster
            row[f"{prefix}memory_vs_torch_{layout}"] = (
                row[f"{engine}_peak_resident_mb"] / row[f"torch_{layout}_peak_resident_mb"]
            )
    reasons = reliability(out["times"], args.start_load, out["others_cores"], cores) if args.device == "cpu" else []
    row["unreliable"] = reasons
    for reason in reasons:
        progress(f"WARNING: unreliable measurement: {reason}")
    return row


def format_row(r: dict[str, Any]) -> str:
    """One line per model and mode: img/s, median [min-max] ms/step and peak resident memory of each engine, ratios."""

    def engine(e: str, label: str) -> str:
        ms = r[f"{e}_ms"]
        return (
            f"{label} {r[f'{e}_images_per_s']:.1f} img/s ({ms['median']:.0f} ms [{ms['min']:.0f}-{ms['max']:.0f}], "
            f"peak RSS {r[f'{e}_peak_resident_mb']:.0f} MB, +{r[f'{e}_step_growth_mb']:.0f} MB during the steps)"
        )

    parts = [f"{r['model']} {r['mode']} {r['dtype']} b{r['batch']}"]
    for je in r["jax_engines"]:
        prefix = "" if je == "jax" else f"{je}_"
        impl = f" ({r['conv_impls'][je]})" if je in r["conv_impls"] else ""
        ratios = ", ".join(
            f"{r[f'{prefix}ratio_vs_torch_{layout}']:.2f}x speed / {r[f'{prefix}memory_vs_torch_{layout}']:.2f}x memory vs {layout}"
            for layout in ("channels_last", "nchw")
            if f"{prefix}ratio_vs_torch_{layout}" in r
        )
        parts.append(engine(je, f"jax{impl}") + f" -> {ratios}")
    for layout in ("channels_last", "nchw"):
        if f"torch_{layout}_images_per_s" in r:
            parts.append(engine(f"torch_{layout}", f"torch {layout}"))
    verdict = "UNRELIABLE (" + "; ".join(r["unreliable"]) + ")" if r["unreliable"] else "reliable"
    return " | ".join(parts) + f" | load {r['load_before']:.2f} -> {r['load_after']:.2f}, {verdict}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (speed ratio > 1: regnet_jax is faster; memory ratio < 1: it uses less)."""
    lines = [
        "| model | mode | batch | regnet_jax img/s | PyTorch channels_last img/s | speed ratio | regnet_jax peak RSS | PyTorch peak RSS | memory ratio | JAX compile | load before / after | reliable |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        for je in r["jax_engines"]:
            prefix = "" if je == "jax" else f"{je}_"
            impl = f" ({r['conv_impls'][je]})" if je in r["conv_impls"] else ""
            lines.append(
                f"| {r['model']}{impl} | {r['mode']} | {r['batch']} | {r[f'{je}_images_per_s']:.1f} | {r['torch_channels_last_images_per_s']:.1f} | "
                f"{r[f'{prefix}ratio_vs_torch_channels_last']:.2f}x | {r[f'{je}_peak_resident_mb']:.0f} MB | "
                f"{r['torch_channels_last_peak_resident_mb']:.0f} MB | {r[f'{prefix}memory_vs_torch_channels_last']:.2f}x | "
                f"{r[f'{je}_compile_s']:.1f} s | {r['load_before']:.2f} / {r['load_after']:.2f} | "
                f"{'no: ' + '; '.join(r['unreliable']) if r['unreliable'] else 'yes'} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="regnety_400mf", help="comma-separated zoo names")
    p.add_argument("--modes", default="train,infer", help="train, infer or both (comma-separated)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=0, help="0: the config's (224)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="PyTorch intra-op threads (0: the usable cores)")
    p.add_argument(
        "--rounds",
        type=int,
        default=MIN_ROUNDS,
        help=f"interleaved rounds (fewer than {MIN_ROUNDS}: marked unreliable)",
    )
    p.add_argument("--steps_per_round", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--step", default="auto", choices=["auto", "parallel"], help="JAX train step (see regnet_jax.benchmark)"
    )
    p.add_argument("--skip_nchw", action="store_true", help="only PyTorch channels_last (NCHW is slow on CPU)")
    p.add_argument(
        "--conv_impls", default="", help="compare regnet_jax's conv lowerings, e.g. 'vjp,blocked' (one JAX engine each)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON list on stdout (progress on stderr)")
    p.add_argument("--markdown", default="", help="also write the rows as a markdown table to this file")
    p.add_argument(
        "--start_load",
        type=float,
        default=-1,
        help="the load average before the measurements began (default: now; a script running several tools passes its own)",
    )
    args = p.parse_args()
    if args.start_load < 0:
        args.start_load = os.getloadavg()[0]

    from importlib.metadata import version

    args.threads = args.threads or len(os.sched_getaffinity(0))
    out = sys.stderr if args.json else sys.stdout
    progress = lambda msg: print(msg, file=out, flush=True)  # noqa: E731
    progress(
        f"jax {version('jax')}, torch {version('torch')} ({args.threads} threads), {args.device}, "
        f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.2f}"
    )
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            try:
                rows.append(compare(name, mode, args, progress))
            except RuntimeError as e:
                sys.exit(f"error: {e}")
            progress(format_row(rows[-1]))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows) + "\n")
    if args.json:
        print(json.dumps(rows))
    else:
        print("\nsummary (speed ratio > 1: regnet_jax is faster; memory = peak resident set of the timed steps)")
        for r in rows:
            print(format_row(r))
        if any(r["unreliable"] for r in rows):
            print(
                f"WARNING: some rows are unreliable (see above); rerun on an idle machine (load below {len(os.sched_getaffinity(0)) / 2:g})"
            )


if __name__ == "__main__":
    main()
