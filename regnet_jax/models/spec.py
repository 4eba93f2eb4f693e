"""The resolved architecture of a model: per-stage lists, as AnyNet builds them.

A RegNet is an AnyNet whose stages come from the quantised linear rule; ``model_spec`` turns either kind of
``config.model`` into the same ``ModelSpec``, which both the Flax model and the complexity counter consume.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from regnet_jax.config import validate_model
from regnet_jax.models.regnet import adjust_block_compatibility, generate_regnet


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build or count an AnyNet. Hashable, so it can be a Flax module field."""

    stem_type: str
    stem_w: int
    block_type: str
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    strides: tuple[int, ...]
    bot_muls: tuple[float, ...]
    group_ws: tuple[int, ...]
    se_ratio: float
    num_classes: int
    activation: str = "relu"
    zero_init_last_bn: bool = False

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def blocks(self) -> list[dict[str, Any]]:
        """One entry per block: stage, index, w_in, w_out, stride, w_b, groups, w_se."""
        out, w_in = [], self.stem_w
        for i, (d, w, s, b, g) in enumerate(zip(self.depths, self.widths, self.strides, self.bot_muls, self.group_ws)):
            for j in range(d):
                stride = s if j == 0 else 1
                w_b = int(round(w * b))
                bottleneck = self.block_type == "res_bottleneck_block"
                out.append(
                    dict(
                        stage=i + 1,
                        block=j + 1,
                        w_in=w_in,
                        w_out=w,
                        stride=stride,
                        w_b=w_b if bottleneck else w,
                        groups=w_b // g if bottleneck else 1,
                        w_se=int(round(w_in * self.se_ratio)) if bottleneck else 0,
                    )
                )
                w_in = w
        return out


def model_spec(model: Any) -> ModelSpec:
    """Validate ``config.model`` (ConfigDict or mapping) and resolve it to per-stage lists."""
    m = validate_model(model)
    common = dict(
        stem_type=m["stem_type"],
        stem_w=m["stem_w"],
        block_type=m["block_type"],
        se_ratio=float(m["se_ratio"]),
        num_classes=m["num_classes"],
        activation=m["activation"],
        zero_init_last_bn=m["zero_init_last_bn"],
    )
    if m["type"] == "anynet":
        return ModelSpec(
            depths=tuple(m["depths"]),
            widths=tuple(m["widths"]),
            strides=tuple(m["strides"]),
            bot_muls=tuple(float(b) for b in m["bot_muls"]),
            group_ws=tuple(m["group_ws"]),
            **common,
        )
    rule = generate_regnet(m["depth"], m["w0"], m["wa"], m["wm"])
    n = rule.num_stages
    b, g = float(m["bot_mul"]), m["group_w"]
    widths, group_ws = adjust_block_compatibility(rule.widths, [b] * n, [g] * n)
    return ModelSpec(
        depths=rule.depths,
        widths=tuple(widths),
        strides=(2,) * n,
        bot_muls=(b,) * n,
        group_ws=tuple(group_ws),
        **common,
    )
