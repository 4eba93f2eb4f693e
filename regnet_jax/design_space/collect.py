"""``collect``: one table of every model of a sweep (``results.csv`` and ``results.jsonl``), rebuilt from the run
directories each time, so rerunning it (or a resumed launch) never duplicates rows.

Columns: id, status (done / running / incomplete / failed / pending), attempts; the model's parameters (RegNet:
depth, w0, wa, wm, group_w, bot_mul; AnyNet: the per-stage lists) and derived ones (d = total blocks, w4 = last
stage width, g = largest group width, b = 1 / bot_mul as in the paper, num_stages, the resolved stage lists);
flops, params, acts (at the sweep's resolution); epochs done out of num_epochs, steps; final and best top-1 error,
final top-5 error; ``error``, the metric the analysis uses: the best top-1 error over the evaluations, of the EMA
weights when the run evaluated them (pycls's ``min_top1_err`` of ``test_ema_epoch``) and of the weights otherwise
(``error_source`` says which); wall time.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

from regnet_jax.config import validate_model
from regnet_jax.core import paths
from regnet_jax.design_space.launch import is_done, is_running
from regnet_jax.design_space.layout import SweepDir, read_json
from regnet_jax.models.complexity import count
from regnet_jax.models.spec import model_spec
from regnet_jax.training.records import EVAL_EMA_FILE, EVAL_FILE, read_jsonl

# The other config.model fields (a fork of a space may fix any of them, e.g. --model=activation=silu).
MODEL_COLUMNS = ("stem_type", "stem_w", "block_type", "activation", "zero_init_last_bn", "dtype", "num_classes")
COLUMNS = (
    "id", "sweep", "status", "attempts", "type",
    "depth", "w0", "wa", "wm", "group_w", "bot_mul", "depths", "widths", "bot_muls", "group_ws",
    "d", "w4", "g", "b", "num_stages", "stage_depths", "stage_widths", "stage_group_ws", "se_ratio",
    *MODEL_COLUMNS, "resolution", "flops", "params", "acts", "epochs", "num_epochs", "steps",
    "final_top1_err", "final_top5_err", "best_top1_err", "error", "error_source", "wall_time_s",
)  # fmt: skip


def _evals(path: str) -> list[dict[str, Any]]:
    """Evaluation records, one per step (the last one wins: a resumed run may repeat a step)."""
    by_step = {r["step"]: r for r in read_jsonl(path)}
    return [by_step[s] for s in sorted(by_step)]


def model_fields(model: dict[str, Any], resolution: int) -> dict[str, Any]:
    """The table's model columns for one ``config.model``: its own fields, the derived d/w4/g/b and its complexity."""
    spec, model = model_spec(model), validate_model(model)
    row: dict[str, Any] = {k: model[k] for k in ("type", "se_ratio", *MODEL_COLUMNS)}
    keys = (
        ("depth", "w0", "wa", "wm", "group_w", "bot_mul")
        if model["type"] == "regnet"
        else ("depths", "widths", "bot_muls", "group_ws")
    )
    row.update({k: model[k] for k in keys})
    row.update(
        d=sum(spec.depths),
        w4=spec.widths[-1],
        g=max(spec.group_ws),
        b=round(1 / max(spec.bot_muls), 6),
        num_stages=spec.num_stages,
        stage_depths=list(spec.depths),
        stage_widths=list(spec.widths),
        stage_group_ws=list(spec.group_ws),
    )
    row.update(count(spec, resolution), resolution=resolution)
    return row


def _status(sweep_dir: SweepDir, mid: str, evals: list[dict[str, Any]], attempts: list[dict[str, Any]]) -> str:
    if is_done(sweep_dir, mid):
        return "done"
    if is_running(sweep_dir, mid):
        return "running"
    if attempts and attempts[-1]["result"] != "preempted" and attempts[-1]["result"] != "done":
        return "failed"
    return "incomplete" if evals or paths.exists(paths.join(sweep_dir.run_dir(mid), "checkpoints")) else "pending"


def model_row(sweep_dir: SweepDir, mid: str, name: str) -> dict[str, Any]:
    """The table row of one model."""
    config = sweep_dir.config(mid)
    run = sweep_dir.run_dir(mid)
    evals = _evals(paths.join(run, EVAL_FILE))
    ema = _evals(paths.join(run, EVAL_EMA_FILE))
    launch_path = paths.join(run, "launch.json")
    attempts = read_json(launch_path)["attempts"] if launch_path.exists() else []
    summary = read_json(paths.join(run, "summary.json")) if is_done(sweep_dir, mid) else {}
    row: dict[str, Any] = {
        "id": mid,
        "sweep": name,
        "status": _status(sweep_dir, mid, evals, attempts),
        "attempts": len(attempts),
    }
    row.update(model_fields(config["model"], config["resolution"]))
    last = evals[-1] if evals else {}
    source = ema if ema else evals
    row.update(
        epochs=last.get("epoch"),
        num_epochs=config["num_epochs"],
        steps=last.get("step"),
        final_top1_err=last.get("top1_err"),
        final_top5_err=last.get("top5_err"),
        best_top1_err=min((r["top1_err"] for r in evals), default=None),
        error=min((r["top1_err"] for r in source), default=None),
        error_source=("ema" if ema else "model") if source else None,
        wall_time_s=summary.get("wall_time_s"),
    )
    return row


def collect(sweep_dir: str, log: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """Build the table of ``sweep_dir``, write results.csv / results.jsonl, print a summary; returns the rows."""
    sweep = SweepDir(sweep_dir).require()
    info = sweep.spec()
    rows = [model_row(sweep, mid, info["spec"]["name"]) for mid in sweep.model_ids()]
    _write_table(sweep, rows)
    if log:
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        done = [r for r in rows if r["status"] == "done"]
        line = f"collect: {len(rows)} models in {sweep_dir}: " + ", ".join(
            f"{v} {k}" for k, v in sorted(counts.items())
        )
        if done:
            best = min(done, key=lambda r: r["error"])
            line += (
                f"; best {best['id']} error {best['error']:.2f}%, mean {sum(r['error'] for r in done) / len(done):.2f}%"
            )
        log(line + f" -> {sweep.results_csv}")
    return rows


def _write_table(sweep_dir: SweepDir, rows: list[dict[str, Any]]) -> None:
    paths.write_text(sweep_dir.results_jsonl, "".join(json.dumps(r) + "\n" for r in rows))
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                k: json.dumps(v, separators=(",", ":")) if isinstance(v, list) else ("" if v is None else v)
                for k, v in r.items()
            }
        )
    paths.write_text(sweep_dir.results_csv, buf.getvalue())


def read_results(sweep_dir: str) -> list[dict[str, Any]]:
    """The rows of a sweep: collected afresh if the directory holds the sweep, else read from its results.jsonl."""
    sweep = SweepDir(sweep_dir)
    if sweep.exists():
        return collect(sweep_dir, log=None)
    if paths.exists(sweep.results_jsonl):
        return read_jsonl(sweep.results_jsonl)
    sweep.require()
    return []
