"""Run records: the files a run leaves in its workdir, and ``RunWriter``, which writes its logs.

Files a run leaves in its workdir (process 0 writes them, through ``regnet_jax.core.paths``: local or ``gs://``)::

    config.json             the config it trains (``record_config``)
    config_history.jsonl    the configs it was resumed away from, oldest first (``--allow_config_change``)
    eval_metrics.jsonl      one line per evaluation: {"step", "epoch", "top1_err", "top5_err", "loss"} (errors in %)
    eval_ema_metrics.jsonl  the same for the EMA weights (only with config.optim.ema_decay > 0)
    train_metrics.jsonl     one line per log interval: step, epoch, loss, top1_err, lr, images_per_s, steps_per_s
    events.out.tfevents.*   TensorBoard scalars of all of the above, and the run's hyperparameters (``events``)
    curves.png              loss and top-1/top-5 error against epochs (``plots``)
    summary.json            when finished: final and best errors, wall time, complexity, skipped images

Preemption-safe on any storage: a resumed run first cuts its logs back to the checkpoint it resumes from (so the
steps it trains again are never logged twice, and a torn last line is dropped), then appends. Locally every record
is appended at once, all or nothing; object storage has no appends, so there records are buffered and written out by
``RunWriter.flush`` (the trainer flushes with every checkpoint, and at least every ``flush_every_s``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from absl import logging

from regnet_jax.config import diff
from regnet_jax.core import paths
from regnet_jax.training.events import EventLog

CONFIG_FILE = "config.json"
CONFIG_HISTORY = "config_history.jsonl"  # the configs a run was resumed away from, oldest first
EVAL_FILE = "eval_metrics.jsonl"
EVAL_EMA_FILE = "eval_ema_metrics.jsonl"
TRAIN_FILE = "train_metrics.jsonl"
SUMMARY_FILE = "summary.json"


def read_jsonl(path: paths.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] if absent); a torn last line (killed mid-write) is ignored."""
    return _parse_jsonl(path)[0]


def _parse_jsonl(path: paths.PathLike) -> tuple[list[dict[str, Any]], bool]:
    """(records, whether a line could not be parsed)."""
    try:
        text = paths.read_text(path)
    except FileNotFoundError:
        return [], False
    out, torn = [], False
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            torn = True
    return out, torn


def _jsonl_text(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


class JsonlLog:
    """One JSON-lines log of a run that resumes at ``resume_step`` (see the module docstring); ``write=False`` keeps
    the records in memory only (processes other than 0)."""

    def __init__(self, path: paths.PathLike, resume_step: int, *, write: bool = True):
        self.path, self.write = paths.resolve(path), write
        raw, torn = _parse_jsonl(self.path)
        by_step = {
            r["step"]: r
            for r in raw
            if isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] <= resume_step
        }
        self.records = [by_step[s] for s in sorted(by_step)]
        self._pending = False
        if write and (torn or len(self.records) != len(raw)):
            paths.write_text(self.path, _jsonl_text(self.records))

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if not self.write:
            return
        if paths.is_url(self.path):
            self._pending = True
        else:
            paths.append_text(self.path, json.dumps(record) + "\n")

    def flush(self) -> None:
        """Write buffered records out (object storage: the whole object again)."""
        if self._pending:
            paths.write_text(self.path, _jsonl_text(self.records))
            self._pending = False


class RunWriter:
    """The records of a run in ``workdir``: JSON-lines logs and TensorBoard events. Only the writer of process 0
    (``write=True``) writes; the others keep the JSON-lines records in memory, so every process sees the same ones."""

    def __init__(self, workdir: paths.PathLike, resume_step: int, *, write: bool = True, flush_every_s: float = 60.0):
        self.workdir = paths.resolve(workdir)
        self.logs = {
            name: JsonlLog(self.workdir / name, resume_step, write=write)
            for name in (TRAIN_FILE, EVAL_FILE, EVAL_EMA_FILE)
        }
        self.events = EventLog(self.workdir, resume_step) if write else None
        self.flush_every_s = flush_every_s
        self._flushed = time.monotonic()

    def records(self, name: str) -> list[dict[str, Any]]:
        return self.logs[name].records

    def append(self, name: str, record: dict[str, Any]) -> None:
        self.logs[name].append(record)
        self._maybe_flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.events is not None:
            self.events.scalars(step, values)
            self._maybe_flush()

    def hparams(self, values: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.hparams(values)

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._flushed > self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Write out what is buffered (only object storage buffers)."""
        for log in self.logs.values():
            log.flush()
        if self.events is not None:
            self.events.flush()
        self._flushed = time.monotonic()


def record_config(
    workdir: paths.PathLike, config: Any, step: int, *, allow_change: bool = False, write: bool = True
) -> None:
    """Write ``config`` (a ConfigDict) as WORKDIR/config.json. On a resume (``step`` > 0) first compare it with the
    saved one (``config.diff.check_resume``: a change of meaning raises ConfigError unless ``allow_change``); if it
    changed, the old one is appended to config_history.jsonl, so the config a run started with is never lost.
    ``write=False`` (processes other than 0) only checks."""
    workdir = paths.resolve(workdir)
    new, path = json.loads(config.to_json_best_effort()), workdir / CONFIG_FILE
    if step and paths.isfile(path):
        saved = paths.read_json(path)
        changes = diff.check_resume(str(workdir), saved, new, allow_change)
        if not changes:
            return
        logging.warning("resumed with a changed config: %s", diff.describe(changes))
        if write:
            record = {"replaced_at_step": step, "changes": [str(c) for c in changes], "config": saved}
            paths.append_text(workdir / CONFIG_HISTORY, json.dumps(record) + "\n")
    if write:
        paths.write_json(path, new)
