"""Analytic flops / params / acts of a model, by pycls's counting rules (``regnet_jax.models.complexity``).

python -m regnet_jax.complexity --config=configs/regnetx_400mf.py [--json] [--resolution=N]
python -m regnet_jax.complexity --all           # the zoo table
python -m regnet_jax.complexity --config=configs/regnetx_400mf.py --config.model.depth=20
"""

from __future__ import annotations

import json

from absl import flags

from regnet_jax.config import ConfigError, config_path, define_config_flag
from regnet_jax.core.cli import run
from regnet_jax.models.complexity import count, zoo_table

ZOO_RESOLUTION = 224  # --all without --resolution: the zoo's


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    define_config_flag("config", "A config file, e.g. configs/regnetx_400mf.py[:25ep].", flag_values=flag_values)
    flags.DEFINE_bool(
        "json", False, "Print one JSON object {flops, params, acts} and nothing else.", flag_values=flag_values
    )
    flags.DEFINE_bool("all", False, "Print the table of the zoo models.", flag_values=flag_values)
    flags.DEFINE_integer(
        "resolution", 0, "Count at this input size instead of config.resolution.", flag_values=flag_values
    )


def format_row(name: str, counts: dict[str, int]) -> str:
    return (f"{name:<18} {counts['flops'] / 1e9:>8.3f} {counts['params'] / 1e6:>9.3f} {counts['acts'] / 1e6:>8.3f}   "
            f"{counts['flops']:>15,} {counts['params']:>12,} {counts['acts']:>11,}")  # fmt: skip


HEADER = (
    f"{'model':<18} {'GFLOPs':>8} {'Mparams':>9} {'Macts':>8}   {'flops (mult-adds)':>15} {'params':>12} {'acts':>11}"
)


def main(argv: list[str]) -> None:
    del argv
    FLAGS = flags.FLAGS
    if FLAGS.all:
        resolution = FLAGS.resolution or ZOO_RESOLUTION
        rows = zoo_table(resolution)
        if FLAGS.json:
            print(json.dumps(rows))
            return
        print(f"pycls complexity at {resolution} px (flops = multiply-adds)")
        print(HEADER)
        for r in rows:
            print(format_row(r["model"], r))
        return
    config = FLAGS.config
    if config is None:
        raise ConfigError("give --config=configs/<model>.py, or --all for the zoo table")
    resolution = FLAGS.resolution or config.resolution
    counts = count(config.model, resolution)
    if FLAGS.json:
        print(json.dumps(counts))
        return
    print(f"{config_path(FLAGS)} at {resolution} px")
    print(HEADER)
    print(format_row(config.model.type, counts))


if __name__ == "__main__":
    run(main, define_flags)
