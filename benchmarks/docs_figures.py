"""Measure the figures the docs quote, and write them into the docs: one command regenerates them all.

    python benchmarks/docs_figures.py                 # measure everything, update the docs (run on an idle machine)
    python benchmarks/docs_figures.py --only=quickstart_5ep --dry_run     # one figure, print it, change nothing
    python benchmarks/docs_figures.py --only=quickstart --check           # retrain, compare with the documented band

Accuracy figures are the mean +- standard deviation over ``--seeds`` runs (config.seed = 0, 1, ...; default 3), with
min and max; times are the mean of the same runs. ``--check`` changes nothing: it prints each accuracy's mean +- std
beside the documented one and exits 1 if the new mean falls outside the documented min-max widened by twice the
documented standard deviation (a recipe regression, as flax's ImageNet example guards its accuracy).

A figure in README.md or docs/*.md is written ``<!-- figure:NAME -->TEXT<!-- /figure -->``; this script measures
each NAME (``FIGURES`` below), replaces TEXT with the new value, and records in docs/figures.json and
docs/figures.md the command that measured it, the date, the commit, the Python/JAX/jaxlib versions, the machine
(CPU model) and its load average before and after.
tests/test_docs.py checks that the docs carry exactly what docs/figures.json holds.

Speed figures of the benchmarks (ratios to PyTorch, images/s, compile times of the zoo models) are measured by the
performance-figures script of docs/performance.md (benchmarks/regenerate_cpu_figures.sh), which this script runs
last (``PERF_FIGURES``; ``--no_perf`` skips it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from regnet_jax.benchmarking.input_pipeline import MAX_LOAD, settle

REPO = pathlib.Path(__file__).resolve().parents[1]
FIGURES_JSON = REPO / "docs" / "figures.json"
FIGURES_MD = REPO / "docs" / "figures.md"
SPAN = re.compile(r"<!-- figure:(\w+) -->(.*?)<!-- /figure -->", re.S)
PERF_FIGURES = ["bash", "benchmarks/regenerate_cpu_figures.sh"]  # performance.md's CPU figures, run after those below


def _machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        model = names[0] if names else model
    import jax  # the runs measured see the same environment, so the same devices (results depend on their number)

    return f"{cpus} CPU cores ({model}), {platform.system()}, {jax.device_count()} JAX {jax.default_backend().upper()} device(s)"


def _versions() -> str:
    import jax
    import jaxlib

    return f"Python {platform.python_version()}, JAX {jax.__version__}, jaxlib {jaxlib.__version__}"


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def _train(*overrides: str) -> tuple[dict, float, list[str]]:
    """(summary.json, process wall seconds, command) of one quickstart run in a fresh workdir, started on a settled
    machine, with an empty compilation cache (what a first run on a new machine compiles)."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = ["python", "-m", "regnet_jax.train", "--config=configs/quickstart.py", f"--workdir={workdir}", *overrides]
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.path.join(workdir, "xla_cache")}
        settle()
        t = time.perf_counter()
        subprocess.run([sys.executable, *cmd[1:]], cwd=REPO, env=env, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t
        summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    return summary, wall, [c if not c.startswith("--workdir") else "--workdir=/tmp/quickstart" for c in cmd]


def _spread(values: list[float]) -> dict[str, float]:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
    return {"value": mean, "std": std, "min": min(values), "max": max(values), "n": len(values)}


def quickstart(overrides: tuple[str, ...] = (), seeds: int = 3) -> dict[str, dict]:
    """Accuracy (mean +- std, min-max) and time (mean) of the quickstart over ``seeds`` seeds."""
    runs = [_train(*overrides, f"--config.seed={seed}") for seed in range(seeds)]
    suffix = "_" + overrides[0].split("=")[1] + "ep" if overrides else ""
    acc = _spread([100 - summary["final"]["top1_err"] for summary, _, _ in runs])
    wall = _spread([w for _, w, _ in runs])
    loop = sum(summary["wall_time_s"] for summary, _, _ in runs) / seeds
    command = " ".join(c for c in runs[0][2] if not c.startswith("--config.seed"))
    return {
        f"quickstart{suffix}_accuracy": {
            "text": f"{acc['value']:.2f} ± {acc['std']:.2f} %", **acc, "command": command,
            "note": f"mean ± std over config.seed = 0..{seeds - 1}; min {acc['min']:.2f} %, max {acc['max']:.2f} %",
        },
        f"quickstart{suffix}_time": {
            "text": f"{wall['value']:.0f} s", **wall, "command": command,
            "note": f"the whole process, mean of {seeds} runs ({wall['min']:.0f}-{wall['max']:.0f} s), each started at a "
            f"load average below {MAX_LOAD} with an empty compilation cache; the training loop and evaluations took {loop:.0f} s",
        },
    }  # fmt: skip


def quickstart_model() -> dict[str, dict]:
    """The quickstart model's size (analytic, so machine-independent)."""
    from regnet_jax.config import load_config_file
    from regnet_jax.models.complexity import count

    config = load_config_file(str(REPO / "configs" / "quickstart.py"))
    cx = count(config.model, config.resolution)
    command = "python -m regnet_jax.complexity --config=configs/quickstart.py"
    return {
        "quickstart_params": {"text": f"{cx['params'] / 1e3:.0f}k", "value": cx["params"], "command": command},
        "quickstart_flops": {"text": f"{cx['flops'] / 1e6:.2f} M", "value": cx["flops"], "command": command},
    }


FIGURES: dict[str, Callable[[int], dict[str, dict]]] = {
    "quickstart_model": lambda seeds: quickstart_model(),
    "quickstart": lambda seeds: quickstart((), seeds),
    "quickstart_5ep": lambda seeds: quickstart(("--config.num_epochs=5",), seeds),
}


def documents() -> list[pathlib.Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "experiments" / "README.md"]


def spans() -> dict[str, list[tuple[pathlib.Path, str]]]:
    """figure name -> [(document, text there)] of every figure span in the docs."""
    out: dict[str, list[tuple[pathlib.Path, str]]] = {}
    for doc in documents():
        for name, text in SPAN.findall(doc.read_text(encoding="utf-8")):
            out.setdefault(name, []).append((doc, text))
    return out


def write_docs(figures: dict[str, dict]) -> list[str]:
    """Put each figure's text into its spans; returns the documents changed."""
    changed = []
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        new = SPAN.sub(
            lambda m: f"<!-- figure:{m[1]} -->{figures[m[1]]['text'] if m[1] in figures else m[2]}<!-- /figure -->",
            text,
        )
        if new != text:
            doc.write_text(new, encoding="utf-8")
            changed.append(str(doc.relative_to(REPO)))
    return changed


def figures_page(figures: dict[str, dict]) -> str:
    rows = [
        f"| `{name}` | {f['text']} | `{f['command']}` | {f['date']} | {f.get('commit', '')} | {f.get('versions', '')} | "
        f"{f['machine']} | {f['load']} | {f.get('note', '')} |"
        for name, f in sorted(figures.items())
    ]
    return "\n".join([
        "# Measured figures quoted in the docs",
        "",
        "Written by `python benchmarks/docs_figures.py` (do not edit): each figure the docs quote, the command that",
        "measured it, when, at which commit, with which versions, on what, and the machine's 1-minute load average",
        "before and after. Accuracies are mean ± std over seeds 0, 1, 2 (min and max in the note). Times are only",
        "comparable at a similar load; regenerate them on an idle machine.",
        "",
        "Determinism: a run is bitwise repeatable on the same machine with the same library versions and device count",
        "(tests/test_determinism.py trains twice and compares every parameter bit for bit). Another CPU (other SIMD",
        "kernels in XLA and TensorFlow), other JAX/jaxlib/TensorFlow versions or another device count change the",
        "floating-point rounding, so the same seed then gives a run within the spread above, not the same digits.",
        "",
        "| figure | value | command | date | commit | versions | machine | load | note |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])  # fmt: skip


def check_bands(documented: dict[str, dict], measured: dict[str, dict], groups: list[str]) -> int:
    """Print each re-measured accuracy beside its documented band; 1 if any mean fell outside it, else 0."""
    failed = 0
    for name, new in sorted(measured.items()):
        old = documented.get(name)
        if not name.endswith("_accuracy") or old is None or "std" not in old or new is old:
            continue
        low, high = old["min"] - 2 * old["std"], old["max"] + 2 * old["std"]
        ok = low <= new["value"] <= high
        failed |= not ok
        print(f"{name}: {new['text']} (n={new['n']}) vs documented {old['text']} (n={old['n']}), band [{low:.2f}, "
              f"{high:.2f}] %: {'ok' if ok else 'OUTSIDE'}")  # fmt: skip
    return int(failed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated groups of FIGURES (default: all)")
    p.add_argument("--dry_run", action="store_true", help="print the figures; change no file")
    p.add_argument("--no_perf", action="store_true", help="do not run the performance figures' script afterwards")
    p.add_argument("--seeds", type=int, default=3, help="runs per accuracy figure (config.seed = 0, 1, ...)")
    p.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if an accuracy left its documented band"
    )
    args = p.parse_args()
    os.environ.pop("REGNET_JAX_SMOKE", None)  # real runs, whatever the caller's environment
    groups = [g for g in args.only.split(",") if g] or list(FIGURES)
    unknown = sorted(set(groups) - set(FIGURES))
    if unknown:
        sys.exit(f"error: unknown figure group(s) {unknown}: use {sorted(FIGURES)}")
    figures = json.loads(FIGURES_JSON.read_text()) if FIGURES_JSON.exists() else {}
    documented = dict(figures)
    provenance = {"commit": _commit(), "versions": _versions(), "machine": _machine()}
    for group in groups:
        before = settle()
        measured = FIGURES[group](args.seeds)
        load = f"{before:.1f} -> {os.getloadavg()[0]:.1f}"
        for name, f in measured.items():
            figures[name] = {**f, "date": datetime.date.today().isoformat(), **provenance, "load": load}
            print(f"{name}: {f['text']}  ({f['command']}; load {load})", flush=True)
    if args.check:
        sys.exit(check_bands(documented, figures, groups))
    if args.dry_run:
        return
    missing = sorted(set(spans()) - set(figures))
    if missing:
        sys.exit(f"error: the docs quote figures no group measures: {missing}")
    FIGURES_JSON.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    FIGURES_MD.write_text(figures_page(figures))
    print("updated:", ", ".join(write_docs(figures) + ["docs/figures.json", "docs/figures.md"]))
    if not (args.only or args.no_perf):
        subprocess.run(PERF_FIGURES, cwd=REPO, check=True)


if __name__ == "__main__":
    main()
