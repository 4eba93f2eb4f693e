"""Exact evaluation: every example of the split counted once, whatever the batch size and number of devices.

    evaluate(config, checkpoint, ema=False, split="")   # python -m regnet_jax.evaluate
    run_evaluation(eval_step, variables, eval_input, mesh)   # the trainer's evaluations

``checkpoint`` is a training workdir (its newest good checkpoint) or a weights directory (``python -m
regnet_jax.convert``). ``config`` gives the dataset, resolution and batch; a workdir's own config.json is the
default. The weights' input conventions (channel order, mean, std) replace the config's; the model is the
checkpoint's. Returns top-1 / top-5 error (%) and the mean cross-entropy.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import logging

from regnet_jax import data
from regnet_jax.config import ConfigError, smoke
from regnet_jax.core import logs
from regnet_jax.core.distributed import AXIS, divide_batch, make_mesh, replicate, to_host
from regnet_jax.training.steps import make_eval_step
from regnet_jax.weights.files import is_weights_dir
from regnet_jax.weights.pretrained import load_pretrained, read_workdir_config


def run_evaluation(
    eval_step: Callable[..., dict[str, jax.Array]], variables: Any, eval_input: data.EvalInput, mesh: jax.sharding.Mesh
) -> dict[str, float]:
    """Top-1/top-5 error (%), mean loss and the example count over ``eval_input``'s whole split."""
    totals = None
    for batch in data.device_prefetch(eval_input.batches(), mesh, eval_input.config.dataset.prefetch):
        sums = eval_step(variables, batch)
        totals = sums if totals is None else jax.tree_util.tree_map(lambda a, b: a + b, totals, sums)
    t = {k: float(to_host(v)) for k, v in totals.items()}
    count = round(t["count"])
    if count != eval_input.num_examples:
        raise RuntimeError(f"evaluation counted {count} examples but the split has {eval_input.num_examples}")
    return {
        "top1_err": 100.0 * (1.0 - t["top1"] / count),
        "top5_err": 100.0 * (1.0 - t["top5"] / count),
        "loss": t["loss"] / count,
        "count": count,
    }


def apply_input_conventions(
    config: ml_collections.ConfigDict, conventions: dict[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose dataset channel order / mean / std are those the weights expect."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.dataset.channel_order = conventions["channel_order"]
        config.dataset.mean = tuple(conventions["mean"])
        config.dataset.std = tuple(conventions["std"])
    return config


def evaluation_config(config: ml_collections.ConfigDict | None, checkpoint: str) -> ml_collections.ConfigDict:
    """``config``, or (None) the training workdir's own config.json (shrunk in smoke mode, as every config a command
    loads); a weights directory needs a config."""
    if config is not None:
        return config
    if is_weights_dir(checkpoint):
        raise ConfigError(
            f"{checkpoint} is a weights directory (weights, no dataset): give the dataset, resolution and batch with --config, e.g. --config=configs/regnety_400mf.py"
        )
    return smoke.shrink_loaded(read_workdir_config(checkpoint))


def evaluate(
    config: ml_collections.ConfigDict | None, checkpoint: str, *, ema: bool = False, split: str = ""
) -> dict[str, float]:
    """Evaluate the weights in ``checkpoint`` on ``config``'s dataset (None: a workdir's own config; ``split``
    defaults to the config's eval split)."""
    from regnet_jax.models import create_model

    logs.quiet_library_logs()
    config = copy.deepcopy(evaluation_config(config, checkpoint))
    with config.unlocked():
        config.dataset.eval_split = split or config.dataset.eval_split
    data.open_source(config, config.dataset.eval_split, config.dataset.num_eval_examples)  # fail fast, before loading
    pretrained = load_pretrained(checkpoint, ema=ema)
    config = apply_input_conventions(config, pretrained.input)
    mesh = make_mesh()
    model = create_model(pretrained.model, bn_axis_name=AXIS)
    num_classes = pretrained.model["num_classes"]
    if num_classes != config.model.num_classes:
        logging.info("using the checkpoint's %d classes (config.model has %d)", num_classes, config.model.num_classes)
    with config.unlocked():
        config.model = ml_collections.ConfigDict(dict(pretrained.model))
    eval_input = data.EvalInput(config, jax.process_index(), jax.process_count())
    batch = eval_input.local_batch * jax.process_count()
    divide_batch(
        batch, mesh.size, f"batch {batch} is not divisible by the {mesh.size} devices: use a multiple of {mesh.size}"
    )
    eval_step = make_eval_step(model, mesh, num_classes=num_classes)
    t = time.perf_counter()
    out = run_evaluation(eval_step, replicate(pretrained.variables, mesh), eval_input, mesh)
    out["images_per_s"] = out["count"] / (time.perf_counter() - t)
    return out
