"""Convolution lowerings: the CPU lowerings ('blocked', and 'vjp' with its hand-written backward pass) give the
native op's results (forward, input and kernel gradients) for every kind of convolution the models use, also under
shard_map; the backward pass has the structure it was written for (pycls parity with each lowering: test_parity.py)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from regnet_jax.models import conv, layers


@pytest.fixture
def restore_impl():
    before = layers.get_conv_impl()
    yield
    layers.set_conv_impl(before)


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _value_and_grads(impl, x, kernel, stride, groups, r):
    def f(x, k):
        y = conv.conv2d(x, k, stride, groups, impl=impl)
        return jnp.sum(y * r), y

    (_, y), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, kernel)
    return (y, *grads)


def _normal(rng, shape) -> jax.Array:
    """Standard normal float32 values drawn by NumPy (jax.random compiles a program per shape: about a second each
    on XLA:CPU, most of these tests' time)."""
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


def _inputs(h, w, c_in, c_out, k, stride, groups, batch=2):
    rng = np.random.default_rng(h * 100 + c_in + groups + stride)
    x = _normal(rng, (batch, h, w, c_in))
    kernel = _normal(rng, (k, k, c_in // groups, c_out))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    return x, kernel, _normal(rng, (batch, ho, wo, c_out))


# (height, width, c_in, c_out, kernel size, stride, groups)
CASES = [
    (7, 7, 6, 10, 1, 1, 1),  # 1x1 (a matmul in the CPU lowerings)
    (8, 8, 6, 10, 1, 2, 1),  # 1x1 stride 2 (projection shortcut)
    (9, 7, 6, 10, 1, 2, 1),  # 1x1 stride 2, odd sizes: the input gradient's zero rows/columns at the end
    (9, 9, 3, 8, 3, 2, 1),  # dense 3x3 stride 2 on an odd size (stem)
    (11, 11, 3, 8, 7, 2, 1),  # 7x7 stride 2 (ResNet stem): phases with 4 and 3 taps
    (8, 8, 16, 16, 3, 1, 2),  # few groups: one chunk of both
    (7, 7, 104, 104, 3, 2, 13),  # group width 8, 13 groups: chunks of 2 (16 channels), the last of 1; stride 2
    (6, 6, 12, 24, 3, 1, 3),  # c_out != c_in per group
    (8, 8, 24, 24, 3, 1, 24),  # depthwise
    (9, 9, 24, 24, 3, 2, 24),  # depthwise, stride 2, odd size
    (7, 7, 16, 16, 5, 2, 4),  # 5x5 grouped, stride 2
    (10, 8, 8, 16, 5, 3, 2),  # stride 3: 9 phases, some with one tap
]


@pytest.mark.parametrize("h, w, c_in, c_out, k, stride, groups", CASES)
def test_cpu_lowerings_equal_native_forward_and_gradients(h, w, c_in, c_out, k, stride, groups, monkeypatch):
    x, kernel, r = _inputs(h, w, c_in, c_out, k, stride, groups)
    native = _value_and_grads("xla", x, kernel, stride, groups, r)
    lowered = {impl: _value_and_grads(impl, x, kernel, stride, groups, r) for impl in ("blocked", "vjp")}
    if stride > 1 and groups > 1:  # small grouped layers keep XLA's strided input gradient: check the phases too
        monkeypatch.setattr(conv, "PHASE_MIN_PIXELS", 0)
        lowered["vjp, phases"] = jax.jit(_value_and_grads.__wrapped__, static_argnums=(0, 3, 4))(
            "vjp", x, kernel, stride, groups, r
        )
    for impl, values in lowered.items():
        assert native[0].shape == values[0].shape == r.shape
        for name, a, b in zip(("output", "grad x", "grad kernel"), values, native):
            assert _rel_err(a, b) < 1e-5, (impl, name, _rel_err(a, b))


@pytest.mark.parametrize("groups", [1, 2])
def test_vjp_lowering_under_shard_map_sums_kernel_gradients_over_devices(groups):
    # A replicated kernel and a batch-sharded input, as in the trainer: the kernel gradient is the sum over the
    # devices' batches, the input gradient stays sharded (dense: phases; grouped and small: XLA's strided form).
    mesh = jax.make_mesh((4,), ("batch",))
    x, kernel, r = _inputs(9, 9, 16, 16, 3, 2, groups, batch=8)
    x, r = (jax.device_put(a, NamedSharding(mesh, P("batch"))) for a in (x, r))

    def loss(impl, x, kernel, r):
        per_device = lambda x, k, r: jax.lax.psum(jnp.sum(conv.conv2d(x, k, 2, groups, impl=impl) * r), "batch")  # noqa: E731
        return jax.shard_map(per_device, mesh=mesh, in_specs=(P("batch"), P(), P("batch")), out_specs=P())(x, kernel, r)

    grads = {
        impl: jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(impl, x, kernel, r) for impl in ("xla", "vjp")
    }
    for a, b in zip(grads["vjp"], grads["xla"]):
        assert _rel_err(a, b) < 1e-5


def _compiled_backward(impl, x, kernel, stride, groups, r) -> str:
    return (
        jax.jit(lambda x, k: jax.vjp(lambda x, k: conv.conv2d(x, k, stride, groups, impl=impl), x, k)[1](r))
        .lower(x, kernel)
        .compile()
        .as_text()
    )


def test_vjp_backward_structure():
    # Strided input gradients: XLA's own form dilates dy with zeros (lhs_dilate), the phases never do.
    x, kernel, r = _inputs(8, 8, 16, 16, 3, 2, 1)
    assert "lhs_dilate=2x2" in _compiled_backward("xla", x, kernel, 2, 1, r)
    vjp = _compiled_backward("vjp", x, kernel, 2, 1, r)
    assert "lhs_dilate" not in vjp and "conv_dgrad" in vjp and "conv_wgrad" in vjp
    # 1x1: both gradients are 2-D matrix products of the activations as they are (no transposed copies).
    x, kernel, r = _inputs(8, 8, 16, 24, 1, 1, 1)
    one = _compiled_backward("vjp", x, kernel, 1, 1, r)
    transposed = [
        np.prod([int(d) for d in shape.split(",")]) for shape in re.findall(r"= f32\[([\d,]+)\]\S* transpose\(", one)
    ]
    assert "convolution(" not in one and all(n < x.size for n in transposed), (
        transposed
    )  # only the kernel is transposed


def test_chunk_width_rule_and_uneven_chunks(monkeypatch):
    assert conv.chunk_width(32 * 56 * 56) == 8 and conv.chunk_width(32 * 28 * 28) == 16
    assert conv.group_chunks(24, 1, 8) == [(0, 8), (8, 8), (16, 8)]
    assert conv.group_chunks(20, 1, 8) == [(0, 8), (8, 8), (16, 4)]
    monkeypatch.setattr(conv, "CHUNK_WIDTH", 8)  # depthwise, 20 channels: chunks of 8, 8, 4
    assert conv.chunk_width(1) == 8
    x = _normal(np.random.default_rng(0), (2, 6, 6, 20))
    kernel = _normal(np.random.default_rng(1), (3, 3, 1, 20))
    r = _normal(np.random.default_rng(2), (2, 3, 3, 20))
    for a, b in zip(_value_and_grads("vjp", x, kernel, 2, 20, r), _value_and_grads("xla", x, kernel, 2, 20, r)):
        assert _rel_err(a, b) < 1e-5


@pytest.mark.parametrize(
    "groups, group_in, width", [(13, 8, 32), (6, 8, 32), (2, 64, 32), (17, 64, 128), (55, 8, 32), (1, 3, 32)]
)
def test_group_chunks_cover_every_group_once(groups, group_in, width):
    chunks = conv.group_chunks(groups, group_in, width)
    covered = [g for start, m in chunks for g in range(start, start + m)]
    assert covered == list(range(groups))
    assert all(1 <= m <= max(1, width // group_in) for _, m in chunks)


def test_block_diagonal_and_transposed_kernels():
    k = np.random.RandomState(0).randn(3, 3, 2, 6).astype(np.float32)  # 3 groups, 2 in / 2 out per group
    dense = np.asarray(conv.block_diagonal(jnp.asarray(k), 3))
    assert dense.shape == (3, 3, 6, 6)
    expected = np.zeros((3, 3, 6, 6), np.float32)
    for g in range(3):
        expected[:, :, 2 * g : 2 * g + 2, 2 * g : 2 * g + 2] = k[..., 2 * g : 2 * g + 2]
    np.testing.assert_array_equal(dense, expected)
    # The input gradient's kernel: flipped, and each group's (in, out) block transposed.
    kt = np.asarray(conv.transpose_kernel(jnp.asarray(k), 3))
    np.testing.assert_array_equal(
        np.asarray(conv.block_diagonal(jnp.asarray(kt), 3)), dense[::-1, ::-1].transpose(0, 1, 3, 2)
    )


def test_auto_uses_the_vjp_lowering_on_cpu():
    assert jax.default_backend() == "cpu" and conv.CPU_DEFAULT == "vjp"
    x, k = jnp.ones((1, 8, 8, 16)), jnp.ones((3, 3, 8, 16))

    def compiled(impl, k, groups):  # what XLA gets for CPU: only the branch platform_dependent picked for it
        f = jax.grad(lambda x, k: jnp.sum(conv.conv2d(x, k, 1, groups, impl=impl)), argnums=(0, 1))
        return jax.jit(f).lower(x, k).compile().as_text()

    assert "feature_group_count=2" in compiled("xla", k, 2)
    auto = compiled("auto", k, 2)
    assert "conv_dgrad" in auto and "feature_group_count" not in auto
    one = compiled("auto", jnp.ones((1, 1, 16, 4)), 1)
    assert " dot(" in one and "convolution(" not in one


def test_conv_impl_setting_is_validated(restore_impl):
    with pytest.raises(ValueError, match="conv impl 'cudnn' is invalid: must be one of"):
        layers.set_conv_impl("cudnn")
    with pytest.raises(ValueError, match="REGNET_JAX_CONV_IMPL"):
        conv.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 1, 2, 2)), 1, 1, impl="fast")
    layers.set_conv_impl("xla")
    assert layers.get_conv_impl() == "xla"
