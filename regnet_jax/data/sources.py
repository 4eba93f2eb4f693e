"""Where examples come from: TFDS datasets, a folder of class sub-folders, synthetic images, the quickstart set.

Two kinds of source:

* ``IndexedSource`` (folder, synthetic, quickstart): random access by example index, so the trainer can use an exact
  permutation per (seed, epoch), give each process exactly its rows of every global batch, and resume mid-epoch
  without reading what came before.
* ``TfdsSource``: a TFDS split read as a stream; each process reads its own part (``tfds.split_for_jax_process``)
  and shuffles it with a buffer seeded by (seed, epoch).

Elements are ``{'image': encoded bytes or uint8 HxWxC, 'label': int32}``. Every source raises
``DatasetNotReadyError`` naming where it looked and how to prepare the data before anything else happens.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from regnet_jax.core import paths
from regnet_jax.core.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
QUICKSTART_UPSCALE = 4  # 8x8 digits are stored at 32x32 so that crops are not a few pixels wide
QUICKSTART_TEST_FRACTION = 0.2
SYNTHETIC_SIZES = {"train": 1_281_167, "validation": 50_000}  # ImageNet's, unless num_*_examples is set
# The class counts of common TFDS datasets, for synthetic images standing in for them (``dataset.synthetic_like``);
# any other registered TFDS name is asked of TFDS (from its code: offline, nothing downloaded).
KNOWN_CLASSES = {
    "imagenet2012": 1000, "imagenet2012_subset": 1000, "imagenet2012_real": 1000, "imagenet_v2": 1000, "imagenet_a": 200,
    "imagenette": 10, "oxford_flowers102": 102, "tf_flowers": 5, "cifar10": 10, "cifar100": 100, "food101": 101,
    "caltech101": 102, "oxford_iiit_pet": 37, "stanford_dogs": 120, "mnist": 10, "fashion_mnist": 10, "svhn_cropped": 10,
}  # fmt: skip


class DatasetNotReadyError(ConfigError):
    """The dataset is not where the config says, or not prepared; the message says where we looked and what to do."""


@dataclasses.dataclass
class IndexedSource:
    """Examples addressable by index: ``records(indices)`` is a tf.data.Dataset of those examples in that order."""

    num_examples: int
    num_classes: int
    make_records: Callable[[np.ndarray], tf.data.Dataset]
    presized: bool = False  # images are already at the training resolution (synthetic): no crop/resize
    encoded: bool = False  # images are encoded files, which may fail to decode
    paths: np.ndarray | None = None  # where each example's image comes from (named when it fails to decode)

    def records(self, indices: np.ndarray) -> tf.data.Dataset:
        return self.make_records(np.asarray(indices, np.int64))

    def describe(self, index: int) -> str:
        """The example's file (or its index), for messages."""
        return str(self.paths[index]) if self.paths is not None else f"example {index}"


@dataclasses.dataclass
class TfdsSource:
    """A prepared TFDS split, read with JPEG bytes left encoded (decoded later, fused with the crop)."""

    builder: object
    split: str
    num_examples: int
    num_classes: int
    presized: bool = False

    @property
    def encoded(self) -> bool:
        return _image_is_encoded(self.builder)

    def read(self, subsplit: str, shuffle_seed: int | None) -> tf.data.Dataset:
        import tensorflow_datasets as tfds

        decoders = {"image": tfds.decode.SkipDecoding()} if self.encoded else None
        ds = self.builder.as_dataset(
            split=subsplit,
            shuffle_files=shuffle_seed is not None,
            decoders=decoders,
            read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False),
        )
        return ds.map(lambda ex: {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32)})

    def subsplit_size(self, subsplit: str) -> int:
        return int(self.builder.info.splits[subsplit].num_examples)


def _image_is_encoded(builder) -> bool:
    import tensorflow_datasets as tfds

    return isinstance(builder.info.features["image"], tfds.features.Image)


def _limit(n_total: int, limit: int) -> int:
    return min(n_total, limit) if limit else n_total


def _from_arrays(images: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], tf.data.Dataset]:
    def make(indices: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices({"image": images[indices], "label": labels[indices].astype(np.int32)})

    return make


@functools.lru_cache(maxsize=1)
def quickstart_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1,797 real scans, 10 classes), shipped in its wheel: (x_train, y_train, x_test, y_test).

    A fixed 80/20 split (permutation seed 0); pixels 0..16 scaled to uint8, upscaled 4x (bilinear) to 32x32 RGB.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.float32)[..., None]
    size = 8 * QUICKSTART_UPSCALE
    images = tf.image.resize(images, [size, size], method="bilinear", antialias=True).numpy()
    images = np.repeat(np.clip(np.round(images), 0, 255).astype(np.uint8), 3, axis=-1)
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(labels))
    n_test = round(len(labels) * QUICKSTART_TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def quickstart_source(split: str, limit: int) -> IndexedSource:
    x_train, y_train, x_test, y_test = quickstart_arrays()
    if split == "train":
        x, y = x_train, y_train
    elif split in ("test", "validation"):
        x, y = x_test, y_test
    else:
        raise ConfigError(f"config.dataset split {split!r} does not exist for 'quickstart': use 'train' and 'test'")
    n = _limit(len(y), limit)
    return IndexedSource(n, 10, _from_arrays(x[:n], y[:n]))


def synthetic_source(split: str, limit: int, resolution: int, num_classes: int, seed: int) -> IndexedSource:
    """Random uint8 images already at ``resolution`` and random labels, generated from the example index."""
    n = limit or SYNTHETIC_SIZES.get(split, SYNTHETIC_SIZES["validation"])
    salt = 0 if split == "train" else 1

    def make(indices: np.ndarray) -> tf.data.Dataset:
        def example(i):
            s = tf.stack([tf.cast(seed * 2 + salt, tf.int64), i])
            image = tf.random.stateless_uniform([resolution, resolution, 3], s, 0, 256, dtype=tf.int32)
            label = tf.random.stateless_uniform([], s[::-1], 0, num_classes, dtype=tf.int32)
            return {"image": tf.cast(image, tf.uint8), "label": label}

        return tf.data.Dataset.from_tensor_slices(indices).map(example)

    return IndexedSource(n, num_classes, make, presized=True)


def _folder_split_dir(root: str, split: str) -> paths.Path:
    candidates = [split] + (["val"] if split == "validation" else [])
    for name in candidates:
        if paths.isdir(paths.join(root, name)):
            return paths.join(root, name)
    raise DatasetNotReadyError(
        f"folder dataset: no split directory {' or '.join(str(paths.join(root, c)) for c in candidates)}. "
        "Lay the images out as DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/<image> "
        "(same class folder names in both) and set --config.dataset.data_dir=DATA_DIR"
    )


def list_folder(root: str, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(paths, labels, class names) of ROOT/SPLIT/<class>/<image>, classes sorted by name, files sorted.

    ROOT may be local or ``gs://`` (listed through ``regnet_jax.core.paths``: one listing per class folder)."""
    split_dir = _folder_split_dir(root, split)
    classes = [d for d in paths.listdir(split_dir) if paths.isdir(split_dir / d)]
    files, labels = [], []
    for label, name in enumerate(classes):
        names = [f for f in paths.listdir(split_dir / name) if f.lower().endswith(IMAGE_EXTENSIONS)]
        files += [str(split_dir / name / f) for f in names]
        labels += [label] * len(names)
    if not files:
        raise DatasetNotReadyError(
            f"folder dataset: found no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders of {split_dir}; "
            "expected DATA_DIR/<split>/<class>/<image>"
        )
    return files, np.asarray(labels, np.int32), classes


def _byte_reader(root: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """The tf.data op reading an image file's bytes: TensorFlow's own reader for local files (no GIL), the path layer
    for URLs (so that gs:// goes through the same client as everything else, not TensorFlow's)."""
    if not paths.is_url(root):
        return tf.io.read_file
    return lambda path: tf.py_function(lambda p: paths.read_bytes(p.numpy().decode()), [path], tf.string)


def folder_source(root: str, split: str, limit: int) -> IndexedSource:
    if not root:
        raise DatasetNotReadyError(
            "dataset 'folder' needs --config.dataset.data_dir=DATA_DIR (with DATA_DIR/train/<class>/<image>)"
        )
    paths, labels, classes = list_folder(root, split)
    n = _limit(len(paths), limit)
    paths_arr = np.asarray(paths[:n])
    read = _byte_reader(root)

    def make(indices: np.ndarray) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices({"path": paths_arr[indices], "label": labels[indices]})
        return ds.map(lambda ex: {"image": read(ex["path"]), "label": ex["label"]}, num_parallel_calls=tf.data.AUTOTUNE)

    return IndexedSource(n, len(classes), make, encoded=True, paths=paths_arr)


def _tfds_help(name: str, data_dir: str) -> str:
    if name.startswith("imagenet2012"):
        manual = paths.join(data_dir, "downloads", "manual")
        return (
            "ImageNet cannot be downloaded automatically. Put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
            f"(from image-net.org) in {manual}, then run:\n"
            f"    tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual}\n"
            f"and train with --config.dataset.data_dir={data_dir}"
        )
    return (
        f"Prepare it on a machine with internet access:\n    tfds build {name} --data_dir={data_dir}\n"
        f"(copy {data_dir} here if this machine is offline) and train with --config.dataset.data_dir={data_dir}"
    )


def tfds_source(name: str, data_dir: str, split: str, limit: int) -> TfdsSource:
    import tensorflow_datasets as tfds

    data_dir = str(paths.resolve(data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")))  # gs:// too
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetNotReadyError(
            f"config.dataset.name={name!r} is neither a TFDS dataset (tfds.list_builders() lists them) nor one of "
            "'folder', 'synthetic', 'quickstart'"
        ) from None
    if not builder.is_prepared():
        raise DatasetNotReadyError(
            f"TFDS dataset {name!r} is not prepared: looked in {builder.data_dir}. {_tfds_help(name, data_dir)}"
        )
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DatasetNotReadyError(
            f"TFDS dataset {name!r} has features {sorted(features)}; an image classification dataset needs 'image' and 'label'"
        )
    splits = builder.info.splits
    try:
        total = int(splits[split].num_examples)  # also accepts slices such as 'train[:90%]'
    except (KeyError, ValueError, AssertionError):
        raise DatasetNotReadyError(
            f"TFDS dataset {name!r} has no split {split!r}; it has {sorted(splits)} (slices like 'train[:90%]' work too): "
            "set config.dataset.train_split / eval_split"
        ) from None
    n = _limit(total, limit)
    if n < total and "[" in split:
        raise ConfigError(
            f"config.dataset.num_*_examples cannot shorten the sliced split {split!r}: slice it in the split name instead"
        )
    sub = split if n == total else f"{split}[:{n}]"
    return TfdsSource(builder, sub, n, int(features["label"].num_classes))


def dataset_classes(name: str) -> int | None:
    """The number of classes of the TFDS dataset ``name`` (``'imagenet2012'``, ``'cifar10:3.0.2'``), known here or to
    TFDS's registered builder (its code: offline, nothing downloaded or prepared); None if neither knows."""
    base = name.split(":")[0].split("/")[0]
    if base in KNOWN_CLASSES:
        return KNOWN_CLASSES[base]
    try:
        import tensorflow_datasets as tfds

        return int(tfds.builder(name).info.features["label"].num_classes)
    except Exception:  # noqa: BLE001 - not registered, no 'label' feature, or not a class label
        return None


def synthetic_classes(config) -> int:
    """How many classes synthetic images have: those of the dataset they stand in for (``dataset.synthetic_like``,
    where known), else the model's."""
    like = config.dataset.get("synthetic_like", "")
    return (dataset_classes(like) if like else None) or config.model.num_classes


def open_source(config, split: str, limit: int):
    """The source of ``split`` for ``config.dataset`` (an IndexedSource or a TfdsSource)."""
    d = config.dataset
    if d.name == "quickstart":
        return quickstart_source(split, limit)
    if d.name == "synthetic":
        return synthetic_source(split, limit, config.resolution, synthetic_classes(config), config.seed)
    if d.name == "folder":
        return folder_source(d.data_dir, split, limit)
    return tfds_source(d.name, d.data_dir, split, limit)
