"""Ctrl-C (SIGINT) in `train` and `sweep launch`: a checkpoint at the next step, one line saying where and how to
resume, exit status 130, no traceback; a second Ctrl-C stops at once with one line; rerunning resumes."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from regnet_jax.core.interrupts import EXIT_INTERRUPTED
from regnet_jax.design_space.sweep_setup import setup_sweep
from tests.helpers_train import REPO, cli_env, start_cli, stop, tiny_config, write_config_file

TRAIN_EXAMPLES = 100_000  # 3125 steps of 32 per epoch: a Ctrl-C after the first steps lands mid-epoch
STEPS_PER_EPOCH = TRAIN_EXAMPLES // 32


def _long_config(tmp_path: pathlib.Path) -> pathlib.Path:
    config = tiny_config(**{
        "dataset.name": "synthetic", "dataset.eval_split": "validation", "dataset.num_train_examples": TRAIN_EXAMPLES,
        "dataset.num_eval_examples": 16, "num_epochs": 1, "log_every_steps": 1,
    })  # fmt: skip
    return write_config_file(tmp_path / "long.py", config)


def _wait_for_line(log: pathlib.Path, pattern: str, proc: subprocess.Popen, timeout: float = 180) -> re.Match:
    deadline = time.time() + timeout
    while True:
        m = re.search(pattern, log.read_text())
        if m:
            return m
        assert proc.poll() is None, (
            f"exited with status {proc.returncode} before {pattern!r}:\n{log.read_text()[-3000:]}"
        )
        assert time.time() < deadline, f"no {pattern!r} within {timeout}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def _interrupted_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("interrupted")]


def _checkpoints(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _interrupt_train(
    config: pathlib.Path, workdir: pathlib.Path, log: pathlib.Path, after: str
) -> tuple[int, str, re.Match]:
    """Start `train`, press Ctrl-C once the log matches ``after``; returns (exit status, output, that match)."""
    proc = start_cli("regnet_jax.train", [f"--config={config}", f"--workdir={workdir}"], 1, log)
    try:
        m = _wait_for_line(log, after, proc)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        stop(proc)
    return rc, log.read_text(), m


@pytest.mark.timeout(420)
def test_ctrl_c_saves_a_checkpoint_mid_epoch_says_how_to_resume_and_the_rerun_resumes(tmp_path):
    config, workdir = _long_config(tmp_path), tmp_path / "run"
    rc, out, _ = _interrupt_train(config, workdir, tmp_path / "train1.log", rf"step 3/{STEPS_PER_EPOCH} ")
    assert rc == EXIT_INTERRUPTED, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    (line,) = _interrupted_lines(out)
    m = re.fullmatch(
        r"interrupted at step (\d+) \(Ctrl-C\): checkpoint saved in (\S+); rerun the same command to resume", line
    )
    assert m and m.group(2) == str(workdir / "checkpoints"), line
    step = int(m.group(1))
    assert _checkpoints(workdir) == [step] and 3 <= step < STEPS_PER_EPOCH  # beyond the last epoch boundary (step 0)
    assert not (workdir / "lock.json").exists()  # the lock is released

    # The same command again resumes from that step (and a Ctrl-C saves a later one).
    rc, out, _ = _interrupt_train(config, workdir, tmp_path / "train2.log", rf"step {step + 2}/{STEPS_PER_EPOCH} ")
    assert re.search(rf"resumed from \S+ at step {step} ", out), out[-3000:]
    assert rc == EXIT_INTERRUPTED and "Traceback" not in out, out[-3000:]
    (line,) = _interrupted_lines(out)
    later = int(re.match(r"interrupted at step (\d+)", line).group(1))
    assert later > step + 1 and _checkpoints(workdir) == [step, later]


@pytest.mark.timeout(300)
def test_ctrl_c_twice_while_compiling_stops_at_once_with_one_line(tmp_path):
    """The first Ctrl-C lands before the first step (compiling); the second stops the run at once."""
    config, workdir, log = _long_config(tmp_path), tmp_path / "run", tmp_path / "train.log"
    proc = start_cli("regnet_jax.train", [f"--config={config}", f"--workdir={workdir}"], 1, log)
    try:
        _wait_for_line(log, r"learning rate: ", proc)  # logged just before the first step compiles
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        t = time.time()
        rc = proc.wait(timeout=120)
        took = time.time() - t
    finally:
        stop(proc)
    out = log.read_text()
    assert rc == EXIT_INTERRUPTED and "Traceback" not in out, out[-3000:]
    assert len(_interrupted_lines(out)) == 1, out[-3000:]
    assert took < 60, took
    assert not (workdir / "checkpoints").exists() or _checkpoints(workdir) in ([], [1])


@pytest.mark.timeout(120)
def test_ctrl_c_while_starting_is_one_line(tmp_path):
    """Ctrl-C while the command imports its libraries: one line, exit status 130, no traceback."""
    log = tmp_path / "train.log"
    proc = start_cli(
        "regnet_jax.train", [f"--config={_long_config(tmp_path)}", f"--workdir={tmp_path / 'run'}"], 1, log
    )
    try:
        time.sleep(1.5)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        stop(proc)
    out = log.read_text()
    assert rc == EXIT_INTERRUPTED and "Traceback" not in out, out[-3000:]
    assert len(_interrupted_lines(out)) == 1, out


# Two tiny models of one epoch of 2000 steps: the first to start trains for seconds, longer than the test takes to
# see its first steps and press Ctrl-C, while the other one starts (or trains, a little behind).
SWEEP = dict(
    space="anynetx_c", n=2, seed=0, dataset="synthetic", resolution=16, batch_size=8, num_epochs=1,
    dists={"depth": "log_uniform:1:1:1", "width": "log_uniform:8:16:8", "group_w": "power2_uniform:8:8:8", "bot_mul": "choice:1.0"},
    model={"stem_w": 8, "num_classes": 10},
    train={"dataset.num_train_examples": 16_000, "dataset.num_eval_examples": 8, "eval_batch_size": 8, "log_every_steps": 1},
)  # fmt: skip
MODELS = ("000000", "000001")


def _launch(out: str, log: pathlib.Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "regnet_jax.sweep", "launch", f"--out={out}", "--devices=cpu", "--parallel=2"],
                                cwd=REPO, env=cli_env(1), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _stop_trainers_of(out: str) -> None:
    """Kill any trainer a failed test left running (each leads its own process group; its pid is in its lock)."""
    for mid in MODELS:
        try:
            with open(os.path.join(out, "runs", mid, "lock.json")) as f:
                os.killpg(json.load(f)["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


@pytest.mark.timeout(420)
def test_ctrl_c_stops_a_sweep_launch_with_its_trainers_checkpointed_and_a_relaunch_completes(tmp_path):
    out = str(tmp_path / "sweep")
    setup_sweep(SWEEP, out, log=lambda s: None)
    runs = [pathlib.Path(out, "runs", mid) for mid in MODELS]
    proc = _launch(out, tmp_path / "launch1.log")
    try:
        deadline = time.time() + 240
        while not any(
            (r / "train.log").exists() and re.search(r"step 2/2000 ", (r / "train.log").read_text()) for r in runs
        ):
            assert proc.poll() is None, (tmp_path / "launch1.log").read_text()
            assert time.time() < deadline, (tmp_path / "launch1.log").read_text()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # the launcher's group only, as a terminal's Ctrl-C
        rc = proc.wait(timeout=180)
    finally:
        stop(proc)
        _stop_trainers_of(out)
    text = (tmp_path / "launch1.log").read_text()
    assert rc == EXIT_INTERRUPTED and "Traceback" not in text, text[-3000:]
    (line,) = _interrupted_lines(text)
    assert "2 trainer(s) stopped (000000, 000001), each after saving what it had trained" in line, line
    assert "0/2 models done. Rerun the same command to resume" in line, line
    trained = []
    for (
        run
    ) in runs:  # each trainer stopped cleanly: saved at its next step, or before its first one with nothing to save
        log = (run / "train.log").read_text()
        assert len(_interrupted_lines(log)) == 1 and "Traceback" not in log, log[-3000:]
        assert json.load(open(run / "launch.json"))["attempts"][-1]["result"] == "interrupted"
        assert not (run / "summary.json").exists()
        if "interrupted at step" in log:
            trained.append(run)
            assert _checkpoints(run)
    assert trained, "the trainer that was training saved a checkpoint"

    proc = _launch(out, tmp_path / "launch2.log")
    try:
        rc = proc.wait(timeout=300)
    finally:
        stop(proc)
        _stop_trainers_of(out)
    text = (tmp_path / "launch2.log").read_text()
    assert rc == 0 and "launch: 2/2 done, 0 failed" in text, text[-3000:]
    for run in trained:
        assert re.search(r"resumed from \S+ at step [1-9]", (run / "train.log").read_text())
