"""Convolution lowerings: the CPU 'blocked' lowering gives the native op's results (forward and gradients) for every
kind of convolution the models use (pycls parity with each lowering: test_parity.py)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax.models import layers


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
        y = layers.conv2d(x, k, stride, groups, impl=impl)
        return jnp.sum(y * r), y

    (_, y), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, kernel)
    return (y, *grads)


# (height, width, c_in, c_out, kernel size, stride, groups)
CASES = [
    (7, 7, 6, 10, 1, 1, 1),  # 1x1 (a matmul in the blocked lowering)
    (8, 8, 6, 10, 1, 2, 1),  # 1x1 stride 2 (projection shortcut)
    (9, 9, 3, 8, 3, 2, 1),  # dense 3x3 stride 2 on an odd size (stem)
    (8, 8, 16, 16, 3, 1, 2),  # few groups: one chunk of both
    (7, 7, 104, 104, 3, 2, 13),  # group width 8, 13 groups: chunks of 2 (16 channels), the last of 1
    (6, 6, 12, 24, 3, 1, 3),  # c_out != c_in per group
    (8, 8, 24, 24, 3, 1, 24),  # depthwise (stride 2: test_chunk_width_rule_and_uneven_chunks)
    (7, 7, 16, 16, 5, 2, 4),  # 5x5 grouped
]


@pytest.mark.parametrize("h, w, c_in, c_out, k, stride, groups", CASES)
def test_blocked_conv_equals_native_forward_and_gradients(h, w, c_in, c_out, k, stride, groups):
    kx, kk, kr = jax.random.split(jax.random.PRNGKey(h * 100 + c_in + groups), 3)
    x = jax.random.normal(kx, (2, h, w, c_in))
    kernel = jax.random.normal(kk, (k, k, c_in // groups, c_out))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    r = jax.random.normal(kr, (2, ho, wo, c_out))
    native = _value_and_grads("xla", x, kernel, stride, groups, r)
    blocked = _value_and_grads("blocked", x, kernel, stride, groups, r)
    assert native[0].shape == blocked[0].shape == (2, ho, wo, c_out)
    for name, a, b in zip(("output", "grad x", "grad kernel"), blocked, native):
        assert _rel_err(a, b) < 1e-5, (name, _rel_err(a, b))


def test_chunk_width_rule_and_uneven_chunks(monkeypatch):
    assert layers.chunk_width(32 * 56 * 56) == 8 and layers.chunk_width(32 * 28 * 28) == 16
    assert layers.group_chunks(24, 1, 8) == [(0, 8), (8, 8), (16, 8)]
    assert layers.group_chunks(20, 1, 8) == [(0, 8), (8, 8), (16, 4)]
    monkeypatch.setattr(layers, "CHUNK_WIDTH", 8)  # depthwise, 20 channels: chunks of 8, 8, 4
    assert layers.chunk_width(1) == 8
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 20))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 1, 20))
    r = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 3, 20))
    for a, b in zip(_value_and_grads("blocked", x, kernel, 2, 20, r), _value_and_grads("xla", x, kernel, 2, 20, r)):
        assert _rel_err(a, b) < 1e-5


@pytest.mark.parametrize("groups, group_in, width", [(13, 8, 32), (6, 8, 32), (2, 64, 32), (17, 64, 128), (55, 8, 32), (1, 3, 32)])
def test_group_chunks_cover_every_group_once(groups, group_in, width):
    chunks = layers.group_chunks(groups, group_in, width)
    covered = [g for start, m in chunks for g in range(start, start + m)]
    assert covered == list(range(groups))
    assert all(1 <= m <= max(1, width // group_in) for _, m in chunks)


def test_block_diagonal_kernel():
    k = np.random.RandomState(0).randn(3, 3, 2, 6).astype(np.float32)  # 3 groups, 2 in / 2 out per group
    dense = np.asarray(layers.block_diagonal(jnp.asarray(k), 3))
    assert dense.shape == (3, 3, 6, 6)
    expected = np.zeros((3, 3, 6, 6), np.float32)
    for g in range(3):
        expected[:, :, 2 * g : 2 * g + 2, 2 * g : 2 * g + 2] = k[..., 2 * g : 2 * g + 2]
    np.testing.assert_array_equal(dense, expected)


def test_auto_uses_the_blocked_lowering_on_cpu():
    assert jax.default_backend() == "cpu"
    x, k = jnp.ones((1, 8, 8, 16)), jnp.ones((3, 3, 8, 16))

    def lowered(impl, k, groups):  # what XLA gets for CPU: only the branch platform_dependent picked for it
        f = jax.grad(lambda x, k: jnp.sum(layers.conv2d(x, k, 1, groups, impl=impl)), argnums=(0, 1))
        return jax.jit(f).lower(x, k).as_text()

    assert "feature_group_count = 2" in lowered("xla", k, 2)
    auto = lowered("auto", k, 2)
    assert "stablehlo.convolution" in auto and set(re.findall(r"feature_group_count = (\d+)", auto)) == {"1"}
    one = lowered("auto", jnp.ones((1, 1, 16, 4)), 1)
    assert "stablehlo.dot_general" in one and "stablehlo.convolution" not in one


def test_conv_impl_setting_is_validated(restore_impl):
    with pytest.raises(ValueError, match="conv impl 'cudnn' is invalid: must be one of"):
        layers.set_conv_impl("cudnn")
    with pytest.raises(ValueError, match="REGNET_JAX_CONV_IMPL"):
        layers.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 1, 2, 2)), 1, 1, impl="fast")
    layers.set_conv_impl("xla")
    assert layers.get_conv_impl() == "xla"
