"""Where a side-by-side step's resident memory goes, stage by stage, in regnet_jax and in PyTorch.

    python benchmarks/memory_breakdown.py --models=regnety_400mf,regnetx_400mf --batch=32 --modes=train,infer
    python benchmarks/memory_breakdown.py --models=regnetx_200mf,regnety_200mf --batch=128 --resolution=32
    python benchmarks/memory_breakdown.py --keep_free_heap ...   # regnet_jax as before it released the compiler's memory

Each engine, model and mode runs in a fresh process that builds the same step as ``benchmarks/side_by_side.py``
(regnet_jax: ``benchmarking.timing.prepare``; PyTorch: the twin of ``torch_regnet.py``, channels_last) one stage at a
time and records after each stage the resident set (VmRSS, split into anonymous memory and file-backed pages, i.e.
the libraries' mapped code), the stage's own peak (VmHWM, restarted before the stage through /proc/self/clear_refs)
and the C heap's bytes in use (glibc's ``mallinfo2``, its mmapped blocks included).

regnet_jax's stages: python + numpy; ``import jax`` + the CPU client; flax, optax and regnet_jax; the model's
variables, optimizer state and batch (their initialisation is compiled too); the step's compilation (XLA's
``memory_analysis``: argument, output, alias and temp bytes, and the size of the serialized executable, i.e. the
generated code); the first step; the steady state (``--steps`` more: the peak the side-by-side reports). PyTorch's:
python + numpy; ``import torch``; model, optimizer and batch; first step; steady state. Both end with
``malloc_trim(0)``: what it gives back is what the C heap held free but resident. Also printed: the heavy modules
imported (the benchmark path reads no data and must import no TensorFlow, TFDS or clu). Linux and glibc only.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HEAVY_MODULES = (
    "tensorflow",
    "tensorflow_datasets",
    "clu",
    "orbax.checkpoint",
    "tensorstore",
    "matplotlib",
    "torch",
    "jax",
    "flax",
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _heap() -> dict[str, float]:
    """glibc's heap, MB: in use (allocated, mmapped chunks included) and free but held (sbrk/arena memory)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {
        "heap_in_use_mb": (m.uordblks + m.hblkhd) / 2**20,
        "heap_free_mb": m.fordblks / 2**20,
        "heap_mmapped_mb": m.hblkhd / 2**20,
    }


def _status() -> dict[str, float]:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    mb = lambda k: int(fields[k].split()[0]) / 1024  # noqa: E731
    return {"rss_mb": mb("VmRSS"), "anon_mb": mb("RssAnon"), "file_mb": mb("RssFile"), "peak_mb": mb("VmHWM")}


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Stages:
    """Records the resident memory after each stage and the stage's own peak."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.process_peak_mb = 0.0
        _reset_peak()
        self.t = time.perf_counter()

    def mark(self, name: str, **extra: Any) -> None:
        s = _status()
        self.process_peak_mb = max(self.process_peak_mb, s["peak_mb"])
        self.rows.append(dict(stage=name, seconds=time.perf_counter() - self.t, **s, **_heap(), **extra))
        _reset_peak()
        self.t = time.perf_counter()


def _jax_stages(model: str, mode: str, opts: dict[str, Any], stages: Stages) -> dict[str, Any]:
    import jax

    jax.devices()
    stages.mark("import jax + CPU client")
    import flax  # noqa: F401
    import optax  # noqa: F401

    from regnet_jax.benchmarking import timing
    from regnet_jax.models import zoo

    stages.mark("flax, optax, regnet_jax")
    if opts["keep_free_heap"]:  # as before regnet_jax released the compiler's free memory
        timing.release_free_heap = lambda: False
    names = {"built": "variables, optimizer state, batch", "compiled": "compile the step"}
    prep = timing.prepare(
        zoo.get_config(model), mode=mode, batch=opts["batch"], resolution=opts["resolution"], num_devices=1,
        on_stage=lambda stage: stages.mark(names[stage]),
    )  # fmt: skip
    info: dict[str, Any] = {}
    ma = prep.compiled.memory_analysis()
    if ma is not None:
        info = {k: getattr(ma, f"{k}_size_in_bytes") / 2**20 for k in ("argument", "output", "alias", "temp")}
    try:
        from jax.experimental.serialize_executable import serialize

        info["executable"] = len(serialize(prep.compiled)[0]) / 2**20
    except Exception as e:  # not every backend serializes
        info["executable_error"] = f"{type(e).__name__}: {e}"
    stages.rows[-1]["xla"] = info  # the compile stage's row
    jax.block_until_ready(prep.run())
    stages.mark("first step")
    for _ in range(opts["steps"]):
        jax.block_until_ready(prep.run())
    stages.mark(f"steady state ({opts['steps']} steps)")
    return {"memory_analysis": info}


def _torch_stages(mode: str, opts: dict[str, Any], stages: Stages, channels_last: bool) -> dict[str, Any]:
    import torch

    stages.mark("import torch")
    from side_by_side import spec_namespace, torch_step

    run = torch_step(
        spec_namespace(opts["spec"]), mode, opts["batch"], opts["resolution"], "cpu", "float32", channels_last
    )
    stages.mark("model, optimizer, batch")
    run()
    stages.mark("first step")
    for _ in range(opts["steps"]):
        run()
    stages.mark(f"steady state ({opts['steps']} steps)")
    return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def _worker(conn, engine: str, model: str, mode: str, opts: dict[str, Any]) -> None:
    try:
        stages = Stages()
        import numpy  # noqa: F401

        stages.mark("python + numpy")
        if engine == "jax":
            info = _jax_stages(model, mode, opts, stages)
        else:
            info = _torch_stages(mode, opts, stages, engine == "torch_channels_last")
        info["imported"] = [m for m in HEAVY_MODULES if m in sys.modules]
        info["process_peak_mb"] = stages.process_peak_mb
        from regnet_jax.core.memory import release_free_heap  # no other import: regnet_jax/core/__init__ is empty

        release_free_heap()  # what the C heap held free at the end (resident, but reusable)
        stages.mark("then malloc_trim(0)")
        conn.send(("ok", stages.rows, info))
    except Exception as e:
        conn.send(("error", f"{engine}: {type(e).__name__}: {e}", None))


def measure(model: str, mode: str, engine: str, opts: dict[str, Any]) -> dict[str, Any]:
    """One engine's stages for one model and mode, in a fresh process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(child, engine, model, mode, opts), daemon=True)
    proc.start()
    status, rows, info = parent.recv()
    proc.join(timeout=60)
    if status == "error":
        raise RuntimeError(rows)
    return {"model": model, "mode": mode, "engine": engine, "batch": opts["batch"], "stages": rows, **info}


def _xla_note(info: dict[str, Any]) -> str:
    return (
        f"XLA memory_analysis: arguments {info.get('argument', 0):.0f}, outputs {info.get('output', 0):.0f} (aliased to "
        f"donated arguments {info.get('alias', 0):.0f}), temp {info.get('temp', 0):.0f}; executable {info.get('executable', 0):.1f} MB"
    )


def format_result(r: dict[str, Any]) -> str:
    lines = [
        f"{r['engine']} {r['model']} {r['mode']} b{r['batch']} @ {r['resolution']} px: process peak {r['process_peak_mb']:.0f} MB; "
        f"imported: {', '.join(r['imported']) or '-'}"
    ]
    if r.get("memory_analysis"):
        lines.append("  " + _xla_note(r["memory_analysis"]))
    lines.append(f"  {'stage':<36} {'RSS':>6} {'anon':>6} {'file':>6} {'peak':>6} {'C heap in use':>13}")
    for s in r["stages"]:
        lines.append(
            f"  {s['stage']:<36} {s['rss_mb']:6.0f} {s['anon_mb']:6.0f} {s['file_mb']:6.0f} {s['peak_mb']:6.0f} {s.get('heap_in_use_mb', 0):13.0f}"
        )
    return "\n".join(lines)


def markdown(results: list[dict[str, Any]]) -> str:
    """One table: a row per engine and stage, MB: the resident set after the stage (anonymous / file-backed), the
    stage's own peak, and the C heap's bytes in use (malloc)."""
    lines = [
        "| model, mode | engine | stage | RSS after | anon / file | stage peak | C heap in use | notes |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for s in r["stages"]:
            notes = [_xla_note(s["xla"])] if s.get("xla") else []
            if s["stage"].startswith("steady"):
                tf = [m for m in r["imported"] if m in ("tensorflow", "tensorflow_datasets", "clu")]
                notes.append(f"imported: {', '.join(tf)}" if tf else "no TensorFlow, TFDS or clu imported")
            lines.append(
                f"| {r['model']} {r['mode']} b{r['batch']} {r['resolution']} px | {r['engine']} | {s['stage']} | "
                f"{s['rss_mb']:.0f} | {s['anon_mb']:.0f} / {s['file_mb']:.0f} | {s['peak_mb']:.0f} | "
                f"{s.get('heap_in_use_mb', 0):.0f} | {'; '.join(notes)} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="regnety_400mf")
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--engines", default="jax,torch_channels_last")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=0, help="0: the config's (224)")
    p.add_argument("--steps", type=int, default=3, help="steady-state steps after the first")
    p.add_argument(
        "--keep_free_heap",
        action="store_true",
        help="regnet_jax does not release the compiler's free memory after compiling (as before it did)",
    )
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--markdown", default="", help="also write the table to this file")
    args = p.parse_args()

    from side_by_side import plain_spec

    from regnet_jax.models import model_spec, zoo

    results = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        config = zoo.get_config(model)
        opts = dict(batch=args.batch, resolution=args.resolution or int(config.resolution), steps=args.steps,
                    spec=plain_spec(model_spec(config.model)), keep_free_heap=args.keep_free_heap)  # fmt: skip
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
                results.append(dict(measure(model, mode, engine, opts), resolution=opts["resolution"]))
                print(format_result(results[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results) + "\n")


if __name__ == "__main__":
    main()
