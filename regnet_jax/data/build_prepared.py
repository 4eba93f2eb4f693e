"""Build a prepared directory (``data.prepared``) from a config's dataset: what ``python -m regnet_jax.prepare`` runs.

    index = build(config, out, short_side=258, splits=["train", "validation"], progress=print_progress)

Reads the config's own source (``sources.open_source``: a folder, a TFDS dataset, quickstart, synthetic; the
config's ``num_train_examples`` / ``num_eval_examples`` limit the train and eval splits), decodes every image once
(``augment.decode``), resizes its shorter side to ``short_side`` where it is longer (``resize_shorter``) and writes
the records in the source's order, ``images_per_shard`` source images per shard. Bad images are handled as the
pipelines handle them: in the training split skipped (each logged, their names kept in the index) up to
``config.dataset.max_bad_image_fraction``; in any other split (evaluation counts every image) an error naming it.

Crash-safe and resumable: ``build.json`` (the parameters) is written first, each shard under a temporary name and
renamed when complete, then its ``.json`` sidecar; a rerun of the same build keeps the finished shards and splits,
and ``index.json``, which readers require, is written last. A directory holding another build, or anything else,
is refused with a one-line ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from regnet_jax.core import paths
from regnet_jax.core.errors import ConfigError
from regnet_jax.data import prepared, sources
from regnet_jax.data.augment import decode, eval_size
from regnet_jax.data.pipeline import BadImagesError, bad_eval_images_error

SHORT_SIDE_FACTOR = 1.15  # of the training resolution: room for the crops (FFCV and pycls's FFCV mode keep ~1.15x)
IMAGES_PER_SHARD = 4096  # ImageNet's train split: 313 shards (about 1 GiB each at 258 px raw, 90 MiB at 74 px)
JPEG_QUALITY = 95
RESIZE = "shorter side to short_side where longer; bilinear, half-pixel centres, no antialiasing; longer side rounded"


@dataclasses.dataclass
class Progress:
    """Where a build is: ``done`` of ``total`` source images of ``split`` (``skipped`` of them bad) in ``seconds``
    (``resumed``: images of finished shards from an earlier run, not counted in the rate)."""

    split: str
    done: int
    total: int
    skipped: int
    seconds: float
    resumed: int = 0

    @property
    def images_per_s(self) -> float:
        return (self.done - self.resumed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_s(self) -> float:
        rate = self.images_per_s
        return (self.total - self.done) / rate if rate > 0 else float("inf")


def default_short_side(config) -> int:
    """1.15 x the training resolution, and at least the size evaluation resizes to (256 at 224 px): 258 at 224."""
    res = config.resolution
    return max(math.ceil(SHORT_SIDE_FACTOR * res - 1e-9), eval_size(res, config.dataset.eval_crop_fraction))


def resize_shorter(image: tf.Tensor, short_side: int) -> tf.Tensor:
    """uint8 HxWx3 with its shorter side resized to ``short_side`` if it is longer (the longer side rounded),
    bilinear with half-pixel centres and no antialiasing, as ``augment``'s resize; else unchanged."""
    hw = tf.shape(image)[:2]
    short = tf.reduce_min(hw)

    def down():
        scale = tf.cast(short_side, tf.float64) / tf.cast(short, tf.float64)
        new_hw = tf.where(hw == short, short_side, tf.cast(tf.round(tf.cast(hw, tf.float64) * scale), tf.int32))
        out = tf.image.resize(tf.cast(image, tf.float32), new_hw, method="bilinear", antialias=False)
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

    return tf.cond(short > short_side, down, lambda: image)


def describe_source(config) -> dict:
    """What a prepared directory was built from (compared when a build resumes; recorded in the index)."""
    d = config.dataset
    if d.name == "folder":
        return {"name": "folder", "data_dir": str(paths.resolve(d.data_dir)) if d.data_dir else ""}
    if d.name == "quickstart":
        return {"name": "quickstart"}
    if d.name == "synthetic":
        return {
            "name": "synthetic",
            "resolution": config.resolution,
            "num_classes": config.model.num_classes,
            "seed": config.seed,
        }
    data_dir = str(paths.resolve(d.data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")))
    return {"name": d.name, "data_dir": data_dir}


def _source_text(source: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in source.items())


def _split_limit(config, split: str) -> int:
    d = config.dataset
    return d.num_train_examples if split == d.train_split else d.num_eval_examples if split == d.eval_split else 0


def _class_names(config, split: str, source) -> list[str] | None:
    d = config.dataset
    if d.name == "folder":
        return sources.list_folder(d.data_dir, split)[2]
    if d.name == "quickstart":
        return [str(i) for i in range(10)]
    if isinstance(source, sources.TfdsSource):
        names = source.builder.info.features["label"].names
        return list(names) if names else None
    return None


def _check_out(out: str, params: dict) -> None:
    """Refuse an ``out`` that holds another build or anything else; check that it can be written."""
    if paths.isfile(out):
        raise ConfigError(f"--out={out} is a file: give a directory for the prepared dataset")
    build_path = paths.join(out, prepared.BUILD)
    if paths.exists(build_path):
        try:
            existing = paths.read_json(build_path)
        except ValueError:
            existing = None
        if existing != params:
            what = f"a prepared dataset of {_source_text(existing['source'])} (short side {existing.get('short_side')}, " \
                   f"{existing.get('encoding')})" if isinstance(existing, dict) and "source" in existing else "another build"  # fmt: skip
            changed = [k for k in params if not isinstance(existing, dict) or existing.get(k) != params[k]]
            raise ConfigError(
                f"--out={out} holds {what}, built with other settings ({', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'}): "
                "give another --out, or delete it to rebuild"
            )
        return
    if paths.isdir(out) and paths.listdir(out):
        raise ConfigError(f"--out={out} is not empty and holds no prepared dataset: give a new or empty directory")
    paths.check_writable(out)


class _ShardWriter:
    """An ArrayRecord shard written under a temporary name (a local temporary file for a URL) and moved to its
    final name by ``finish`` only when complete."""

    def __init__(self, final: paths.Path):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.final = final
        if paths.is_url(final):
            self._tmpdir = tempfile.mkdtemp(prefix="regnet_jax_prepare_")
            self.tmp = os.path.join(self._tmpdir, final.name)
        else:
            self._tmpdir = None
            self.tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        with paths.writing(final):
            self._writer = ArrayRecordWriter(self.tmp, prepared.WRITER_OPTIONS)
        self.count = 0

    def write(self, record: bytes) -> None:
        self._writer.write(record)
        self.count += 1

    def finish(self) -> int:
        """Close and move the shard to its name; returns its size in bytes."""
        with paths.writing(self.final):
            self._writer.close()
            size = os.path.getsize(self.tmp)
            if paths.is_url(self.final):
                with open(self.tmp, "rb") as src, self.final.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 16 << 20)
            else:
                os.replace(self.tmp, self.final)
        self.discard()
        return size

    def discard(self) -> None:
        if self._writer.is_open():
            self._writer.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


def _examples(source, start: int, short_side: int, encoding: str, quality: int) -> tf.data.Dataset:
    """(source position, image: pixels or JPEG bytes, label) from ``start`` on, in order; undecodable images are
    left out (the caller finds them from the gaps in the positions)."""
    if isinstance(source, sources.IndexedSource):
        ds = source.records(np.arange(start, source.num_examples))
    else:
        ds = source.read(source.split, None).skip(start)

    def prepare(i, ex):
        image = resize_shorter(decode(ex["image"]), short_side)
        if encoding == "jpeg":
            image = tf.io.encode_jpeg(image, quality=quality, chroma_downsampling=False)
        return i, image, ex["label"]

    ds = ds.enumerate(start).map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    opts = tf.data.Options()
    opts.deterministic = True
    return ds.ignore_errors().prefetch(tf.data.AUTOTUNE).with_options(opts)


def _describe(source, split: str, position: int) -> str:
    if isinstance(source, sources.IndexedSource):
        return source.describe(position)
    return f"record {position} of TFDS split {source.split!r}"


def _build_split(config, out: str, split: str, params: dict, progress: Callable[[Progress], None]) -> dict:
    """Write (or finish) one split's shards; returns its index entry."""
    limit = _split_limit(config, split)
    source = sources.open_source(config, split, limit)
    n, per_shard = source.num_examples, params["images_per_shard"]
    num_shards = max(1, math.ceil(n / per_shard))
    names = [prepared.shard_name(split, s, num_shards) for s in range(num_shards)]
    shards: list[dict] = []
    for name in names:  # the shards an earlier run finished: a prefix (they are written in order)
        sidecar = paths.join(out, name + ".json")
        if not paths.exists(sidecar):
            break
        shards.append(paths.read_json(sidecar))
    train = split == config.dataset.train_split
    allowed = config.dataset.max_bad_image_fraction * n if train else 0
    skipped = [name for s in shards for name in s["skipped"]]
    start = len(shards) * per_shard
    t0 = time.perf_counter()
    last = t0
    writer, bad, position = None, [], start

    def report(done: int) -> None:
        progress(Progress(split, done, n, len(skipped) + len(bad), time.perf_counter() - t0, start))

    def skip(i: int) -> None:
        name = _describe(source, split, i)
        logging.warning("skipped an image that cannot be read or decoded: %s", name)
        if not train:
            raise bad_eval_images_error([name], 1)
        bad.append(name)
        if len(skipped) + len(bad) > allowed:
            raise BadImagesError(
                f"{len(skipped) + len(bad)} of the {n} images of split {split!r} cannot be read or decoded (e.g. {name}), more "
                f"than config.dataset.max_bad_image_fraction={config.dataset.max_bad_image_fraction:g}: repair or remove them "
                "(the log names each), or raise the limit, then rerun (finished shards are kept)"
            )

    def finish_shard(s: int) -> None:
        nonlocal writer, bad
        if writer is None:
            writer = _ShardWriter(paths.join(out, names[s]))
        entry = {"file": names[s], "num_examples": writer.count, "bytes": writer.finish(), "skipped": bad}
        paths.write_json(paths.join(out, names[s] + ".json"), entry)
        shards.append(entry)
        skipped.extend(bad)
        writer, bad = None, []

    try:
        if start < n:
            for i, image, label in _examples(
                source, start, params["short_side"], params["encoding"], params["jpeg_quality"]
            ).as_numpy_iterator():
                while i >= (len(shards) + 1) * per_shard:  # the shard before this image is complete
                    for j in range(position, (len(shards) + 1) * per_shard):
                        skip(j)
                    position = (len(shards) + 1) * per_shard
                    finish_shard(len(shards))
                for j in range(position, i):  # the images the stream left out could not be decoded
                    skip(j)
                if writer is None:
                    writer = _ShardWriter(paths.join(out, names[len(shards)]))
                writer.write(prepared.encode_record(int(label), image))
                position = i + 1
                if time.perf_counter() - last > 2:
                    last = time.perf_counter()
                    report(position)
        while len(shards) < num_shards:  # the last shard, and any whose images all failed
            for j in range(position, min(n, (len(shards) + 1) * per_shard)):
                skip(j)
            position = min(n, (len(shards) + 1) * per_shard)
            finish_shard(len(shards))
    finally:
        if writer is not None:
            writer.discard()
    report(n)
    names_ = _class_names(config, split, source)
    return {
        "num_examples": sum(s["num_examples"] for s in shards),
        "source_examples": n,
        "limit": limit,
        "num_classes": source.num_classes,
        "class_names": names_,
        "skipped": skipped,
        "shards": shards,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _remove_temporaries(out: str) -> None:
    """Temporary shards a killed build left in a local ``out``."""
    if not paths.is_url(out) and paths.isdir(out):
        for name in paths.listdir(out):
            if ".tmp-" in name:
                paths.remove(paths.join(out, name))


def build(config, out: str, short_side: int, splits: list[str], encoding: str = "raw", images_per_shard: int = IMAGES_PER_SHARD,
          jpeg_quality: int = JPEG_QUALITY, progress: Callable[[Progress], None] = lambda p: None) -> dict:  # fmt: skip
    """Prepare ``splits`` of ``config``'s dataset into ``out`` (local or gs://); returns the index it wrote."""
    if encoding not in prepared.ENCODINGS:
        raise ConfigError(f"encoding {encoding!r} is unknown: use one of {prepared.ENCODINGS}")
    if short_side < 1 or images_per_shard < 1 or not 1 <= jpeg_quality <= 100:
        raise ConfigError(
            f"short_side={short_side}, images_per_shard={images_per_shard}, jpeg_quality={jpeg_quality}: give positive sizes and a quality in [1, 100]"
        )
    if not splits:
        raise ConfigError("give at least one split to prepare")
    if config.dataset.get("prepared_dir"):
        raise ConfigError(
            f"the config reads prepared data (config.dataset.prepared_dir={config.dataset.prepared_dir}): prepare from the dataset itself, with prepared_dir=''"
        )
    params = {
        "format": prepared.FORMAT,
        "version": prepared.VERSION,
        "source": describe_source(config),
        "short_side": short_side,
        "encoding": encoding,
        "jpeg_quality": jpeg_quality if encoding == "jpeg" else None,
        "images_per_shard": images_per_shard,
        "resize": RESIZE,
    }
    for split in splits:  # every split opens (and is refused if missing) before anything is written
        sources.open_source(config, split, _split_limit(config, split))
    _check_out(out, params)
    try:
        paths.makedirs(out)
    except OSError as e:
        raise paths.StorageError(
            f"--out={out} cannot be created ({e.strerror or e}): give a writable location"
        ) from None
    if not paths.exists(paths.join(out, prepared.BUILD)):
        paths.write_json(paths.join(out, prepared.BUILD), params)
    _remove_temporaries(out)
    entries, built = {}, False
    for name in paths.listdir(out):  # splits finished by earlier runs
        if name.endswith(".split.json"):
            entry = paths.read_json(paths.join(out, name))
            entries[entry["split"]] = entry
    for split in splits:
        limit = _split_limit(config, split)
        if split in entries:
            if entries[split]["limit"] != limit:
                raise ConfigError(
                    f"--out={out} holds split {split!r} prepared with a limit of {entries[split]['limit']} images (0 = all), "
                    f"the config asks for {limit} (config.dataset.num_*_examples): give another --out or delete it"
                )
            continue
        entry = {"split": split, **_build_split(config, out, split, params, progress)}
        paths.write_json(paths.join(out, f"{prepared.split_stem(split)}.split.json"), entry)
        entries[split] = entry
        built = True
    if not built and paths.exists(paths.join(out, prepared.INDEX)):
        return paths.read_json(paths.join(out, prepared.INDEX))  # nothing to do
    first = entries.get(config.dataset.train_split) or next(iter(entries.values()))
    index = {
        **params,
        "splits": {k: {f: v for f, v in e.items() if f != "split"} for k, e in entries.items()},
        "num_classes": max(e["num_classes"] for e in entries.values()),
        "class_names": first["class_names"],
        "bytes": sum(s["bytes"] for e in entries.values() for s in e["shards"]),
        "build_seconds": round(sum(e["seconds"] for e in entries.values()), 3),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    paths.write_json(paths.join(out, prepared.INDEX), index)
    return index
