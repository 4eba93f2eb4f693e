"""End-to-end training on 8 emulated devices: outputs, resume, kill-and-resume, NaN, corrupt checkpoints, TFDS
imagenet2012 (mocked), fine-tuning, and the CLI's errors."""

import importlib.util
import json
import os
import re
import shutil
import time

import jax
import ml_collections
import numpy as np
import pytest

from regnet_jax.config import ConfigError, load_config_file, validate_config
from regnet_jax.train import train_and_evaluate
from regnet_jax.training import checkpoint, evaluation, prediction
from regnet_jax.training.trainer import NonFiniteLossError
from regnet_jax.weights import files as weight_files
from regnet_jax.weights.pretrained import load_pretrained
from tests import background
from tests.helpers_train import REPO, TINY_MODEL, free_port, run_cli, start_cli, stop, tiny_config, write_config_file

EVAL_KEYS = {"step", "epoch", "top1_err", "top5_err", "loss"}


def _config():
    return tiny_config(checkpoint_every_steps=1)  # 2 epochs x 4 steps, a checkpoint after every step


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run (shared, read-only: tests that modify it work on a copy)."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    summary = train_and_evaluate(_config(), str(workdir))
    return workdir, summary


def _copy(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained[0], dst)
    return dst


def _final_variables(workdir):
    return load_pretrained(str(workdir)).variables


def _assert_same_variables(a, b, rtol=1e-6):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(
            x, y, rtol=rtol, atol=10 * rtol * np.abs(y).max(), err_msg=jax.tree_util.keystr(path)
        )


def _read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_run_writes_its_records_and_rerun_is_a_noop(trained):
    workdir, summary = trained
    evals = _read_jsonl(workdir / "eval_metrics.jsonl")
    assert [r["step"] for r in evals] == [4, 8] and [r["epoch"] for r in evals] == [1, 2]
    assert all(set(r) == EVAL_KEYS for r in evals)
    assert all(0 <= r["top1_err"] <= 100 and 0 <= r["top5_err"] <= r["top1_err"] for r in evals)
    assert set(summary) == {
        "status",
        "epochs",
        "steps",
        "final",
        "best_top1_err",
        "wall_time_s",
        "params",
        "trainable_params",
        "flops",
        "skipped_images",
    }
    assert summary["trainable_params"] == summary["params"]
    assert summary["status"] == "done" and summary["epochs"] == 2 and summary["steps"] == 8
    assert summary["final"] == {k: evals[-1][k] for k in ("top1_err", "top5_err", "loss")}
    assert summary["best_top1_err"] == min(r["top1_err"] for r in evals)
    assert isinstance(summary["params"], int) and summary["params"] > 0 and isinstance(summary["flops"], int)
    assert json.loads((workdir / "summary.json").read_text()) == summary
    config = json.loads((workdir / "config.json").read_text())
    assert config["batch_size"] == 32 and config["model"]["widths"] == [16]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    assert (workdir / "curves.png").stat().st_size > 0
    train_log = _read_jsonl(workdir / "train_metrics.jsonl")
    assert {"loss", "top1_err", "lr", "images_per_s", "steps_per_s"} <= set(train_log[0])
    ckpt = checkpoint.Checkpointer(str(workdir), read_only=True)
    assert ckpt.steps() == list(range(1, 9))
    ckpt.close()


def test_rerunning_a_finished_run_trains_nothing(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    before = _final_variables(workdir)
    summary = train_and_evaluate(_config(), str(workdir))
    assert summary["steps"] == 8 and summary["final"] == trained[1]["final"]
    assert len(_read_jsonl(workdir / "eval_metrics.jsonl")) == 2  # no duplicate lines
    _assert_same_variables(_final_variables(workdir), before, rtol=0)


def test_resuming_with_a_changed_config_is_refused_unless_allowed_and_keeps_the_history(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    original = json.loads((workdir / "config.json").read_text())
    changed = _config()
    changed.num_epochs, changed.optim.label_smoothing = 3, 0.1
    with pytest.raises(
        ConfigError,
        match=r"another config: num_epochs: 2 -> 3; optim.label_smoothing: 0.0 -> 0.1\..*--allow_config_change",
    ):
        train_and_evaluate(changed, str(workdir))
    assert (
        json.loads((workdir / "config.json").read_text()) == original
        and not (workdir / "config_history.jsonl").exists()
    )
    assert (
        train_and_evaluate(tiny_config(checkpoint_every_steps=1, log_every_steps=1), str(workdir))["steps"] == 8
    )  # harmless
    summary = train_and_evaluate(changed, str(workdir), allow_config_change=True)
    assert (summary["epochs"], summary["steps"]) == (3, 12)
    history = _read_jsonl(workdir / "config_history.jsonl")
    assert history[0]["config"] == original and history[0]["changes"] == ["log_every_steps: 2 -> 1"]
    assert history[1]["replaced_at_step"] == 8 and "num_epochs: 2 -> 3" in history[1]["changes"]
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 3


def test_a_workdir_describes_itself_to_evaluate_and_predict(trained, tmp_path, monkeypatch):
    workdir, final = str(trained[0]), trained[1]["final"]
    own = evaluation.evaluate(None, workdir)  # python -m regnet_jax.evaluate --checkpoint=WORKDIR
    assert own["top1_err"] == pytest.approx(final["top1_err"]) and own["loss"] == pytest.approx(final["loss"], rel=1e-5)
    from_json = evaluation.evaluate(
        ml_collections.ConfigDict(load_config_file(f"{workdir}/config.json")), workdir
    )  # --config=WORKDIR/config.json
    assert from_json["loss"] == pytest.approx(own["loss"], rel=1e-6)
    other = evaluation.evaluate(None, workdir, split="train")  # --split: the training digits (first 50)
    assert other["count"] == own["count"] == 50 and other["loss"] != own["loss"]
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8)).save(tmp_path / "x.png")
    seen, real = [], prediction.preprocess
    monkeypatch.setattr(
        prediction, "preprocess", lambda path, conv, res, crop: seen.append((res, crop)) or real(path, conv, res, crop)
    )
    prediction.predict(workdir, [str(tmp_path / "x.png")])
    assert seen == [(16, 224 / 256)]  # the run's resolution and eval crop, not 224 px


@background.scenario
def killed_and_resumed_run(tmp):
    """The CLI killed (SIGKILL) once step 2 of 8 is saved, then rerun: (its exit status, a copy of the workdir as the
    kill left it, the rerun's status and log, the workdir)."""
    cfg_file = write_config_file(tmp / "config.py", _config())
    workdir = tmp / "killed"
    args = [f"--config={cfg_file}", f"--workdir={workdir}"]
    proc = start_cli("regnet_jax.train", args, 8, tmp / "first.log")
    try:
        deadline = time.time() + 180
        while not (workdir / "checkpoints" / "2").is_dir():  # step 2 of 8 finished and saved: kill mid-run
            assert proc.poll() is None, (tmp / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "the training subprocess made no checkpoint in time"
            time.sleep(0.02)
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    shutil.copytree(workdir, tmp / "as_killed")
    rc = run_cli("regnet_jax.train", args, 8, tmp / "second.log", timeout=180)
    return proc.returncode, tmp / "as_killed", rc, (tmp / "second.log").read_text(), workdir


@pytest.mark.timeout(300)
def test_killed_and_resumed_run_matches_uninterrupted(killed_and_resumed_run, trained):
    killed_rc, as_killed, rc, log, workdir = killed_and_resumed_run.outcome()
    assert killed_rc == -9
    assert not (as_killed / "summary.json").exists()
    killed_at = checkpoint.Checkpointer(str(as_killed), read_only=True).steps()[-1]
    assert killed_at < 8
    assert rc == 0, log[-3000:]
    assert f"at step {killed_at} " in log  # resumed where it stopped, not from scratch
    _assert_same_variables(_final_variables(workdir), _final_variables(trained[0]), rtol=1e-5)
    # Same data order as the uninterrupted run: every logged training loss after the resume agrees.
    resumed = {r["step"]: r["loss"] for r in _read_jsonl(workdir / "train_metrics.jsonl")}
    reference = {r["step"]: r["loss"] for r in _read_jsonl(trained[0] / "train_metrics.jsonl")}
    for step in [s for s in reference if s > killed_at]:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5), step


def test_a_run_stopped_at_an_epochs_last_step_ends_that_epoch_when_resumed(trained, tmp_path, monkeypatch):
    """Stopped (preempted, Ctrl-C) right after epoch 1's last step, the run saves before that epoch's end (precise BN,
    evaluation); the resumed run does them first: the same evaluations and weights as the uninterrupted run."""
    from regnet_jax.training.preemption import Preempted, StopSignals

    workdir = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(StopSignals, "preempted", lambda self, step: step == 4)  # a notice agreed at step 4 of 8
        with pytest.raises(Preempted, match="preempted at step 4;"):
            train_and_evaluate(_config(), str(workdir))
    assert not (workdir / "eval_metrics.jsonl").exists()  # stopped before the epoch's evaluation
    train_and_evaluate(_config(), str(workdir))
    evals, reference = (_read_jsonl(w / "eval_metrics.jsonl") for w in (workdir, trained[0]))
    assert [r["step"] for r in evals] == [4, 8]
    for r, ref in zip(evals, reference):
        assert r["top1_err"] == ref["top1_err"] and r["loss"] == pytest.approx(ref["loss"], rel=1e-5), (r, ref)
    _assert_same_variables(_final_variables(workdir), _final_variables(trained[0]), rtol=1e-5)


@background.scenario
def two_process_run(tmp):
    """jax.distributed on localhost, 2 processes x 4 devices: (their exit statuses, their logs, the workdir)."""
    config = _config()
    config.checkpoint_every_steps = 0  # only the save cadence differs from the reference run
    cfg_file = write_config_file(tmp / "config.py", config)
    port = free_port()
    procs = [
        start_cli(
            "regnet_jax.train",
            [
                f"--config={cfg_file}",
                f"--workdir={tmp / 'two'}",
                "--distributed",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            num_devices=4,
            log_path=tmp / f"process{i}.log",
        )
        for i in range(2)
    ]
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            stop(p)
    return codes, [(tmp / f"process{i}.log").read_text() for i in range(2)], tmp / "two"


@pytest.mark.timeout(300)
def test_two_processes_of_four_devices_match_one_process_of_eight(two_process_run, trained):
    """jax.distributed on localhost: each process reads its own half of every global batch."""
    codes, logs, workdir = two_process_run.outcome()
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "8 devices in 2 processes" in logs[0]
    _assert_same_variables(_final_variables(workdir), _final_variables(trained[0]), rtol=1e-4)
    two = json.loads((workdir / "summary.json").read_text())
    assert two["steps"] == 8
    assert two["final"]["loss"] == pytest.approx(trained[1]["final"]["loss"], rel=1e-4)


def test_corrupt_latest_checkpoint_is_reported_and_training_resumes_before_it(trained, tmp_path, caplog):
    workdir = _copy(trained, tmp_path)
    final = _final_variables(workdir)
    os.remove(workdir / "summary.json")
    for root, _, files in os.walk(workdir / "checkpoints" / "8" / "state"):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.write(b"\x00" * 64)
    summary = train_and_evaluate(_config(), str(workdir))
    assert any("checkpoints/8 cannot be read" in r.getMessage() for r in caplog.records)
    assert any(p.startswith("8.corrupt-") for p in os.listdir(workdir / "checkpoints"))
    assert summary["steps"] == 8
    _assert_same_variables(_final_variables(workdir), final, rtol=1e-5)  # redid step 8 from step 7


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    config = _config()
    config.num_epochs = 4
    config.optim.base_lr = 1e30  # the next update is huge but finite; the loss after it is not
    with pytest.raises(NonFiniteLossError, match="NaN or inf") as e:
        train_and_evaluate(config, str(workdir), allow_config_change=True)  # continue the finished run, 2 more epochs
    bad_step, last_good = map(int, re.search(r"by step (\d+).*checkpoint is step (\d+)", str(e.value)).groups())
    assert 8 < bad_step and last_good == bad_step - 1
    ckpt = checkpoint.Checkpointer(str(workdir), read_only=True)
    assert ckpt.steps()[-1] == last_good  # nothing saved at or after the bad step
    ckpt.close()
    variables = _final_variables(workdir)  # the newest checkpoint restores, with finite weights
    assert all(np.isfinite(v).all() for v in jax.tree_util.tree_leaves(variables))


_MOCK_RUN = """
import json, os, sys
import tensorflow_datasets as tfds
from regnet_jax.train import train_and_evaluate
from tests.helpers_train import tiny_config
data_dir, workdir, n = sys.argv[1], sys.argv[2], 40
# The prepared dataset's metadata: n examples in each split.
builder = tfds.builder("imagenet2012", data_dir=data_dir)
os.makedirs(builder.data_dir)
splits = [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s in ("train", "validation")]
builder.info.set_splits(tfds.core.SplitDict(splits))
builder.info.write_to_directory(builder.data_dir)
config = tiny_config(num_epochs=1, batch_size=16, **{"model.num_classes": 1000, "dataset.name": "imagenet2012",
                     "dataset.data_dir": data_dir, "dataset.eval_split": "validation",
                     "dataset.num_train_examples": 0, "dataset.num_eval_examples": 0, "dataset.shuffle_buffer": 64,
                     "dataset.flip": True, "dataset.pca_std": 0.1, "dataset.min_area": 0.08})
with tfds.testing.mock_data(num_examples=n, data_dir=data_dir):
    print(json.dumps(train_and_evaluate(config, workdir)))
"""


@background.scenario
def imagenet2012_mock_run(tmp):
    """In its own process: tfds's mock leaks into orbax's paths when other tests ran first in the same process. Its
    numbers are not compared: XLA's cheapest compilation."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _MOCK_RUN, str(tmp / "tfds"), str(tmp / "run")], cwd=REPO,
                         env=background.environ(), capture_output=True, text=True, timeout=600)  # fmt: skip
    return out, tmp / "run"


def test_imagenet2012_mock_data_end_to_end(imagenet2012_mock_run):
    out, workdir = imagenet2012_mock_run.outcome()
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 40 // 16
    evals = _read_jsonl(workdir / "eval_metrics.jsonl")
    assert len(evals) == 1 and evals[0]["step"] == 2  # 40 validation examples in 3 padded batches of 16


def test_finetune_from_a_workdir_with_new_classes_and_frozen_trunk(trained, tmp_path):
    config = tiny_config(num_epochs=1, init_from=str(trained[0]), freeze_trunk=True, **{"model.num_classes": 12})
    summary = train_and_evaluate(config, str(tmp_path / "probe"))
    assert summary["trainable_params"] == 16 * 12 + 12 < summary["params"]  # the head only
    pre, tuned = _final_variables(trained[0]), _final_variables(tmp_path / "probe")
    assert tuned["params"]["head"]["fc"]["kernel"].shape == (16, 12)
    del pre["params"]["head"], tuned["params"]["head"]
    _assert_same_variables(tuned, pre, rtol=0)  # trunk loaded and frozen, BN statistics untouched


def test_finetune_from_weights_applies_their_input_conventions(trained, tmp_path):
    variables = _final_variables(trained[0])
    weight_files.save_weights(
        str(tmp_path / "weights"),
        variables,
        TINY_MODEL,
        weight_files.input_spec("bgr", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    )
    config = tiny_config(num_epochs=1, init_from=str(tmp_path / "weights"))
    summary = train_and_evaluate(config, str(tmp_path / "tuned"))
    resolved = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert resolved["dataset"]["channel_order"] == "bgr" and resolved["dataset"]["mean"] == [0.5, 0.5, 0.5]
    assert summary["status"] == "done"
    bad = tiny_config(
        num_epochs=1, init_from=str(tmp_path / "weights"), **{"model.widths": [24], "model.group_ws": [24]}
    )
    with pytest.raises(checkpoint.CheckpointError, match="different architecture"):
        train_and_evaluate(bad, str(tmp_path / "bad"))


@background.scenario
def quickstart_run(tmp):
    """The quickstart config, 3 of its 30 epochs (the full run: docs/training.md, benchmarks/docs_figures.py), by the
    CLI: (its exit status and log, the workdir)."""
    args = ["--config=configs/quickstart.py", "--config.num_epochs=3", f"--workdir={tmp / 'qs'}"]
    return run_cli("regnet_jax.train", args, 8, tmp / "log", timeout=600), (tmp / "log").read_text(), tmp / "qs"


def test_quickstart_config_clearly_learns(quickstart_run):
    rc, log, workdir = quickstart_run.outcome()
    assert rc == 0, log[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final"]["top1_err"] < 25.0  # chance is 90 %
    evals = _read_jsonl(workdir / "eval_metrics.jsonl")
    assert evals[-1]["step"] == 3 * (1438 // 64)


def test_finetune_example_config():
    config = _load_config("configs/finetune_example.py", "/weights")
    validate_config(config)
    assert config.init_from == "/weights" and config.model.num_classes == 5
    with pytest.raises(ConfigError, match="give the pretrained weights"):
        _load_config("configs/finetune_example.py")


def _load_config(path, *args):
    spec = importlib.util.spec_from_file_location("cfg", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


@pytest.mark.timeout(120)
def test_cli_reports_an_unprepared_dataset_and_exits_2(tmp_path):
    cfg_file = write_config_file(tmp_path / "config.py", tiny_config())
    args = [
        f"--config={cfg_file}",
        f"--workdir={tmp_path / 'run'}",
        "--config.dataset.name=imagenet2012",
        f"--config.dataset.data_dir={tmp_path / 'tfds'}",
    ]
    assert run_cli("regnet_jax.train", args, 1, tmp_path / "log", timeout=100) == 2
    log = (tmp_path / "log").read_text()
    assert "error: TFDS dataset 'imagenet2012' is not prepared" in log and "tfds build imagenet2012" in log
    assert not (tmp_path / "run").exists()  # stopped before doing anything else
