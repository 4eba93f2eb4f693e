"""Layers with PyTorch/pycls semantics: convolution with explicit symmetric padding and pycls init, BatchNorm
whose running variance is updated with the unbiased batch variance (as torch.nn.BatchNorm2d does), activations."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


CONV_IMPLS = ("auto", "xla", "blocked")
_DEFAULT_IMPL = os.environ.get("REGNET_JAX_CONV_IMPL", "auto")
# Channels per dense sub-convolution of the blocked lowering: groups are packed into chunks this wide (block-diagonal
# kernels, so a chunk of m groups does m times the useful multiply-adds). Wider chunks waste more flops, narrower ones
# run more and smaller convolutions (and compile longer). None: 8 for layers with at least LARGE_LAYER_PIXELS output
# pixels (batch x height x width), where the waste dominates, else 16 (measured on XLA:CPU, RegNetY-400MF layers).
CHUNK_WIDTH: int | None = None
LARGE_LAYER_PIXELS = 1 << 16


def set_conv_impl(impl: str) -> None:
    """Process-wide convolution lowering: 'auto' (blocked on CPU, XLA's native op elsewhere), 'xla' or 'blocked'.

    Takes effect for functions traced afterwards (jit caches keep what they traced). Also settable with the
    environment variable REGNET_JAX_CONV_IMPL.
    """
    global _DEFAULT_IMPL
    _DEFAULT_IMPL = _check_impl(impl)


def get_conv_impl() -> str:
    """The current process-wide convolution lowering (see ``set_conv_impl``)."""
    return _DEFAULT_IMPL


def _check_impl(impl: str) -> str:
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl {impl!r} is invalid: must be one of {CONV_IMPLS} (REGNET_JAX_CONV_IMPL / set_conv_impl)")
    return impl


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((k - 1) // 2, (k - 1) // 2), ((k - 1) // 2, (k - 1) // 2)


def xla_conv2d(x: jax.Array, kernel: jax.Array, stride: int, groups: int) -> jax.Array:
    """XLA's convolution op with ``feature_group_count`` (cuDNN / TPU convolutions; slow grouped gradients on CPU)."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=_pad(kernel.shape[0]),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def chunk_width(output_pixels: int) -> int:
    """Channels per chunk for a grouped convolution with ``output_pixels`` = batch x height x width outputs."""
    if CHUNK_WIDTH:
        return CHUNK_WIDTH
    return 8 if output_pixels >= LARGE_LAYER_PIXELS else 16


def group_chunks(groups: int, group_in: int, width: int) -> list[tuple[int, int]]:
    """(first group, number of groups) of each dense sub-convolution: ``width // group_in`` groups per chunk (at least
    one); the last chunk takes the remainder."""
    per = max(1, min(groups, width // group_in))
    return [(g, min(per, groups - g)) for g in range(0, groups, per)]


def block_diagonal(kernel: jax.Array, groups: int) -> jax.Array:
    """The dense HWIO kernel equal to a grouped one: (k, k, c_in/groups, c_out) -> (k, k, c_in, c_out), zero off the
    diagonal blocks. A select, not a product, so the values (and their gradients) are copied exactly."""
    kh, kw, cg, co = kernel.shape
    if groups == 1:
        return kernel
    dg = co // groups
    blocks = kernel.reshape(kh, kw, 1, cg, groups, dg)
    on_diagonal = (jnp.arange(groups)[:, None] == jnp.arange(groups)[None, :])[:, None, :, None]
    dense = jnp.where(on_diagonal, blocks, jnp.zeros((), kernel.dtype))  # (kh, kw, groups_in, cg, groups_out, dg)
    return dense.reshape(kh, kw, groups * cg, co)


def blocked_conv2d(x: jax.Array, kernel: jax.Array, stride: int, groups: int) -> jax.Array:
    """The same convolution as ``xla_conv2d`` computed the way XLA:CPU is fast at.

    1x1 convolutions are matrix products (their weight gradient as a convolution is several times slower); grouped
    convolutions are dense convolutions over chunks of ``chunk_width`` channels with block-diagonal kernels, because
    XLA:CPU's grouped convolution (especially its weight gradient, jax-ml/jax#13800) is one to two orders of magnitude
    slower than its dense one. Every output is the same sum of the same products as the native op (plus exact zeros
    from the block-diagonal kernels), so results agree to float rounding.
    """
    k = kernel.shape[0]
    if k == 1 and groups == 1:
        xs = x[:, ::stride, ::stride, :] if stride > 1 else x
        return jnp.einsum("nhwc,cd->nhwd", xs, kernel[0, 0])
    if groups == 1:
        return xla_conv2d(x, kernel, stride, 1)
    cg, co = kernel.shape[2], kernel.shape[3]
    dg = co // groups
    n, h, w = x.shape[:3]
    chunks = group_chunks(groups, cg, chunk_width(n * ((h - 1) // stride + 1) * ((w - 1) // stride + 1)))
    if len(chunks) == 1:
        return xla_conv2d(x, block_diagonal(kernel, groups), stride, 1)
    # split (not slices): its transpose is one concatenate, where slices would transpose to a sum of padded copies.
    starts = [g for g, _ in chunks[1:]]
    xs = jnp.split(x, [g * cg for g in starts], axis=-1)
    ks = jnp.split(kernel, [g * dg for g in starts], axis=-1)
    outs = [xla_conv2d(xc, block_diagonal(kc, m), stride, 1) for xc, kc, (_, m) in zip(xs, ks, chunks)]
    return jnp.concatenate(outs, axis=-1)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, groups: int, impl: str | None = None) -> jax.Array:
    """NHWC x HWIO convolution with symmetric padding (k-1)//2 (never 'SAME', which pads stride-2 convs (0,1)).

    ``impl`` (default: ``get_conv_impl()``): 'xla' is XLA's native op, 'blocked' the CPU-friendly lowering of
    ``blocked_conv2d``, 'auto' picks 'blocked' when compiling for CPU and 'xla' for GPU/TPU.
    """
    impl = _check_impl(impl or _DEFAULT_IMPL)
    if impl == "xla":
        return xla_conv2d(x, kernel, stride, groups)
    if impl == "blocked":
        return blocked_conv2d(x, kernel, stride, groups)
    return jax.lax.platform_dependent(
        x,
        kernel,
        cpu=functools.partial(blocked_conv2d, stride=stride, groups=groups),
        default=functools.partial(xla_conv2d, stride=stride, groups=groups),
    )


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
