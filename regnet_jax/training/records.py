"""Run records: progress (steps/s, images/s, ETA), JSON-lines logs, TensorBoard events, the training-curve plot.

Files a run leaves in its workdir (process 0 writes them, through ``regnet_jax.paths``: local or ``gs://``)::

    eval_metrics.jsonl      one line per evaluation: {"step", "epoch", "top1_err", "top5_err", "loss"} (errors in %)
    eval_ema_metrics.jsonl  the same for the EMA weights (only with config.optim.ema_decay > 0)
    train_metrics.jsonl     one line per log interval: step, epoch, loss, top1_err, lr, images_per_s, steps_per_s
    events.out.tfevents.*   TensorBoard scalars of all of the above, and the run's hyperparameters
    curves.png              loss and top-1/top-5 error against epochs

Preemption-safe on any storage: a resumed run first cuts its logs back to the checkpoint it resumes from (so the
steps it trains again are never logged twice, and a torn last line is dropped), then appends. Locally every record
is appended at once, all or nothing; object storage has no appends, so there records are buffered and written out by
``RunWriter.flush`` (the trainer flushes with every checkpoint, and at least every ``flush_every_s``).
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import socket
import time
from typing import Any

from regnet_jax import paths

EVAL_FILE = "eval_metrics.jsonl"
EVAL_EMA_FILE = "eval_ema_metrics.jsonl"
TRAIN_FILE = "train_metrics.jsonl"
PLOT_FILE = "curves.png"


def _not_orbax_info(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_library_logs() -> None:
    """Drop orbax's per-save and gcsfs's per-file INFO chatter from the log (their warnings and errors still show)."""
    absl_logger = logging.getLogger("absl")
    if _not_orbax_info not in absl_logger.filters:
        absl_logger.addFilter(_not_orbax_info)
    for name in ("gcsfs", "fsspec"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
        by_step = {r["step"]: r for r in raw if isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] <= resume_step}
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


def _tf_record(event) -> bytes:
    """One TFRecord (length, masked CRC32C, data, masked CRC32C): the framing of TensorBoard's event files."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    buf = io.BytesIO()
    RecordWriter(buf).write(event.SerializeToString())
    return buf.getvalue()


class EventLog:
    """TensorBoard event files written through ``regnet_jax.paths`` (so they work on ``gs://`` too).

    Locally one file per run start, appended event by event. On object storage the events are buffered and each
    ``flush`` writes them into a new file (TensorBoard reads the events files of a directory in name order). A
    resumed run first logs a SessionLog START at its first new step, so TensorBoard drops what a killed run had logged
    beyond the checkpoint the new one resumes from.
    """

    def __init__(self, directory: paths.PathLike, resume_step: int):
        from tensorboard.compat.proto import event_pb2

        self._pb = event_pb2
        self.directory = paths.resolve(directory)
        # Microseconds: two starts of a run in one second still sort in order (TensorBoard reads files by name).
        self.name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        self._header = _tf_record(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        self._buffer: list[bytes] = []
        self._files = 0
        if not paths.is_url(self.directory):
            paths.append_bytes(self.directory / self.name, self._header)
        if resume_step:
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._add(event_pb2.Event(wall_time=time.time(), step=resume_step + 1, session_log=start))

    def _add(self, event) -> None:
        record = _tf_record(event)
        if paths.is_url(self.directory):
            self._buffer.append(record)
        else:
            paths.append_bytes(self.directory / self.name, record)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto import summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self._add(self._pb.Event(wall_time=time.time(), step=step, summary=summary))

    def hparams(self, values: dict[str, Any]) -> None:
        from tensorboard.plugins.hparams import summary_v2 as hp

        self._add(self._pb.Event(wall_time=time.time(), step=0, summary=hp.hparams_pb(values)))

    def flush(self) -> None:
        if self._buffer:
            self._files += 1
            paths.write_bytes(self.directory / f"{self.name}.{self._files:05d}", self._header + b"".join(self._buffer))
            self._buffer = []


class RunWriter:
    """The records of a run in ``workdir``: JSON-lines logs and TensorBoard events. Only the writer of process 0
    (``write=True``) writes; the others keep the JSON-lines records in memory, so every process sees the same ones."""

    def __init__(self, workdir: paths.PathLike, resume_step: int, *, write: bool = True, flush_every_s: float = 60.0):
        self.workdir = paths.resolve(workdir)
        self.logs = {name: JsonlLog(self.workdir / name, resume_step, write=write) for name in (TRAIN_FILE, EVAL_FILE, EVAL_EMA_FILE)}
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


def plot_curves(workdir: paths.PathLike) -> paths.Path | None:
    """Write ``curves.png`` (train/eval loss and eval top-1/top-5 error per epoch); returns its path."""
    workdir = paths.resolve(workdir)
    train = read_jsonl(workdir / TRAIN_FILE)
    evals = read_jsonl(workdir / EVAL_FILE)
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
    ema = read_jsonl(workdir / EVAL_EMA_FILE)
    if ema:
        ax_err.plot([r["epoch"] for r in ema], [r["top1_err"] for r in ema], "s--", label="top-1 (EMA)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="evaluation error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(workdir.name)
    fig.tight_layout()
    path = workdir / PLOT_FILE
    save_figure(fig, path)
    plt.close(fig)
    return path


def save_figure(fig, path: paths.PathLike, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG through the path layer."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    paths.write_bytes(path, buf.getvalue())
