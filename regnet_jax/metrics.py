"""Run records: progress (steps/s, images/s, ETA), JSON-lines logs, clu metric writers, and the training-curve plot.

Files a run leaves in its workdir (process 0 writes them)::

    eval_metrics.jsonl      one line per evaluation: {"step", "epoch", "top1_err", "top5_err", "loss"} (errors in %)
    eval_ema_metrics.jsonl  the same for the EMA weights (only with config.optim.ema_decay > 0)
    train_metrics.jsonl     one line per log interval: step, epoch, loss, top1_err, lr, images_per_s, steps_per_s
    events.out.tfevents.*   TensorBoard scalars of all of the above (clu metric writers)
    curves.png              loss and top-1/top-5 error against epochs
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from typing import Any

EVAL_FILE = "eval_metrics.jsonl"
EVAL_EMA_FILE = "eval_ema_metrics.jsonl"
TRAIN_FILE = "train_metrics.jsonl"
PLOT_FILE = "curves.png"


def _not_orbax_info(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_library_logs() -> None:
    """Drop orbax's per-save INFO chatter from the absl log (its warnings and errors still show)."""
    absl_logger = logging.getLogger("absl")
    if _not_orbax_info not in absl_logger.filters:
        absl_logger.addFilter(_not_orbax_info)


class Progress:
    """Throughput and ETA over the steps since the last report (time outside ``step`` calls can be excluded)."""

    def __init__(self, total_steps: int, start_step: int, global_batch: int):
        self.total_steps, self.global_batch = total_steps, global_batch
        self._t, self._step = time.perf_counter(), start_step

    def restart(self, step: int) -> None:
        """Start a new window at ``step`` (after an evaluation or a checkpoint, so they do not count as training)."""
        self._t, self._step = time.perf_counter(), step

    def report(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps_per_s = (step - self._step) / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        eta = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
        return {"steps_per_s": steps_per_s, "images_per_s": steps_per_s * self.global_batch, "eta_s": eta}


def format_eta(seconds: float) -> str:
    return "?" if seconds == float("inf") else str(datetime.timedelta(seconds=int(seconds)))


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] if absent); a torn last line (killed mid-write) is ignored."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def plot_curves(workdir: str) -> str | None:
    """Write ``curves.png`` (train/eval loss and eval top-1/top-5 error per epoch); returns its path."""
    train = read_jsonl(os.path.join(workdir, TRAIN_FILE))
    evals = read_jsonl(os.path.join(workdir, EVAL_FILE))
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax_loss.plot([r["epoch"] for r in train], [r["loss"] for r in train], label="train")
    if evals:
        ax_loss.plot([r["epoch"] for r in evals], [r["loss"] for r in evals], "o-", label="eval")
        ax_err.plot([r["epoch"] for r in evals], [r["top1_err"] for r in evals], "o-", label="top-1")
        ax_err.plot([r["epoch"] for r in evals], [r["top5_err"] for r in evals], "o-", label="top-5")
    ema = read_jsonl(os.path.join(workdir, EVAL_EMA_FILE))
    if ema:
        ax_err.plot([r["epoch"] for r in ema], [r["top1_err"] for r in ema], "s--", label="top-1 (EMA)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="evaluation error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    path = os.path.join(workdir, PLOT_FILE)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
