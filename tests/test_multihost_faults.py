"""A process of a multi-process run dies mid-epoch: the other exits at once with a clear error instead of hanging."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers_train import free_port, start_cli, stop, tiny_config, write_config_file

EXIT_WITHIN_S = 60  # the survivor notices at its next step; JAX's heartbeat timeout bounds every other case


@pytest.mark.timeout(400)
def test_killing_one_of_two_processes_mid_epoch_ends_the_other(tmp_path):
    config = tiny_config(num_epochs=50)
    config.dataset.num_train_examples = 1024  # 32 steps per epoch: the kill lands mid-epoch
    cfg_file = write_config_file(tmp_path / "config.py", config)
    port = free_port()
    procs = [
        start_cli(
            "regnet_jax.train",
            [f"--config={cfg_file}", f"--workdir={tmp_path / 'run'}", "--distributed", f"--coordinator_address=localhost:{port}",
             "--num_processes=2", f"--process_id={i}", "--heartbeat_timeout_s=20"],
            num_devices=4,
            log_path=tmp_path / f"process{i}.log",
        )  # fmt: skip
        for i in range(2)
    ]
    log0 = tmp_path / "process0.log"
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
    text = log0.read_text()
    assert code == 1, text[-3000:]
    assert took < EXIT_WITHIN_S, took
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: process 0 of 2: a step shared by all processes failed"), text[-3000:]
    assert "another process has probably died (see its log)" in errors[0]
    assert "Traceback" not in text and "step 32/1600" not in text  # stopped mid-epoch 0
