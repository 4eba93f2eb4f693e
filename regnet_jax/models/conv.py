"""Convolution lowerings: XLA's native op, and a custom-VJP lowering for XLA:CPU.

Every lowering computes the same NHWC x HWIO convolution with symmetric padding (k-1)//2 and ``groups`` feature
groups; they differ only in the XLA operations they emit, and so in speed (docs/performance.md):

* ``xla``: ``lax.conv_general_dilated`` with ``feature_group_count``, differentiated by JAX (cuDNN, TPU).
* ``blocked``: grouped convolutions as dense convolutions over chunks of groups with block-diagonal kernels, 1x1
  convolutions as matrix products, differentiated by JAX.
* ``vjp``: the forward of ``blocked`` with a hand-written backward pass (``jax.custom_vjp``): 1x1 gradients as
  2-D matrix products (no transposed copies of the activations), the input gradient of a k x k convolution as a
  forward convolution with the flipped kernel, split into stride x stride phases for strided convolutions (no
  multiply-adds with the zeros that XLA's dilated form inserts), the weight gradient as XLA's.

The gradients name their ops ``conv_dgrad`` / ``conv_wgrad`` (``jax.named_scope``) so that profiles attribute them.

``auto`` (the default) follows the table ``conv_choice.json`` beside this module (``auto_impl``): the entry for the
platform (``jax.default_backend()``) and the device kind, else the platform's ``default``, else ``PLATFORM_DEFAULTS``
(CPU: ``vjp``), else ``xla``. ``benchmarks/gpu_check.py`` measures the three lowerings on a GPU and writes the entry of
its device kind (docs/performance.md, "GPU check").
"""

from __future__ import annotations

import functools
import json
import os
import warnings

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "blocked", "vjp")
LOWERINGS = CONV_IMPLS[1:]
CPU_DEFAULT = "vjp"  # what 'auto' uses when compiling for CPU if the table says nothing (measured: docs/performance.md)
PLATFORM_DEFAULTS = {"cpu": CPU_DEFAULT}  # 'auto' where conv_choice.json names nothing for the platform; else 'xla'
CHOICE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conv_choice.json")
_PLATFORMS = {
    "cpu": ("cpu",),
    "gpu": ("cuda", "rocm"),
    "tpu": ("tpu",),
}  # jax.default_backend() -> platform_dependent's names
_DEFAULT_IMPL = os.environ.get("REGNET_JAX_CONV_IMPL", "auto")
_DIMS = ("NHWC", "HWIO", "NHWC")
# Channels per dense sub-convolution of the blocked lowering: groups are packed into chunks this wide (block-diagonal
# kernels, so a chunk of m groups does m times the useful multiply-adds). Wider chunks waste more flops, narrower ones
# run more and smaller convolutions (and compile longer). None: 8 for layers with at least LARGE_LAYER_PIXELS output
# pixels (batch x height x width), where the waste dominates, else 16 (measured on XLA:CPU, RegNetY-400MF layers).
CHUNK_WIDTH: int | None = None
LARGE_LAYER_PIXELS = 1 << 16
# Strided input gradients are split into stride x stride phases (no multiply-adds with inserted zeros) for dense
# convolutions and for grouped ones with at least this many output pixels; below it, the 4x more (small) chunk
# convolutions of the phases cost more than XLA's dilated form saves (measured on XLA:CPU, RegNet layers at batch 32).
PHASE_MIN_PIXELS = 1 << 14

Padding = tuple[tuple[int, int], tuple[int, int]]


def set_conv_impl(impl: str) -> None:
    """Process-wide convolution lowering: 'auto' (``auto_impl``: the table's choice for the device), 'xla', 'blocked'
    or 'vjp'. Takes effect for functions traced afterwards (jit caches keep what they traced). Also settable with the
    environment variable REGNET_JAX_CONV_IMPL."""
    global _DEFAULT_IMPL
    _DEFAULT_IMPL = check_impl(impl)


def get_conv_impl() -> str:
    """The current process-wide convolution lowering (see ``set_conv_impl``)."""
    return _DEFAULT_IMPL


def check_impl(impl: str) -> str:
    """``impl`` if it names a lowering, else a ValueError naming the choices."""
    if impl not in CONV_IMPLS:
        raise ValueError(
            f"conv impl {impl!r} is invalid: must be one of {CONV_IMPLS} (REGNET_JAX_CONV_IMPL / set_conv_impl)"
        )
    return impl


@functools.cache
def choice_table(path: str) -> dict:
    """The JSON table at ``path`` (``CHOICE_FILE``); {} if it is missing, and {} with a warning if it is unreadable."""
    try:
        with open(path) as f:
            table = json.load(f)
        if not isinstance(table, dict):
            raise ValueError("not a JSON object")
        return table
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        warnings.warn(f"{path} is unreadable ({e}): conv_impl 'auto' uses the built-in defaults", stacklevel=2)
        return {}


def auto_impl(platform: str, device_kind: str | None = None, table: dict | None = None) -> str:
    """The lowering 'auto' means on ``platform`` ('cpu', 'gpu', 'tpu': ``jax.default_backend()``) for devices of
    ``device_kind`` (``jax.Device.device_kind``): ``table[platform][device_kind]['default']`` (or a plain string there),
    else ``table[platform]['default']``, else ``PLATFORM_DEFAULTS``, else 'xla'. An entry that names no lowering is
    skipped. ``table`` defaults to ``conv_choice.json``."""
    table = choice_table(CHOICE_FILE) if table is None else table
    entry = table.get(platform)
    entry = entry if isinstance(entry, dict) else {}
    kind = entry.get(device_kind) if device_kind else None
    candidates = [
        kind.get("default") if isinstance(kind, dict) else kind,
        entry.get("default"),
        PLATFORM_DEFAULTS.get(platform),
        "xla",
    ]
    return next(c for c in candidates if isinstance(c, str) and c in LOWERINGS)


@functools.cache
def _device_kind(backend: str) -> str:
    return jax.devices(backend)[0].device_kind


def auto_impls() -> dict[str, str]:
    """What 'auto' lowers to on each platform in this process: the default backend's own device kind decides its
    entry, the other platforms (a cross-platform lowering) use their platform defaults."""
    backend = jax.default_backend()
    return {p: auto_impl(p, _device_kind(backend) if p == backend else None) for p in _PLATFORMS}


def resolved_impl(impl: str | None = None) -> str:
    """``impl`` (default: the process-wide setting) with 'auto' replaced by what it means on the default backend."""
    impl = check_impl(impl or _DEFAULT_IMPL)
    return auto_impls()[jax.default_backend()] if impl == "auto" and jax.default_backend() in _PLATFORMS else impl


def same_padding(k: int) -> Padding:
    """pycls's symmetric padding (k-1)//2 on both sides (never 'SAME', which pads stride-2 convolutions (0, 1))."""
    return ((k - 1) // 2, (k - 1) // 2), ((k - 1) // 2, (k - 1) // 2)


def xla_conv2d(x: jax.Array, kernel: jax.Array, stride: int, groups: int, padding: Padding | None = None) -> jax.Array:
    """XLA's convolution op with ``feature_group_count`` (cuDNN / TPU convolutions; slow grouped gradients on CPU)."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=padding or same_padding(kernel.shape[0]),
        dimension_numbers=_DIMS,
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


def _output_pixels(x: jax.Array, kernel_size: int, stride: int, padding: Padding) -> int:
    n, h, w = x.shape[:3]
    (pt, pb), (pl, pr) = padding
    return n * ((h + pt + pb - kernel_size) // stride + 1) * ((w + pl + pr - kernel_size) // stride + 1)


def _matmul_1x1(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """A 1x1 convolution as one 2-D matrix product over the (strided) pixels."""
    xs = x[:, ::stride, ::stride, :] if stride > 1 else x
    n, h, w, c = xs.shape
    return (xs.reshape(n * h * w, c) @ kernel.reshape(c, -1)).reshape(n, h, w, -1)


def blocked_conv2d(
    x: jax.Array, kernel: jax.Array, stride: int, groups: int, padding: Padding | None = None
) -> jax.Array:
    """The same convolution as ``xla_conv2d`` computed the way XLA:CPU is fast at.

    1x1 convolutions are matrix products (their weight gradient as a convolution is several times slower); grouped
    convolutions are dense convolutions over chunks of ``chunk_width`` channels with block-diagonal kernels, because
    XLA:CPU's grouped convolution (especially its weight gradient, jax-ml/jax#13800) is one to two orders of magnitude
    slower than its dense one. Every output is the same sum of the same products as the native op (plus exact zeros
    from the block-diagonal kernels), so results agree to float rounding.
    """
    k = kernel.shape[0]
    padding = padding or same_padding(k)
    if k == 1 and groups == 1 and padding == same_padding(1):
        return _matmul_1x1(x, kernel, stride)
    if groups == 1:
        return xla_conv2d(x, kernel, stride, 1, padding)
    cg, co = kernel.shape[2], kernel.shape[3]
    dg = co // groups
    chunks = group_chunks(groups, cg, chunk_width(_output_pixels(x, k, stride, padding)))
    if len(chunks) == 1:
        return xla_conv2d(x, block_diagonal(kernel, groups), stride, 1, padding)
    # split (not slices): its transpose is one concatenate, where slices would transpose to a sum of padded copies.
    starts = [g for g, _ in chunks[1:]]
    xs = jnp.split(x, [g * cg for g in starts], axis=-1)
    ks = jnp.split(kernel, [g * dg for g in starts], axis=-1)
    outs = [xla_conv2d(xc, block_diagonal(kc, m), stride, 1, padding) for xc, kc, (_, m) in zip(xs, ks, chunks)]
    return jnp.concatenate(outs, axis=-1)


def transpose_kernel(kernel: jax.Array, groups: int) -> jax.Array:
    """The kernel of the input gradient: spatially flipped, input and output channels swapped within each group."""
    kh, kw, cg, co = kernel.shape
    k = kernel[::-1, ::-1].reshape(kh, kw, cg, groups, co // groups)
    return jnp.transpose(k, (0, 1, 4, 3, 2)).reshape(kh, kw, co // groups, groups * cg)


def _phase_taps(k: int, stride: int, phase: int) -> slice:
    """The kernel taps whose index is congruent to ``phase`` modulo ``stride``."""
    return slice(phase, k, stride)


def input_grad(dy: jax.Array, kernel: jax.Array, stride: int, groups: int, x: jax.Array) -> jax.Array:
    """d(conv)/dx at ``x`` applied to ``dy``, as forward (stride-1) convolutions of ``dy``.

    For stride s, the input pixel i = s*m + a - pad receives dy[m - j] * kernel[a + s*j] only: each of the s x s
    phases (a, b) is a stride-1 convolution of ``dy`` with the taps of that phase, and the phases are interleaved.
    Every multiply-add is one of the native op's (XLA's own form dilates ``dy`` with zeros: s*s times the work);
    small grouped layers (``PHASE_MIN_PIXELS``) keep XLA's form.
    """
    n, h, w, c_in = x.shape
    k = kernel.shape[0]
    pad = (k - 1) // 2
    if stride == 1:
        return blocked_conv2d(dy, transpose_kernel(kernel, groups), 1, groups, ((k - 1 - pad, k - 1 - pad),) * 2)
    if groups > 1 and dy.shape[0] * dy.shape[1] * dy.shape[2] < PHASE_MIN_PIXELS:
        _, pullback = jax.vjp(lambda xx: blocked_conv2d(xx, kernel, stride, groups), x)
        return pullback(dy)[0]
    if k == 1 and groups == 1:
        dx = (dy.reshape(-1, dy.shape[-1]) @ kernel.reshape(kernel.shape[2], -1).T).reshape(*dy.shape[:3], -1)
        hi = (h - 1) % stride, (w - 1) % stride
        return lax.pad(
            dx, jnp.zeros((), dx.dtype), ((0, 0, 0), (0, hi[0], stride - 1), (0, hi[1], stride - 1), (0, 0, 0))
        )
    m_h, m_w = -(-(h + pad) // stride), -(-(w + pad) // stride)
    ho, wo = dy.shape[1:3]
    rows = []
    for a in range(stride):
        cols = []
        for b in range(stride):
            sub = kernel[_phase_taps(k, stride, a), _phase_taps(k, stride, b)]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                cols.append(jnp.zeros((n, m_h, m_w, c_in), dy.dtype))
                continue
            jh, jw = sub.shape[:2]
            sub_t = transpose_kernel(sub, groups)
            cols.append(blocked_conv2d(dy, sub_t, 1, groups, ((jh - 1, m_h - ho), (jw - 1, m_w - wo))))
        rows.append(jnp.stack(cols, axis=3))  # (n, m_h, m_w, s_b, c)
    z = jnp.stack(rows, axis=2)  # (n, m_h, s_a, m_w, s_b, c)
    z = z.reshape(n, m_h * stride, m_w * stride, -1)
    return z[:, pad : pad + h, pad : pad + w]


def weight_grad(x: jax.Array, dy: jax.Array, kernel: jax.Array, stride: int, groups: int) -> jax.Array:
    """d(conv)/dkernel at ``kernel`` applied to ``dy``: a 2-D matrix product over the pixels for 1x1, else XLA's
    (blocked) form. Under shard_map this is the device's own gradient (``kernel`` varies like ``x``)."""
    kernel_shape = kernel.shape
    k = kernel_shape[0]
    if k == 1 and groups == 1:
        xs = x[:, ::stride, ::stride, :] if stride > 1 else x
        x2, dy2 = xs.reshape(-1, xs.shape[-1]), dy.reshape(-1, dy.shape[-1])
        return lax.dot_general(x2, dy2, (((0,), (0,)), ((), ()))).reshape(kernel_shape)
    _, pullback = jax.vjp(lambda kk: blocked_conv2d(x, kk, stride, groups), kernel)
    return pullback(dy)[0]


def _varying_axes(a: jax.Array) -> frozenset:
    """The shard_map axes along which ``a`` varies (JAX 0.10 calls them manual_axis_type.varying, older ones vma)."""
    aval = jax.typeof(a)
    mat = getattr(aval, "manual_axis_type", None)
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(aval, "vma", ()))


def vjp_conv2d(x: jax.Array, kernel: jax.Array, stride: int, groups: int) -> jax.Array:
    """``blocked_conv2d`` forward with the hand-written backward pass of ``input_grad`` / ``weight_grad``."""
    # Under shard_map a replicated kernel meets a batch-sharded x: cast it to varying here, so that JAX's transpose of
    # the cast sums the kernel gradient over the devices (as it does for its own convolutions) and the custom
    # backward pass returns values of the types of its inputs.
    axes = tuple(_varying_axes(x) - _varying_axes(kernel))
    if axes:
        kernel = lax.pcast(kernel, axes, to="varying")
    return _vjp_conv2d(x, kernel, stride, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _vjp_conv2d(x: jax.Array, kernel: jax.Array, stride: int, groups: int) -> jax.Array:
    return blocked_conv2d(x, kernel, stride, groups)


def _vjp_fwd(x, kernel, stride, groups):
    return blocked_conv2d(x, kernel, stride, groups), (x, kernel)


def _vjp_bwd(stride, groups, res, dy):
    x, kernel = res
    with jax.named_scope("conv_dgrad"):
        dx = input_grad(dy, kernel, stride, groups, x)
    with jax.named_scope("conv_wgrad"):
        dk = weight_grad(x, dy, kernel, stride, groups)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_vjp_conv2d.defvjp(_vjp_fwd, _vjp_bwd)

_LOWERINGS = {"xla": xla_conv2d, "blocked": blocked_conv2d, "vjp": vjp_conv2d}


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, groups: int, impl: str | None = None) -> jax.Array:
    """NHWC x HWIO convolution with symmetric padding (k-1)//2.

    ``impl`` (default: ``get_conv_impl()``): 'xla' is XLA's native op, 'blocked' and 'vjp' the lowerings of this
    module; 'auto' picks per platform what ``auto_impls`` says (``conv_choice.json``), decided at lowering
    (``lax.platform_dependent``), so that a function lowered for another platform gets that platform's choice.
    """
    impl = check_impl(impl or _DEFAULT_IMPL)
    if impl != "auto":
        return _LOWERINGS[impl](x, kernel, stride, groups)
    impls = auto_impls()
    branch = {i: functools.partial(_LOWERINGS[i], stride=stride, groups=groups) for i in set(impls.values()) | {"xla"}}
    per_platform = {name: branch[impls[p]] for p, names in _PLATFORMS.items() for name in names}
    return lax.platform_dependent(x, kernel, default=branch["xla"], **per_platform)
