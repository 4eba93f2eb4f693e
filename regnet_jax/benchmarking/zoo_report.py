"""The zoo benchmark: every zoo model timed in turn (``python -m regnet_jax.benchmark --zoo``), a markdown table, and
the paper's Fig. 12-style plot of time per image against flops and activations with their correlations.

    results = run_zoo(zoo_names(), mode="infer", batch=8)
    write_zoo_outputs(results, "zoo_bench")        # results.json, results.csv, table.md, zoo_time.png
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from regnet_jax.benchmarking.timing import TRAIN_FLOPS_FACTOR, Result, benchmark
from regnet_jax.config import ConfigError, smoke
from regnet_jax.core import paths
from regnet_jax.models.zoo import ZOO, get_config


def zoo_names(selection: str = "") -> list[str]:
    """The 24 RegNetX/Y zoo models, or the comma-separated ``selection`` (any zoo names, checked)."""
    if not selection:
        return [n for n in ZOO if n.startswith("regnet")]
    names = [n.strip() for n in selection.split(",") if n.strip()]
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise ConfigError(f"--zoo_models: unknown model(s) {unknown}; choose from {list(ZOO)}")
    return names


def run_zoo(names: list[str], progress: Callable[[str], None] = print, **kwargs: Any) -> list[Result]:
    """``benchmark`` for each zoo model, printing a line (and an ETA) per model."""
    results: list[Result] = []
    start = time.perf_counter()
    for i, name in enumerate(names):
        r = benchmark(smoke.shrink_loaded(get_config(name)), name=name, **kwargs)
        results.append(r)
        eta = (time.perf_counter() - start) / (i + 1) * (len(names) - i - 1)
        progress(
            f"[{i + 1}/{len(names)}] {name}: {r.ms_per_image:.2f} ms/image, {r.images_per_s:.1f} images/s, compile {r.compile_s:.1f} s (ETA {eta:.0f} s)"
        )
    return results


def pearson_r(x: list[float], y: list[float]) -> float:
    """Pearson correlation coefficient (nan for fewer than 2 points or a constant series)."""
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def zoo_table(results: list[Result]) -> str:
    """A markdown table: model, GFLOPs (forward MACs), Macts, Mparams, ms/image, images/s, compile s."""
    lines = [
        "| model | GFLOPs | Macts | Mparams | ms/image | images/s | compile s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        fwd = r.gflops_per_image / (TRAIN_FLOPS_FACTOR if r.mode == "train" else 1)
        lines.append(
            f"| {r.model} | {fwd:.3f} | {r.acts / 1e6:.3f} | {r.params / 1e6:.3f} | {r.ms_per_image:.3f} | {r.images_per_s:.1f} | {r.compile_s:.1f} |"
        )
    return "\n".join(lines)


def write_zoo_outputs(results: list[Result], out_dir: str) -> dict[str, str]:
    """Write results.json, results.csv, table.md and the Fig. 12-style plot zoo_time.png into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths.makedirs(out_dir)
    rows = [dataclasses.asdict(r) for r in results]
    files = {
        k: os.path.join(out_dir, f)
        for k, f in (("json", "results.json"), ("csv", "results.csv"), ("table", "table.md"), ("plot", "zoo_time.png"))
    }
    with open(files["json"], "w") as f:
        json.dump(rows, f, indent=1)
    with open(files["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    r0 = results[0]
    title = f"{r0.mode} {r0.dtype}, batch {r0.batch} @ {r0.resolution}px, {r0.devices} x {r0.device_kind}"
    with open(files["table"], "w") as f:
        f.write(f"{title}\n\n{zoo_table(results)}\n")
    fwd_gflops = [r.gflops_per_image / (TRAIN_FLOPS_FACTOR if r.mode == "train" else 1) for r in results]
    acts = [r.acts / 1e6 for r in results]
    ms = [r.ms_per_image for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, xs, label in ((axes[0], fwd_gflops, "flops (B multiply-adds)"), (axes[1], acts, "activations (M)")):
        for family, marker in (("regnetx", "o"), ("regnety", "s"), ("res", "^")):
            pts = [(x, y) for x, y, r in zip(xs, ms, results) if r.model.startswith(family)]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, label=family)
        if len(xs) >= 2:
            fit = np.polyfit(xs, ms, 1)
            grid = np.linspace(min(xs), max(xs), 50)
            ax.plot(grid, np.polyval(fit, grid), "k--", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("time per image (ms)")
        ax.set_title(f"r = {pearson_r(xs, ms):.3f}")
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(files["plot"], dpi=100)
    plt.close(fig)
    return files
