"""Stems, blocks, squeeze-excitation and head of AnyNet as Flax linen modules (pycls/models/anynet.py and pycls/models/blocks.py; docs/fidelity.md#block-structure).

Submodule names follow pycls (``stem.conv``, ``s1.b1.f.a_bn``, ``head.fc`` ...) so that weight porting is a
renaming plus a transpose. Every module takes ``train`` and knows nothing about configs or training.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from regnet_jax.models.layers import ACTIVATIONS, BatchNorm, Conv, conv_kernel_init, torch_bias_init

Dtype = Any


class RegNetModule(nn.Module):
    """The base of every module of the network: the fields they share (dtypes, BatchNorm's axis, momentum and epsilon,
    the activation), passed down with ``layer_kwargs()``, and the conv / BN / activation factories that use them."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    activation: str = "relu"

    def conv(self, features: int, k: int, stride: int = 1, groups: int = 1, *, name: str) -> Conv:
        return Conv(features, k, stride, groups, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    def bn(self, *, name: str, zero_init: bool = False) -> BatchNorm:
        return BatchNorm(
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.bn_axis_name,
            zero_init_scale=zero_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def act(self, x: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.activation](x)

    def layer_kwargs(self) -> dict[str, Any]:
        """The shared fields, to pass on to child modules."""
        return dict(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            bn_axis_name=self.bn_axis_name,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            activation=self.activation,
        )


class SimpleStemIn(RegNetModule):
    """3x3 conv stride 2, BN, activation (RegNet's stem; no max-pool)."""

    width: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.conv(self.width, 3, 2, name="conv")(x)
        return self.act(self.bn(name="bn")(x, train))


class ResStemIn(RegNetModule):
    """ResNet stem: 7x7 conv stride 2, BN, activation, 3x3 max-pool stride 2."""

    width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.conv(self.width, 7, 2, name="conv")(x)
        x = self.act(self.bn(name="bn")(x, train))
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResStemCifar(RegNetModule):
    """CIFAR stem: 3x3 conv stride 1, BN, activation."""

    width: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.conv(self.width, 3, 1, name="conv")(x)
        return self.act(self.bn(name="bn")(x, train))


class SE(RegNetModule):
    """Squeeze-and-excitation: avg-pool, 1x1 conv to ``w_se`` (bias), act, 1x1 conv back (bias), sigmoid, scale.

    The two 1x1 convs act on a 1x1 map, so they are dense layers here (kernel (c_in, c_out) = OIHW transposed).
    """

    w_se: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = x.shape[-1]
        s = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        dense = functools.partial(
            nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=conv_kernel_init
        )
        s = self.act(dense(self.w_se, bias_init=torch_bias_init(w), name="f_ex_0")(s))
        s = jax.nn.sigmoid(dense(w, bias_init=torch_bias_init(self.w_se), name="f_ex_2")(s))
        return x * s[:, None, None, :]


class VanillaBlock(RegNetModule):
    """[3x3 conv, BN, act] x 2, no shortcut."""

    width: int = 0
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.act(self.bn(name="a_bn")(self.conv(self.width, 3, self.stride, name="a")(x), train))
        return self.act(self.bn(name="b_bn")(self.conv(self.width, 3, name="b")(x), train))


class BasicTransform(RegNetModule):
    """3x3 conv (stride here), BN, act, 3x3 conv, final BN."""

    width: int = 0
    stride: int = 1
    zero_init_last_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.act(self.bn(name="a_bn")(self.conv(self.width, 3, self.stride, name="a")(x), train))
        return self.bn(name="b_bn", zero_init=self.zero_init_last_bn)(self.conv(self.width, 3, name="b")(x), train)


class BottleneckTransform(RegNetModule):
    """1x1 conv to w_b, BN, act; 3x3 group conv (stride here), BN, act; [SE]; 1x1 conv to w_out, final BN."""

    width: int = 0
    stride: int = 1
    bot_mul: float = 1.0
    group_w: int = 1
    w_se: int = 0
    zero_init_last_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        w_b = int(round(self.width * self.bot_mul))
        groups = w_b // self.group_w
        x = self.act(self.bn(name="a_bn")(self.conv(w_b, 1, name="a")(x), train))
        x = self.act(self.bn(name="b_bn")(self.conv(w_b, 3, self.stride, groups, name="b")(x), train))
        if self.w_se:
            x = SE(w_se=self.w_se, **self.layer_kwargs(), name="se")(x)
        return self.bn(name="c_bn", zero_init=self.zero_init_last_bn)(self.conv(self.width, 1, name="c")(x), train)


class ResidualBlock(RegNetModule):
    """act(shortcut(x) + f(x)); the shortcut is a 1x1 conv + BN iff the width or resolution changes."""

    transform: str = "bottleneck"  # 'basic' or 'bottleneck'
    width: int = 0
    stride: int = 1
    bot_mul: float = 1.0
    group_w: int = 1
    se_ratio: float = 0.0
    zero_init_last_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        w_in = x.shape[-1]
        if w_in != self.width or self.stride != 1:
            shortcut = self.bn(name="bn")(self.conv(self.width, 1, self.stride, name="proj")(x), train)
        else:
            shortcut = x.astype(self.dtype)
        kw = dict(width=self.width, stride=self.stride, zero_init_last_bn=self.zero_init_last_bn, **self.layer_kwargs())
        if self.transform == "bottleneck":
            # SE width from the block's input width, not w_b: intentional in pycls (#80, #81).
            w_se = int(round(w_in * self.se_ratio))
            f = BottleneckTransform(bot_mul=self.bot_mul, group_w=self.group_w, w_se=w_se, **kw, name="f")
        else:
            f = BasicTransform(**kw, name="f")
        return self.act(shortcut + f(x, train))


class Head(nn.Module):
    """Global average pool and a dense layer with bias, N(0, 0.01) init, in float32 (logits are float32)."""

    num_classes: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(
            self.num_classes,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(0.01),
            bias_init=nn.initializers.zeros,
            name="fc",
        )(x)


STEMS = {"simple_stem_in": SimpleStemIn, "res_stem_in": ResStemIn, "res_stem_cifar": ResStemCifar}
