"""Ctrl-C in the commands: one line, exit status 130, never a traceback.

Three handlers of SIGINT take turns in a ``python -m regnet_jax.<command>`` process:

* while the command's modules are imported (``regnet_jax/__init__`` installs ``on_interrupt_while_starting``): a
  Ctrl-C prints one line and ends the process at once (nothing has been done yet);
* while the command runs (``core.cli.run`` installs ``on_first_interrupt``): the first Ctrl-C raises
  ``KeyboardInterrupt`` as Python would, which unwinds the command (locks released, files closed) and which the
  runner prints as one line, exit status 130; a second Ctrl-C while that unwinds ends the process at once, one line;
* while the trainer trains (``training.preemption.StopSignals``, also in ``sweep launch``): the first Ctrl-C is
  deferred to the next step, where a checkpoint is saved, and the trainer raises ``Interrupted`` whose message says
  where the checkpoint is and how to resume; a second one ends the process at once.

``Interrupted`` is a ``KeyboardInterrupt`` (code that catches ``Exception`` lets it through, as it does Ctrl-C); the
runner prints its message as the one line.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import NoReturn

EXIT_INTERRUPTED = 130  # 128 + SIGINT: the shell's status for a command stopped by Ctrl-C


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a command cleanly; the message says what was saved and how to resume (one line)."""


def stop_at_once(message: str) -> NoReturn:
    """Print ``interrupted: <message>`` on stderr and end the process now (``os._exit``: no unwinding, no waiting
    for threads). Safe in a signal handler: it writes to the file descriptor, not through Python's buffered stream."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a signal handler may interrupt a write to the same stream  # noqa: BLE001
            pass
    os.write(2, f"interrupted: {' '.join(message.split())}\n".encode())
    os._exit(EXIT_INTERRUPTED)


def on_interrupt_while_starting(signum, frame) -> None:
    stop_at_once("Ctrl-C while starting; nothing was done")


def on_interrupt_again(signum, frame) -> None:
    stop_at_once("Ctrl-C again: stopped at once")


def on_interrupt_after_report(signum, frame) -> None:
    """The one line is printed and the process is ending (waiting for threads, flushing files): end it now, silently."""
    os._exit(EXIT_INTERRUPTED)


def on_first_interrupt(signum, frame) -> None:
    """Python's behaviour (``KeyboardInterrupt``), and a second Ctrl-C while it unwinds ends the process at once."""
    set_handler(on_interrupt_again)
    raise KeyboardInterrupt


def set_handler(handler) -> object | None:
    """``signal.signal(SIGINT, handler)``; the previous handler, or None where signals cannot be set (not the main
    thread, e.g. some test runners)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:
        return None


def message(e: KeyboardInterrupt) -> str:
    """The one line for a ``KeyboardInterrupt`` that reached a command's runner."""
    text = " ".join(str(e).split())
    return text if text.startswith("interrupted") else f"interrupted: {text or 'Ctrl-C'}"
