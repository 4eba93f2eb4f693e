"""The last tracebacks of issue 20, each now one `error:` line and exit status 2, nothing written: a file where a
directory is expected, a config file whose get_config() returns something else than a config, Cloud Storage that
cannot be reached; and smoke mode keeping a named dataset's class count (the README fine-tune mistake)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from regnet_jax.core import paths
from tests.helpers_train import REPO, cli_env


def _run_all(
    commands: dict[str, list[str]], env: dict[str, str], timeout: float = 240
) -> dict[str, tuple[int, str, float]]:
    """Run ``python -m ARGS`` for every entry at once; {name: (exit status, output, seconds)}."""
    procs = {}
    for name, args in commands.items():
        procs[name] = (subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True), time.time())  # fmt: skip
    results = {}
    try:
        for name, (proc, t0) in procs.items():
            out, _ = proc.communicate(timeout=timeout)
            results[name] = (proc.returncode, out, time.time() - t0)
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    return results


def _one_error_line(result: tuple[int, str, float]) -> str:
    rc, out, _ = result
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("smoke mode")]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out, out[-3000:]
    return lines[0]


@pytest.mark.timeout(300)
def test_a_file_where_a_directory_is_expected_and_a_config_file_that_returns_no_config(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("not a directory\n")
    (tmp_path / "int_config.py").write_text("def get_config():\n    return 3\n")
    (tmp_path / "none_config.py").write_text("def get_config():\n    config = {}\n")
    (tmp_path / "list.json").write_text("[1, 2]\n")
    quickstart = f"--config={REPO / 'configs' / 'quickstart.py'}"
    results = _run_all({
        "train": ["regnet_jax.train", quickstart, f"--workdir={file}"],
        "train_under": ["regnet_jax.train", quickstart, f"--workdir={file}/run"],
        "evaluate": ["regnet_jax.evaluate", f"--checkpoint={file}"],
        "predict": ["regnet_jax.predict", f"--checkpoint={file}", str(file)],
        "export": ["regnet_jax.export", f"--checkpoint={file}", f"--output={tmp_path / 'out.safetensors'}"],
        "sweep_setup": ["regnet_jax.sweep", "setup", f"--out={file}", "--space=anynetx_a", "--n=2", "--flops=0,1e9"],
        "sweep_launch": ["regnet_jax.sweep", "launch", f"--out={file}"],
        "int_config": ["regnet_jax.train", f"--config={tmp_path / 'int_config.py'}", f"--workdir={tmp_path / 'w'}"],
        "none_config": ["regnet_jax.complexity", f"--config={tmp_path / 'none_config.py'}"],
        "json_list": ["regnet_jax.complexity", f"--config={tmp_path / 'list.json'}"],
    }, cli_env(1))  # fmt: skip
    assert f"error: {file} is a file, not a directory: give a directory" in _one_error_line(results["train"])
    assert f"error: {file}/run lies under {file}, which is a file, not a directory" in _one_error_line(
        results["train_under"]
    )
    for name in ("evaluate", "predict", "export"):
        assert f"error: {file} is a file, not a training workdir nor a weights directory" in _one_error_line(
            results[name]
        ), name
    assert f"lies under {file}, which is a file, not a directory" in _one_error_line(results["sweep_setup"])
    assert f"error: {file} is a file, not a sweep directory" in _one_error_line(results["sweep_launch"])
    line = _one_error_line(results["int_config"])
    assert (
        f"{tmp_path / 'int_config.py'} is not a config: its get_config() returned 3 (type int); expected an ml_collections.ConfigDict"
        in line
    )
    assert "returned None (type NoneType) (does get_config() end with `return config`?)" in _one_error_line(
        results["none_config"]
    )
    assert "list.json is not a config: its content is [1, 2] (type list); expected a JSON object" in _one_error_line(
        results["json_list"]
    )
    assert (
        file.read_text() == "not a directory\n"
        and not (tmp_path / "w").exists()
        and not (tmp_path / "out.safetensors").exists()
    )


def test_writing_a_file_where_a_directory_is_or_under_a_file_is_a_storage_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("")
    with pytest.raises(paths.StorageError, match=r"d is a directory, not a file: give a file name"):
        paths.write_text(tmp_path / "d", "x")
    with pytest.raises(paths.StorageError, match=r"f/x.json lies under .*f, which is a file, not a directory"):
        paths.write_json(tmp_path / "f" / "x.json", {})
    with pytest.raises(paths.StorageError, match=r"f is a file, not a directory"):
        paths.makedirs(tmp_path / "f")
    assert sorted(os.listdir(tmp_path)) == ["d", "f"] and os.listdir(tmp_path / "d") == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


@pytest.mark.skipif(not paths._has_module("gcsfs"), reason="gcsfs not installed")
@pytest.mark.timeout(300)
def test_unreachable_cloud_storage_is_one_line_naming_the_bucket_within_seconds(tmp_path):
    """No server at the endpoint, and an endpoint whose name does not resolve: gcsfs alone retries for a minute and
    ends in a traceback; the first request's failure is reported at once."""
    quickstart = f"--config={REPO / 'configs' / 'quickstart.py'}"
    results = {}
    for name, endpoint in (("refused", f"http://127.0.0.1:{_closed_port()}"), ("dns", "http://nonexistent.invalid:80")):
        env = {
            **cli_env(1),
            "EPATH_USE_TF": "false",
            "STORAGE_EMULATOR_HOST": endpoint,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
        }
        results.update({f"{name}_{k}": v for k, v in _run_all({
            "train": ["regnet_jax.train", quickstart, "--workdir=gs://my-bucket/runs/q"],
            "evaluate": ["regnet_jax.evaluate", "--checkpoint=gs://my-bucket/runs/q"],
            "sweep": ["regnet_jax.sweep", "collect", "--out=gs://my-bucket/sweep"],
        }, env).items()})  # fmt: skip
    for name, result in results.items():
        line = _one_error_line(result)
        assert "error: cannot reach Cloud Storage for gs://my-bucket/" in line and "(bucket my-bucket)" in line, (
            name,
            line,
        )
        assert "Check the network connection and STORAGE_EMULATOR_HOST=" in line, (name, line)
        assert ("cannot be found (DNS" in line) == name.startswith("dns") and (
            "cannot connect to" in line
        ) == name.startswith("refused")
        assert result[2] < 60, (name, result[2])  # gcsfs's own retries take about a minute


def test_synthetic_stand_ins_have_their_datasets_class_count():
    import ml_collections

    from regnet_jax.config import base_config, smoke
    from regnet_jax.data.sources import dataset_classes, synthetic_classes

    assert (
        dataset_classes("imagenet2012"),
        dataset_classes("oxford_flowers102"),
        dataset_classes("cifar10:3.0.2"),
    ) == (1000, 102, 10)
    assert dataset_classes("dtd") == 47  # not in the table: TFDS's registered builder says (offline)
    assert dataset_classes("no_such_dataset") is None
    config = base_config({**TINY_REGNET, "num_classes": 102}, batch_size=64, schedule="25ep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(smoke.ENV, "1")
        shrunk = smoke.shrink_loaded(config)
    assert (shrunk.dataset.name, shrunk.dataset.synthetic_like) == ("synthetic", "imagenet2012")
    assert synthetic_classes(shrunk) == 1000
    plain = ml_collections.ConfigDict(shrunk.to_dict())
    plain.dataset.synthetic_like = ""
    assert synthetic_classes(plain) == 102  # plain synthetic data: the model's classes


TINY_REGNET = dict(type="regnet", stem_type="simple_stem_in", stem_w=8, block_type="res_bottleneck_block", se_ratio=0.25,
                   depth=2, w0=8, wa=8.0, wm=2.0, group_w=8, bot_mul=1.0)  # fmt: skip


@pytest.mark.timeout(300)
def test_smoke_mode_refuses_a_model_with_fewer_classes_than_the_named_dataset_as_a_real_run_does(tmp_path):
    """The README fine-tune mistake: num_classes=102 without naming the 102-class dataset trains on ImageNet (1000)."""
    base = [
        "regnet_jax.train",
        f"--config={REPO / 'configs' / 'regnety_400mf.py'}:25ep",
        "--config.model.num_classes=102",
    ]
    results = _run_all({
        "imagenet": [*base, f"--workdir={tmp_path / 'imagenet'}"],
        "flowers": [*base, f"--workdir={tmp_path / 'flowers'}", "--config.dataset.name=oxford_flowers102"],
    }, {**cli_env(1), "REGNET_JAX_SMOKE": "1"})  # fmt: skip
    line = _one_error_line(results["imagenet"])
    assert line == (
        "error: dataset 'imagenet2012' (synthetic images standing in for it) has 1000 classes but "
        "config.model.num_classes=102: set --config.model.num_classes=1000"
    ), line
    assert "standing in for imagenet2012 (its classes)" in results["imagenet"][1]  # the smoke-mode line says so
    rc, out, _ = results["flowers"]
    assert rc == 0 and "final: top-1 error" in out, out[-3000:]
    assert not (tmp_path / "imagenet" / "checkpoints").exists()
