"""Training progress: throughput (steps/s, images/s) and the time left."""

from __future__ import annotations

import datetime
import time


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
