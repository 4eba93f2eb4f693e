"""Analytic flops / params / acts of an AnyNet, by pycls's counting rules (reference.md §3).

flops are multiply-adds; BN counts 2*C params (running statistics are not parameters); acts are the outputs of
every conv, plus the max-pool output of ResNet stems and the FC output. Counted from the ``ModelSpec`` alone
(no Flax), so it is cheap enough for sampling millions of sweep candidates.

CLI::

    python -m regnet_jax.complexity --config=configs/regnetx_400mf.py [--json] [--resolution=N]
    python -m regnet_jax.complexity --all           # the zoo table
    python -m regnet_jax.complexity --config=configs/regnetx_400mf.py --config.model.depth=20
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from regnet_jax.cli import config_path
from regnet_jax.models.spec import ModelSpec, model_spec


@dataclasses.dataclass
class Counter:
    """Running (h, w, flops, params, acts), advanced layer by layer."""

    h: int
    w: int
    flops: int = 0
    params: int = 0
    acts: int = 0

    def conv(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> None:
        self.h, self.w = (self.h - 1) // stride + 1, (self.w - 1) // stride + 1
        hw = self.h * self.w
        self.flops += k * k * c_in * c_out * hw // groups + (c_out * hw if bias else 0)
        self.params += k * k * c_in * c_out // groups + (c_out if bias else 0)
        self.acts += c_out * hw

    def bn(self, c: int) -> None:
        self.params += 2 * c

    def pool(self, c: int, stride: int) -> None:
        self.h, self.w = (self.h - 1) // stride + 1, (self.w - 1) // stride + 1
        self.acts += c * self.h * self.w

    def se(self, w_b: int, w_se: int) -> None:
        h, w = self.h, self.w
        self.h = self.w = 1
        self.conv(w_b, w_se, 1, bias=True)
        self.conv(w_se, w_b, 1, bias=True)
        self.h, self.w = h, w

    def linear(self, c_in: int, c_out: int) -> None:
        self.flops += c_in * c_out + c_out
        self.params += c_in * c_out + c_out
        self.acts += c_out

    def as_dict(self) -> dict[str, int]:
        return {"flops": self.flops, "params": self.params, "acts": self.acts}


def _count_block(cx: Counter, spec: ModelSpec, blk: dict[str, int]) -> None:
    w_in, w_out, s = blk["w_in"], blk["w_out"], blk["stride"]
    if spec.block_type == "vanilla_block":
        cx.conv(w_in, w_out, 3, s), cx.bn(w_out), cx.conv(w_out, w_out, 3), cx.bn(w_out)
        return
    if w_in != w_out or s != 1:
        h, w = cx.h, cx.w
        cx.conv(w_in, w_out, 1, s), cx.bn(w_out)
        cx.h, cx.w = h, w
    if spec.block_type == "res_basic_block":
        cx.conv(w_in, w_out, 3, s), cx.bn(w_out), cx.conv(w_out, w_out, 3), cx.bn(w_out)
        return
    w_b, groups = blk["w_b"], blk["groups"]
    cx.conv(w_in, w_b, 1), cx.bn(w_b)
    cx.conv(w_b, w_b, 3, s, groups), cx.bn(w_b)
    if blk["w_se"]:
        cx.se(w_b, blk["w_se"])
    cx.conv(w_b, w_out, 1), cx.bn(w_out)


def count(spec_or_model: ModelSpec | Any, resolution: int = 224) -> dict[str, int]:
    """``{'flops', 'params', 'acts'}`` of a ``ModelSpec`` or a ``config.model`` at ``resolution`` px."""
    spec = spec_or_model if isinstance(spec_or_model, ModelSpec) else model_spec(spec_or_model)
    cx = Counter(resolution, resolution)
    if spec.stem_type == "res_stem_in":
        cx.conv(3, spec.stem_w, 7, 2), cx.bn(spec.stem_w), cx.pool(spec.stem_w, 2)
    else:
        cx.conv(3, spec.stem_w, 3, 2 if spec.stem_type == "simple_stem_in" else 1), cx.bn(spec.stem_w)
    for blk in spec.blocks():
        _count_block(cx, spec, blk)
    cx.linear(spec.widths[-1], spec.num_classes)
    return cx.as_dict()


def zoo_table(resolution: int = 224) -> list[dict[str, Any]]:
    """One row per zoo model: name, flops, params, acts."""
    from regnet_jax import zoo

    return [{"model": name, **count(e.model, resolution)} for name, e in zoo.ZOO.items()]


def format_row(name: str, cx: dict[str, int]) -> str:
    return f"{name:<18} {cx['flops'] / 1e9:>8.3f} {cx['params'] / 1e6:>9.3f} {cx['acts'] / 1e6:>8.3f}   {cx['flops']:>15,} {cx['params']:>12,} {cx['acts']:>11,}"


HEADER = f"{'model':<18} {'GFLOPs':>8} {'Mparams':>9} {'Macts':>8}   {'flops (mult-adds)':>15} {'params':>12} {'acts':>11}"


def main(argv: list[str]) -> None:
    del argv
    flags = _FLAGS
    resolution = flags.resolution
    if flags.all:
        rows = zoo_table(resolution or 224)
        if flags.json:
            print(json.dumps(rows))
            return
        print(f"pycls complexity at {resolution or 224} px (flops = multiply-adds)")
        print(HEADER)
        for r in rows:
            print(format_row(r["model"], r))
        return
    cfg = flags.config
    if cfg is None:
        raise SystemExit("give --config=configs/<model>.py, or --all for the zoo table")
    resolution = resolution or cfg.get("resolution", 224)
    cx = count(cfg.model, resolution)
    if flags.json:
        print(json.dumps(cx))
        return
    print(f"{config_path(flags)} at {resolution} px")
    print(HEADER)
    print(format_row(cfg.model.type, cx))


if __name__ == "__main__":
    from absl import flags
    from regnet_jax.cli import define_config_flag, run

    define_config_flag("config", "A config file, e.g. configs/regnetx_400mf.py[:25ep].")
    flags.DEFINE_bool("json", False, "Print one JSON object {flops, params, acts} and nothing else.")
    flags.DEFINE_bool("all", False, "Print the table of the zoo models.")
    flags.DEFINE_integer("resolution", 0, "Count at this input size instead of config.resolution.")
    _FLAGS = flags.FLAGS
    run(main)
