"""Prepared (decoded) data: a dataset's images decoded once, shorter side resized, in ArrayRecord shards.

A sweep trains many small models for a few epochs on the same images; decoding the same JPEGs every epoch of every
model is most of its input cost. ``python -m regnet_jax.prepare`` (``data.build_prepared``) writes a directory
that ``config.dataset.prepared_dir`` reads instead of the config's dataset, with the same augmentation after it:

    DIR/index.json                         written last: format, short side, splits, shards, classes, source, build time
    DIR/build.json                         the build's parameters (a rerun resumes only an identical build)
    DIR/<split>-00000-of-00004.array_record   one record per image: 16-byte header + pixels (or JPEG bytes)

A record is ``int32 [label, height, width, channels]`` (little-endian) followed by the uint8 HxWx3 pixels in row
order (``encoding='raw'``) or, with channels = 0, by JPEG bytes (``encoding='jpeg'``). Records are in the source's
order (a folder's sorted files, a TFDS split's order) less the images that could not be decoded, so example ``i``
here is example ``i`` of the source when none was bad: the trainer's (seed, epoch) permutation reads the same images
in the same positions as from the source, and resumes the same way (``IndexedSource``: random access by index).

Images whose shorter side exceeds ``short_side`` are resized to it (the longer side rounded, aspect kept), bilinear
with half-pixel centres and no antialiasing (``augment``'s resize, pycls's cv2.INTER_LINEAR); smaller ones are kept
as they are. ``open_source`` is the one entry point of the pipelines: the prepared split where
``config.dataset.prepared_dir`` is set, else the config's own source (``sources.open_source``).

A ``gs://`` directory is copied once per machine to a local cache (``REGNET_JAX_PREPARED_CACHE``, default
``~/.cache/regnet_jax/prepared``) before the first read: ArrayRecord reads by random access, one request per image,
which on object storage would cost a round trip each.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import uuid

import numpy as np
import tensorflow as tf
from absl import logging

from regnet_jax.core import paths
from regnet_jax.core.errors import ConfigError
from regnet_jax.data.augment import eval_size
from regnet_jax.data.sources import DatasetNotReadyError, IndexedSource
from regnet_jax.data.sources import open_source as open_dataset

FORMAT = "regnet_jax.prepared"
VERSION = 1
INDEX = "index.json"
BUILD = "build.json"
SUFFIX = ".array_record"
HEADER_BYTES = 16  # int32 label, height, width, channels (0: the payload is encoded, e.g. JPEG)
ENCODINGS = ("raw", "jpeg")
WRITER_OPTIONS = "group_size:1,uncompressed"  # one record per chunk: random access without decompressing neighbours
READER_OPTIONS = "readahead_buffer_size:0"  # random access: no read-ahead
READ_CHUNK = 64  # records read per call (grouped by shard)
CACHE_ENV = "REGNET_JAX_PREPARED_CACHE"
_warned: set[str] = set()


def split_stem(split: str) -> str:
    """A split's name in file names (other characters than letters, digits, '_', '.', '-' become '_')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", split)


def shard_name(split: str, shard: int, num_shards: int) -> str:
    """``train-00003-of-00010.array_record``."""
    return f"{split_stem(split)}-{shard:05d}-of-{num_shards:05d}{SUFFIX}"


def encode_record(label: int, image: np.ndarray | bytes) -> bytes:
    """One record: the header, then the uint8 HxWx3 pixels or (bytes) an encoded image."""
    if isinstance(image, bytes):
        return np.array([label, 0, 0, 0], "<i4").tobytes() + image
    h, w, c = image.shape
    return np.array([label, h, w, c], "<i4").tobytes() + np.ascontiguousarray(image, np.uint8).tobytes()


def decode_record(record: bytes) -> tuple[int, np.ndarray | bytes]:
    """(label, pixels or encoded bytes) of a record (numpy; the pipeline parses records in TensorFlow)."""
    label, h, w, c = np.frombuffer(record[:HEADER_BYTES], "<i4")
    payload = record[HEADER_BYTES:]
    return int(label), payload if c == 0 else np.frombuffer(payload, np.uint8).reshape(h, w, c)


def _parse(encoded: bool):
    def parse(record: tf.Tensor) -> dict[str, tf.Tensor]:
        header = tf.io.decode_raw(tf.strings.substr(record, 0, HEADER_BYTES), tf.int32, little_endian=True)
        payload = tf.strings.substr(record, HEADER_BYTES, tf.strings.length(record) - HEADER_BYTES)
        if encoded:
            return {"image": payload, "label": header[0]}
        image = tf.reshape(tf.io.decode_raw(payload, tf.uint8), header[1:4])
        return {"image": tf.ensure_shape(image, [None, None, 3]), "label": header[0]}

    return parse


# ---------------------------------------------------------------- the directory


def read_index(root: str) -> dict:
    """DIR's index.json, checked; DatasetNotReadyError (one line) if DIR is not a finished prepared directory."""
    index_path = paths.join(root, INDEX)
    hint = "build it with python -m regnet_jax.prepare --config=CONFIG --out=DIR"
    if not paths.exists(index_path):
        if paths.exists(paths.join(root, BUILD)):
            raise DatasetNotReadyError(
                f"config.dataset.prepared_dir={root}: its build is unfinished (no {INDEX}): rerun the same python -m regnet_jax.prepare command to finish it"
            )
        if not paths.isdir(root):
            raise DatasetNotReadyError(
                f"config.dataset.prepared_dir={root} does not exist: {hint}, or set prepared_dir='' to read the dataset itself"
            )
        raise DatasetNotReadyError(f"config.dataset.prepared_dir={root} is not a prepared dataset (no {INDEX}): {hint}")
    try:
        index = paths.read_json(index_path)
    except ValueError as e:
        raise DatasetNotReadyError(
            f"{index_path} is not valid JSON ({e}): rebuild the directory with python -m regnet_jax.prepare"
        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DatasetNotReadyError(f"{index_path} is not the index of a regnet_jax prepared dataset: {hint}")
    if index.get("version") != VERSION:
        raise DatasetNotReadyError(
            f"{root} is a prepared dataset of format version {index.get('version')}; this regnet_jax reads version {VERSION}: rebuild it"
        )
    return index


def _cache_dir(root: str) -> str:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "regnet_jax", "prepared")
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", str(root).split("://", 1)[-1]).strip("_")[-80:]
    return os.path.join(base, f"{key}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}")


def local_shards(root: str, shards: list[dict]) -> str:
    """The local directory holding ``shards`` of ``root``: ``root`` itself, or for a URL a local cache where missing
    or incomplete shards are copied first (each written under a temporary name and renamed: concurrent processes
    and interrupted copies leave no partial shard)."""
    if not paths.is_url(root):
        for s in shards:
            p = os.path.join(str(paths.resolve(root)), s["file"])
            if not os.path.isfile(p) or os.path.getsize(p) != s["bytes"]:
                raise DatasetNotReadyError(
                    f"config.dataset.prepared_dir={root}: shard {s['file']} is missing or has the wrong size: the directory is "
                    "incomplete or damaged; rebuild it with python -m regnet_jax.prepare"
                )
        return str(paths.resolve(root))
    cache = _cache_dir(root)
    missing = [
        s
        for s in shards
        if not (
            os.path.isfile(os.path.join(cache, s["file"]))
            and os.path.getsize(os.path.join(cache, s["file"])) == s["bytes"]
        )
    ]
    if missing:
        needed = sum(s["bytes"] for s in missing)
        paths.check_writable(cache, needed)
        os.makedirs(cache, exist_ok=True)
        logging.info(
            "copying %d shards (%s) of %s to the local cache %s", len(missing), paths.human_bytes(needed), root, cache
        )
        for s in missing:
            dst = os.path.join(cache, s["file"])
            tmp = f"{dst}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with (
                    paths.writing(dst),
                    paths.resolve(paths.join(root, s["file"])).open("rb") as src,
                    open(tmp, "wb") as out,
                ):
                    shutil.copyfileobj(src, out, 16 << 20)
                os.replace(tmp, dst)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    return cache


def _reader(path: str):
    from array_record.python.array_record_module import ArrayRecordReader

    return ArrayRecordReader(path, READER_OPTIONS, file_reader_buffer_size=32768)


def _make_records(root: str, shards: list[dict], encoded: bool):
    """``records(indices)`` of a prepared split: the records read in order, ``READ_CHUNK`` at a time (one Python call
    per chunk; single-record reads: ArrayRecord's parallel batch read costs more CPU on a busy core), then parsed."""
    starts = np.cumsum([0] + [s["num_examples"] for s in shards])
    state: dict = {"dir": None, "readers": {}}
    lock = threading.Lock()

    def read_chunk(chunk: np.ndarray) -> np.ndarray:
        shard_of = np.searchsorted(starts, chunk, side="right") - 1
        out = np.empty(len(chunk), object)
        with lock:  # one reader per shard, shared by the epochs' pipelines
            for j, (s, i) in enumerate(zip(shard_of.tolist(), chunk.tolist())):
                reader = state["readers"].get(s)
                if reader is None:
                    reader = state["readers"][s] = _reader(os.path.join(state["dir"], shards[s]["file"]))
                out[j] = reader.read([i - int(starts[s])])[0]
        return out

    def make(indices: np.ndarray) -> tf.data.Dataset:
        if state["dir"] is None:
            state["dir"] = local_shards(root, shards)
        ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64)).batch(READ_CHUNK)
        ds = ds.map(
            lambda chunk: tf.ensure_shape(tf.numpy_function(read_chunk, [chunk], tf.string, stateful=False), [None])
        )
        return ds.unbatch().map(_parse(encoded), num_parallel_calls=tf.data.AUTOTUNE)

    return make


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logging.warning("%s", message)


def prepared_source(config, split: str, limit: int) -> IndexedSource:
    """The prepared ``split`` of ``config.dataset.prepared_dir`` (its first ``limit`` examples; 0 = all)."""
    root = config.dataset.prepared_dir
    index = read_index(root)
    built_from = index["source"]["name"]
    if built_from != config.dataset.name:
        raise ConfigError(
            f"config.dataset.prepared_dir={root} was prepared from dataset {built_from!r} but config.dataset.name="
            f"{config.dataset.name!r}: set --config.dataset.name={built_from} or use the prepared directory of {config.dataset.name!r}"
        )
    if split not in index["splits"]:
        raise DatasetNotReadyError(
            f"config.dataset.prepared_dir={root} has the split(s) {sorted(index['splits'])}, not {split!r}: add it with "
            f"python -m regnet_jax.prepare ... --out={root} --split={split}"
        )
    entry = index["splits"][split]
    n = min(entry["num_examples"], limit) if limit else entry["num_examples"]
    shards, total = [], 0
    for s in entry["shards"]:  # only the shards the first n examples lie in
        if total >= n:
            break
        shards.append(s)
        total += s["num_examples"]
    short = index["short_side"]
    res, size = config.resolution, eval_size(config.resolution, config.dataset.eval_crop_fraction)
    if short < size:
        _warn_once(f"{root}:{size}", f"{root} holds images of shorter side {short} px, less than the {size} px evaluation resizes "
                   f"to at {res} px (and the training crops start from): they are upsampled; prepare with --short_side={size} or more")  # fmt: skip
    encoded = index["encoding"] != "raw"
    return IndexedSource(n, index["num_classes"], _make_records(root, shards, encoded), encoded=encoded)


def open_source(config, split: str, limit: int):
    """The source of ``split``: prepared (``config.dataset.prepared_dir``) or the config's dataset
    (``sources.open_source``: an IndexedSource or a TfdsSource)."""
    if config.dataset.get("prepared_dir"):
        return prepared_source(config, split, limit)
    return open_dataset(config, split, limit)
