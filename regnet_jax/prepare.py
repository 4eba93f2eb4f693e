"""Prepare a dataset for sweeps: decode its images once, resize the shorter side, store them in ArrayRecord shards
(``regnet_jax.data.build_prepared``); train on them with ``--config.dataset.prepared_dir=OUT``.

    python -m regnet_jax.prepare --config=configs/regnetx_400mf.py:10ep --config.dataset.data_dir=/data/tfds --out=/data/imagenet_258
    python -m regnet_jax.prepare --config=configs/quickstart.py --out=/tmp/digits_prepared [--short_side=37] [--split=train,test]

Reads the config's dataset (a folder, a TFDS dataset, quickstart; the config's ``num_train_examples`` /
``num_eval_examples`` limit its train and eval splits) and writes OUT (local or ``gs://``): shards and ``index.json``,
written last. ``--short_side`` defaults to 1.15 x the config's resolution (at least the evaluation resize: 258 at
224 px, 74 at 64 px); ``--split`` to the config's train and eval splits; ``--encoding=raw`` stores pixels (fastest
to read), ``jpeg`` re-encodes them at ``--jpeg_quality`` (smaller, slower). A rerun of an interrupted build resumes
it; an OUT holding another build or other files is refused. Progress (images/s, ETA) is printed as it goes.
"""

from __future__ import annotations

import sys
import time

from absl import flags

from regnet_jax.config import ConfigError, define_config_flag, validate_config
from regnet_jax.core import paths
from regnet_jax.core.cli import run
from regnet_jax.data import prepared
from regnet_jax.data.build_prepared import (
    IMAGES_PER_SHARD,
    JPEG_QUALITY,
    Progress,
    build,
    default_short_side,
)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    kw = dict(flag_values=flag_values)
    define_config_flag(
        "config", "The training config whose dataset to prepare, e.g. configs/regnetx_400mf.py:10ep.", **kw
    )
    flags.DEFINE_string(
        "out", None, "Directory to write (local or gs://): new, empty, or an unfinished build of the same.", **kw
    )
    flags.DEFINE_integer("short_side", 0, "Shorter side of the stored images, px (0: 1.15 x the config's resolution, at "
                         "least the evaluation resize).", **kw)  # fmt: skip
    flags.DEFINE_list("split", [], "Splits to prepare (default: the config's train_split and eval_split).", **kw)
    flags.DEFINE_enum(
        "encoding",
        "raw",
        list(prepared.ENCODINGS),
        "raw: uint8 pixels; jpeg: re-encoded (smaller, slower to read).",
        **kw,
    )
    flags.DEFINE_integer("jpeg_quality", JPEG_QUALITY, "With --encoding=jpeg: the quality (4:4:4 chroma).", **kw)
    flags.DEFINE_integer("images_per_shard", IMAGES_PER_SHARD, "Source images per shard file.", **kw)


def _print_progress(p: Progress) -> None:
    import datetime

    eta = "?" if p.eta_s == float("inf") else str(datetime.timedelta(seconds=int(p.eta_s)))
    skipped = f" ({p.skipped} skipped)" if p.skipped else ""
    print(f"  {p.split}: {p.done}/{p.total} images{skipped}, {p.images_per_s:.0f} images/s, ETA {eta}", flush=True)


def main(argv: list[str]) -> None:
    del argv
    FLAGS = flags.FLAGS
    if FLAGS.config is None or not FLAGS.out:
        raise ConfigError(
            "--config and --out are both required (python -m regnet_jax.prepare --config=CONFIG --out=DIR)"
        )
    config = validate_config(FLAGS.config)
    short_side = FLAGS.short_side or default_short_side(config)
    splits = FLAGS.split or list(dict.fromkeys([config.dataset.train_split, config.dataset.eval_split]))
    print(
        f"preparing {config.dataset.name} ({', '.join(splits)}) -> {FLAGS.out}: shorter side {short_side} px, {FLAGS.encoding}",
        flush=True,
    )
    t = time.perf_counter()
    index = build(
        config,
        FLAGS.out,
        short_side,
        splits,
        FLAGS.encoding,
        FLAGS.images_per_shard,
        FLAGS.jpeg_quality,
        _print_progress,
    )
    images = sum(index["splits"][s]["num_examples"] for s in splits)
    skipped = sum(len(index["splits"][s]["skipped"]) for s in splits)
    size = sum(sh["bytes"] for s in splits for sh in index["splits"][s]["shards"])
    per_image = paths.human_bytes(size / images) if images else "-"
    counts = ", ".join(f"{s} {index['splits'][s]['num_examples']}" for s in splits)
    print(
        f"prepared {counts} images ({skipped} skipped) in {time.perf_counter() - t:.1f} s: {paths.human_bytes(size)} "
        f"({per_image}/image) in {FLAGS.out}; train with --config.dataset.prepared_dir={FLAGS.out}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    run(main, define_flags)
