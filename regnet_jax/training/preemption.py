"""Preemption: a SIGTERM (or a multi-host preemption notice) makes the trainer checkpoint at the next step boundary
and stop with ``Preempted``; ``python -m regnet_jax.train`` then exits with ``EXIT_PREEMPTED``, and rerunning the same
command resumes."""

from __future__ import annotations

import signal

from absl import logging

from regnet_jax.core.distributed import reached_preemption_sync_point

EXIT_PREEMPTED = 3  # the trainer's exit status after a preemption (a checkpoint was saved; rerun to resume)


class Preempted(RuntimeError):
    """SIGTERM (or a multi-host preemption notice) arrived; a checkpoint of the current step was saved."""


class SigtermFlag:
    """Remembers a SIGTERM so the loop can checkpoint at the next step boundary instead of dying mid-step."""

    def __init__(self):
        self.raised = False
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no preemption handling
            self._previous = None

    def _handle(self, signum, frame) -> None:
        logging.warning("SIGTERM received: will save a checkpoint at the next step and stop")
        self.raised = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def preempted(self, step: int) -> bool:
        """Whether to checkpoint and stop after ``step`` (every process must ask, at the same steps)."""
        return self.raised or reached_preemption_sync_point(step)
