"""Exact evaluation: every example of the split counted once, whatever the batch size and number of devices
(``regnet_jax.training.evaluation``).

    python -m regnet_jax.evaluate --checkpoint=WORKDIR [--ema] [--split=validation] [--json]
    python -m regnet_jax.evaluate --config=configs/regnety_400mf.py --checkpoint=DIR

``--checkpoint`` is a training workdir (its newest good checkpoint) or a weights directory (``python -m
regnet_jax.convert``). ``--config`` gives the dataset, resolution and batch; a workdir's own config.json is the
default. The weights' input conventions (channel order, mean, std) replace the config's; the model is the
checkpoint's. Prints top-1 / top-5 error (%) and the mean cross-entropy.
"""

from __future__ import annotations

import json
import sys

import jax
from absl import flags

from regnet_jax.config import ConfigError, define_config_flag
from regnet_jax.core import compilation_cache
from regnet_jax.core.cli import run
from regnet_jax.training.evaluation import evaluate


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    define_config_flag("config", "Config file (dataset, resolution, batch), e.g. configs/regnety_400mf.py or a workdir's "
                       "config.json; default: the --checkpoint workdir's own config.json.", flag_values=flag_values)  # fmt: skip
    flags.DEFINE_string("checkpoint", None, "A weights directory or a training workdir.", flag_values=flag_values)
    flags.DEFINE_bool("ema", False, "Evaluate the EMA weights of a training workdir.", flag_values=flag_values)
    flags.DEFINE_string("split", "", "Split to evaluate (default: config.dataset.eval_split).", flag_values=flag_values)
    flags.DEFINE_bool("json", False, "Print the result as one JSON object.", flag_values=flag_values)
    compilation_cache.define_flag(flag_values)


def main(argv: list[str]) -> None:
    del argv
    FLAGS = flags.FLAGS
    if not FLAGS.checkpoint:
        raise ConfigError("--checkpoint is required: a training workdir or a weights directory (then also --config)")
    compilation_cache.enable(FLAGS.compilation_cache)
    out = evaluate(FLAGS.config, FLAGS.checkpoint, ema=FLAGS.ema, split=FLAGS.split)
    if jax.process_index() == 0:
        if FLAGS.json:
            print(json.dumps(out))
        else:
            print(f"top-1 error {out['top1_err']:.3f}%  top-5 error {out['top5_err']:.3f}%  loss {out['loss']:.4f}  "
                  f"({out['count']} images, {out['images_per_s']:.1f} images/s)")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    run(main, define_flags)
