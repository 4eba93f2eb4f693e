"""Smoke mode: ``REGNET_JAX_SMOKE=1`` makes every command do the least work that still runs each of its steps.

The docs harness (tests/test_docs.py) runs every documented command this way, and you can too, to check a command
line in seconds before starting the real run (docs/training.md, "Smoke runs"). With the variable set:

* every config a command loads is shrunk (``shrink_loaded``: a ``--config``, a workdir's config.json that ``evaluate``
  falls back to, a sweep's model trained in-process, a zoo model benchmarked): the model becomes the canonical tiny
  model of its kind (``shrink_model``), training runs 1 epoch of 2 steps of 8 images at 16 px and evaluates 8
  images, and a TFDS dataset (ImageNet, tf_flowers, ...) is replaced by synthetic images with its number of classes
  (``dataset.synthetic_like``: a model with fewer classes is refused, as in a real run); folder and quickstart data
  stay;
* a command's other work sizes are capped (``limits``, the table ``LIMITS``): ``sweep setup`` samples at most 2
  models, ``sweep analyze`` bootstraps 100 times, ``benchmark`` times 1 step of 2 images at 16 px (``--zoo``: the
  first 2 models), its ``--input_pipeline`` mode 2 batches of 4 at 16 px.

These two functions are the only hooks: the rest of the package never asks whether smoke mode is on. Every command
that shrinks its work says so in one line on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections

ENV = "REGNET_JAX_SMOKE"
RESOLUTION = 16
BATCH = 8  # divisible by 1, 2, 4 and 8 devices
TRAIN_EXAMPLES = 2 * BATCH
EVAL_EXAMPLES = BATCH
# The work sizes each command caps (``limits``): a value above the cap (or 0, "the default") becomes the cap.
LIMITS: dict[str, dict[str, int]] = {
    "benchmark": dict(batch=2, steps=1, warmup=0, resolution=RESOLUTION, models=2),  # models: of --zoo
    "input-pipeline benchmark": dict(batch=4, steps=2, resolution=RESOLUTION),
    "sweep setup": dict(n=2),
    "sweep analyze": dict(bootstrap=100),
}
# Sources that are offline and small; any other dataset name is a TFDS dataset, replaced by synthetic images.
KEPT_DATASETS = ("quickstart", "synthetic", "folder")

# The canonical tiny model of each kind: 2 stages of one block, widths 8 and 16. Every model of a kind shrinks to
# the same network, so its compiled steps are reused (JAX's compilation cache) across the commands of the harness.
_TINY_REGNET = dict(depth=2, w0=8, wa=8.0, wm=2.0, group_w=8, bot_mul=1.0)
_TINY_ANYNET = dict(depths=[1, 1], widths=[8, 16], strides=[1, 2], bot_muls=[1.0, 1.0], group_ws=[8, 8])
_KEPT_MODEL_FIELDS = ("type", "stem_type", "block_type", "se_ratio", "num_classes", "activation", "zero_init_last_bn",
                      "dtype", "param_dtype")  # fmt: skip
_announced = False


def active() -> bool:
    """Whether smoke mode is on (``REGNET_JAX_SMOKE`` set to anything but '' or '0')."""
    return os.environ.get(ENV, "") not in ("", "0")


def announce(what: str) -> None:
    """One line on stderr (once per process) saying that this run is a smoke run and what was shrunk."""
    global _announced
    if not _announced:
        print(f"smoke mode ({ENV}={os.environ.get(ENV)}): {what}", file=sys.stderr, flush=True)
        _announced = True


def shrink_model(model: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical tiny model of ``model``'s kind: its type, stem, block, SE, activation, classes and dtypes, with
    2 stages of one block of widths 8 and 16 (idempotent)."""
    model = dict(model)
    tiny = {k: model[k] for k in _KEPT_MODEL_FIELDS if k in model}
    tiny["stem_w"] = 8
    tiny.update(_TINY_REGNET if model.get("type") == "regnet" else _TINY_ANYNET)
    return tiny


def shrink_config(config: Any) -> Any:
    """``config`` (a ConfigDict, in place) with its model shrunk and, for a training config, 1 epoch of 2 small
    steps on small or synthetic data (see the module docstring). Other values are returned unchanged."""
    if not isinstance(config, ml_collections.ConfigDict) or "model" not in config:
        return config
    with config.unlocked():
        config.model = ml_collections.ConfigDict(shrink_model(config.model.to_dict()))
        if "dataset" not in config:
            return config
        config.resolution = RESOLUTION
        config.num_epochs = 1
        config.batch_size = config.eval_batch_size = BATCH
        for field, value in (("grad_accum_steps", 1), ("bn_group_size", 0), ("precise_bn", False)):  # recipe fields
            if field in config:
                config[field] = value
        d = config.dataset
        d.num_train_examples, d.num_eval_examples = TRAIN_EXAMPLES, EVAL_EXAMPLES
        replaced = d.name not in KEPT_DATASETS
        if replaced:  # synthetic images with the dataset's classes: a class-count mistake fails as in a real run
            d.synthetic_like, d.name = d.name, "synthetic"
    data = f"synthetic images standing in for {d.synthetic_like} (its classes)" if replaced else "small data"
    announce(
        f"shrunk the config: tiny model, {RESOLUTION} px, 1 epoch of {TRAIN_EXAMPLES // BATCH} steps of {BATCH} images, {data}"
    )
    return config


def shrink_loaded(config: Any) -> Any:
    """A config a command has just loaded: shrunk (``shrink_config``) in smoke mode, else unchanged."""
    return shrink_config(config) if active() else config


def limits(command: str, **sizes: int) -> dict[str, int]:
    """``sizes`` (the command's work sizes: batch, steps, models, ...), capped by ``LIMITS[command]`` in smoke mode
    (announced), else unchanged."""
    if not active():
        return sizes
    caps = LIMITS[command]
    capped = {k: min(v, caps[k]) if v and k in caps else caps.get(k, v) for k, v in sizes.items()}
    announce(f"{command}: " + ", ".join(f"{k}={v}" for k, v in capped.items() if k in caps))
    return capped
