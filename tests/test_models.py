"""Flax models vs the analytic counter, layer semantics and config validation (pycls parity: test_parity.py)."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from regnet_jax.config import ConfigError, validate_model
from regnet_jax.models import create_model, list_models
from regnet_jax.models.complexity import count
from regnet_jax.models.layers import BatchNorm, Conv
from regnet_jax.models.regnet import adjust_block_compatibility, generate_regnet


def _regnet(**kw):
    base = dict(type="regnet", stem_type="simple_stem_in", stem_w=32, block_type="res_bottleneck_block",
                depth=13, w0=24, wa=36.44, wm=2.49, group_w=8, bot_mul=1.0, se_ratio=0.0, num_classes=1000)  # fmt: skip
    return {**base, **kw}


def _anynet(**kw):
    base = dict(type="anynet", stem_type="res_stem_cifar", stem_w=16, block_type="res_bottleneck_block",
                depths=[1, 2], widths=[32, 64], strides=[1, 2], bot_muls=[1.0, 0.5], group_ws=[8, 16],
                se_ratio=0.0, num_classes=10)  # fmt: skip
    return {**base, **kw}


# ---------------------------------------------------------------- the width rule


def test_width_rule_rounds_half_to_even():
    # X-400MF: stage width 392 with group width 16 is 24.5 groups -> 24 (half to even) -> 384, not 400.
    rule = generate_regnet(22, 24, 24.48, 2.54)
    assert 392 in rule.widths
    widths, _ = adjust_block_compatibility(rule.widths, [1.0] * 4, [16] * 4)
    assert widths[-1] == 384


def test_width_rule_stage_bookkeeping():
    rule = generate_regnet(13, 24, 36.44, 2.49)
    assert rule.widths == (24, 56, 152, 368) and rule.depths == (1, 1, 4, 7)
    assert sum(rule.depths) == 13 == len(rule.block_widths)
    assert rule.num_stages == rule.total_stages == 4
    assert list(rule.block_widths) == sorted(rule.block_widths)


def test_compatibility_adjustment():
    # g > w: the group width shrinks to the width; bottleneck widths become multiples of the group width.
    assert adjust_block_compatibility([16], [1.0], [32]) == ([16], [16])
    ws, gs = adjust_block_compatibility([100, 200], [0.25, 4], [8, 24])
    for w, b, g in zip(ws, [0.25, 4], gs):
        assert (w * b) % g == 0


# ---------------------------------------------------------------- analytic counts == built model


def _random_model(rng: random.Random) -> dict:
    stem = rng.choice(["simple_stem_in", "res_stem_in", "res_stem_cifar"])
    se = rng.choice([0.0, 0.25, 0.5])
    if rng.random() < 0.5:
        return _regnet(
            stem_type=stem, stem_w=rng.choice([8, 16, 24, 32]), depth=rng.randint(1, 10), w0=8 * rng.randint(1, 12),
            wa=round(rng.uniform(0, 40), 2), wm=round(rng.uniform(1.5, 3), 3), group_w=rng.choice([1, 2, 4, 8, 16, 24]),
            bot_mul=rng.choice([0.25, 0.5, 1.0, 2.0, 4.0]), se_ratio=se, num_classes=rng.choice([10, 100]),
        )  # fmt: skip
    block = rng.choice(["vanilla_block", "res_basic_block", "res_bottleneck_block", "res_bottleneck_block"])
    n = rng.randint(1, 4)
    widths = [8 * rng.randint(1, 16) for _ in range(n)]
    bot_muls = [rng.choice([0.25, 0.5, 1.0, 2.0]) for _ in range(n)]
    group_ws = [rng.choice([1, 2, 4, 8, 16]) for _ in range(n)]
    widths, group_ws = adjust_block_compatibility(widths, bot_muls, group_ws)
    return _anynet(
        stem_type=stem, stem_w=rng.choice([8, 16, 32]), block_type=block, depths=[rng.randint(1, 3) for _ in range(n)],
        widths=widths, strides=[rng.choice([1, 2]) for _ in range(n)], bot_muls=bot_muls, group_ws=group_ws,
        se_ratio=se if block == "res_bottleneck_block" else 0.0,
    )  # fmt: skip


def _count_from_model(model, resolution: int) -> dict:
    """flops/params/acts measured on the built Flax model: conv output shapes, max-pool and logits."""
    x = jnp.zeros((1, resolution, resolution, 3))
    capture = lambda mdl, _: isinstance(mdl, Conv) or mdl.name == "fc"  # noqa: E731
    _, state = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x, capture_intermediates=capture))
    params = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(state["params"]))
    flops = acts = 0
    for path, out in traverse_util.flatten_dict(state["intermediates"]).items():
        out = out[0]
        kernel = traverse_util.flatten_dict(state["params"])[path[:-1] + ("kernel",)]
        macs_per_out = int(np.prod(kernel.shape[:-1]))  # k*k*c_in/groups (or c_in for dense)
        flops += macs_per_out * int(np.prod(out.shape[1:])) + (out.shape[-1] if path[-2] == "fc" else 0)
        acts += int(np.prod(out.shape[1:]))
    if model.spec.stem_type == "res_stem_in":  # max-pool output counted as activations, as pycls does
        h = (resolution - 1) // 2 + 1
        h = (h - 1) // 2 + 1
        acts += model.spec.stem_w * h * h
    return {"params": params, "flops": flops, "acts": acts}


def test_analytic_counts_equal_built_models_for_random_configs():
    rng = random.Random(0)
    n_checked = 0
    for i in range(80):
        m = _random_model(rng)
        resolution = rng.choice([32, 48, 64, 72])
        model = create_model(m)
        analytic = count(m, resolution)
        if m["se_ratio"] == 0:
            measured = _count_from_model(model, resolution)
            assert measured == analytic, (m, resolution)
        else:  # SE convs run as dense layers on pooled maps; params are still exact
            x = jnp.zeros((1, resolution, resolution, 3))
            v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
            assert sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(v["params"])) == analytic["params"], m
        n_checked += 1
    assert n_checked == 80


# ---------------------------------------------------------------- layers and options


def test_stride2_conv_pads_symmetrically():
    """A 3x3 stride-2 conv on an even input must pad (1,1) as PyTorch does, not (0,1) as 'SAME' would."""
    x = jnp.asarray(
        np.random.default_rng(0).standard_normal((1, 8, 8, 2), dtype=np.float32)
    )  # jax.random: a compilation
    conv = Conv(4, 3, stride=2)
    v = conv.init(jax.random.PRNGKey(1), x)
    y = conv.apply(v, x)
    k = v["params"]["kernel"]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    manual = sum(xp[:, i : i + 8 : 2, j : j + 8 : 2, :] @ k[i, j] for i in range(3) for j in range(3))
    assert y.shape == (1, 4, 4, 4)
    np.testing.assert_allclose(y, manual, rtol=1e-5, atol=1e-5)


def test_batchnorm_matches_torch_semantics():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3, 3, 5), dtype=np.float32)) * 3 + 1
    bn = BatchNorm()
    v = bn.init(jax.random.PRNGKey(0), x, train=True)
    y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
    xn = np.asarray(x).reshape(-1, 5)
    np.testing.assert_allclose(y.reshape(-1, 5), (xn - xn.mean(0)) / np.sqrt(xn.var(0) + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * xn.mean(0), rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * xn.var(0, ddof=1), rtol=1e-5)


def test_init_follows_pycls():
    model = create_model(_regnet(se_ratio=0.25, zero_init_last_bn=True, depth=4))
    v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    flat = traverse_util.flatten_dict(v["params"])
    k = np.asarray(flat[("s2", "b1", "f", "a", "kernel")])  # 1x1 conv: std sqrt(2 / c_out)
    assert abs(k.std() / np.sqrt(2.0 / k.shape[-1]) - 1) < 0.1
    assert np.all(np.asarray(flat[("s1", "b1", "f", "c_bn", "scale")]) == 0)  # zero-init of the last BN
    assert np.all(np.asarray(flat[("s1", "b1", "f", "a_bn", "scale")]) == 1)
    assert np.all(np.asarray(flat[("head", "fc", "bias")]) == 0)
    assert abs(np.asarray(flat[("head", "fc", "kernel")]).std() - 0.01) < 0.002
    default = create_model(_regnet(depth=4)).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert np.all(np.asarray(default["params"]["s1"]["b1"]["f"]["c_bn"]["scale"]) == 1)


def test_se_width_comes_from_block_input_width():
    # First block of Y-600MF: w_in = 32, w_b = 48 -> SE is 48 -> 8 (round(0.25 * 32)), not 48 -> 12.
    model = create_model("regnety_600mf")
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    assert v["params"]["s1"]["b1"]["f"]["se"]["f_ex_0"]["kernel"].shape == (48, 8)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    m = _anynet()
    model = create_model(m, dtype="bfloat16")
    x = jnp.ones((2, 16, 16, 3))
    v = model.init(jax.random.PRNGKey(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(v))
    logits, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
    assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
    ref = create_model(m).apply(v, x, train=False)
    np.testing.assert_allclose(model.apply(v, x, train=False), ref, rtol=0.1, atol=0.05)


def test_create_model_api():
    assert len(list_models()) == 26 and "regnetx_1.6gf" in list_models()
    model = create_model("regnety_4gf", num_classes=10)
    assert model.spec.num_classes == 10 and model.spec.widths == (128, 192, 512, 1088)
    from regnet_jax.models import zoo

    assert create_model(zoo.get_config("regnetx_400mf")).spec.widths[-1] == 384


def test_anynet_bottleneck_fields_are_optional_for_basic_and_vanilla_blocks():
    for block in ("res_basic_block", "vanilla_block"):
        anynet = {k: v for k, v in _anynet(block_type=block).items() if k not in ("bot_muls", "group_ws")}
        m = validate_model(anynet)
        assert (m["bot_muls"], m["group_ws"]) == ([1.0, 1.0], [1, 1])
        assert count(anynet, 32) == count(
            {**anynet, "bot_muls": [0.5, 4], "group_ws": [8, 3]}, 32
        )  # unused: same model
        variables = jax.eval_shape(
            lambda: create_model(anynet).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
        )
        assert sum(x.size for x in jax.tree_util.tree_leaves(variables["params"])) == count(anynet, 32)["params"]


# ---------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    "model, message",
    [
        (_regnet(wm=1.0), "config.model.wm=1.0 is invalid: must be > 1"),
        (_regnet(w0=20), "config.model.w0=20 is invalid: must be a positive multiple of 8"),
        (_regnet(depth=-3), "config.model.depth=-3 is invalid"),
        (_regnet(wa=-1.0), "config.model.wa=-1.0 is invalid: must be >= 0"),
        (_regnet(bot_mul=1.5), "config.model.bot_mul=1.5 is invalid"),
        (_regnet(stem_type="res_stem"), "config.model.stem_type='res_stem' is invalid: must be one of"),
        (_regnet(block_type="x_block"), "config.model.block_type='x_block' is invalid: must be one of"),
        (_regnet(se_ratio=-0.1), "config.model.se_ratio=-0.1 is invalid"),
        (_regnet(type="resnet"), "config.model.type='resnet' is invalid: must be one of ('regnet', 'anynet')"),
        (_regnet(widths=[8]), "config.model.widths is a field of type 'anynet' models"),
        (_regnet(dept=3), "config.model.dept is not a model field"),
        ({k: v for k, v in _regnet().items() if k != "w0"}, "config.model.w0 is missing"),
        (_anynet(widths=[32]), "config.model.widths has 1 entries but depths has 2"),
        (_anynet(depths=[1, -1]), "config.model.depths[1]=-1 is invalid"),
        (_anynet(strides=[1, 3]), "config.model.strides[1]=3 is invalid: must be 1 or 2"),
        (_anynet(group_ws=[8, 24]), "is not divisible by group_ws[1]=24"),
        (_anynet(block_type="res_basic_block", se_ratio=0.25), "needs block_type 'res_bottleneck_block'"),
        (_anynet(depths=[]), "config.model.depths=[] is invalid: must be a non-empty list"),
        ({k: v for k, v in _anynet().items() if k != "group_ws"}, "config.model.group_ws is missing"),
    ],
)
def test_bad_configs_are_rejected_with_a_message(model, message):
    with pytest.raises(ConfigError) as e:
        validate_model(model)
    assert message in str(e.value)
    with pytest.raises(ConfigError):
        create_model(model)
