"""A minimal PyTorch AnyNet/RegNet built from a regnet_jax ``ModelSpec``: the same widths, groups, SE and head as
pycls (pycls/models/anynet.py and pycls/models/blocks.py; docs/fidelity.md#block-structure), with pycls's module names, so that ``regnet_jax.weights.layouts.to_pycls(variables)`` loads into it
with ``load_state_dict`` and the side-by-side compares the two frameworks on the identical architecture.

Only what the benchmarks need: the simple/ResNet/CIFAR stems and the bottleneck, basic and vanilla blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # only read: importing regnet_jax would bring jax and flax into PyTorch's process
    from regnet_jax.models.spec import ModelSpec

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU}


def _conv(w_in: int, w_out: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(w_in, w_out, k, stride, (k - 1) // 2, groups=groups, bias=False)


class Stem(nn.Module):
    """conv, bn, act (+ 3x3 max-pool stride 2 for the ResNet stem)."""

    def __init__(self, spec: ModelSpec, act: type[nn.Module]):
        super().__init__()
        k, s = {"simple_stem_in": (3, 2), "res_stem_in": (7, 2), "res_stem_cifar": (3, 1)}[spec.stem_type]
        self.conv, self.bn, self.af = _conv(3, spec.stem_w, k, s), nn.BatchNorm2d(spec.stem_w), act()
        self.pool = nn.MaxPool2d(3, 2, 1) if spec.stem_type == "res_stem_in" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.af(self.bn(self.conv(x))))


class SE(nn.Module):
    def __init__(self, w: int, w_se: int, act: type[nn.Module]):
        super().__init__()
        self.f_ex = nn.Sequential(nn.Conv2d(w, w_se, 1), act(), nn.Conv2d(w_se, w, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f_ex(x.mean((2, 3), keepdim=True))


class Transform(nn.Module):
    """pycls BottleneckTransform (a, a_bn, b, b_bn, [se], c, c_bn), BasicTransform or VanillaBlock (a, a_bn, b, b_bn)."""

    def __init__(self, spec: ModelSpec, blk: dict, act: type[nn.Module]):
        super().__init__()
        w_in, w_out, s = blk["w_in"], blk["w_out"], blk["stride"]
        self.bottleneck = spec.block_type == "res_bottleneck_block"
        self.vanilla = spec.block_type == "vanilla_block"
        if self.bottleneck:
            w_b = blk["w_b"]
            self.a, self.a_bn = _conv(w_in, w_b, 1), nn.BatchNorm2d(w_b)
            self.b, self.b_bn = _conv(w_b, w_b, 3, s, blk["groups"]), nn.BatchNorm2d(w_b)
            self.se = SE(w_b, blk["w_se"], act) if blk["w_se"] else None
            self.c, self.c_bn = _conv(w_b, w_out, 1), nn.BatchNorm2d(w_out)
        else:
            self.a, self.a_bn = _conv(w_in, w_out, 3, s), nn.BatchNorm2d(w_out)
            self.b, self.b_bn = _conv(w_out, w_out, 3), nn.BatchNorm2d(w_out)
        self.af = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.af(self.a_bn(self.a(x)))
        x = self.b_bn(self.b(x))
        if not self.bottleneck:
            return self.af(x) if self.vanilla else x
        x = self.af(x)
        if self.se is not None:
            x = self.se(x)
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    """act(shortcut(x) + f(x)); the shortcut is proj + bn iff the width or resolution changes."""

    def __init__(self, spec: ModelSpec, blk: dict, act: type[nn.Module]):
        super().__init__()
        w_in, w_out, s = blk["w_in"], blk["w_out"], blk["stride"]
        self.has_proj = w_in != w_out or s != 1
        if self.has_proj:
            self.proj, self.bn = _conv(w_in, w_out, 1, s), nn.BatchNorm2d(w_out)
        self.f = Transform(spec, blk, act)
        self.af = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.bn(self.proj(x)) if self.has_proj else x
        return self.af(shortcut + self.f(x))


class AnyNet(nn.Module):
    """stem, s1..sN (blocks b1..bd), head.fc, named as in pycls."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        act = _ACTIVATIONS[spec.activation]
        self.stem = Stem(spec, act)
        stages: dict[int, nn.Module] = {}
        for blk in spec.blocks():
            stage = stages.setdefault(blk["stage"], nn.Module())
            block = Transform(spec, blk, act) if spec.block_type == "vanilla_block" else ResBlock(spec, blk, act)
            stage.add_module(f"b{blk['block']}", block)
        for i, stage in stages.items():
            self.add_module(f"s{i}", stage)
        self.num_stages = len(stages)
        self.head = nn.Module()
        self.head.fc = nn.Linear(spec.widths[-1], spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, self.num_stages + 1):
            for block in getattr(self, f"s{i}").children():
                x = block(x)
        return self.head.fc(x.mean((2, 3)))


def build_torch_model(spec: ModelSpec) -> nn.Module:
    """The PyTorch twin of ``create_model`` for ``spec`` (NCHW input; call ``.to(memory_format=...)`` as needed)."""
    return AnyNet(spec)
