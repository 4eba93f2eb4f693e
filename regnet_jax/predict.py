"""Classify images with converted or trained weights: the top-5 classes with names and probabilities
(``regnet_jax.training.prediction``).

    python -m regnet_jax.predict --checkpoint=DIR IMAGE [IMAGE ...] [--top_k=5] [--json]

``--checkpoint`` is a weights directory (``python -m regnet_jax.convert``) or a training workdir (its newest good
checkpoint). Preprocessing is the evaluation transform at the model's own resolution and crop fraction (224 and
0.875 for weights that do not record them; ``--resolution`` / ``--crop_fraction`` override them), with the channel
order and mean/std the weights expect. Class names: ImageNet's for 1000-class heads, or ``--labels=FILE``.
"""

from __future__ import annotations

import json
import sys
import time

from absl import flags

from regnet_jax.core.cli import run
from regnet_jax.training.prediction import PredictError, format_results, predict


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string(
        "checkpoint", None, "A weights directory (regnet_jax.convert) or a training workdir.", flag_values=flag_values
    )
    flags.DEFINE_integer("top_k", 5, "How many classes to print per image.", flag_values=flag_values)
    flags.DEFINE_integer("resolution", 0, "Crop size fed to the network (0: the model's own, 224 if it does not record one).",
                         flag_values=flag_values)  # fmt: skip
    flags.DEFINE_float("crop_fraction", 0.0, "Centre-crop fraction: the shorter side is resized to resolution / this "
                       "(0: the model's own, 0.875 if it does not record one).", flag_values=flag_values)  # fmt: skip
    flags.DEFINE_string("labels", "", "File with one class name per line (default: ImageNet's for 1000-class heads).",
                        flag_values=flag_values)  # fmt: skip
    flags.DEFINE_bool("ema", False, "Use the EMA weights of a training workdir.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass.", flag_values=flag_values)
    flags.DEFINE_bool("json", False, "Print the results as one JSON list.", flag_values=flag_values)


def main(argv: list[str]) -> None:
    FLAGS = flags.FLAGS
    if not FLAGS.checkpoint:
        raise PredictError("--checkpoint is required (a weights directory or a training workdir)")
    t = time.perf_counter()
    results = predict(
        FLAGS.checkpoint, argv[1:], k=FLAGS.top_k, resolution=FLAGS.resolution, crop_fraction=FLAGS.crop_fraction,
        labels_file=FLAGS.labels, ema=FLAGS.ema, batch_size=FLAGS.batch_size,
    )  # fmt: skip
    print(json.dumps(results) if FLAGS.json else format_results(results))
    dt = time.perf_counter() - t
    print(
        f"{len(results)} images in {dt:.1f} s ({len(results) / dt:.1f} images/s, including loading and compiling)",
        file=sys.stderr,
    )
    sys.stdout.flush()


if __name__ == "__main__":
    run(main, define_flags)
