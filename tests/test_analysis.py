"""EDF, bootstrap and e_fit against hand-computed cases; e_fit recovers the rule's parameters and grows with noise."""

import numpy as np
import pytest

from regnet_jax.design_space import analysis as an
from regnet_jax.design_space import get_space
from regnet_jax.design_space.efit import fit_linear, rule_widths
from regnet_jax.models.regnet import generate_regnet


def test_edf_hand_computed():
    x, y = an.edf([30.0, 10.0, 20.0, 20.0])
    assert x.tolist() == [10, 20, 20, 30] and y.tolist() == [0.25, 0.5, 0.75, 1.0]
    # F(e) counts errors strictly below e.
    assert an.edf_at([30.0, 10.0, 20.0, 20.0], [10, 15, 20, 20.5, 31]).tolist() == [0, 0.25, 0.25, 0.75, 1.0]
    assert an.edf_label("A", [30.0, 10.0, 20.0, 20.0]) == "A: 4 | 10.0 | 20.0"


def test_best_picks_and_interval_hand_computed():
    errors = [5.0, 3.0, 9.0, 1.0]
    samples = np.array([[0, 2], [1, 0], [2, 2], [3, 1], [1, 1]])
    assert an.best_picks(errors, samples).tolist() == [0, 1, 2, 3, 1]
    assert an.best_picks([2.0, 2.0], np.array([[1, 0]])).tolist() == [1]  # ties: the first in the sample
    iv = an.interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert iv == pytest.approx({"lo": 1.1, "median": 3.0, "hi": 4.9, "mode": 1.0})  # numpy's linear percentiles
    assert an.interval(np.array([7.0, 3.0, 7.0, 1.0]))["mode"] == 7.0


def test_bootstrap_sample_sizes():
    s = an.bootstrap_samples(10, frac=0.25, repeats=100, seed=0)
    assert s.shape == (100, 2) and s.min() >= 0 and s.max() <= 9
    assert an.bootstrap_samples(3, frac=0.25, repeats=5).shape == (5, 1)  # at least one model per repeat


def test_bootstrap_pick_frequencies_match_the_exact_law():
    # With n models and k draws with replacement, the r-th best is kept with probability ((n-r)/n)^k - ((n-r-1)/n)^k.
    n, k, repeats = 8, 2, 10_000
    errors = np.arange(n, dtype=float)[::-1]  # model 7 is the best
    picks = an.best_picks(errors, an.bootstrap_samples(n, frac=k / n, repeats=repeats, seed=1))
    for r in range(n):
        expected = ((n - r) / n) ** k - ((n - r - 1) / n) ** k
        assert abs(np.mean(picks == n - 1 - r) - expected) < 0.015, r


def test_bootstrap_interval_hand_computed():
    # x = rank of the model (0 = best). Cumulative law over ranks for n=8, k=2: 15/64, 28/64, 39/64, ..., 63/64, 1:
    # 2.5% -> rank 0, median -> rank 2 (28/64 < 0.5 < 39/64), 97.5% -> rank 6 (60/64 < 0.975 < 63/64), mode rank 0.
    errors = np.arange(8, dtype=float)
    b = an.bootstrap(x=np.arange(8), errors=errors, frac=0.25, repeats=10_000, seed=3)
    assert (b["lo"], b["median"], b["hi"], b["mode"]) == (0.0, 2.0, 6.0, 0.0)
    assert (b["n"], b["sample"], b["repeats"]) == (8, 2, 10_000)


def test_spearman_hand_computed():
    assert an.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert an.spearman([1, 2, 2, 4], [1, 3, 3, 4]) == pytest.approx(1.0)
    assert an.spearman([1, 1, 1], [1, 2, 3]) is None


ZOO_RULES = [
    (13, 24, 36.44, 2.49),
    (22, 24, 24.48, 2.54),
    (16, 48, 27.89, 2.09),
    (23, 80, 49.56, 2.88),
    (18, 200, 106.23, 2.48),
]


def _random_rules(n: int, seed: int):
    space, rng, out = get_space("regnetx"), np.random.default_rng(seed), []
    while len(out) < n:
        v = space.draw(rng)
        rule = generate_regnet(v["depth"], v["w0"], v["wa"], v["wm"])
        if rule.num_stages == rule.total_stages == 4:
            out.append((v["depth"], v["w0"], v["wa"], v["wm"]))
    return out


@pytest.mark.parametrize("d,w0,wa,wm", ZOO_RULES + _random_rules(15, seed=0))
def test_efit_is_zero_for_rule_widths_and_recovers_parameters(d, w0, wa, wm):
    widths = generate_regnet(d, w0, wa, wm).block_widths
    fit = fit_linear(widths)
    assert fit.e_fit < 1e-9
    assert fit.predicted == widths and fit.w0 == w0
    # wa and wm are identifiable only up to the rule's quantisation: the fit lands inside that region, near the truth.
    assert abs(fit.wa - wa) / wa < 0.25 and abs(fit.wm - wm) < 0.1
    assert rule_widths(d, np.array(fit.w0), np.array(fit.wa), np.array(fit.wm)).astype(int).tolist() == list(widths)


def test_efit_of_constant_widths():
    fit = fit_linear([64] * 10)
    assert fit.e_fit == 0 and fit.w0 == 64 and fit.predicted == (64,) * 10


@pytest.mark.parametrize("d,w0,wa,wm", ZOO_RULES[:3])
def test_efit_grows_with_perturbation(d, w0, wa, wm):
    widths = generate_regnet(d, w0, wa, wm).block_widths
    errs = []
    for scale in (1.15, 1.4, 1.8, 2.5):
        noisy = [int(round(w * scale / 8)) * 8 if j % 3 == 0 else w for j, w in enumerate(widths)]
        errs.append(fit_linear(noisy).e_fit)
    assert errs[0] > 0.01 and errs == sorted(errs) and errs[-1] > 2 * errs[0], errs


def test_analyze_rows_numbers():
    rows = []
    for i, err in enumerate([30.0, 10.0, 20.0, 40.0, 50.0, 60.0, 70.0, 80.0]):
        rows.append(dict(id=f"{i:06d}", sweep="s", status="done", type="anynet", error=err, d=4, w4=8 * (i + 1), g=8, b=1.0,
                         flops=1e6 * (i + 1), params=1e5, acts=1e4, stage_depths=[1, 1, 1, 1], stage_widths=[16, 32, 64, 8 * (i + 1)]))  # fmt: skip
    rows.append(dict(rows[0], id="000009", status="failed", error=None))
    out = an.analyze_rows(rows, repeats=4000)
    assert (out["models"], out["done"], out["status"]) == (9, 8, {"done": 8, "failed": 1})
    assert out["error"] == pytest.approx({"n": 8, "min": 10.0, "mean": 45.0, "median": 45.0, "max": 80.0})
    assert out["legend"] == "s: 8 | 10.0 | 45.0"
    assert [r["id"] for r in out["best"]] == ["000001", "000002", "000000", "000003", "000004"]
    assert [r["id"] for r in out["worst"]][:2] == ["000007", "000006"]
    assert set(out["bootstrap"]) == {
        "d",
        "w4",
        "g",
        "b",
        "flops",
        "params",
        "acts",
        "e_fit",
        "fit_w0",
        "fit_wa",
        "fit_wm",
    }
    # 2 of 8 drawn per repeat: the best model (w4 = 16) is kept most often (15/64), the 2nd (w4 = 24) next (13/64).
    assert out["bootstrap"]["w4"]["mode"] == 16
    assert out["bootstrap"]["flops"]["lo"] >= 1.0 and out["bootstrap"]["flops"]["hi"] <= 8.0  # in M
    assert out["e_fit"]["mean"] > 0
