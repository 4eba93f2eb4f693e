"""Analytic flops / params / acts of an AnyNet, by pycls's counting rules (pycls/core/net.py: complexity and the *_cx functions of pycls/models/blocks.py; docs/fidelity.md#complexity-counting).

flops are multiply-adds; BN counts 2*C params (running statistics are not parameters); acts are the outputs of
every conv, plus the max-pool output of ResNet stems and the FC output. Counted from the ``ModelSpec`` alone
(no Flax), so it is cheap enough for sampling millions of sweep candidates.

The command line is ``python -m regnet_jax.complexity``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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


def _count_block(counter: Counter, spec: ModelSpec, blk: dict[str, int]) -> None:
    c, w_in, w_out, s = counter, blk["w_in"], blk["w_out"], blk["stride"]
    if spec.block_type == "vanilla_block":
        c.conv(w_in, w_out, 3, s), c.bn(w_out), c.conv(w_out, w_out, 3), c.bn(w_out)
        return
    if w_in != w_out or s != 1:
        h, w = c.h, c.w
        c.conv(w_in, w_out, 1, s), c.bn(w_out)
        c.h, c.w = h, w
    if spec.block_type == "res_basic_block":
        c.conv(w_in, w_out, 3, s), c.bn(w_out), c.conv(w_out, w_out, 3), c.bn(w_out)
        return
    w_b, groups = blk["w_b"], blk["groups"]
    c.conv(w_in, w_b, 1), c.bn(w_b)
    c.conv(w_b, w_b, 3, s, groups), c.bn(w_b)
    if blk["w_se"]:
        c.se(w_b, blk["w_se"])
    c.conv(w_b, w_out, 1), c.bn(w_out)


def count(spec_or_model: ModelSpec | Any, resolution: int = 224) -> dict[str, int]:
    """``{'flops', 'params', 'acts'}`` of a ``ModelSpec`` or a ``config.model`` at ``resolution`` px."""
    spec = spec_or_model if isinstance(spec_or_model, ModelSpec) else model_spec(spec_or_model)
    counter = Counter(resolution, resolution)
    if spec.stem_type == "res_stem_in":
        counter.conv(3, spec.stem_w, 7, 2), counter.bn(spec.stem_w), counter.pool(spec.stem_w, 2)
    else:
        counter.conv(3, spec.stem_w, 3, 2 if spec.stem_type == "simple_stem_in" else 1), counter.bn(spec.stem_w)
    for blk in spec.blocks():
        _count_block(counter, spec, blk)
    counter.linear(spec.widths[-1], spec.num_classes)
    return counter.as_dict()


def zoo_table(resolution: int = 224) -> list[dict[str, Any]]:
    """One row per zoo model: name, flops, params, acts."""
    from regnet_jax.models.zoo import ZOO

    return [{"model": name, **count(e.model, resolution)} for name, e in ZOO.items()]
