"""Stopping a run cleanly: a SIGTERM (or a multi-host preemption notice) or a Ctrl-C makes the trainer save a
checkpoint at the next step boundary and stop; rerunning the same command resumes from it.

* SIGTERM: ``Preempted``; ``python -m regnet_jax.train`` exits with ``EXIT_PREEMPTED`` (3).
* Ctrl-C (SIGINT): ``Interrupted`` (``core.interrupts``), one line saying where the checkpoint is and how to resume,
  exit status 130. Before the first step (loading, compiling the initial state) there is nothing new to save: the run
  stops at once, saying so. A second Ctrl-C stops at once without saving (one line, exit status 130).
* In a multi-process run (``jax.distributed``) every process must stop at the same step, or the others wait forever
  in the next collective. JAX's preemption service does that agreement: its own SIGTERM handler, on any one process,
  announces the notice to all, and ``core.distributed.reached_preemption_sync_point`` is true on every process at one
  step (the next after the furthest process's). So SIGTERM keeps JAX's handler, and a Ctrl-C during the training
  steps sends this process a SIGTERM (the process that got it exits with 130, the others with 3). Before the first
  step, or with the service off (``jax_enable_preemption_service=False``), a Ctrl-C ends the process at once, as
  SIGTERM then does (its default action); the others end by ``--stall_timeout_s`` or JAX's heartbeat.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import jax
from absl import logging

from regnet_jax.core import interrupts
from regnet_jax.core.distributed import preemption_service_on, reached_preemption_sync_point
from regnet_jax.core.interrupts import EXIT_INTERRUPTED, Interrupted

EXIT_PREEMPTED = 3  # the trainer's exit status after a preemption (a checkpoint was saved; rerun to resume)
__all__ = ["EXIT_INTERRUPTED", "EXIT_PREEMPTED", "Interrupted", "Preempted", "StopSignals"]


class Preempted(RuntimeError):
    """SIGTERM (or a multi-host preemption notice) arrived; a checkpoint of the current step was saved."""


class StopSignals:
    """SIGTERM and Ctrl-C for one run of the trainer (``train_and_evaluate``), from its start to its end.

    The first Ctrl-C: while ``training()`` (the loop) it is remembered, and the loop saves a checkpoint at the next
    step boundary and raises ``stop_error``; before or after the loop it raises ``KeyboardInterrupt`` at once (the
    trainer turns it into an ``Interrupted`` that says so). SIGTERM is remembered during the loop only (outside it,
    its default action applies); in a multi-process run JAX's preemption service handles it throughout (module
    docstring). A second Ctrl-C ends the process at once. ``workdir`` names where the checkpoints are in the
    messages."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.signum: int | None = None  # the first stop signal of the loop
        self.interrupts = 0  # Ctrl-Cs received
        self.deferring = False
        self.finishing = False  # the loop is over: every step trained and saved
        self.multi_process = jax.distributed.is_initialized()  # (jax.process_count() would start the backends now)
        self.synced = preemption_service_on()  # every process stops at the step JAX's preemption service agrees on
        self._previous_sigint = interrupts.set_handler(self._on_sigint)
        self._previous_sigterm = None

    def _on_sigint(self, signum, frame) -> None:
        self.interrupts += 1
        if self.interrupts > 1:
            interrupts.stop_at_once(
                f"Ctrl-C again: stopped at once without saving; rerun the same command to resume from the last checkpoint in {self.workdir}"
            )
        if self.deferring and (self.synced or not self.multi_process):
            self.signum = self.signum or signal.SIGINT
            if self.synced:
                signal.raise_signal(signal.SIGTERM)  # to JAX's preemption service: every process stops at one step
            logging.warning(
                f"Ctrl-C: saving a checkpoint at the next step{' shared by every process' if self.synced else ''}, "
                "then stopping (Ctrl-C again stops at once, without saving)"
            )
            return
        if self.multi_process:  # unwinding could wait in a step shared with the other processes
            where = "outside the training steps" if self.synced else "with JAX's preemption service off"
            interrupts.stop_at_once(
                f"Ctrl-C {where}: nothing new to save; rerun the same command on every host to resume from {self.workdir}"
            )
        raise KeyboardInterrupt

    def _on_sigterm(self, signum, frame) -> None:
        logging.warning("SIGTERM received: will save a checkpoint at the next step and stop")
        self.signum = self.signum or signal.SIGTERM

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """The training loop: stop signals wait for the next step boundary."""
        try:
            if not self.multi_process:  # (several processes: JAX's handler, which they agree through)
                self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread (e.g. some test runners): no preemption handling
            self._previous_sigterm = None
        self.deferring = True
        try:
            yield
            self.finishing = True
        finally:
            self.deferring = False
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None

    def preempted(self, step: int) -> bool:
        """Whether to checkpoint and stop after ``step`` (every process must ask, at the same steps)."""
        if self.multi_process:
            return reached_preemption_sync_point(step)
        return self.signum is not None

    def stop_error(self, step: int, checkpoints: str) -> Preempted | Interrupted:
        """What the loop raises after saving the checkpoint of ``step`` in ``checkpoints``."""
        if self.signum == signal.SIGINT:
            return Interrupted(
                f"interrupted at step {step} (Ctrl-C): checkpoint saved in {checkpoints}; rerun the same command to resume"
            )
        return Preempted(
            f"preempted at step {step}; checkpoint saved in {checkpoints}: rerun the same command to resume"
        )

    def restore(self) -> None:
        """Give SIGINT back to its previous handler (after a Ctrl-C, to the runner's: a further one ends the process)."""
        if self._previous_sigint is None:
            return
        previous = self._previous_sigint
        if self.interrupts and previous is interrupts.on_first_interrupt:
            previous = interrupts.on_interrupt_again
        interrupts.set_handler(previous)
        self._previous_sigint = None
