"""TensorBoard event files, written through ``regnet_jax.core.paths`` (so they work on ``gs://`` too)."""

from __future__ import annotations

import io
import os
import socket
import time
from typing import Any

from regnet_jax.core import paths


def _tf_record(event) -> bytes:
    """One TFRecord (length, masked CRC32C, data, masked CRC32C): the framing of TensorBoard's event files."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    buf = io.BytesIO()
    RecordWriter(buf).write(event.SerializeToString())
    return buf.getvalue()


class EventLog:
    """TensorBoard event files of one run in a directory.

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

        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
        )
        self._add(self._pb.Event(wall_time=time.time(), step=step, summary=summary))

    def hparams(self, values: dict[str, Any]) -> None:
        from tensorboard.plugins.hparams import summary_v2 as hp

        self._add(self._pb.Event(wall_time=time.time(), step=0, summary=hp.hparams_pb(values)))

    def flush(self) -> None:
        if self._buffer:
            self._files += 1
            paths.write_bytes(self.directory / f"{self.name}.{self._files:05d}", self._header + b"".join(self._buffer))
            self._buffer = []
