"""One run per directory: a lock file naming its holder (host, pid, start time) with a heartbeat, on local disks and
on object storage alike (no flock there).

* ``acquire``: when the lock is absent or stale, write ours, wait ``settle_s`` and read it back; it is ours only if it
  still is (two runs starting together: the last writer wins and the other one refuses). A live holder:
  ``WorkdirBusyError`` naming it.
* Stale: a holder on this machine (same host name and boot) whose pid is gone, or is another process by now (its
  start time differs), is dead and taken over at once, with a warning. A holder elsewhere (another host, a bucket
  several hosts share) is taken over, with a warning, once its heartbeat is older than ``lease_s``.
* A daemon thread rewrites the lock every ``heartbeat_s``; should it find another run's lock there (this run stalled
  past its lease and was taken over), ``check()`` raises so the run stops instead of writing beside the new one.
* ``release`` removes the lock if it is still ours.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from regnet_jax.core import paths
from regnet_jax.core.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = "lock.json"
_HELD: set[str] = set()  # tokens of the locks this process holds now
HEARTBEAT_S = 30.0
LEASE_S = 150.0


class WorkdirBusyError(ConfigError):
    """Another live run holds the directory; the message names it (host, pid, start time)."""


def _read_first_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return ""


def _boot_id() -> str:
    return _read_first_line("/proc/sys/kernel/random/boot_id")


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` (clock ticks since boot), '' where /proc cannot tell."""
    stat = _read_first_line(f"/proc/{pid}/stat")
    return stat.rpartition(")")[2].split()[19] if stat else ""


def _pid_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return not start or _process_start(pid) in ("", start)


def describe(holder: dict[str, Any]) -> str:
    """'host H, pid P, started T' for a lock record."""
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"


class WorkdirLock:
    """The lock on ``directory`` (file ``name`` in it); see the module docstring."""

    def __init__(self, directory: paths.PathLike, name: str = LOCK_FILE, *, heartbeat_s: float = HEARTBEAT_S,
                 lease_s: float = LEASE_S, settle_s: float | None = None):  # fmt: skip
        self.directory = paths.resolve(directory)
        self.path = self.directory / name
        self.heartbeat_s, self.lease_s = heartbeat_s, lease_s
        # Long enough for a concurrent starter's read-then-write to land before we read ours back.
        self.settle_s = settle_s if settle_s is not None else (2.0 if paths.is_url(self.path) else 0.2)
        self.token = uuid.uuid4().hex
        self.lost: dict[str, Any] | None = None
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict[str, Any] | None:
        """The lock record, or None when there is none (or it is unreadable: a write cut short)."""
        try:
            record = paths.read_json(self.path)
        except (FileNotFoundError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def stale_reason(self, record: dict[str, Any]) -> str | None:
        """Why the holder of ``record`` is dead (a sentence), or None while it may be alive."""
        same_machine = record.get("host") == socket.gethostname() and record.get("boot_id", "") == _boot_id()
        if same_machine and record.get("pid") == os.getpid() and record.get("token") not in _HELD:
            return "an earlier run in this process left it"
        if same_machine and isinstance(record.get("pid"), int):
            if _pid_alive(record["pid"], record.get("pid_start", "")):
                return None
            return f"its process {record['pid']} on this machine is gone"
        age = time.time() - float(record.get("heartbeat", 0))
        if age > float(record.get("lease_s", self.lease_s)):
            return f"its last heartbeat was {age:.0f}s ago (lease {record.get('lease_s', self.lease_s):.0f}s)"
        return None

    def holder(self) -> dict[str, Any] | None:
        """The record of a live holder other than this lock, or None."""
        record = self.read()
        if record is None or record.get("token") == self.token or self.stale_reason(record):
            return None
        return record

    def _record(self, started: float) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid, "pid_start": _process_start(pid),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)), "started_s": started,
            "heartbeat": time.time(), "lease_s": self.lease_s, "token": self.token, "command": " ".join(sys.argv)[:300],
        }  # fmt: skip

    def _busy(self, record: dict[str, Any]) -> WorkdirBusyError:
        age = time.time() - float(record.get("heartbeat", 0))
        return WorkdirBusyError(
            f"{self.directory} is in use by another run ({describe(record)}; heartbeat {age:.0f}s ago): wait for it to "
            f"finish, stop it, or use another directory. A lock whose run died is taken over by the next run (at once on "
            f"the same machine, else after {float(record.get('lease_s', self.lease_s)):.0f}s without a heartbeat); "
            f"the lock is {self.path}"
        )

    def acquire(self) -> None:
        """Hold the lock (and start the heartbeat), or raise WorkdirBusyError naming the live holder."""
        record = self.read()
        if record is not None:
            reason = self.stale_reason(record)
            if reason is None:
                raise self._busy(record)
            log.warning("taking over the lock of a run that is no longer alive (%s): %s", describe(record), reason)
        started = time.time()
        paths.write_json(self.path, self._record(started))
        time.sleep(self.settle_s)
        now = self.read()
        if now is None or now.get("token") != self.token:
            raise self._busy(now or record or {})
        self._started = started
        _HELD.add(self.token)
        self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                now = self.read()
                if now is not None and now.get("token") != self.token:
                    self.lost = now
                    log.error("the lock on %s was taken over by another run (%s)", self.directory, describe(now))
                    return
                paths.write_json(self.path, self._record(self._started))
            except Exception as e:  # a transient storage error: the lease allows several missed beats
                log.warning("could not refresh the lock %s (%s: %s)", self.path, type(e).__name__, e)

    def check(self) -> None:
        """Raise WorkdirBusyError if another run took the lock over (see the module docstring)."""
        if self.lost is not None:
            raise WorkdirBusyError(
                f"another run took over {self.directory} ({describe(self.lost)}) because this one missed its heartbeats "
                "for longer than the lease: this run stops so that the two do not write over each other"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        _HELD.discard(self.token)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            try:
                record = self.read()
                if record is not None and record.get("token") == self.token:
                    paths.remove(self.path)
            except OSError as e:  # e.g. the disk went read-only: the next run finds a dead holder and takes over
                log.warning("could not remove the lock %s (%s); the next run will take it over", self.path, e)

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
