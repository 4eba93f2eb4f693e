"""Quiet command-line tools: library chatter is filtered, real warnings and regnet_jax's own lines are kept."""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys

import pytest

from regnet_jax.core import logs

REPO = pathlib.Path(__file__).resolve().parents[1]


def _record(pathname: str, level: int) -> logging.LogRecord:
    return logging.LogRecord("x", level, pathname, 1, "message", None, None)


def test_library_info_is_dropped_and_everything_else_kept():
    keep = logs.LibraryChatterFilter().filter
    library = os.path.join(logs._library_dirs()[0], "jax", "_src", "xla_bridge.py")
    assert not keep(_record(library, logging.INFO)) and not keep(_record(library, logging.DEBUG))
    assert keep(_record(library, logging.WARNING)) and keep(_record(library, logging.ERROR))
    assert keep(_record(str(REPO / "regnet_jax" / "train.py"), logging.INFO))  # our own progress lines
    assert keep(_record("/home/someone/my_script.py", logging.INFO))  # a user's code


def test_verbose_turns_quieting_off(monkeypatch):
    for name in (*logs.QUIET_ENVIRONMENT, logs.VERBOSE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(logs.VERBOSE_ENV, "1")
    logs.quiet_environment()
    assert not any(name in os.environ for name in logs.QUIET_ENVIRONMENT)
    monkeypatch.setenv(logs.VERBOSE_ENV, "0")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the user's own setting wins
    logs.quiet_environment()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


@pytest.mark.timeout(120)
def test_a_tool_prints_only_its_own_output():
    """A tool that imports TensorFlow and JAX, then fails on bad input: stderr is that one error line."""
    env = {k: v for k, v in os.environ.items() if k not in (*logs.QUIET_ENVIRONMENT, logs.VERBOSE_ENV)}
    env["PYTHONPATH"] = str(REPO)
    args = [
        sys.executable,
        "-m",
        "regnet_jax.evaluate",
        "--config=configs/quickstart.py",
        "--checkpoint=/nonexistent/run",
    ]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=110)
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and out.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and "/nonexistent/run" in lines[0], out.stderr
