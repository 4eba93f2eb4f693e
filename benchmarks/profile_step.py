"""Where a CPU train step's time goes: regnet_jax (jax.profiler) beside PyTorch (torch.profiler), per layer kind.

    python benchmarks/profile_step.py --models=regnety_400mf --batch=32              # both engines, all cores
    python benchmarks/profile_step.py --models=regnety_400mf --threads=1 --markdown  # one core each: CPU work

Each engine runs in its own process (as in side_by_side.py), compiles/builds the same train step as the side-by-side
on the same synthetic batch, runs warm-up steps, then profiles ``--steps`` steps. regnet_jax's time per kind is the
sum of the XLA:CPU thunk events of the trace (one per HLO op or fusion), attributed through the compiled HLO's op
metadata (the Flax module path and, for the custom-VJP lowering, ``conv_dgrad`` / ``conv_wgrad``); PyTorch's is the
sum of its top-level operator events, attributed by operator name and weight shape. Labels assume RegNet bottleneck
blocks (a, c, proj: 1x1; b: 3x3). With ``--threads=1`` each engine is pinned to one core: the times are then the CPU
work of each kind, and load from other processes only stretches them (the sums are compared with the step's CPU time).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------- regnet_jax: HLO metadata -> layer kind

_COMPUTATION = re.compile(r"^(ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+) .*?\b([a-z][a-z\-]*)\(")


def parse_hlo(text: str) -> tuple[dict[str, dict[str, dict[str, str]]], str]:
    """{computation: {instruction: {shape, opcode, op_name, calls}}} and the entry computation's name."""
    comps: dict[str, dict[str, dict[str, str]]] = {}
    entry, current = "", None
    for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(2)
            comps[current] = {}
            entry = current if m.group(1) else entry
            continue
        m = _INSTRUCTION.match(line)
        if m and current is not None:
            op_name = re.search(r'op_name="([^"]*)"', line)
            calls = re.search(r"calls=%([\w.\-]+)", line)
            comps[current][m.group(1)] = dict(
                shape=m.group(2),
                opcode=m.group(3),
                op_name=op_name.group(1) if op_name else "",
                calls=calls.group(1) if calls else "",
            )
    return comps, entry


def op_metadata(comps: dict, entry: str, thunk: str) -> tuple[str, str, str]:
    """(op_name, opcode, shape) that best describe an executed thunk: the convolution or dot inside a fusion if any,
    else the fusion's own metadata, else its root's; the opcode is 'convolution' / 'dot' if the fusion holds one."""
    inst = comps.get(entry, {}).get(thunk)
    if inst is None:
        return "", "", ""
    inner = list(comps.get(inst["calls"], {}).values())
    heavy = [i for i in inner + [inst] if i["opcode"] in ("convolution", "dot")]
    opcode = heavy[0]["opcode"] if heavy else inst["opcode"]
    for i in heavy + [inst] + inner[::-1]:
        if i["op_name"]:
            return i["op_name"], opcode, inst["shape"]
    return "", opcode, inst["shape"]


_CONV_MODULES = {"stem/conv": "stem conv", "f/a": "1x1 conv", "f/c": "1x1 conv", "proj": "1x1 conv", "f/b": "3x3 conv"}


def jax_kind(op_name: str, opcode: str, shape: str) -> str:
    """The layer kind and pass ('fwd', 'bwd', 'input grad', 'weight grad') of an HLO op from its metadata.

    XLA drops the metadata of the convolutions it builds for weight gradients: an unnamed convolution is one (of the
    stem if its kernel-shaped output has 3 input channels)."""
    if not op_name and opcode == "convolution":
        return ("stem conv" if re.match(r"^\w+\[3,", shape) else "3x3 conv") + " weight grad"
    if "AnyNet)" not in op_name:
        if "jvp(" in op_name:
            return "loss"
        return "optimizer update" if op_name else "other (no metadata)"
    module = re.search(r"AnyNet\)+/(.*)", op_name)
    direction = "bwd" if "transpose(jvp(AnyNet))" in op_name else "fwd"
    if module is None:
        return f"other {direction}"
    path = re.sub(r"^s\d+/b\d+/", "", module.group(1))
    if "/conv_dgrad" in path:
        direction = "input grad"
    elif "/conv_wgrad" in path:
        direction = "weight grad"
    if path.startswith("head"):
        return f"head {direction}"
    if path.startswith("f/se"):
        return f"SE {direction}"
    if re.match(r"^(stem/bn|bn|f/[abc]_bn)/", path):
        return f"BatchNorm {direction}"
    for module, kind in _CONV_MODULES.items():
        if path.startswith(module + "/"):
            return f"{kind} {direction}"
    if ".act/" in path or path.startswith("add"):
        return f"activation / residual {direction}"
    return f"other {direction}"


def jax_profile(name: str, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    """Profile regnet_jax's train step (the trainer's, one device) and sum the thunk times per kind."""
    import jax

    from regnet_jax.benchmarking import timing
    from regnet_jax.models import zoo

    prep = timing.prepare(zoo.get_config(name), mode="train", batch=batch, num_devices=1)
    comps, entry = parse_hlo(prep.compiled.as_text())
    for _ in range(warmup):
        jax.block_until_ready(prep.run())
    logdir = tempfile.mkdtemp(prefix="profile_step_")
    jax.profiler.start_trace(logdir)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        jax.block_until_ready(prep.run())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    jax.profiler.stop_trace()
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    kinds: collections.Counter = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            for event in line.events:
                if event.stats and "hlo_op" in dict(event.stats):
                    kinds[jax_kind(*op_metadata(comps, entry, event.name))] += event.duration_ns / 1e6 / steps
    return dict(engine="regnet_jax", kinds=dict(kinds), wall_ms=wall * 1e3 / steps, cpu_ms=cpu * 1e3 / steps)


# ---------------------------------------------------------------- PyTorch: operator events -> layer kind


def torch_conv_kind(x_shape: list[int], w_shape: list[int]) -> str:
    """stem / 1x1 / 3x3 / SE from a convolution's input (NCHW) and weight (O, I/groups, k, k) shapes."""
    if x_shape[1] == 3:
        return "stem conv"
    if x_shape[2] == 1 and x_shape[3] == 1:
        return "SE"
    return "1x1 conv" if w_shape[2] == 1 else "3x3 conv"


_TORCH_KINDS = {
    "aten::batch_norm": "BatchNorm fwd",
    "NativeBatchNormBackward0": "BatchNorm bwd",
    "aten::relu": "activation / residual fwd",
    "aten::relu_": "activation / residual fwd",
    "aten::add": "activation / residual fwd",
    "aten::add_": "activation / residual fwd",
    "ReluBackward0": "activation / residual bwd",
    "AddBackward0": "activation / residual bwd",
    "aten::mean": "SE fwd",
    "aten::sigmoid": "SE fwd",
    "aten::mul": "SE fwd",
    "MeanBackward1": "SE bwd",
    "SigmoidBackward0": "SE bwd",
    "MulBackward0": "SE bwd",
    "aten::linear": "head fwd",
    "AddmmBackward0": "head bwd",
    "TBackward0": "head bwd",
    "aten::cross_entropy_loss": "loss",
    "NllLossBackward0": "loss",
    "LogSoftmaxBackward0": "loss",
    "Optimizer.step#SGD.step": "optimizer update",
    "Optimizer.zero_grad#SGD.zero_grad": "optimizer update",
    "torch::autograd::AccumulateGrad": "optimizer update",
}


def _descendants(event):
    for child in event.cpu_children:
        yield child
        yield from _descendants(child)


def torch_kind(event) -> str:
    """The layer kind and pass of a top-level PyTorch profiler event (forward op or autograd node)."""
    name = event.name.removeprefix("autograd::engine::evaluate_function: ")
    if name in ("aten::conv2d", "aten::convolution"):
        return torch_conv_kind(*event.input_shapes[:2]) + " fwd"
    if name == "ConvolutionBackward0":
        for e in _descendants(event):
            if e.name == "aten::convolution_backward" and len(e.input_shapes) > 2:
                return torch_conv_kind(e.input_shapes[1], e.input_shapes[2]) + " bwd"
        return "conv bwd (unknown)"
    return _TORCH_KINDS.get(name, "other")


def torch_profile(name: str, batch: int, steps: int, warmup: int, threads: int) -> dict[str, Any]:
    """Profile PyTorch channels_last's train step (side_by_side.torch_step) and sum top-level op times per kind."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    import torch
    from side_by_side import torch_step
    from torch.profiler import ProfilerActivity, profile

    from regnet_jax.models import model_spec, zoo

    torch.set_num_threads(threads)
    config = zoo.get_config(name)
    run = torch_step(model_spec(config.model), "train", batch, config.resolution, "cpu", "float32", channels_last=True)
    for _ in range(warmup):
        run()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    kinds: collections.Counter = collections.Counter()
    for event in prof.events():
        if event.cpu_parent is None:
            kinds[torch_kind(event)] += event.cpu_time_total / 1e3 / steps
    return dict(engine="torch channels_last", kinds=dict(kinds), wall_ms=wall * 1e3 / steps, cpu_ms=cpu * 1e3 / steps)


# ---------------------------------------------------------------- driver


def _worker(conn, engine: str, args: dict[str, Any]) -> None:
    try:
        if args["pin"]:
            os.sched_setaffinity(0, args["pin"])  # before XLA or OpenMP start their thread pools
        if engine == "jax":
            out = jax_profile(args["model"], args["batch"], args["steps"], args["warmup"])
        else:
            out = torch_profile(
                args["model"], args["batch"], args["steps"], args["warmup"], len(args["pin"]) or args["threads"]
            )
    except Exception as e:  # reported by the parent
        import traceback

        out = dict(error=f"{engine}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    conn.send(out)


def run_engine(engine: str, args: dict[str, Any]) -> dict[str, Any]:
    """One engine's profile, in a fresh process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(child, engine, args), daemon=True)
    proc.start()
    out = parent.recv()
    proc.join(timeout=60)
    if "error" in out:
        raise RuntimeError(out["error"])
    return out


def _order(kinds: set[str]) -> list[str]:
    passes = ("fwd", "input grad", "weight grad", "bwd")

    def key(k: str):
        base = next((k[: -len(p) - 1] for p in passes if k.endswith(" " + p)), k)
        return (base, next((i for i, p in enumerate(passes) if k.endswith(" " + p)), len(passes)))

    return sorted(kinds, key=key)


def table(model: str, results: list[dict[str, Any]]) -> str:
    """A markdown table: ms per step of each kind for each engine, and each engine's share."""
    kinds = _order({k for r in results for k in r["kinds"]})
    head = "| " + model + " | " + " | ".join(f"{r['engine']} ms | share" for r in results) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(results)]
    totals = [sum(r["kinds"].values()) for r in results]
    for k in kinds:
        cells = []
        for r, tot in zip(results, totals):
            v = r["kinds"].get(k)
            cells.append(f"{v:.1f} | {v / tot:.1%}" if v else "- | -")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| **sum of op times** | " + " | ".join(f"**{t:.0f}** | 100%" for t in totals) + " |")
    lines.append(
        "| step wall time / CPU time | "
        + " | ".join(f"{r['wall_ms']:.0f} / {r['cpu_ms']:.0f} |" for r in results)
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="regnety_400mf", help="comma-separated zoo names")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--threads", type=int, default=0, help="0: all usable cores, unpinned; N: pin each engine to N cores"
    )
    p.add_argument("--engines", default="jax,torch")
    p.add_argument("--json", default="", help="also write the per-kind times to this JSON file")
    p.add_argument("--markdown", default="", help="also write the tables (with their load averages) to this file")
    args = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    pin = cores[: args.threads] if args.threads else []
    print(
        f"load average {os.getloadavg()[0]:.2f}; {'pinned to cores ' + str(pin) if pin else f'{len(cores)} cores, unpinned'}",
        flush=True,
    )
    everything, tables = {}, []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        opts = dict(model=model, batch=args.batch, steps=args.steps, warmup=args.warmup, pin=pin, threads=len(cores))
        load = os.getloadavg()[0]
        results = [run_engine(e.strip(), opts) for e in args.engines.split(",") if e.strip()]
        everything[model] = results
        where = f"pinned to {len(pin)} core(s)" if pin else f"{len(cores)} cores"
        title = f"{model}, batch {args.batch}, 224 px, float32 train step, ms per step, {where}; load average {load:.2f} -> {os.getloadavg()[0]:.2f}"
        tables.append(f"{title}\n\n{table(model, results)}\n")
        print("\n" + tables[-1], flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(tables))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=1)


if __name__ == "__main__":
    main()
