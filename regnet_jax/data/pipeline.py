"""Input pipelines: per-process training batches in a (seed, epoch)-determined order, exact padded evaluation.

    check_dataset(config)                              # raises DatasetNotReadyError before anything else runs
    train = TrainInput(config, process_index, process_count)
    for batch in train.epoch(epoch, start_step):       # {'image': [L, R, R, 3], 'label': [L]} numpy, L = batch / processes
    ev = EvalInput(config, process_index, process_count)
    for batch in ev.batches():                         # adds 'mask' (0 on padding); every example exactly once
    device_prefetch(iterator, mesh, size)              # -> global jax.Arrays sharded over the mesh, `size` ahead

Normalisation (``config.dataset.normalize_on``): with 'host' the training batches leave tf.data normalised (float32
or bfloat16); with 'device' (the default) they hold the augmented uint8 pixels and each image's lighting shift
(``'lighting'``, [L, 3]), 4x fewer bytes to copy, and ``device_prefetch`` normalises them on the devices, the one
place every training path (the trainer's steps, precise BN) goes through: ``train.epoch`` returns ``HostBatches``,
which carry that step with them. Both give the same images to half a uint8 level (the host rounds the resized pixels
to uint8). Evaluation batches are always normalised on the host.

Bad images: a training image that cannot be read or decoded (corrupt, truncated where the crop needs it, not an image) is
skipped, its file logged once, and the batch filled up with the next image (a second pass over the process's rows
of the epoch supplies them); more than ``config.dataset.max_bad_image_fraction`` of an epoch's images stops the run
with ``BadImagesError``. ``TrainInput`` keeps the count of skipped images per epoch (all processes: ``skipped_images``,
what a checkpoint saves and the run's summary reports). Evaluation promises every example once, so an undecodable
evaluation image is an error naming it (``EvalInput.undecodable_images`` checks a split up front).

Order: for in-memory, folder and synthetic data the epoch's order is ``permutation(seed, epoch)``; global batch t is
rows [t*B, (t+1)*B) of it and process p reads rows [t*B + p*L, t*B + (p+1)*L), so the global batches are the same
whatever the number of processes, and resuming at step s reads nothing before it. TFDS streams are split between
processes (``tfds.split_for_jax_process``) and shuffled by files and by a buffer, both seeded by (seed, epoch);
resuming skips the records already consumed before decoding them.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

from regnet_jax.core import logs

logs.quiet_environment(
    "TF_CPP_MIN_LOG_LEVEL"
)  # TensorFlow only feeds data here: keep its C++ INFO lines out of the log

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from regnet_jax.core.distributed import divide_batch, process_sum, shard_batch  # noqa: E402
from regnet_jax.core.errors import ConfigError  # noqa: E402
from regnet_jax.data.augment import decode, eval_preprocess, normalize, plain_preprocess, train_pixels  # noqa: E402
from regnet_jax.data.prepared import open_source  # noqa: E402  (the prepared split where config.dataset.prepared_dir is set)
from regnet_jax.data.sources import IndexedSource, TfdsSource  # noqa: E402

_INDEX = "stream_index"  # position in the epoch's stream of examples, to find the skipped ones
LIGHTING = "lighting"  # with normalize_on='device': each image's PCA lighting shift (RGB, on [0, 1] pixels), [L, 3]


class BadImagesError(ConfigError):
    """Images cannot be read or decoded: more training images than allowed, or any evaluation image."""


# Keep TensorFlow off accelerators: JAX owns them, tf.data only runs on the host.
tf.config.set_visible_devices([], "GPU")


def _check_classes(config, source) -> None:
    if source.num_classes > config.model.num_classes:
        like = config.dataset.get("synthetic_like", "") if config.dataset.name == "synthetic" else ""
        name = f"{like!r} (synthetic images standing in for it)" if like else repr(config.dataset.name)
        raise ConfigError(
            f"dataset {name} has {source.num_classes} classes but config.model.num_classes="
            f"{config.model.num_classes}: set --config.model.num_classes={source.num_classes}"
        )


def check_dataset(config) -> None:
    """Open both splits (cheap: metadata and file lists only); raise DatasetNotReadyError / ConfigError if unusable."""
    for split, limit in (
        (config.dataset.train_split, config.dataset.num_train_examples),
        (config.dataset.eval_split, config.dataset.num_eval_examples),
    ):
        _check_classes(config, open_source(config, split, limit))


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch]).integers(2**31 - 1))


def _options(ds: tf.data.Dataset, autotune: bool = False) -> tf.data.Dataset:
    opts = tf.data.Options()
    opts.deterministic = True
    # Off: with tf.data's autotuning on, whole epochs ran at ~60 % of the core's rate (the core idle the rest) in 5 of
    # 8 epochs on one core; off, the AUTOTUNE parallelism is the thread pool's size (the cores) and every epoch ran at
    # the CPU-bound rate (docs/performance.md#autotuning-idle-epochs).
    opts.autotune.enabled = autotune
    return ds.with_options(opts)


class TrainInput:
    """This process's training batches; see the module docstring for the order."""

    def __init__(self, config, process_index: int = 0, process_count: int = 1):
        self.config = config
        self.process_index, self.process_count = process_index, process_count
        self.global_batch = config.batch_size
        self.local_batch = divide_batch(
            config.batch_size,
            process_count,
            f"config.batch_size={config.batch_size} is not divisible by the {process_count} processes",
        )
        self.source = open_source(config, config.dataset.train_split, config.dataset.num_train_examples)
        _check_classes(config, self.source)
        if isinstance(self.source, TfdsSource):
            import tensorflow_datasets as tfds

            self._subsplit = tfds.split_for_jax_process(
                self.source.split, process_index=process_index, process_count=process_count
            )
            shard_sizes = [
                self.source.subsplit_size(
                    tfds.split_for_jax_process(self.source.split, process_index=p, process_count=process_count)
                )
                for p in range(process_count)
            ]
            self.steps_per_epoch = min(shard_sizes) // self.local_batch
            self._cached = None
        else:
            self.steps_per_epoch = self.source.num_examples // self.global_batch
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training split has {self.source.num_examples} examples, fewer than one global batch "
                f"(config.batch_size={config.batch_size}): lower the batch size"
            )
        self.num_examples = self.source.num_examples
        self.skipped: list[str] = []  # this epoch's undecodable images (this process)
        self.skipped_images: dict[str, int] = {}  # epoch -> images skipped in it, all processes (restored on resume)
        self._logged: set[str] = set()
        self._stream_rows: np.ndarray | None = None

    def _augment(self, ds: tf.data.Dataset, epoch: int, needed: int) -> tf.data.Dataset:
        """Decode and augment a stream of (position, example), dropping what fails to decode, to ``needed`` examples."""
        cfg, res = self.config.dataset, self.config.resolution
        base = tf.constant([self.config.seed, epoch], tf.int64)
        on_device = cfg.normalize_on == "device"

        def preprocess(index, element):
            position, ex = element
            if self.source.presized:  # no crop, resize, flip or lighting
                pixels, shift = tf.ensure_shape(tf.cast(ex["image"], tf.uint8), [res, res, 3]), tf.zeros([3])
            else:
                seed = tf.random.experimental.stateless_fold_in(base, position)
                pixels, shift = train_pixels(ex["image"], seed, cfg, res, uint8=on_device)
            out = {"image": pixels, LIGHTING: shift} if on_device else {"image": normalize(pixels, shift, cfg)}
            return out | {"label": ex["label"], _INDEX: index}

        ds = ds.enumerate().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.ignore_errors().take(needed)
        return _options(ds.batch(self.local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))

    def _indexed_rows(self, epoch: int, start_step: int) -> tuple[np.ndarray, np.ndarray]:
        steps, g, local, p = self.steps_per_epoch, self.global_batch, self.local_batch, self.process_index
        perm = np.random.default_rng([self.config.seed, epoch]).permutation(self.source.num_examples)[: steps * g]
        positions = np.arange(steps * g).reshape(steps, self.process_count, local)[start_step:, p].reshape(-1)
        return perm[positions], positions

    def dataset(self, epoch: int, start_step: int = 0) -> tf.data.Dataset:
        """The tf.data pipeline of ``epoch`` from step ``start_step`` (batches of ``local_batch``, with the examples'
        stream indices; a second pass over the same examples, with other augmentations, replaces skipped ones)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step={start_step} outside [0, {self.steps_per_epoch}]")
        needed = (self.steps_per_epoch - start_step) * self.local_batch
        if isinstance(self.source, IndexedSource):
            rows, positions = self._indexed_rows(epoch, start_step)
            self._stream_rows = np.concatenate([rows, rows])
            positions = np.concatenate([positions, positions + self.steps_per_epoch * self.global_batch])
            ds = tf.data.Dataset.zip(
                tf.data.Dataset.from_tensor_slices(positions), self.source.records(self._stream_rows)
            )
            return self._augment(ds, epoch, needed)
        self._stream_rows = None
        seed = _epoch_seed(self.config.seed, epoch)
        if self.config.dataset.cache:
            if self._cached is None:
                self._cached = self.source.read(self._subsplit, None).cache()
            ds = self._cached
        else:
            ds = self.source.read(self._subsplit, seed)
        ds = ds.shuffle(self.config.dataset.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        per_pass = self.steps_per_epoch * self.local_batch
        ds = ds.take(per_pass).repeat(2).enumerate().skip(start_step * self.local_batch)
        offset = self.process_index * 2 * per_pass  # distinct augmentation seeds per process
        return self._augment(ds.map(lambda i, ex: (i + offset, ex)), epoch, needed)

    def _describe(self, index: int, epoch: int, start_step: int) -> str:
        if self._stream_rows is not None:
            return self.source.describe(int(self._stream_rows[index]))
        position = start_step * self.local_batch + index
        return f"a record of TFDS split {self.source.split!r} (process {self.process_index}, epoch {epoch}, position {position})"

    def epoch(self, epoch: int, start_step: int = 0) -> HostBatches:
        """Numpy batches of ``epoch`` from ``start_step`` to the end of the epoch. Images that fail to decode are
        skipped (``self.skipped`` lists this epoch's, on this process) and logged once per run; too many raise
        BadImagesError. With normalize_on='device' the batches hold uint8 images and their lighting shifts
        (``LIGHTING``), and ``on_device`` normalises them once ``device_prefetch`` has put them on the devices."""
        on_device = _device_normalizer(self.config.dataset) if self.config.dataset.normalize_on == "device" else None
        return HostBatches(self._batches(epoch, start_step), on_device)

    def _batches(self, epoch: int, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        needed = (self.steps_per_epoch - start_step) * self.local_batch
        fraction = self.config.dataset.max_bad_image_fraction
        self.skipped = []
        expected, produced = 0, 0
        for batch in self.dataset(epoch, start_step).as_numpy_iterator():
            indices = batch.pop(_INDEX)
            for index in np.setdiff1d(np.arange(expected, indices[-1] + 1), indices):  # the stream's gaps
                self._skip(self._describe(int(index), epoch, start_step))
            expected = int(indices[-1]) + 1
            if len(self.skipped) > fraction * needed:
                raise BadImagesError(
                    f"{len(self.skipped)} of the {needed} training images this process reads in epoch {epoch} cannot be "
                    f"read or decoded (e.g. {self.skipped[0]}), more than config.dataset.max_bad_image_fraction={fraction:g}: "
                    "repair or remove them (the log names each), or raise the limit"
                )
            produced += 1
            yield batch
        if produced < self.steps_per_epoch - start_step:  # only if most images fail, with a limit near 1
            raise BadImagesError(
                f"epoch {epoch}: {len(self.skipped)} training images cannot be read or decoded (e.g. {self.skipped[0]}), too "
                f"many to fill {self.steps_per_epoch} steps: repair or remove them"
            )

    def _skip(self, name: str) -> None:
        self.skipped.append(name)
        if name not in self._logged:
            self._logged.add(name)
            logging.warning("skipped an image that cannot be read or decoded: %s", name)

    def skipped_counts(self, epoch: int) -> dict[str, int]:
        """``skipped_images`` plus the images skipped in ``epoch`` so far on all processes (every process must call
        it): what a checkpoint taken now saves."""
        counts = dict(self.skipped_images)
        if n := process_sum(len(self.skipped)):
            counts[str(epoch)] = counts.get(str(epoch), 0) + n
        return counts

    def end_epoch(self, epoch: int) -> int:
        """Count ``epoch``'s skipped images into ``skipped_images`` (every process must call it); returns them."""
        self.skipped_images = self.skipped_counts(epoch)
        self.skipped = []
        return self.skipped_images.get(str(epoch), 0)

    @contextlib.contextmanager
    def rereading(self) -> Iterator[None]:
        """Read images again (precise BN) without counting their undecodable ones twice."""
        skipped = self.skipped
        try:
            yield
        finally:
            self.skipped = skipped


class EvalInput:
    """This process's evaluation batches: its contiguous share of the split, padded to a common number of batches."""

    def __init__(self, config, process_index: int = 0, process_count: int = 1, split: str | None = None):
        self.config = config
        batch = config.eval_batch_size or config.batch_size
        self.local_batch = divide_batch(
            batch,
            process_count,
            f"eval batch {batch} is not divisible by the {process_count} processes: set config.eval_batch_size",
        )
        self.source = open_source(config, split or config.dataset.eval_split, config.dataset.num_eval_examples)
        _check_classes(config, self.source)
        self.num_examples = self.source.num_examples
        if isinstance(self.source, TfdsSource):
            import tensorflow_datasets as tfds

            subsplits = tfds.even_splits(self.source.split, process_count, drop_remainder=False)
            sizes = [self.source.subsplit_size(s) for s in subsplits]
            self._subsplit = subsplits[process_index]
        else:
            shards = np.array_split(np.arange(self.num_examples), process_count)
            sizes = [len(s) for s in shards]
            self._rows = shards[process_index]
        self.local_examples = sizes[process_index]
        self.num_batches = max(1, math.ceil(max(sizes) / self.local_batch))

    def _records(self) -> tf.data.Dataset:
        if isinstance(self.source, IndexedSource):
            return self.source.records(self._rows)
        return self.source.read(self._subsplit, None)

    def dataset(self) -> tf.data.Dataset:
        cfg, res = self.config.dataset, self.config.resolution
        fn = plain_preprocess if self.source.presized else eval_preprocess
        ds = self._records().map(
            lambda ex: {"image": fn(ex["image"], cfg, res), "label": ex["label"]}, num_parallel_calls=tf.data.AUTOTUNE
        )
        return _options(ds.batch(self.local_batch).prefetch(tf.data.AUTOTUNE))

    def undecodable_images(self) -> list[str]:
        """This process's evaluation images that cannot be read or decoded (each is decoded once, nothing else is done)."""
        if not self.source.encoded:
            return []
        ds = (
            self._records()
            .enumerate()
            .map(lambda i, ex: (i, tf.shape(decode(ex["image"]))), num_parallel_calls=tf.data.AUTOTUNE)
        )
        decoded = {int(i) for i, _ in _options(ds.ignore_errors()).as_numpy_iterator()}
        return [self._describe(i) for i in range(self.local_examples) if i not in decoded]

    def _describe(self, index: int) -> str:
        if isinstance(self.source, IndexedSource):
            return self.source.describe(int(self._rows[index]))
        return f"record {index} of TFDS split {self._subsplit!r}"

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """``num_batches`` batches of ``local_batch`` rows with 'mask' = 1 on real examples, 0 on padding."""
        produced = 0
        try:
            for batch in self.dataset().as_numpy_iterator():
                yield _pad(batch, self.local_batch)
                produced += 1
        except tf.errors.InvalidArgumentError:
            bad = self.undecodable_images()
            if not bad:
                raise
            raise bad_eval_images_error(bad, len(bad)) from None
        if produced < self.num_batches:
            res = self.config.resolution
            empty = {
                "image": np.zeros((self.local_batch, res, res, 3), jax.numpy.dtype(self.config.dataset.output_dtype)),
                "label": np.zeros((self.local_batch,), np.int32),
                "mask": np.zeros((self.local_batch,), np.float32),
            }
            for _ in range(self.num_batches - produced):
                yield empty


def bad_eval_images_error(bad: list[str], total: int) -> BadImagesError:
    """The error for ``total`` undecodable evaluation images, of which this process found ``bad``."""
    named = (
        ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        if bad
        else "named by the other processes"
    )
    return BadImagesError(
        f"{total} evaluation image(s) cannot be read or decoded: {named}. Evaluation counts every example exactly once: "
        "repair, re-encode or remove them and rerun"
    )


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    n = len(batch["label"])
    out = {
        k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) if n < size else v for k, v in batch.items()
    }
    out["mask"] = (np.arange(size) < n).astype(np.float32)
    return out


class HostBatches(Iterator[dict[str, np.ndarray]]):
    """An epoch's numpy batches (``TrainInput.epoch``) and ``on_device``: None, or what ``device_prefetch`` applies to
    each batch once it is on the devices (normalize_on='device': ``_device_normalizer``)."""

    def __init__(
        self, batches: Iterator[dict[str, np.ndarray]], on_device: Callable[[dict[str, Any]], dict[str, Any]] | None
    ):
        self._batches, self.on_device = batches, on_device

    def __iter__(self) -> HostBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._batches)

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


@functools.cache
def _jitted_normalizer(mean: tuple[float, ...], std: tuple[float, ...], channel_order: str, dtype: str) -> Callable:
    mean_, std_ = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    scale = np.float32(1.0) / (np.float32(255.0) * std_)  # augment.normalize's constants, computed the same way

    def finish(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        out = {k: v for k, v in batch.items() if k not in ("image", LIGHTING)}
        offset = (batch[LIGHTING] - mean_) / std_  # [L, 3]
        image = batch["image"].astype(jnp.float32) * scale + offset[:, None, None, :]
        if channel_order == "bgr":
            image = image[..., ::-1]
        out["image"] = image.astype(dtype)
        return out

    return jax.jit(finish)


def _device_normalizer(cfg) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """uint8 batches with their lighting shifts -> ``augment.normalize``'s output, elementwise on the devices (so the
    batch keeps its sharding): x * 1 / (255 std) + (shift - mean) / std, then BGR and the output dtype as configured."""
    return _jitted_normalizer(
        tuple(map(float, cfg.mean)), tuple(map(float, cfg.std)), cfg.channel_order, cfg.output_dtype
    )


def device_prefetch(
    iterator: Iterator[dict[str, np.ndarray]], mesh: jax.sharding.Mesh, size: int = 2
) -> Iterator[dict[str, Any]]:
    """Turn process-local numpy batches into global arrays sharded over ``mesh``'s batch axis, ``size`` batches ahead;
    batches of ``HostBatches`` that leave their normalisation to the devices (normalize_on='device') get it here."""
    on_device = getattr(iterator, "on_device", None)
    queue: collections.deque = collections.deque()
    for batch in iterator:
        if LIGHTING in batch and on_device is None:
            raise ValueError(
                "un-normalised uint8 training batches (config.dataset.normalize_on='device') reached device_prefetch without "
                "their normalisation: pass it TrainInput.epoch()'s iterator itself"
            )
        batch = shard_batch(batch, mesh)
        queue.append(on_device(batch) if on_device is not None else batch)
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
