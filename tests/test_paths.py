"""The path layer (regnet_jax.core.paths) and the preemption-safe run records written through it (run_records.JsonlLog,
EventLog): URLs stay URLs, writes are whole or absent, appends all or nothing, storage faults named."""

import errno
import json
import os

import pytest

from regnet_jax.core import paths
from regnet_jax.training import records as run_records
from regnet_jax.training.events import EventLog


def test_urls_stay_urls_and_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "_has_module", lambda name: True)  # whether or not gcsfs is installed here
    assert str(paths.resolve("gs://bkt/runs/qs")) == "gs://bkt/runs/qs"
    assert str(paths.join("gs://bkt/runs", "qs", "checkpoints")) == "gs://bkt/runs/qs/checkpoints"
    assert paths.is_url("gs://bkt/x") and not paths.is_url("runs/qs")
    assert str(paths.resolve("runs/qs")) == str(tmp_path / "runs" / "qs")
    monkeypatch.setattr(paths, "_has_module", lambda name: False)
    with pytest.raises(paths.StorageError, match="gs://bkt/x: gs:// paths need the gcsfs package: pip install gcsfs"):
        paths.resolve("gs://bkt/x")
    assert not (tmp_path / "gs:").exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    paths.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(paths.StorageError, match=rf"no space left to write {path} \(.* free\)"):
        paths.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["summary.json"]


def test_an_append_cut_short_is_undone(tmp_path, monkeypatch):
    path = tmp_path / "train_metrics.jsonl"
    paths.append_text(path, '{"step": 1}\n')
    write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: write(fd, data[: len(data) // 2]))  # the disk fills mid-record
    with pytest.raises(paths.StorageError, match="no space left"):
        paths.append_text(path, '{"step": 2}\n')
    assert path.read_text() == '{"step": 1}\n'


@pytest.mark.parametrize(
    "exc, kind",
    [
        (
            ValueError(
                'RESOURCE_EXHAUSTED: Failed writing "x": Failed to write 177 bytes to file 11: No space left on device'
            ),
            "no space left",
        ),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "no space left"),
        (OSError(errno.EROFS, "Read-only file system"), "is not writable"),
        (PermissionError(errno.EACCES, "Permission denied"), "is not writable"),
    ],
)
def test_storage_faults_are_recognised_through_wrapping_exceptions(tmp_path, exc, kind):
    try:
        try:
            raise exc
        except Exception as inner:
            raise RuntimeError("save failed") from inner  # as orbax re-raises from its background threads
    except RuntimeError as outer:
        err = paths.storage_error(tmp_path, outer, needed=3 << 20)
    assert isinstance(err, paths.StorageError) and kind in str(err) and str(tmp_path) in str(err)
    assert paths.storage_error(tmp_path, ValueError("shape mismatch")) is None


def test_a_resumed_log_drops_what_came_after_its_checkpoint_and_torn_lines(tmp_path):
    path = tmp_path / run_records.TRAIN_FILE
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3, 4, 5, 6)]
    path.write_text("\n".join(lines) + '\n{"step": 7, "lo')  # killed mid-line after step 6, checkpoint at step 4
    log = run_records.JsonlLog(path, resume_step=4)
    assert [r["step"] for r in log.records] == [1, 2, 3, 4]
    assert path.read_text() == "".join(line + "\n" for line in lines[:4])  # rewritten whole
    log.append({"step": 5, "loss": 0.5})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5]
    reader = run_records.JsonlLog(path, resume_step=5, write=False)  # another process's view: nothing written
    assert [r["step"] for r in reader.records] == [1, 2, 3, 4, 5]


def test_tensorboard_reads_the_events_and_drops_those_a_resumed_run_redid(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    first = EventLog(tmp_path, resume_step=0)
    first.hparams({"params": 10, "flops": 20})
    for step in (1, 2, 3):
        first.scalars(step, {"train/loss": float(step)})
    resumed = EventLog(tmp_path, resume_step=2)  # killed after step 3, resumed from the checkpoint of step 2
    for step in (3, 4):
        resumed.scalars(step, {"train/loss": 10.0 * step})
    assert len([f for f in os.listdir(tmp_path) if "tfevents" in f]) == 2
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
