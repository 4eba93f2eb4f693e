"""A minimal PyTorch AnyNet/RegNet built from a regnet_jax ``ModelSpec``: the same widths, groups, SE and head as
pycls (reference.md §2), so that a side-by-side compares the two frameworks on the identical architecture.

Only what the benchmarks need: the simple/ResNet/CIFAR stems and the bottleneck, basic and vanilla blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from regnet_jax.models.spec import ModelSpec

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU}


def _conv_bn(w_in: int, w_out: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(w_in, w_out, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(w_out)]


class SE(nn.Module):
    def __init__(self, w: int, w_se: int, act: type[nn.Module]):
        super().__init__()
        self.f_ex = nn.Sequential(nn.Conv2d(w, w_se, 1), act(), nn.Conv2d(w_se, w, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f_ex(x.mean((2, 3), keepdim=True))


class ResBlock(nn.Module):
    """act(shortcut(x) + f(x)) with a bottleneck or basic transform, pycls layout."""

    def __init__(self, spec: ModelSpec, blk: dict, act: type[nn.Module]):
        super().__init__()
        w_in, w_out, s = blk["w_in"], blk["w_out"], blk["stride"]
        self.proj = nn.Sequential(*_conv_bn(w_in, w_out, 1, s)) if (w_in != w_out or s != 1) else None
        if spec.block_type == "res_bottleneck_block":
            w_b = blk["w_b"]
            layers = [*_conv_bn(w_in, w_b, 1), act(), *_conv_bn(w_b, w_b, 3, s, blk["groups"]), act()]
            if blk["w_se"]:
                layers.append(SE(w_b, blk["w_se"], act))
            layers += _conv_bn(w_b, w_out, 1)
        else:
            layers = [*_conv_bn(w_in, w_out, 3, s), act(), *_conv_bn(w_out, w_out, 3)]
        self.f = nn.Sequential(*layers)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act((x if self.proj is None else self.proj(x)) + self.f(x))


def build_torch_model(spec: ModelSpec) -> nn.Module:
    """The PyTorch twin of ``create_model`` for ``spec`` (NCHW input; call ``.to(memory_format=...)`` as needed)."""
    act = _ACTIVATIONS[spec.activation]
    if spec.stem_type == "res_stem_in":
        stem = [*_conv_bn(3, spec.stem_w, 7, 2), act(), nn.MaxPool2d(3, 2, 1)]
    else:
        stem = [*_conv_bn(3, spec.stem_w, 3, 2 if spec.stem_type == "simple_stem_in" else 1), act()]
    body = []
    for blk in spec.blocks():
        if spec.block_type == "vanilla_block":
            w_in, w_out, s = blk["w_in"], blk["w_out"], blk["stride"]
            body += [*_conv_bn(w_in, w_out, 3, s), act(), *_conv_bn(w_out, w_out, 3), act()]
        else:
            body.append(ResBlock(spec, blk, act))
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(spec.widths[-1], spec.num_classes)]
    return nn.Sequential(*stem, *body, *head)
