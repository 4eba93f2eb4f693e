"""A process of a multi-process run dies mid-epoch: the other exits at once with a clear error instead of hanging."""

from __future__ import annotations

import os
import signal
import time

import jax
import pytest

from regnet_jax import train
from regnet_jax.data import BadImagesError
from tests import background
from tests.helpers_train import free_port, start_cli, stop, tiny_config, write_config_file

EXIT_WITHIN_S = 60  # the survivor notices at its next step; JAX's heartbeat timeout bounds every other case


@background.scenario
def one_of_two_processes_killed(tmp):
    """Two processes train; process 1 is killed (SIGKILL) at step 4 of epoch 0: (process 0's exit status, the seconds
    it took to end after the kill, its log). What is checked is how the survivor ends, not what it computes: XLA's
    cheapest compilation."""
    config = tiny_config(num_epochs=50)
    config.dataset.num_train_examples = 1024  # 32 steps per epoch: the kill lands mid-epoch
    cfg_file = write_config_file(tmp / "config.py", config)
    port = free_port()
    procs = [
        start_cli(
            "regnet_jax.train",
            [
                f"--config={cfg_file}",
                f"--workdir={tmp / 'run'}",
                "--distributed",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                "--heartbeat_timeout_s=20",
            ],
            num_devices=4,
            log_path=tmp / f"process{i}.log",
        )  # fmt: skip
        for i in range(2)
    ]
    log0 = tmp / "process0.log"
    try:
        deadline = time.time() + 240
        while "step 4/1600" not in log0.read_text():
            assert time.time() < deadline and procs[0].poll() is None, log0.read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(procs[1].pid, signal.SIGKILL)
        killed = time.time()
        code = procs[0].wait(timeout=EXIT_WITHIN_S + 60)
        took = time.time() - killed
    finally:
        for p in procs:
            stop(p)
    return code, took, log0.read_text()


@pytest.mark.timeout(400)
def test_killing_one_of_two_processes_mid_epoch_ends_the_other(one_of_two_processes_killed):
    code, took, text = one_of_two_processes_killed.outcome()
    assert took < EXIT_WITHIN_S, took
    if code == -signal.SIGABRT:
        # The other documented ending (docs/hardware.md, "When a process dies"): on a loaded machine JAX's coordination
        # service can declare the dead process unhealthy before this one's next collective fails, and ends it itself.
        assert "Terminating process because the JAX distributed service detected fatal errors" in text, text[-3000:]
        assert "step 32/1600" not in text  # stopped mid-epoch 0
        return
    assert code == 1, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: process 0 of 2: a step shared by all processes failed"), (
        text[-3000:]
    )
    assert "another process has probably died (see its log)" in errors[0]
    assert "Traceback" not in text and "step 32/1600" not in text  # stopped mid-epoch 0


@pytest.mark.parametrize(
    "error, code, line",
    [
        (BadImagesError("3 of the 64 training images ..."), 2, "error: process 1 of 2: 3 of the 64 training images ..."),
        (jax.errors.JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: Connection closed by peer\nmore"), 1,
         "error: process 1 of 2: a step shared by all processes failed (UNKNOWN: Gloo all-reduce failed: Connection closed by peer); another process has probably died"),
        (OSError("No space left on device"), 1, "error: process 1 of 2: OSError: No space left on device"),
    ],
)  # fmt: skip
def test_an_error_on_one_process_ends_it_at_once_with_one_line(error, code, line, monkeypatch, capsys):
    """What a multi-process run's main does with an error raised on one process only (e.g. its share of the data)."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(train.os, "_exit", lambda c: (_ for _ in ()).throw(SystemExit(c)))  # instead of ending pytest
    try:
        raise error
    except Exception as e:
        with pytest.raises(SystemExit) as ended:
            train._exit_multiprocess_error(e)
    assert ended.value.code == code
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(line)
