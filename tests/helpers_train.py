"""Shared by the trainer tests: a tiny config that trains in seconds, and running the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections

from regnet_jax.config import base_config
from tests import background

REPO = pathlib.Path(__file__).resolve().parents[1]

# The trainer tests compile the same tiny steps many times, in this process and in subprocesses: share the compiled
# executables through JAX's persistent cache (keyed by the computation, so a stale entry is never used), in the
# directory tests/conftest.py gives the command-line tools (JAX_COMPILATION_CACHE_DIR, which a caller may set: an
# empty one measures the suite as a fresh machine runs it).
XLA_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]
jax.config.update("jax_compilation_cache_dir", XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# A width-8 stem and one stage of one width-16 bottleneck block (stride 2, projection shortcut, SE): every kind of
# layer the trainer handles, and a third less to compile than two stages. Dense 3x3 convs (group width = width:
# XLA:CPU's grouped-conv backward is slow).
TINY_MODEL = dict(
    type="anynet", stem_type="simple_stem_in", stem_w=8, block_type="res_bottleneck_block",
    depths=[1], widths=[16], strides=[2], bot_muls=[1.0], group_ws=[16], se_ratio=0.25, num_classes=10,
)  # fmt: skip


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """Quickstart digits at 16 px, 128 training images, global batch 32 (4 per device on 8), 2 epochs."""
    c = base_config(TINY_MODEL, batch_size=32, schedule="100ep")
    c.num_epochs = 2
    c.resolution = 16
    c.eval_batch_size = 16
    c.dataset.name = "quickstart"
    c.dataset.eval_split = "test"
    c.dataset.num_train_examples = 128
    c.dataset.num_eval_examples = 50  # not a multiple of the eval batch: the last batch is padded
    c.dataset.min_area = 0.35
    c.dataset.flip = False
    c.dataset.pca_std = 0.0
    c.optim.base_lr = 0.2
    c.optim.warmup_epochs = 1
    c.log_every_steps = 2
    c.keep_checkpoints = 100
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def write_config_file(path: pathlib.Path, config: ml_collections.ConfigDict) -> pathlib.Path:
    """A config .py file for the CLI that returns exactly ``config``."""
    text = json.dumps(json.loads(config.to_json_best_effort()))
    path.write_text(
        "import json\nimport ml_collections\n\n\n"
        f"def get_config():\n    return ml_collections.ConfigDict(json.loads({text!r}))\n"
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def cli_env(num_devices: int) -> dict[str, str]:
    """The environment the session started with (tests/background.py), set up for a CLI on ``num_devices`` devices."""
    env = background.environ()
    env.update(
        JAX_NUM_CPU_DEVICES=str(num_devices),
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(REPO),
        JAX_COMPILATION_CACHE_DIR=XLA_CACHE,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


def start_cli(module: str, args: list[str], num_devices: int, log_path: pathlib.Path) -> subprocess.Popen:
    """Start ``python -m module args`` in its own process group, output to ``log_path``."""
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=cli_env(num_devices),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    """Kill a started process (and its group) if it is still running."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_until(
    done: Callable[[], bool],
    procs: Sequence[subprocess.Popen],
    what: str,
    timeout: float,
    logs: Sequence[pathlib.Path] = (),
) -> None:
    """Poll ``done()`` while every one of ``procs`` runs; fail if one exits first (with the tail of its log in
    ``logs``, if given) or if ``what`` has not happened within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while not done():
        for i, p in enumerate(procs):
            tail = logs[i].read_text()[-3000:] if i < len(logs) else ""
            assert p.poll() is None, f"exited early ({p.returncode}) before {what}: {tail}"
        assert time.time() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.1)


def run_cli(module: str, args: list[str], num_devices: int, log_path: pathlib.Path, timeout: float) -> int:
    proc = start_cli(module, args, num_devices, log_path)
    try:
        return proc.wait(timeout=timeout)
    finally:
        stop(proc)
