"""A full disk or an unwritable workdir during a save: the run stops with a StorageError naming the path (and the
space needed), the previous checkpoints and every metric file stay intact and readable, and a rerun after the fault
is fixed resumes. On a small tmpfs (needs the right to mount one, else skipped), and with the fault injected into
orbax's save (runs everywhere)."""

import errno
import json
import logging
import subprocess

import orbax.checkpoint as ocp
import pytest

from regnet_jax.core import paths
from regnet_jax.train import train_and_evaluate
from regnet_jax.training import checkpoint
from regnet_jax.training import records as run_records
from regnet_jax.weights.pretrained import load_pretrained
from tests.helpers_train import tiny_config


def _config():
    return tiny_config(checkpoint_every_steps=1)  # 2 epochs x 4 steps, a checkpoint after every step


def _mount(*args):
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (about four checkpoints of the tiny model): (mount point, remount(options))."""
    disk = tmp_path / "disk"
    disk.mkdir()
    out = _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk))
    if out.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {out.stderr.strip()}")
    try:
        yield disk, lambda options: _mount("-o", f"remount,{options}", str(disk)).check_returncode()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def _assert_intact(workdir):
    """Every checkpoint left restores, and every metric line parses (no torn or repeated lines)."""
    ckpt = checkpoint.Checkpointer(str(workdir), read_only=True)
    steps = ckpt.steps()
    ckpt.close()
    assert steps, "no checkpoint survived"
    pre = load_pretrained(workdir)
    assert pre.source.endswith(f"step {steps[-1]}")
    for name in (run_records.TRAIN_FILE, run_records.EVAL_FILE):
        lines = (workdir / name).read_text().splitlines() if (workdir / name).exists() else []
        records = [json.loads(line) for line in lines]
        assert [r["step"] for r in records] == sorted({r["step"] for r in records})
    return steps[-1]


def _resumes(workdir, last, caplog):
    caplog.clear()
    caplog.set_level(logging.INFO, logger="absl")
    summary = train_and_evaluate(_config(), str(workdir))
    assert summary["steps"] == 8
    assert any(f"at step {last} " in r.getMessage() for r in caplog.records if "resumed from" in r.getMessage())
    _assert_intact(workdir)


def test_full_disk_stops_the_run_and_a_rerun_after_freeing_space_resumes(small_disk, caplog):
    disk, remount = small_disk
    workdir = disk / "run"
    with pytest.raises(paths.StorageError, match=rf"no space left to write {disk}.* free"):
        train_and_evaluate(_config(), str(workdir))
    last = _assert_intact(workdir)
    assert last < 8
    remount("size=64m")
    _resumes(workdir, last, caplog)


def test_workdir_turning_read_only_during_a_save_stops_the_run_and_a_rerun_resumes(small_disk, monkeypatch, caplog):
    disk, remount = small_disk
    remount("size=64m")
    workdir = disk / "run"
    save = checkpoint.Checkpointer.save

    def save_on_a_read_only_disk_from_step_5(self, step, *args, **kwargs):
        if step == 5:
            self.wait()  # step 4 is complete
            remount("ro")
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_on_a_read_only_disk_from_step_5)
    with pytest.raises(
        paths.StorageError,
        match=rf"checkpoint of step 5: {workdir}/checkpoints is not writable \(a read-only file system.*up to step 4 are intact",
    ):
        train_and_evaluate(_config(), str(workdir))
    monkeypatch.undo()
    assert _assert_intact(workdir) == 4
    remount("rw")
    _resumes(workdir, 4, caplog)


def test_a_save_failing_for_lack_of_space_names_the_directory_and_keeps_what_was_saved(tmp_path, monkeypatch):
    """Orbax raising ENOSPC inside a save (the disk filled up between the free-space check and the write)."""
    workdir = tmp_path / "run"
    save = ocp.CheckpointManager.save

    def save_failing_at_step_3(self, step, *args, **kwargs):
        if step == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(workdir / "checkpoints" / "3"))
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save_failing_at_step_3)
    with pytest.raises(
        paths.StorageError,
        match=rf"no space left to write {workdir}/checkpoints \(.* free, about .* needed\).*up to step 2 are intact",
    ):
        train_and_evaluate(_config(), str(workdir))
    assert _assert_intact(workdir) == 2
