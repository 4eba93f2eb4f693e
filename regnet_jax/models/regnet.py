"""The quantised linear width rule of RegNet and the group/bottleneck compatibility adjustment.

Pure Python (no JAX): these are the rules of pycls/models/regnet.py: generate_regnet and pycls/models/blocks.py: adjust_block_compatibility (docs/fidelity.md#widths-and-rounding), written so that every integer matches pycls.
Python's ``round`` rounds half to even, exactly as pycls does (X-400MF: 392/16 = 24.5 -> 24 -> 384).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

QUANT = 8


@dataclasses.dataclass(frozen=True)
class RegNetWidths:
    """What the quantised linear rule produces before the compatibility adjustment."""

    block_widths: tuple[int, ...]  # one entry per block, w_j
    widths: tuple[int, ...]  # stage widths (sorted unique block widths)
    depths: tuple[int, ...]  # blocks per stage
    num_stages: int
    total_stages: int  # max(k_j) + 1; differs from num_stages when a stage came out empty
    continuous: tuple[float, ...]  # u_j = w0 + wa * j


def generate_regnet(depth: int, w0: float, wa: float, wm: float, q: int = QUANT) -> RegNetWidths:
    """Per-block and per-stage widths of the quantised linear rule (Radosavovic et al. 2020, §3.3, Eqn. (2)-(4); pycls/models/regnet.py: generate_regnet)."""
    if wa < 0 or w0 <= 0 or wm <= 1 or w0 % q:
        raise ValueError(f"RegNet rule needs wa >= 0, w0 > 0, wm > 1 and w0 % {q} == 0; got w0={w0}, wa={wa}, wm={wm}")
    # numpy on purpose: the same float64 ops in the same order as pycls, so ties fall the same way.
    continuous = np.arange(depth) * wa + w0
    exps = np.round(np.log(continuous / w0) / np.log(wm))
    block_widths = np.round(w0 * np.power(wm, exps) / q).astype(int) * q
    widths, depths = np.unique(block_widths, return_counts=True)
    return RegNetWidths(
        block_widths=tuple(int(w) for w in block_widths),
        widths=tuple(int(w) for w in widths),
        depths=tuple(int(d) for d in depths),
        num_stages=len(widths),
        total_stages=int(exps.max()) + 1 if depth else 0,
        continuous=tuple(float(u) for u in continuous),
    )


def adjust_block_compatibility(
    widths: Sequence[int], bot_muls: Sequence[float], group_ws: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Make each stage's bottleneck width divisible by its group width (Radosavovic et al. 2020, App. D; pycls/models/blocks.py: adjust_block_compatibility).

    Returns the adjusted stage widths and group widths.
    """
    if not len(widths) == len(bot_muls) == len(group_ws):
        raise ValueError("widths, bot_muls and group_ws need one entry per stage")
    new_ws, new_gs = [], []
    for w, b, g in zip(widths, bot_muls, group_ws):
        v = int(max(1, w * b))
        g = int(min(g, v))
        m = math.lcm(g, int(b)) if b > 1 else g
        v = max(m, int(round(v / m) * m))
        new_ws.append(int(v / b))
        new_gs.append(g)
    return new_ws, new_gs
