"""Design spaces and samplers: distributions match their definitions, every sample is inside its space and regime,
sampling is reproducible, and the constraint checks themselves catch models outside a space."""

import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from regnet_jax.config import ConfigError, validate_model
from regnet_jax.design_space import SPACES, Dist, TooFewModelsError, get_space, sample_space
from regnet_jax.design_space import distributions as D
from regnet_jax.models import create_model, model_spec
from regnet_jax.models.complexity import count
from regnet_jax.models.regnet import generate_regnet

REGIME = {"flops": (360e6, 400e6)}


def _chi2_p(samples, probs: dict) -> float:
    counts = Counter(samples)
    assert set(counts) <= set(probs), f"values outside the support: {sorted(set(counts) - set(probs))}"
    keys = sorted(probs)
    observed = np.array([counts.get(k, 0) for k in keys], float)
    expected = np.array([probs[k] for k in keys]) * len(samples)
    assert math.isclose(sum(probs.values()), 1.0, rel_tol=1e-9)
    return stats.chisquare(observed, expected).pvalue


def _log_uniform_probs(low, high, q):
    """Hand-derived: log f ~ U(log(low - q*), log(high)], value = ceil(f / q) * q, q* = min(q, low / 2)."""
    lo = low - min(q, low / 2)
    total = math.log(high) - math.log(lo)
    values = np.arange(low, high + q / 2, q)
    return {float(v): (math.log(v) - math.log(max(v - q, lo))) / total for v in values}


def _draw(fn, low, high, q, n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    return [fn(rng, low, high, q) for _ in range(n)]


@pytest.mark.parametrize("low,high,q", [(1, 16, 1), (8, 1024, 8), (0.5, 16.0, 0.5)])
def test_log_uniform_matches_definition(low, high, q):
    samples = _draw(D.log_uniform, low, high, q)
    assert all(type(v) is type(q) for v in samples)
    assert _chi2_p([float(v) for v in samples], _log_uniform_probs(low, high, q)) > 1e-3


def test_uniform_and_power2_match_definitions():
    u = _draw(D.uniform, 1, 16, 1)
    assert _chi2_p(u, {v: 1 / 16 for v in range(1, 17)}) > 1e-3
    p2 = _draw(D.power2_uniform, 1, 32, 1)
    assert _chi2_p(p2, {2**k: 1 / 6 for k in range(6)}) > 1e-3
    b = _draw(D.power2_uniform, 0.25, 1.0, 1 / 128)
    assert _chi2_p(b, {0.25: 1 / 3, 0.5: 1 / 3, 1.0: 1 / 3}) > 1e-3


def test_power2_or_log_uniform_matches_definition():
    # Powers of two below q=8 (1, 2, 4) take 1/6 each; the other half is log-uniform over multiples of 8 in [8, 32].
    upper = _log_uniform_probs(8, 32, 8)
    probs = {1: 1 / 6, 2: 1 / 6, 4: 1 / 6, **{int(k): 0.5 * v for k, v in upper.items()}}
    assert _chi2_p(_draw(D.power2_or_log_uniform, 1, 32, 8), probs) > 1e-3


def test_quantised_floats_are_exact_and_in_range():
    for v in _draw(D.log_uniform, 1.5, 3.0, 0.001, n=2000):
        assert 1.5 <= v <= 3.0 and round(v, 3) == v
    for v in _draw(D.log_uniform, 8.0, 256.0, 0.1, n=2000):
        assert 8.0 <= v <= 256.0 and round(v, 1) == v
    normal = _draw(D.normal, 0, 10, 1, n=2000)
    assert min(normal) >= 0 and max(normal) <= 10 and abs(np.mean(normal) - 5) < 0.2


def test_dist_parse_and_validation_errors():
    assert Dist.parse("log_uniform:1:16:1") == Dist("log_uniform", 1, 16, 1)
    assert Dist.parse("choice:0.25,1.0").values == (0.25, 1.0)
    assert str(Dist.parse("log_uniform:8.0:256.0:0.1")) == "log_uniform:8.0:256.0:0.1"
    for bad, word in [("log_uniform:0:16:1", "low > 0"), ("power2_uniform:3:32:1", "powers of two"),
                      ("uniform:1:15:2", "multiples"), ("uniform:1:16", "kind:low:high:q"), ("gauss:1:2:1", "kind")]:  # fmt: skip
        with pytest.raises(ConfigError, match=word):
            Dist.parse(bad)


def test_space_marginals_follow_their_distributions():
    space = get_space("anynetx_a")
    rng = np.random.default_rng(0)
    draws = [space.draw(rng) for _ in range(5000)]
    depths = [d for v in draws for d in v["depth"]]
    assert _chi2_p([float(d) for d in depths], _log_uniform_probs(1, 16, 1)) > 1e-3
    assert _chi2_p([g for v in draws for g in v["group_w"]], {2**k: 1 / 6 for k in range(6)}) > 1e-3


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_sample_is_inside_its_space_and_regime(name):
    space = get_space(name)
    result = sample_space(space, 25, seed=1, regime=REGIME)
    specs = set()
    for s in result.samples:
        m = s.model
        assert validate_model(m) == m  # complete, with every optional field
        assert space.violations(m) == []
        assert s.complexity == count(m, 224)
        assert 360e6 <= s.complexity["flops"] <= 400e6
        spec = model_spec(m)
        specs.add(spec)
        if m["block_type"] == "res_bottleneck_block":
            for blk in spec.blocks():  # buildable: every bottleneck width divisible by its group width
                assert blk["w_b"] % (blk["w_b"] // blk["groups"]) == 0 and blk["groups"] >= 1
        _check_paper_ranges(name, m, s.complexity)
    assert len(specs) == 25  # duplicates removed


def _check_paper_ranges(name: str, m: dict, cx: dict) -> None:
    """The paper's definitions (Radosavovic et al. 2020, §3.2-§4, Table 1; docs/fidelity.md#design-spaces), checked here independently of DesignSpace.violations."""
    if m["type"] == "anynet":
        assert len(m["depths"]) == 4 and all(1 <= d <= 16 for d in m["depths"])
        assert all(8 <= w <= 1024 and w % 8 == 0 for w in m["widths"])
        assert all(b in (1.0, 0.5, 0.25) for b in m["bot_muls"])
        assert all(1 <= g <= 32 for g in m["group_ws"])
        w_b = [round(w * b) for w, b in zip(m["widths"], m["bot_muls"])]
        if name >= "anynetx_b":
            assert len(set(m["bot_muls"])) == 1
        if name >= "anynetx_c":  # one g, set to the bottleneck width where it is larger (App. D)
            assert all(g == min(max(m["group_ws"]), wb) for g, wb in zip(m["group_ws"], w_b))
        if name >= "anynetx_d":
            assert m["widths"] == sorted(m["widths"])
        if name == "anynetx_e":
            assert m["depths"] == sorted(m["depths"])
        return
    rule = generate_regnet(m["depth"], m["w0"], m["wa"], m["wm"])
    assert rule.num_stages == rule.total_stages == 4
    assert m["depth"] < 64 and m["w0"] <= 256 and m["wa"] <= 256 and 1.5 <= m["wm"] <= 3
    assert m["se_ratio"] == (0.25 if name == "regnety" else 0.0)
    if name.startswith("regnetx_constrained"):
        f = cx["flops"] / 1e9
        assert m["bot_mul"] == 1.0 and m["depth"] <= 40 and m["wm"] >= 2
        assert cx["params"] < (3 + 5.5 * f) * 1e6 and cx["acts"] < 6.5 * math.sqrt(f) * 1e6
        if name.endswith("d12_28"):
            assert 12 <= m["depth"] <= 28


def test_samples_build_as_flax_models():
    for name in ("anynetx_a", "regnety"):
        m = sample_space(get_space(name), 1, seed=0, regime=REGIME).samples[0].model
        model = create_model(m)
        shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), jnp.zeros((1, 64, 64, 3)))
        n_params = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(shapes["params"]))
        assert n_params == count(m)["params"]


def test_sampling_is_reproducible_from_the_seed():
    space = get_space("anynetx_c")
    a = sample_space(space, 10, seed=7, regime=REGIME)
    b = sample_space(space, 10, seed=7, regime=REGIME)
    c = sample_space(space, 10, seed=8, regime=REGIME)
    assert [s.model for s in a.samples] == [s.model for s in b.samples]
    assert [s.model for s in a.samples] != [s.model for s in c.samples]
    # A larger n starts with the same models (so a sweep can be extended).
    assert [s.model for s in sample_space(space, 12, seed=7, regime=REGIME).samples[:10]] == [
        s.model for s in a.samples
    ]


def test_violations_catch_models_outside_the_space():
    b = sample_space(get_space("anynetx_b"), 1, seed=0, regime=REGIME).samples[0].model
    assert get_space("anynetx_b").violations({**b, "bot_muls": [1.0, 0.5, 1.0, 1.0]})
    e = sample_space(get_space("anynetx_e"), 1, seed=0, regime=REGIME).samples[0].model
    assert any(
        "depth=[4, 3, 2, 1] is not non-decreasing" in v
        for v in get_space("anynetx_e").violations({**e, "depths": [4, 3, 2, 1]})
    )
    assert any("1024" in v for v in get_space("anynetx_a").violations({**e, "widths": [8, 16, 32, 2048]}))
    r = sample_space(get_space("regnetx"), 1, seed=0, regime=REGIME).samples[0].model
    assert any("stages" in v for v in get_space("regnetx").violations({**r, "depth": 60, "wa": 250.0, "w0": 8}))
    assert any("se_ratio" in v for v in get_space("regnetx").violations({**r, "se_ratio": 0.25}))


def test_too_few_models_is_a_clear_error():
    with pytest.raises(TooFewModelsError, match=r"only \d+ of the 5 models.*flops outside the regime.*--flops"):
        sample_space(get_space("regnetx"), 5, seed=0, regime={"flops": (1, 2)}, max_draws=2000)


def test_fork_declares_a_new_space_in_a_few_lines():
    space = get_space("anynetx_e").fork(
        "mini_e", dists={"depth": "log_uniform:1:3:1", "width": "log_uniform:8:64:8"}, model={"activation": "silu"}
    )
    for s in sample_space(space, 15, seed=0, resolution=32, num_classes=10).samples:
        assert s.model["activation"] == "silu" and s.model["num_classes"] == 10
        assert all(d <= 3 for d in s.model["depths"]) and max(s.model["widths"]) <= 64
        assert s.model["depths"] == sorted(s.model["depths"]) and s.model["widths"] == sorted(s.model["widths"])
    assert space.name == "mini_e" and space.description.startswith("anynetx_e forked: depth=log_uniform:1:3:1")
    assert get_space("anynetx_e").fork("e2", description="mine").description == "mine"
    with pytest.raises(ConfigError, match="needs distributions"):
        get_space("regnetx").fork("bad", dists={"width": "log_uniform:8:64:8"})


def test_a_fixed_field_that_never_builds_fails_fast():
    space = get_space("regnetx").fork("broken", model={"strides": [1, 2, 2, 2]})
    with pytest.raises(ConfigError, match="none of the first 1,000 candidates builds a model.*strides"):
        sample_space(space, 2, seed=0)
