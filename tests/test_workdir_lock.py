"""One run per workdir: a live holder is named and refused; a dead one (gone pid on this machine, or a heartbeat older
than the lease elsewhere) is taken over with a warning; the heartbeat runs and notices a takeover. (The same on a
bucket: tests/test_gcs_emulator.py.)"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from regnet_jax.train import train_and_evaluate
from regnet_jax.training import workdir_lock
from regnet_jax.training.workdir_lock import LOCK_FILE, WorkdirBusyError, WorkdirLock
from tests.helpers_train import tiny_config


def _lock(path, **kw):
    return WorkdirLock(path, settle_s=0.01, **kw)


def test_a_live_holder_is_named_and_a_second_train_refused(tmp_path):
    held = _lock(tmp_path)
    held.acquire()
    try:
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (record["host"], record["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(
            WorkdirBusyError,
            match=rf"in use by another run \(host {socket.gethostname()}, pid {os.getpid()}, started {record['started']};",
        ):
            _lock(tmp_path).acquire()
        with pytest.raises(WorkdirBusyError, match="in use by another run"):
            train_and_evaluate(tiny_config(), str(tmp_path))
        assert not (tmp_path / "checkpoints").exists()  # refused before anything was written
    finally:
        held.release()
    assert not (tmp_path / LOCK_FILE).exists()
    again = _lock(tmp_path)
    again.acquire()
    again.release()


def test_a_dead_holder_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    pid = int(dead.stdout)
    record = {**_lock(tmp_path)._record(time.time()), "pid": pid, "pid_start": "1", "token": "dead"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    taker = _lock(tmp_path)
    taker.acquire()
    taker.release()
    assert any(f"pid {pid}" in r.getMessage() and "is gone" in r.getMessage() for r in caplog.records)
    # Another machine's holder: alive while its heartbeat is younger than its lease.
    other = {
        "host": "other-host",
        "pid": 1,
        "started": "then",
        "heartbeat": time.time(),
        "lease_s": 30,
        "token": "other",
    }
    (tmp_path / LOCK_FILE).write_text(json.dumps(other))
    with pytest.raises(WorkdirBusyError, match="host other-host, pid 1, started then"):
        _lock(tmp_path).acquire()
    (tmp_path / LOCK_FILE).write_text(json.dumps({**other, "heartbeat": time.time() - 31}))
    taker = _lock(tmp_path)
    taker.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == taker.token
    taker.release()


def test_the_heartbeat_refreshes_the_lock_and_notices_a_takeover(tmp_path):
    lock = _lock(tmp_path, heartbeat_s=0.05)
    lock.acquire()
    first = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"]
    deadline = time.time() + 10
    while json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"] == first:
        assert time.time() < deadline, "no heartbeat"
        time.sleep(0.02)
    lock.check()  # still ours
    usurper = {**json.loads((tmp_path / LOCK_FILE).read_text()), "token": "usurper", "pid": 1, "host": "other-host"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(usurper))
    while lock.lost is None:
        assert time.time() < deadline, "the takeover was not noticed"
        time.sleep(0.02)
    with pytest.raises(WorkdirBusyError, match=r"another run took over .* \(host other-host"):
        lock.check()
    lock.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == "usurper"  # not ours to remove


def test_sweep_status_sees_a_running_trainer(tmp_path):
    from regnet_jax.design_space.launch import is_running
    from regnet_jax.design_space.layout import SweepDir

    sd = SweepDir(str(tmp_path))
    assert not is_running(sd, "000000")
    lock = _lock(sd.run_dir("000000"))
    lock.acquire()
    try:
        assert is_running(sd, "000000")
    finally:
        lock.release()
    assert not is_running(sd, "000000") and workdir_lock.WorkdirLock(sd.run_dir("000000")).read() is None
