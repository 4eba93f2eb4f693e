"""Layers with PyTorch/pycls semantics: convolution with explicit symmetric padding and pycls init, BatchNorm
whose running variance is updated with the unbiased batch variance (as torch.nn.BatchNorm2d does), activations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from regnet_jax.models.conv import CONV_IMPLS, conv2d, get_conv_impl, set_conv_impl  # noqa: F401  (the lowering's public switch)

Dtype = Any

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch.nn.GELU's default is the exact erf form
}


def conv_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    """pycls conv init: N(0, sqrt(2 / fan_out)), fan_out = k*k*c_out, not divided by groups (HWIO or IO kernels)."""
    fan_out = int(np.prod(shape[:-2])) * shape[-1] if len(shape) > 2 else shape[-1]
    return jax.random.normal(key, shape, dtype) * np.sqrt(2.0 / fan_out).astype(dtype)


def torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default conv/linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); pycls keeps it for the SE convs."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv(nn.Module):
    """k x k convolution, no bias, pycls init. The kernel is HWIO with shape (k, k, c_in // groups, c_out)."""

    features: int
    kernel_size: int
    stride: int = 1
    groups: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kernel_size % 2 != 1:
            raise ValueError(f"only odd kernel sizes are supported, got {self.kernel_size}")
        c_in = x.shape[-1]
        shape = (self.kernel_size, self.kernel_size, c_in // self.groups, self.features)
        kernel = self.param("kernel", conv_kernel_init, shape, self.param_dtype)
        return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.groups)


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with torch.nn.BatchNorm2d semantics.

    Normalises with the biased batch variance and updates the running variance with the unbiased one.
    ``momentum`` is Flax's convention (running = momentum * running + (1 - momentum) * batch): 0.9 here is
    PyTorch's 0.1. With ``axis_name`` the batch statistics are averaged over that mapped axis (synchronised BN).
    Statistics are computed in float32, in two passes, whatever the compute dtype.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None
    zero_init_scale: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale_init = nn.initializers.zeros if self.zero_init_scale else nn.initializers.ones
        scale = self.param("scale", scale_init, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        xf = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            count = np.prod(x.shape[:-1])
            # Two passes (mean, then mean squared deviation), as PyTorch does: the one-pass E[x^2] - E[x]^2
            # loses enough precision to move gradients by several percent on small batches.
            mean = xf.mean(axes)
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
            var = jnp.square(xf - mean).mean(axes)
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
                count = count * jax.lax.axis_size(self.axis_name)
            if not self.is_initializing():
                unbiased = var * (count / max(count - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        mul = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
        # Centre first, as PyTorch does: under jit, XLA reassociates x*mul - mean*mul in the backward pass and
        # the stem's weight gradient then moves by several percent from pycls's.
        y = (xf - mean) * mul + bias.astype(jnp.float32)
        return y.astype(self.dtype)
