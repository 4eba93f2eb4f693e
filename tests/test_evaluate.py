"""Exact evaluation: each example counted once whatever the batch/device count; weights' input conventions applied."""

import json

import jax
import numpy as np
import pytest

from regnet_jax import data
from regnet_jax.config import ConfigError
from regnet_jax.core import distributed
from regnet_jax.models import create_model
from regnet_jax.training import evaluation, optimizer
from regnet_jax.training import steps as train_steps
from regnet_jax.weights import files as weight_files
from tests.helpers_train import TINY_MODEL, run_cli, tiny_config, write_config_file


@pytest.fixture(scope="module")
def variables():
    model = create_model(TINY_MODEL)
    v = jax.jit(lambda k: train_steps.init_variables(model, k, (16, 16, 3)))(jax.random.key(3))
    # Non-trivial BN statistics, so that eval-mode BN matters.
    v["batch_stats"] = jax.tree_util.tree_map(
        lambda s: s + 0.1 * np.random.default_rng(0).random(s.shape), v["batch_stats"]
    )
    v = jax.device_get(v)
    v["params"]["head"]["fc"]["kernel"] = v["params"]["head"]["fc"]["kernel"] * 300  # logits that depend on the input
    return v


def _reference(config, variables):
    """Top-1/top-5 error and loss computed on all examples at once, on one device, without padding."""
    batches = list(data.EvalInput(config, 0, 1).batches())
    images = np.concatenate([b["image"][b["mask"] > 0] for b in batches])
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    logits = np.asarray(create_model(config).apply(variables, images, train=False))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return {
        "top1_err": 100 * np.mean(top5[:, 0] != labels),
        "top5_err": 100 * np.mean(~(top5 == labels[:, None]).any(1)),
        "loss": float(np.mean(optimizer.cross_entropy(logits, labels, 10))),
        "count": len(labels),
    }


@pytest.mark.parametrize("n, eval_batch", [(37, 16), (50, 24), (8, 48)])
def test_every_example_counted_once(variables, n, eval_batch):
    config = tiny_config(eval_batch_size=eval_batch, **{"dataset.num_eval_examples": n})
    mesh = distributed.make_mesh()
    step = train_steps.make_eval_step(create_model(config, bn_axis_name=distributed.AXIS), mesh, num_classes=10)
    got = evaluation.run_evaluation(step, distributed.replicate(variables, mesh), data.EvalInput(config), mesh)
    want = _reference(config, variables)
    assert got["count"] == want["count"] == n
    assert got["top1_err"] == pytest.approx(want["top1_err"]) and got["top5_err"] == pytest.approx(want["top5_err"])
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_weights_input_conventions_are_applied(variables, tmp_path):
    config = tiny_config(**{"dataset.num_eval_examples": 40})
    weight_files.save_weights(str(tmp_path / "rgb"), variables, TINY_MODEL, weight_files.input_spec("rgb"))
    bgr_spec = weight_files.input_spec("bgr", (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))
    weight_files.save_weights(str(tmp_path / "bgr"), variables, TINY_MODEL, bgr_spec)
    rgb = evaluation.evaluate(config, str(tmp_path / "rgb"))
    bgr = evaluation.evaluate(config, str(tmp_path / "bgr"))
    assert rgb["count"] == bgr["count"] == 40
    assert rgb["loss"] == pytest.approx(_reference(config, variables)["loss"], rel=1e-5)
    assert bgr["loss"] == pytest.approx(
        _reference(evaluation.apply_input_conventions(config, bgr_spec), variables)["loss"], rel=1e-5
    )
    assert abs(bgr["loss"] - rgb["loss"]) > 0.05 * rgb["loss"]  # the conventions matter for these weights


def test_split_reaches_folder_datasets_and_a_weights_dir_needs_a_config(variables, tmp_path):
    from PIL import Image

    for c in ("a", "b"):  # only val/: evaluation needs no training split
        (tmp_path / "data" / "val" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (40 * i, 100, 200 if c == "a" else 0)).save(
                tmp_path / "data" / "val" / c / f"{i}.png"
            )
    config = tiny_config(**{"dataset.name": "folder", "dataset.data_dir": str(tmp_path / "data"), "dataset.eval_split": "test",
                            "dataset.num_eval_examples": 0})  # fmt: skip
    weight_files.save_weights(str(tmp_path / "w"), variables, TINY_MODEL)
    with pytest.raises(data.DatasetNotReadyError, match="no split directory .*test"):
        evaluation.evaluate(config, str(tmp_path / "w"))
    assert evaluation.evaluate(config, str(tmp_path / "w"), split="val")["count"] == 6  # --split=val
    with pytest.raises(
        ConfigError, match="is a weights directory .* give the dataset, resolution and batch with --config"
    ):
        evaluation.evaluate(None, str(tmp_path / "w"))


@pytest.mark.timeout(120)
def test_evaluate_cli(variables, tmp_path):
    config = tiny_config(**{"dataset.num_eval_examples": 40})
    weight_files.save_weights(str(tmp_path / "w"), variables, TINY_MODEL)
    cfg_file = write_config_file(tmp_path / "config.py", config)
    args = [f"--config={cfg_file}", f"--checkpoint={tmp_path / 'w'}", "--json"]
    assert run_cli("regnet_jax.evaluate", args, 1, tmp_path / "log", timeout=100) == 0, (tmp_path / "log").read_text()[
        -2000:
    ]
    out = json.loads([line for line in (tmp_path / "log").read_text().splitlines() if line.startswith("{")][-1])
    assert out["count"] == 40
    assert out["loss"] == pytest.approx(_reference(config, variables)["loss"], rel=1e-5)
