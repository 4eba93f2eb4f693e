"""Multi-host data parallelism: 2 processes x 4 CPU devices (jax.distributed on localhost) == 1 process x 8 devices."""

import jax
import numpy as np
import pytest

from regnet_jax import checkpoint
from regnet_jax.train import train_and_evaluate
from tests.helpers_train import free_port, start_cli, stop, tiny_config, write_config_file

TIMEOUT_S = 240


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_two_processes_match_one_process(tmp_path):
    config = tiny_config(num_epochs=1)
    cfg_file = write_config_file(tmp_path / "config.py", config)
    port = free_port()
    procs = [
        start_cli(
            "regnet_jax.train",
            [f"--config={cfg_file}", f"--workdir={tmp_path / 'two'}", "--distributed",
             f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
            num_devices=4,
            log_path=tmp_path / f"process{i}.log",
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert codes == [0, 0], (tmp_path / "process0.log").read_text()[-3000:] + (tmp_path / "process1.log").read_text()[-3000:]
    log0 = (tmp_path / "process0.log").read_text()
    assert "8 devices in 2 processes" in log0

    assert jax.device_count() == 8
    one = train_and_evaluate(config, str(tmp_path / "one"))
    two_vars = checkpoint.load_pretrained(str(tmp_path / "two")).variables
    one_vars = checkpoint.load_pretrained(str(tmp_path / "one")).variables
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(two_vars)[0], jax.tree_util.tree_leaves(one_vars)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    two = checkpoint.read_workdir_config(str(tmp_path / "two"))  # the resolved config was written once, by process 0
    assert two.batch_size == config.batch_size
    import json

    summary_two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary_two["steps"] == one["steps"] == 4
    np.testing.assert_allclose(summary_two["final"]["loss"], one["final"]["loss"], rtol=1e-4)
