"""The config layer: the schema every command shares (fields, defaults, validation), config files and their
command-line overrides, what a resumed run's config changed, and smoke mode.

    schema.py   fields, ``base_config``, ``validate_model``, ``validate_config`` (returns the complete config: the one
                place defaults are filled), the schedule presets and the learning-rate rule
    files.py    config files (``file.py[:arg]``, ``.json``), ``--config.FIELD=VALUE`` overrides, the ``--config`` flag
    diff.py     what changed between two configs, and which changes a resumed run may make
    smoke.py    ``REGNET_JAX_SMOKE=1``: every command does the least work that still runs each of its steps
"""

from regnet_jax.config.files import config_path, define_config_flag, load_config_file
from regnet_jax.config.schema import (
    ADDED_FIELDS,
    DATASET_KINDS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LR_PER_128,
    MAX_BAD_IMAGE_FRACTION,
    SCHEDULES,
    base_config,
    base_lr,
    complete_config,
    describe_lr,
    model_config,
    validate_config,
    validate_model,
)
from regnet_jax.core.errors import ConfigError

__all__ = [
    "ADDED_FIELDS", "DATASET_KINDS", "IMAGENET_MEAN", "IMAGENET_STD", "LR_PER_128", "MAX_BAD_IMAGE_FRACTION", "SCHEDULES",
    "ConfigError", "base_config", "base_lr", "complete_config", "config_path", "define_config_flag", "describe_lr",
    "load_config_file", "model_config", "validate_config", "validate_model",
]  # fmt: skip
