"""Scenarios that run other processes, started when the session starts and run beside the in-process tests.

Most of the suite runs in the pytest process, on one core at a time. The scenarios that run the command-line tools
in other processes (multi-process training, kill-and-resume, the docs harness, ...) only start processes, wait and
read files, so a second core can run them meanwhile. A test module declares one with ``@background.scenario``:

    @background.scenario
    def two_process_run(tmp: pathlib.Path) -> dict:
        ...  # start the processes in tmp, wait for them; return what the test checks

    def test_two_processes(two_process_run, trained):
        out = two_process_run.outcome()  # the scenario's return value (or its exception, raised here)
        assert ...

``two_process_run`` is then a (session) fixture. When the session starts, one worker thread runs the scenarios of
the selected tests, the one needed last first; a test that needs a scenario nobody has started yet runs it itself, and
one that needs a running scenario waits for it. So every scenario runs exactly once per session, with or without the
worker (REGNET_JAX_TESTS_BACKGROUND=0 runs each in its test, as before), and its test asserts on its outcome.

A scenario must not use JAX or any other state of this process that tests change (the conv lowering, monkeypatched
modules): it runs while other tests do. Its processes get ``environ()``, the environment the session started with,
not one a running test has monkeypatched (e.g. the SLURM variables of tests/test_cluster_detection.py).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

ENABLE_ENV = "REGNET_JAX_TESTS_BACKGROUND"
_SESSION_ENV = dict(os.environ)  # imported by tests/conftest.py, before any test runs
_SCENARIOS: dict[str, Scenario] = {}


def environ(**extra: str) -> dict[str, str]:
    """The environment the session started with (plus ``extra``), for the processes a scenario starts."""
    return {**_SESSION_ENV, **extra}


class Scenario:
    """One scenario: run once, by the worker or by the first test that needs it."""

    def __init__(self, fn: Callable[[pathlib.Path], Any]):
        self.fn, self.name = fn, fn.__name__
        self._claimed = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._tmp_factory: pytest.TempPathFactory | None = None

    def _claim(self) -> bool:
        with self._lock:
            claimed, self._claimed = self._claimed, True
            return not claimed

    def _run(self, tmp_factory: pytest.TempPathFactory) -> None:
        try:
            self._result = self.fn(tmp_factory.mktemp(self.name))
        except BaseException as e:  # noqa: BLE001 (handed to the test, which raises it)
            self._error = e
        finally:
            self._done.set()

    def outcome(self) -> Any:
        """The scenario's return value: run it now if nobody has started it, else wait for it. Its exception, if it
        raised one, is raised here (so the test fails with the scenario's assertion and traceback)."""
        if self._claim():
            self._run(self._tmp_factory)
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result


def scenario(fn: Callable[[pathlib.Path], Any]):
    """Declare ``fn(tmp_dir) -> outcome`` a background scenario; returns the session fixture (named as ``fn``)
    whose value is the ``Scenario`` (call ``.outcome()`` in the test)."""
    sc = _SCENARIOS.get(fn.__name__)
    if sc is None:
        sc = _SCENARIOS[fn.__name__] = Scenario(fn)
    elif sc.fn.__code__.co_filename != fn.__code__.co_filename:
        raise ValueError(f"two background scenarios are named {fn.__name__}")
    # else: the same module imported again under another name (`from tests.test_sweep import ...` in a test): the
    # scenario pytest collected is the one to run.

    @pytest.fixture(scope="session", name=fn.__name__)
    def fixture(tmp_path_factory):
        sc._tmp_factory = tmp_path_factory
        return sc

    fixture.__doc__ = fn.__doc__
    return fixture


class _Worker:
    def __init__(self):
        self.thread: threading.Thread | None = None
        self.running: Scenario | None = None

    def start(self, items: list[pytest.Item], tmp_factory: pytest.TempPathFactory) -> None:
        """Run the selected tests' scenarios in a thread, the one needed last first: the tests reach the first ones
        soon and run them themselves, while the worker is busy with those they reach last."""
        first_use: dict[str, int] = {}
        for i, item in enumerate(items):
            for name in getattr(item, "fixturenames", ()):
                if name in _SCENARIOS:
                    first_use.setdefault(name, i)
        queue = [_SCENARIOS[n] for n in sorted(first_use, key=first_use.get, reverse=True)]
        for sc in queue:
            sc._tmp_factory = tmp_factory
        if not queue or os.environ.get(ENABLE_ENV, "1") == "0" or (os.cpu_count() or 1) < 2:
            return

        def work():
            for sc in queue:
                if sc._claim():
                    self.running = sc
                    sc._run(tmp_factory)
                    self.running = None

        self.thread = threading.Thread(target=work, name="background-scenarios", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """At the end of the session: a scenario still running (the session was cut short: -x, Ctrl-C) has its
        processes killed, so that none outlives pytest."""
        if self.thread is None or not self.thread.is_alive():
            return
        for pid in _children(os.getpid()):
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pid:  # started in a session of its own: kill its group
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        self.thread.join(timeout=30)


def _children(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry))
    return children


worker = _Worker()
