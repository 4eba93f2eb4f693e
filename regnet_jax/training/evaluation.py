"""Exact evaluation: every example of the split counted once, whatever the batch size and number of devices.

    python -m regnet_jax.evaluate --checkpoint=WORKDIR [--ema] [--split=validation] [--json]
    python -m regnet_jax.evaluate --config=configs/regnety_400mf.py --checkpoint=DIR

``--checkpoint`` is a training workdir (its newest good checkpoint) or a weights directory (``python -m
regnet_jax.convert``). ``--config`` gives the dataset, resolution and batch; a workdir's own config.json is the
default. The weights' input conventions (channel order, mean, std) replace the config's; the model is the
checkpoint's. Prints top-1 / top-5 error (%) and the mean cross-entropy.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import flags, logging

from regnet_jax import checkpoint as ckpt_lib
from regnet_jax import data, metrics, parallel, smoke
from regnet_jax.cli import define_config_flag, run
from regnet_jax.config import ConfigError
from regnet_jax.weights import WeightsError


def run_evaluation(
    eval_step: Callable[..., dict[str, jax.Array]], variables: Any, eval_input: data.EvalInput, mesh: jax.sharding.Mesh
) -> dict[str, float]:
    """Top-1/top-5 error (%), mean loss and the example count over ``eval_input``'s whole split."""
    totals = None
    for batch in data.device_prefetch(eval_input.batches(), mesh, eval_input.config.dataset.prefetch):
        sums = eval_step(variables, batch)
        totals = sums if totals is None else jax.tree_util.tree_map(lambda a, b: a + b, totals, sums)
    t = {k: float(ckpt_lib.host(v)) for k, v in totals.items()}
    count = round(t["count"])
    if count != eval_input.num_examples:
        raise RuntimeError(f"evaluation counted {count} examples but the split has {eval_input.num_examples}")
    return {
        "top1_err": 100.0 * (1.0 - t["top1"] / count),
        "top5_err": 100.0 * (1.0 - t["top5"] / count),
        "loss": t["loss"] / count,
        "count": count,
    }


def apply_input_conventions(config: ml_collections.ConfigDict, conventions: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose dataset channel order / mean / std are those the weights expect."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.dataset.channel_order = conventions["channel_order"]
        config.dataset.mean = tuple(conventions["mean"])
        config.dataset.std = tuple(conventions["std"])
    return config


def evaluation_config(config: ml_collections.ConfigDict | None, checkpoint: str) -> ml_collections.ConfigDict:
    """``config``, or (None) the training workdir's own config.json; a weights directory needs a config."""
    from regnet_jax import weights

    if config is not None:
        return config
    if weights.is_weights_dir(checkpoint):
        raise ConfigError(f"{checkpoint} is a weights directory (weights, no dataset): give the dataset, resolution and batch with --config, e.g. --config=configs/regnety_400mf.py")
    return ckpt_lib.read_workdir_config(checkpoint)


def evaluate(config: ml_collections.ConfigDict | None, checkpoint: str, *, ema: bool = False, split: str = "") -> dict[str, float]:
    """Evaluate the weights in ``checkpoint`` on ``config``'s dataset (None: a workdir's own config; ``split``
    defaults to the config's eval split)."""
    from regnet_jax.models import create_model

    metrics.quiet_library_logs()
    config = copy.deepcopy(evaluation_config(config, checkpoint))
    with config.unlocked():
        config.dataset.eval_split = split or config.dataset.eval_split
    data.open_source(config, config.dataset.eval_split, config.dataset.num_eval_examples)  # fail fast, before loading
    pre = ckpt_lib.load_pretrained(checkpoint, ema=ema)
    config = apply_input_conventions(config, pre.input)
    mesh = parallel.make_mesh()
    model = create_model(pre.model, bn_axis_name=parallel.AXIS)
    if pre.model["num_classes"] != config.model.num_classes:
        logging.info("using the checkpoint's %d classes (config.model has %d)", pre.model["num_classes"], config.model.num_classes)
    with config.unlocked():
        config.model = ml_collections.ConfigDict(dict(pre.model))
    eval_input = data.EvalInput(config, jax.process_index(), jax.process_count())
    _check_divisible(eval_input.local_batch * jax.process_count(), mesh)
    eval_step = parallel.make_eval_step(model, mesh, num_classes=pre.model["num_classes"])
    t = time.perf_counter()
    out = run_evaluation(eval_step, parallel.replicate(pre.variables, mesh), eval_input, mesh)
    out["images_per_s"] = out["count"] / (time.perf_counter() - t)
    return out


def _check_divisible(batch: int, mesh: jax.sharding.Mesh) -> None:
    if batch % mesh.size:
        raise ConfigError(f"batch {batch} is not divisible by the {mesh.size} devices: use a multiple of {mesh.size}")


def _define_flags() -> flags.FlagValues:
    """The command-line flags (defined only when run as a program, so importing this module defines none)."""
    define_config_flag("config", "Config file (dataset, resolution, batch), e.g. configs/regnety_400mf.py or a workdir's "
                       "config.json; default: the --checkpoint workdir's own config.json.")
    flags.DEFINE_string("checkpoint", None, "A weights directory or a training workdir.")
    flags.DEFINE_bool("ema", False, "Evaluate the EMA weights of a training workdir.")
    flags.DEFINE_string("split", "", "Split to evaluate (default: config.dataset.eval_split).")
    flags.DEFINE_bool("json", False, "Print the result as one JSON object.")
    return flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    FLAGS = flags.FLAGS
    if not FLAGS.checkpoint:
        raise ConfigError("--checkpoint is required: a training workdir or a weights directory (then also --config)")
    config = FLAGS.config
    if config is None and smoke.active():  # a --config is shrunk as it is loaded; the workdir's own config here
        config = smoke.shrink_config(evaluation_config(None, FLAGS.checkpoint))
    out = evaluate(config, FLAGS.checkpoint, ema=FLAGS.ema, split=FLAGS.split)
    if jax.process_index() == 0:
        if FLAGS.json:
            print(json.dumps(out))
        else:
            print(f"top-1 error {out['top1_err']:.3f}%  top-5 error {out['top5_err']:.3f}%  loss {out['loss']:.4f}  "
                  f"({out['count']} images, {out['images_per_s']:.1f} images/s)")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    _define_flags()
    run(main, user_errors=(WeightsError,))
