"""AnyNet assembled from a ``ModelSpec``, and the public constructors ``create_model`` / ``list_models``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from regnet_jax.models.blocks import STEMS, Head, RegNetModule, ResidualBlock, VanillaBlock
from regnet_jax.models.spec import ModelSpec, model_spec

Dtype = Any


class AnyStage(RegNetModule):
    """``depth`` blocks named b1..bd; the first has the stage's stride and the previous stage's width as input."""

    block_type: str = "res_bottleneck_block"
    depth: int = 1
    width: int = 0
    stride: int = 2
    bot_mul: float = 1.0
    group_w: int = 1
    se_ratio: float = 0.0
    zero_init_last_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kw = self.layer_kwargs()
        for j in range(self.depth):
            stride = self.stride if j == 0 else 1
            if self.block_type == "vanilla_block":
                block = VanillaBlock(width=self.width, stride=stride, **kw, name=f"b{j + 1}")
            else:
                block = ResidualBlock(
                    transform="bottleneck" if self.block_type == "res_bottleneck_block" else "basic",
                    width=self.width,
                    stride=stride,
                    bot_mul=self.bot_mul,
                    group_w=self.group_w,
                    se_ratio=self.se_ratio,
                    zero_init_last_bn=self.zero_init_last_bn,
                    **kw,
                    name=f"b{j + 1}",
                )
            x = block(x, train)
        return x


class AnyNet(RegNetModule):
    """stem -> stages s1..sN -> head, named as in pycls. Input NHWC; logits are float32.

    ``bn_axis_name``: the mapped axis over which BatchNorm averages batch statistics (synchronised BN), or None.
    """

    spec: ModelSpec | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec = self.spec
        kw = self.layer_kwargs()
        x = STEMS[spec.stem_type](width=spec.stem_w, **kw, name="stem")(x.astype(self.dtype), train)
        for i, (d, w, s, b, g) in enumerate(zip(spec.depths, spec.widths, spec.strides, spec.bot_muls, spec.group_ws)):
            x = AnyStage(
                block_type=spec.block_type,
                depth=d,
                width=w,
                stride=s,
                bot_mul=b,
                group_w=g,
                se_ratio=spec.se_ratio,
                zero_init_last_bn=spec.zero_init_last_bn,
                **kw,
                name=f"s{i + 1}",
            )(x, train)
        return Head(spec.num_classes, param_dtype=self.param_dtype, name="head")(x)


def _dtype(name: str) -> Dtype:
    return jnp.dtype(name)


def resolve_model_config(config_or_name: Any) -> ml_collections.ConfigDict:
    """``config.model`` from a full config, a model config, a mapping, or a zoo name such as 'regnety_4gf'."""
    if isinstance(config_or_name, str):
        from regnet_jax.models.zoo import get_config

        return get_config(config_or_name).model
    if isinstance(config_or_name, ml_collections.ConfigDict):
        return config_or_name.model if "model" in config_or_name else config_or_name
    if "model" in config_or_name:
        return ml_collections.ConfigDict(dict(config_or_name["model"]))
    return ml_collections.ConfigDict(dict(config_or_name))


def create_model(config_or_name: Any, *, bn_axis_name: str | None = None, **overrides: Any) -> AnyNet:
    """Build the Flax model for a config, a model config, or a zoo name.

    ``overrides`` replace ``config.model`` fields (e.g. ``num_classes=10``, ``dtype='bfloat16'``);
    ``bn_axis_name`` names the mapped axis for synchronised BatchNorm.
    """
    fields = resolve_model_config(config_or_name).to_dict()
    fields.update(overrides)
    spec = model_spec(fields)
    return AnyNet(
        spec=spec,
        dtype=_dtype(fields.get("dtype", "float32")),
        param_dtype=_dtype(fields.get("param_dtype", "float32")),
        bn_axis_name=bn_axis_name,
        activation=spec.activation,
    )


def list_models() -> list[str]:
    """Names of the zoo models (usable with ``create_model`` and as ``configs/<name>.py``)."""
    from regnet_jax.models.zoo import ZOO

    return list(ZOO)
