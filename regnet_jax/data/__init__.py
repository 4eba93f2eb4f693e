"""The data layer: where examples come from (``sources``), how they are augmented (``augment``), the input
pipelines that feed the trainer and evaluation (``pipeline``), and prepared copies of a dataset, decoded and resized
once for sweeps (``prepared``; built by ``build_prepared``). See ``pipeline``'s docstring for the order and the
handling of bad images."""

from regnet_jax.data.pipeline import (
    BadImagesError,
    EvalInput,
    TrainInput,
    bad_eval_images_error,
    check_dataset,
    device_prefetch,
)
from regnet_jax.data.prepared import open_source
from regnet_jax.data.sources import DatasetNotReadyError, quickstart_arrays

__all__ = [
    "BadImagesError", "DatasetNotReadyError", "EvalInput", "TrainInput", "bad_eval_images_error", "check_dataset",
    "device_prefetch", "open_source", "quickstart_arrays",
]  # fmt: skip
