"""Per-layer convolution timings: each lowering's forward, input gradient and weight gradient, beside PyTorch.

    python benchmarks/conv_layers.py --model=regnety_400mf --batch=32                 # every distinct conv layer
    python benchmarks/conv_layers.py --layers=28x104x104k3s1g13 --impls=xla,blocked,vjp --torch

A layer is HxC_INxC_OUTkKsSgG (input size, channels, kernel, stride, groups). For each layer and lowering
(regnet_jax.models.conv: xla, blocked, vjp) the forward, the input gradient and the weight gradient are jitted
separately and timed in this process, lowerings interleaved; PyTorch channels_last (``--torch``, its own process,
the same threads) times the forward and forward + backward. Reported: the median of ``--reps`` runs of the process
CPU time (robust to load from other processes; with N threads it is N times the wall time at best) and the minimum
wall time, in ms. Results agree with the native op (tests/test_layers.py); here only speed is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

LAYER = re.compile(r"^(\d+)x(\d+)x(\d+)k(\d+)s(\d+)g(\d+)$")


def parse_layer(text: str) -> tuple[int, int, int, int, int, int]:
    """(h, c_in, c_out, k, stride, groups) from 'HxC_INxC_OUTkKsSgG'."""
    m = LAYER.match(text)
    if not m:
        raise SystemExit(f"error: layer {text!r} is invalid: use HxC_INxC_OUTkKsSgG, e.g. 28x104x104k3s1g13")
    return tuple(int(v) for v in m.groups())  # type: ignore[return-value]


def layer_name(layer: tuple[int, int, int, int, int, int]) -> str:
    """'HxC_INxC_OUTkKsSgG', the inverse of ``parse_layer``."""
    h, c_in, c_out, k, stride, groups = layer
    return f"{h}x{c_in}x{c_out}k{k}s{stride}g{groups}"


def model_layers(name: str, resolution: int = 224) -> list[tuple[int, int, int, int, int, int]]:
    """The distinct convolution layers of a zoo model's trunk (stem and blocks), in order."""
    from regnet_jax.models import model_spec, zoo

    spec = model_spec(zoo.get_config(name).model)
    k, s = {"simple_stem_in": (3, 2), "res_stem_in": (7, 2), "res_stem_cifar": (3, 1)}[spec.stem_type]
    layers = [(resolution, 3, spec.stem_w, k, s, 1)]
    h = (resolution - 1) // s + 1 if spec.stem_type != "res_stem_in" else resolution // 4
    for blk in spec.blocks():
        w_in, w_out, stride, h_in = blk["w_in"], blk["w_out"], blk["stride"], h
        if spec.block_type == "res_bottleneck_block":
            w_b = blk["w_b"]
            layers += [(h, w_in, w_b, 1, 1, 1), (h, w_b, w_b, 3, stride, blk["groups"])]
            h = (h - 1) // stride + 1
            layers.append((h, w_b, w_out, 1, 1, 1))
        else:
            layers.append((h, w_in, w_out, 3, stride, 1))
            h = (h - 1) // stride + 1
            layers.append((h, w_out, w_out, 3, 1, 1))
        if w_in != w_out or stride != 1:
            layers.append((h_in, w_in, w_out, 1, stride, 1))
    return list(dict.fromkeys(layers))


def _time(fn: Callable[[], Any], reps: int, block: Callable[[Any], Any]) -> dict[str, float]:
    block(fn())
    cpu, wall = [], []
    for _ in range(reps):
        c, w = time.process_time(), time.perf_counter()
        block(fn())
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return {"cpu_ms": statistics.median(cpu) * 1e3, "wall_min_ms": min(wall) * 1e3}


def jax_layer(layer, batch: int, impls: list[str], reps: int) -> dict[str, dict[str, dict[str, float]]]:
    """{impl: {fwd|input grad|weight grad: times}} for one layer, the lowerings interleaved pass by pass."""
    import jax

    from regnet_jax.models import conv

    h, c_in, c_out, k, stride, groups = layer
    kx, kk, kd = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (batch, h, h, c_in))
    kernel = jax.random.normal(kk, (k, k, c_in // groups, c_out))
    ho = (h + 2 * ((k - 1) // 2) - k) // stride + 1
    dy = jax.random.normal(kd, (batch, ho, ho, c_out))
    passes = {}
    for impl in impls:
        f = lambda x, kernel, impl=impl: conv.conv2d(x, kernel, stride, groups, impl=impl)  # noqa: E731
        vjp = lambda x, kernel, dy, f=f: jax.vjp(f, x, kernel)[1](dy)  # noqa: E731
        passes[impl] = {
            "fwd": jax.jit(f),
            "input grad": jax.jit(lambda x, kernel, dy, vjp=vjp: vjp(x, kernel, dy)[0]),
            "weight grad": jax.jit(lambda x, kernel, dy, vjp=vjp: vjp(x, kernel, dy)[1]),
        }
    out: dict[str, dict[str, dict[str, float]]] = {impl: {} for impl in impls}
    for name in ("fwd", "input grad", "weight grad"):
        for impl in impls:
            args = (x, kernel) if name == "fwd" else (x, kernel, dy)
            out[impl][name] = _time(lambda: passes[impl][name](*args), reps, jax.block_until_ready)
    return out


def torch_layer(layer, batch: int, reps: int) -> dict[str, dict[str, float]]:
    """PyTorch channels_last forward and forward + backward (input and weight gradients) of one layer."""
    import torch

    h, c_in, c_out, k, stride, groups = layer
    fmt = torch.channels_last
    m = torch.nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False).to(memory_format=fmt)
    x = torch.randn(batch, c_in, h, h).to(memory_format=fmt).requires_grad_()
    dy = torch.randn_like(m(x))

    def fwd():
        with torch.no_grad():
            return m(x)

    def fwd_bwd():
        x.grad, m.weight.grad = None, None
        m(x).backward(dy)

    return {"fwd": _time(fwd, reps, lambda _: None), "fwd+bwd": _time(fwd_bwd, reps, lambda _: None)}


def markdown(results: list[dict[str, Any]], impls: list[str]) -> str:
    """One row per layer: each lowering's forward / input grad / weight grad CPU ms, PyTorch's forward and fwd+bwd."""
    head = "| layer (HxC_INxC_OUTkKsSgG) | " + " | ".join(f"{i}: fwd / in grad / w grad" for i in impls)
    has_torch = any(r["torch"] for r in results)
    lines = [
        head + (" | PyTorch: fwd / fwd+bwd |" if has_torch else " |"),
        "|---|" + "---:|" * (len(impls) + has_torch),
    ]
    for r in results:
        cells = [
            " / ".join(f"{r['jax'][i][p]['cpu_ms']:.1f}" for p in ("fwd", "input grad", "weight grad")) for i in impls
        ]
        if has_torch:
            cells.append(f"{r['torch']['fwd']['cpu_ms']:.1f} / {r['torch']['fwd+bwd']['cpu_ms']:.1f}")
        lines.append(f"| {r['layer']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(t: dict[str, float]) -> str:
    return f"{t['cpu_ms']:7.1f} / {t['wall_min_ms']:6.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="regnety_400mf", help="time every distinct conv layer of this zoo model")
    p.add_argument("--layers", default="", help="or these comma-separated layers (HxC_INxC_OUTkKsSgG)")
    p.add_argument(
        "--kinds", default="", help="only layers with these kernel sizes/groups, e.g. 'grouped,1x1,dense3x3'"
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--impls",
        default="blocked,vjp",
        help="regnet_jax.models.conv lowerings to time (xla is very slow for grouped layers)",
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--torch", action="store_true", help="also time PyTorch channels_last (in its own process)")
    p.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument(
        "--markdown", default="", help="also write a table (CPU ms per pass, one row per layer) to this file"
    )
    args = p.parse_args()
    layers = [parse_layer(t) for t in args.layers.split(",") if t] or model_layers(args.model)
    kinds = {k.strip() for k in args.kinds.split(",") if k.strip()}

    def kind(layer):
        return "1x1" if layer[3] == 1 else ("grouped" if layer[5] > 1 else f"dense{layer[3]}x{layer[3]}")

    layers = [layer for layer in layers if not kinds or kind(layer) in kinds]
    if args.torch_worker:
        print(json.dumps([torch_layer(layer, args.batch, args.reps) for layer in layers]))
        return
    torch_times: list[Any] = [None] * len(layers)
    if args.torch:
        spec = ",".join(map(layer_name, layers))
        cmd = [
            sys.executable,
            __file__,
            "--torch_worker",
            f"--layers={spec}",
            f"--batch={args.batch}",
            f"--reps={args.reps}",
        ]
        torch_times = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        )
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    print(f"batch {args.batch}, {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.2f}; "
          "ms as median CPU time / min wall time")  # fmt: skip
    results = []
    for layer, tt in zip(layers, torch_times):
        h, ci, co, k, s, g = layer
        times = jax_layer(layer, args.batch, impls, args.reps)
        results.append({"layer": layer_name(layer), "jax": times, "torch": tt})
        line = f"{h:>3}x{h:<3} {ci:>4}->{co:<4} k{k} s{s} g{g:<3}"
        for impl in impls:
            line += f" | {impl}: " + ", ".join(f"{n} {_fmt(t)}" for n, t in times[impl].items())
        if tt:
            line += " | torch: " + ", ".join(f"{n} {_fmt(t)}" for n, t in tt.items())
        print(line, flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results, impls) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
