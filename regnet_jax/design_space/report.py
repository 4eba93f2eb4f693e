"""``analyze``: plots (PNG, matplotlib Agg), one self-contained HTML report (images embedded as base64) and the
numbers as JSON, for one sweep or several compared on the same axes.

    REPORT/analysis.html   the report
    REPORT/analysis.json   every number in it (per sweep: error stats, EDF, bootstrap per metric, e_fit, best/worst)
    REPORT/edf.png         error EDFs of all sweeps (legend: name: n | min | mean)
    REPORT/efit.png        e_fit against error
    REPORT/complexity.png  flops / params / acts of the trained models
    REPORT/<sweep>_params.png   error against each parameter, with the bootstrap 95% band, median and mode
    REPORT/<sweep>_widths.png   per-block widths of the best and worst models
    REPORT/<sweep>_curves.png   evaluation error over epochs of the best and worst models
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from regnet_jax.core import paths
from regnet_jax.design_space import analysis as an
from regnet_jax.design_space.collect import read_results
from regnet_jax.design_space.efit import block_widths_of
from regnet_jax.design_space.layout import SweepDir, SweepError, write_json
from regnet_jax.training.plots import save_figure
from regnet_jax.training.records import EVAL_FILE, read_jsonl


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "sweep"


def _save(fig, path: paths.Path) -> paths.Path:
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    _plt().close(fig)
    return path


def plot_edf(sweeps: Sequence[tuple[str, list[float]]], path: paths.Path) -> paths.Path:
    """All sweeps' error EDFs on one plot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, errors in sweeps:
        x, y = an.edf(errors)
        ax.step(
            np.concatenate([[x[0]], x]),
            np.concatenate([[0.0], y]),
            where="post",
            lw=2,
            label=an.edf_label(name, errors),
        )
    ax.set(
        xlabel="error (%)", ylabel="cumulative prob.", title="error EDF  (legend: name: n | min | mean)", ylim=(0, 1.02)
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_params(
    name: str, rows: list[dict[str, Any]], boot: dict[str, dict[str, float]], path: paths.Path
) -> paths.Path:
    """Error against each metric, with the bootstrap 95% interval (band), median (dashed) and mode (dotted)."""
    plt = _plt()
    metrics = list(boot)
    cols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols, 2.9 * nrows), squeeze=False)
    errors = [r["error"] for r in rows]
    for ax, m in zip(axes.flat, metrics):
        b = boot[m]
        ax.axvspan(b["lo"], b["hi"], color="tab:green", alpha=0.2, lw=0)
        ax.axvline(b["median"], color="tab:green", ls="--", lw=1.5)
        ax.axvline(b["mode"], color="tab:red", ls=":", lw=1.5)
        ax.scatter(an.metric_values(rows, m), errors, s=14, alpha=0.8)
        ax.set(
            xlabel=an.METRIC_LABELS.get(m, m),
            ylabel="error (%)",
            title=f"{m}: {b['median']:.3g} [{b['lo']:.3g}, {b['hi']:.3g}]",
        )
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(f"{name}: error vs parameters; band = bootstrap 95% of the best, -- median, : mode", fontsize=10)
    return _save(fig, path)


def plot_efit(sweeps: Sequence[tuple[str, list[dict[str, Any]]]], path: paths.Path) -> paths.Path:
    """e_fit against error, one colour per sweep."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, rows in sweeps:
        rho = an.spearman([r["e_fit"] for r in rows], [r["error"] for r in rows])
        label = f"{name} (Spearman {rho:.2f})" if rho is not None else name
        ax.scatter([r["e_fit"] for r in rows], [r["error"] for r in rows], s=16, alpha=0.8, label=label)
    ax.set(
        xlabel="e_fit (mean |log ratio| of linear-rule to actual block widths)",
        ylabel="error (%)",
        title="linear fit vs error",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_complexity(sweeps: Sequence[tuple[str, list[dict[str, Any]]]], path: paths.Path) -> paths.Path:
    """Histograms of flops, params and acts per sweep (to check the populations are comparable)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for ax, m in zip(axes, ("flops", "params", "acts")):
        for name, rows in sweeps:
            ax.hist(an.metric_values(rows, m), bins=15, alpha=0.5, label=name)
        ax.set(xlabel=an.METRIC_LABELS[m], ylabel="models")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def _short(r: dict[str, Any]) -> str:
    return f"{r['id']} {r['error']:.1f}%: d={r['stage_depths']} w={r['stage_widths']} g={r['g']} b={r['b']:g}"


def plot_widths(name: str, rows: list[dict[str, Any]], path: paths.Path, k: int = 3) -> paths.Path:
    """Per-block widths of the k best (solid) and k worst (dashed) models."""
    plt = _plt()
    order = sorted(rows, key=lambda r: r["error"])
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in order[:k]:
        ax.plot(block_widths_of(r), "o-", ms=3, label="best " + _short(r))
    for r in order[-k:][::-1] if len(order) > k else []:
        ax.plot(block_widths_of(r), "s--", ms=3, label="worst " + _short(r))
    ax.set(
        xlabel="block index",
        ylabel="width",
        yscale="log",
        title=f"{name}: per-block widths of the best and worst models",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5)
    return _save(fig, path)


def plot_curves(
    name: str, sweep_dir: str, rows: list[dict[str, Any]], path: paths.Path, k: int = 3
) -> paths.Path | None:
    """Evaluation top-1 error against epochs of the best and worst models."""
    order = sorted(rows, key=lambda r: r["error"])
    picks = [("best", r) for r in order[:k]] + ([("worst", r) for r in order[-k:][::-1]] if len(order) > k else [])
    curves = [(tag, r, read_jsonl(paths.join(SweepDir(sweep_dir).run_dir(r["id"]), EVAL_FILE))) for tag, r in picks]
    if not any(c for _, _, c in curves):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for tag, r, recs in curves:
        ax.plot(
            [x["epoch"] for x in recs],
            [x["top1_err"] for x in recs],
            "o-" if tag == "best" else "s--",
            ms=3,
            label=f"{tag} {r['id']} ({r['error']:.1f}%)",
        )
    ax.set(xlabel="epoch", ylabel="top-1 error (%)", title=f"{name}: evaluation error of the best and worst models")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _img(path: paths.Path | None, alt: str) -> str:
    if not path:
        return ""
    data = base64.b64encode(paths.read_bytes(path)).decode()
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%"></p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}
th{background:#f0f0f0}h2{border-bottom:1px solid #ccc;margin-top:2em}.note{color:#555;font-size:13px}"""


def analyze(
    sweep_dirs: Sequence[str],
    report_dir: str,
    *,
    frac: float = 0.25,
    repeats: int = 10_000,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Analyse the sweeps (collecting their tables afresh) and write the report; returns analysis.json's content."""
    report = paths.resolve(report_dir)
    paths.makedirs(report)
    sweeps = []
    for d in sweep_dirs:
        rows = read_results(d)
        if not rows:
            log(f"analyze: {d} has no models; skipped")
            continue
        sweeps.append((rows[0]["sweep"], d, rows, an.analyze_rows(rows, frac=frac, repeats=repeats, seed=seed)))
    names = [s[0] for s in sweeps]
    if len(set(names)) != len(names):  # two sweeps with one name: tell them apart by directory
        sweeps = [(f"{n} ({paths.resolve(d).name})", d, r, a) for n, d, r, a in sweeps]
    done = [
        (n, d, [r for r in rows if r["status"] == "done" and r.get("error") is not None], a) for n, d, rows, a in sweeps
    ]
    done = [s for s in done if s[2]]
    if not done:
        raise SweepError(
            "no finished models yet in "
            + ", ".join(sweep_dirs)
            + ": run `python -m regnet_jax.sweep launch --out=DIR` first"
        )
    for _, _, rows, a in done:  # the rows of analysis.json carry e_fit; reuse them for the plots
        if rows and "e_fit" not in rows[0]:
            an.add_efit(rows)
    p = lambda f: report / f  # noqa: E731
    figs = {"edf": plot_edf([(n, [r["error"] for r in rows]) for n, _, rows, _ in done], p("edf.png"))}
    figs["efit"] = plot_efit([(n, rows) for n, _, rows, _ in done], p("efit.png"))
    figs["complexity"] = plot_complexity([(n, rows) for n, _, rows, _ in done], p("complexity.png"))
    per_sweep = {}
    for n, d, rows, a in done:
        s = _slug(n)
        per_sweep[n] = {
            "params": plot_params(n, rows, a["bootstrap"], p(f"{s}_params.png")) if a.get("bootstrap") else None,
            "widths": plot_widths(n, rows, p(f"{s}_widths.png")),
            "curves": plot_curves(n, d, rows, p(f"{s}_curves.png")) if SweepDir(d).exists() else None,
        }
    result = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "error_metric": "best top-1 error (%) over the evaluations of each run (the EMA weights' when evaluated)",
        "bootstrap": {"frac": frac, "repeats": repeats, "alpha": 5.0, "seed": seed},
        "sweeps": {n: {"dir": str(paths.resolve(d)), **a} for n, d, _, a in sweeps},
        "ranking_by_mean_error": [n for n, *_ in sorted(done, key=lambda s: s[3]["error"]["mean"])],
    }
    write_json(p("analysis.json"), result)
    paths.write_text(p("analysis.html"), _html(result, figs, per_sweep, done))
    log(
        "analyze: "
        + "; ".join(
            f"{n}: n={a['error']['n']} min {a['error']['min']:.2f}% mean {a['error']['mean']:.2f}%"
            for n, _, _, a in done
        )
    )
    log(f"analyze: ranking by mean error: {' < '.join(result['ranking_by_mean_error'])}")
    log(f"analyze: report {p('analysis.html')} (numbers in {p('analysis.json')})")
    return result


def _html(result: dict[str, Any], figs: dict[str, str], per_sweep: dict[str, dict[str, str | None]], done: list) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Design-space analysis</title><style>{CSS}</style></head><body>"
    ]
    parts.append("<h1>Design-space analysis</h1>")
    parts.append(f"<p class='note'>{html.escape(result['created'])}. Error = {html.escape(result['error_metric'])}. "
                 f"Bootstrap: {result['bootstrap']['frac']:.0%} of the models drawn with replacement, the best one's value "
                 f"kept, {result['bootstrap']['repeats']:,} repeats; 95% interval, median and mode of the kept values.</p>")  # fmt: skip
    rows = []
    for n, a in result["sweeps"].items():
        e = a.get("error")
        best = a["best"][0]["id"] if a.get("best") else "-"
        stats = [e[k] for k in ("min", "mean", "median", "max")] if e else ["-"] * 4
        rows.append([n, f"{a['done']}/{a['models']}", *stats, best, a["dir"]])
    parts.append(_table(["sweep", "done", "min err", "mean err", "median err", "max err", "best", "directory"], rows))
    parts.append(
        f"<p>Ranking by mean error (best first): <b>{html.escape(' < '.join(result['ranking_by_mean_error']))}</b></p>"
    )
    parts.append("<h2>Error EDF</h2>" + _img(figs["edf"], "EDF"))
    parts.append("<h2>Linear fit e_fit vs error</h2>" + _img(figs["efit"], "e_fit"))
    parts.append("<h2>Complexity of the trained models</h2>" + _img(figs["complexity"], "complexity"))
    for n, _, _, a in done:
        parts.append(f"<h2>{html.escape(n)}</h2>")
        boot = a.get("bootstrap", {})
        parts.append(_table(["metric", "2.5%", "median", "97.5%", "mode (most likely best)"],
                            [[m, b["lo"], b["median"], b["hi"], b["mode"]] for m, b in boot.items()]))  # fmt: skip
        parts.append(_img(per_sweep[n]["params"], f"{n} params"))
        parts.append(_img(per_sweep[n]["widths"], f"{n} widths"))
        parts.append(_img(per_sweep[n]["curves"], f"{n} curves"))
        parts.append("<p>Best and worst models:</p>" + _table(
            ["", "id", "error", "flops (M)", "params (M)", "stage depths", "stage widths", "g", "b", "e_fit"],
            [[tag, r["id"], r["error"], r["flops"] / 1e6, r["params"] / 1e6, r["stage_depths"], r["stage_widths"], r["g"], r["b"], r["e_fit"]]
             for tag, lst in (("best", a["best"]), ("worst", a["worst"])) for r in lst],
        ))  # fmt: skip
    parts.append(
        f"<h2>Numbers</h2><pre style='font-size:11px;max-height:30em;overflow:auto'>{html.escape(json.dumps(_no_edf(result), indent=1))}</pre>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _no_edf(result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "sweeps": {n: {k: v for k, v in a.items() if k != "edf"} for n, a in result["sweeps"].items()}}
