"""The paper's statistics for model populations: error EDFs, the empirical bootstrap of the best region, and the
numbers the report shows (pure functions over results-table rows).

* EDF (paper §2.2): F(e) = (1/n) sum_i 1[e_i < e], the fraction of models with error below e.
* Bootstrap (paper fn. 4, pycls ``get_filters``): draw ``frac`` * n of the (x, error) pairs with replacement, keep the
  x of the pair with the lowest error, repeat ``repeats`` times; report the 2.5 / 50 / 97.5 percentiles of the kept
  x (the 95% interval and the median) and the most frequently kept x (the most likely best value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from regnet_jax.design_space.efit import block_widths_of, fit_linear

# Metrics plotted against error, when the rows have them (paper notation; b = 1 / bot_mul).
REGNET_METRICS = ("d", "w0", "wa", "wm", "g", "b", "w4", "flops", "params", "acts")
ANYNET_METRICS = ("d", "w4", "g", "b", "flops", "params", "acts", "e_fit", "fit_w0", "fit_wa", "fit_wm")
METRIC_LABELS = {
    "d": "depth d (blocks)", "w0": "w0", "wa": "wa", "wm": "wm", "g": "group width g", "b": "bottleneck ratio b",
    "w4": "final width w4", "flops": "flops (M mult-adds)", "params": "params (M)", "acts": "activations (M)",
    "e_fit": "linear-fit error e_fit", "fit_w0": "w0 of the linear fit", "fit_wa": "wa of the linear fit",
    "fit_wm": "wm of the linear fit",
}  # fmt: skip
SCALE = {"flops": 1e-6, "params": 1e-6, "acts": 1e-6}


def edf(errors: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The EDF as a step function: sorted errors x and F just after each, y_i = i / n (plot with where='post')."""
    x = np.sort(np.asarray(errors, float))
    return x, np.arange(1, x.size + 1) / x.size


def edf_at(errors: Sequence[float], e: float | Sequence[float]) -> np.ndarray:
    """F(e) = fraction of errors strictly below e."""
    errs = np.asarray(errors, float)
    return (errs[None, :] < np.asarray(e, float).reshape(-1, 1)).mean(1)


def bootstrap_samples(n: int, frac: float = 0.25, repeats: int = 10_000, seed: int = 0) -> np.ndarray:
    """``repeats`` x max(1, int(frac * n)) indices drawn with replacement (one row per bootstrap repeat)."""
    rng = np.random.default_rng(seed)
    k = max(1, int(n * frac))
    return rng.integers(0, n, size=(repeats, k))


def best_picks(errors: Sequence[float], samples: np.ndarray) -> np.ndarray:
    """For each row of ``samples`` (indices), the index of its lowest-error model (first one on ties)."""
    errs = np.asarray(errors, float)
    return samples[np.arange(samples.shape[0]), np.argmin(errs[samples], axis=1)]


def interval(values: np.ndarray, alpha: float = 5.0) -> dict[str, float]:
    """The alpha/2, 50, 100 - alpha/2 percentiles and the mode of ``values``."""
    lo, med, hi = np.percentile(values, [alpha / 2, 50, 100 - alpha / 2])
    uniq, counts = np.unique(values, return_counts=True)
    return {"lo": float(lo), "median": float(med), "hi": float(hi), "mode": float(uniq[np.argmax(counts)])}


def bootstrap(
    x: Sequence[float],
    errors: Sequence[float],
    frac: float = 0.25,
    repeats: int = 10_000,
    alpha: float = 5.0,
    seed: int = 0,
) -> dict[str, float]:
    """The bootstrap estimate of the best x: {lo, median, hi, mode, n, sample, repeats} (see the module docstring)."""
    x = np.asarray(x, float)
    if x.size == 0:
        raise ValueError("bootstrap needs at least one model")
    picks = best_picks(errors, bootstrap_samples(x.size, frac, repeats, seed))
    return {
        **interval(x[picks], alpha),
        "n": int(x.size),
        "sample": max(1, int(x.size * frac)),
        "repeats": int(repeats),
    }


def error_stats(errors: Sequence[float]) -> dict[str, float]:
    e = np.asarray(errors, float)
    return {
        "n": int(e.size),
        "min": float(e.min()),
        "mean": float(e.mean()),
        "median": float(np.median(e)),
        "max": float(e.max()),
    }


def edf_label(name: str, errors: Sequence[float]) -> str:
    """The paper's legend: 'name: n | min | mean'."""
    s = error_stats(errors)
    return f"{name}: {s['n']} | {s['min']:.1f} | {s['mean']:.1f}"


def add_efit(rows: list[dict[str, Any]]) -> None:
    """Add e_fit and the fitted fit_w0 / fit_wa / fit_wm to each row (from its per-block widths)."""
    for r in rows:
        f = fit_linear(block_widths_of(r))
        r.update(e_fit=f.e_fit, fit_w0=f.w0, fit_wa=f.wa, fit_wm=f.wm)


def metrics_for(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics to plot for these rows (RegNet parameters only if every row is a RegNet)."""
    regnet = rows and all(r["type"] == "regnet" for r in rows)
    names = REGNET_METRICS if regnet else ANYNET_METRICS
    return [m for m in names if all(r.get(m) is not None for r in rows)]


def metric_values(rows: Sequence[Mapping[str, Any]], metric: str) -> np.ndarray:
    return np.asarray([r[metric] for r in rows], float) * SCALE.get(metric, 1.0)


def analyze_rows(
    rows: list[dict[str, Any]], *, frac: float = 0.25, repeats: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """The numbers of one sweep: error statistics, EDF, bootstrap per metric, e_fit correlation, best/worst models."""
    done = [r for r in rows if r["status"] == "done" and r.get("error") is not None]
    out: dict[str, Any] = {"models": len(rows), "done": len(done), "status": _counts(r["status"] for r in rows)}
    if not done:
        return out
    errors = [r["error"] for r in done]
    add_efit(done)
    x, y = edf(errors)
    samples = bootstrap_samples(len(done), frac, repeats, seed)
    picks = best_picks(errors, samples)
    boot = {}
    for m in metrics_for(done):
        vals = metric_values(done, m)
        boot[m] = {**interval(vals[picks]), "n": len(done), "sample": samples.shape[1], "repeats": repeats}
    order = sorted(done, key=lambda r: r["error"])
    out.update(
        error=error_stats(errors),
        legend=edf_label(rows[0]["sweep"], errors),
        edf={"x": x.tolist(), "y": y.tolist()},
        bootstrap=boot,
        e_fit={
            "spearman_vs_error": spearman([r["e_fit"] for r in done], errors),
            "mean": float(np.mean([r["e_fit"] for r in done])),
        },
        best=[_brief(r) for r in order[:5]],
        worst=[_brief(r) for r in order[-5:][::-1]],
    )
    return out


def _counts(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in items:
        out[k] = out.get(k, 0) + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Rank correlation (average ranks for ties); None when undefined (fewer than 3 models or a constant input)."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size)
    ranks[order] = np.arange(v.size)
    for u in np.unique(v):  # average the ranks of ties
        m = v == u
        ranks[m] = ranks[m].mean()
    return ranks


def _brief(r: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "error",
        "flops",
        "params",
        "acts",
        "d",
        "w4",
        "g",
        "b",
        "stage_depths",
        "stage_widths",
        "stage_group_ws",
        "e_fit",
    )
    extra = ("depth", "w0", "wa", "wm", "group_w", "bot_mul") if r["type"] == "regnet" else ()
    return {k: (None if isinstance(r.get(k), float) and math.isnan(r[k]) else r.get(k)) for k in (*keys, *extra)}
