"""Input-pipeline throughput on a folder of JPEGs: decode + inception crop + flip + lighting + normalise, batched.

    write_jpegs(root, num_images, (500, 375))      # photo-like JPEGs in ROOT/train/<class>/ (width x height)
    measure(data_dir, threads=1, resolution=224, batch=64, batches=20)   # images/s of the training pipeline
    train_input(config, variant)                   # the TrainInput of a variant: 'device', 'host' or 'old'
    cpu_seconds()                                  # CPU time of this process and its children (user + system)
    settle(max_load=MAX_LOAD, wait_s=300)          # wait for an idle machine; returns the 1-minute load average
    measure("", ..., prepared_dir=DIR)             # the same from prepared data (python -m regnet_jax.prepare)

``python -m regnet_jax.benchmark --input_pipeline [--data_dir=DIR] [--threads=N]`` runs it (without ``--data_dir``
on a temporary folder of ImageNet-sized photo-like JPEGs); ``threads`` bounds tf.data's thread pool, so images/s with
one thread is the per-core rate. benchmarks/input_pipeline.py compares it with PyTorch's stock loader on the same
JPEGs and cores, and with what the model consumes; benchmarks/prepared_data.py compares the JPEG and the prepared
paths.

Variants (docs/performance.md#input-pipeline): 'device' and 'host' are the trainer's pipeline with
``config.dataset.normalize_on`` set so ('device': uint8 batches plus lighting shifts leave the host); 'old' is the
pipeline before issue 19 (TF's default fast JPEG IDCT, ``tf.where`` flip, four normalisation passes), kept here only
so that the candidates can be measured again.
"""

from __future__ import annotations

import os
import resource
import time

import numpy as np

IMAGENET_SIZE = (500, 375)  # width x height: the most common ImageNet shape
VARIANTS = ("device", "host", "autotune", "old")
PHOTOS = ("china.jpg", "flower.jpg")  # 640x427 photographs that scikit-learn (a dependency) ships
JPEG_QUALITY = 96


def _photos() -> list[np.ndarray]:
    import sklearn.datasets
    from PIL import Image

    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    out = []
    for name in PHOTOS:
        with Image.open(os.path.join(folder, name)) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


def photo_like(rng: np.random.Generator, size: tuple[int, int], photos: list[np.ndarray] | None = None) -> np.ndarray:
    """A ``size`` = (width, height) uint8 RGB image cut from a real photograph: a random window of the target aspect
    (60-100% of the largest that fits), resized (bicubic), mirrored with p = 0.5, plus mild grain (N(0, 4) shared by
    the channels, N(0, 2) per channel)."""
    from PIL import Image

    photos = photos or _photos()
    w, h = size
    p = photos[rng.integers(len(photos))]
    ph, pw = p.shape[:2]
    scale = rng.uniform(0.6, 1.0) * min(ph / h, pw / w)
    ch, cw = max(1, int(h * scale)), max(1, int(w * scale))
    y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    img = np.asarray(Image.fromarray(p[y : y + ch, x : x + cw]).resize((w, h), Image.BICUBIC), np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = img + rng.normal(0, 4.0, (h, w, 1)) + rng.normal(0, 2.0, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_jpegs(
    root: str, num_images: int, size: tuple[int, int] = IMAGENET_SIZE, num_classes: int = 4, seed: int = 0
) -> int:
    """``num_images`` photo-like JPEGs (width x height ``size``) in ``root/train/<class>/``; returns the total bytes.

    Windows of real photographs with mild grain (``photo_like``), quality 96 (4:2:0): at ImageNet's 500x375 they
    are ~110 kB each, as ImageNet's JPEGs, and decode like photos. Deterministic in ``seed``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _photos()
    total = 0
    for i in range(num_images):
        d = os.path.join(root, "train", f"class{i % num_classes}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"img{i:05d}.jpg")
        Image.fromarray(photo_like(rng, size, photos)).save(path, quality=JPEG_QUALITY)
        total += os.path.getsize(path)
    return total


MAX_LOAD = 0.5  # 1-minute load average at or above which a machine is not idle: speed figures need one below it


def settle(max_load: float = MAX_LOAD, wait_s: float = 300) -> float:
    """The 1-minute load average, after waiting up to ``wait_s`` seconds for it to fall below ``max_load`` (a
    previous run's own load included)."""
    deadline = time.monotonic() + wait_s
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, its reaped children and its live descendants (when psutil is
    installed): the CPU a loader costs, whatever its threads and worker processes."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    try:
        import psutil
    except ImportError:
        return total
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _legacy_train_preprocess(image, seed, cfg, resolution: int):
    """The training transform before issue 19 (same draws and window): TF's default JPEG IDCT (INTEGER_FAST), a
    ``tf.where`` flip over a reversed slice, and lighting + normalisation in four broadcast passes."""
    import tensorflow as tf

    from regnet_jax.data import augment

    seeds = tf.random.experimental.stateless_split(seed, 3)
    window = augment.inception_crop_window(augment.image_shape(image), seeds[0], cfg.min_area, tuple(cfg.aspect_ratio))
    y, x, h, w = tf.unstack(window)
    if image.dtype == tf.string:
        crop = tf.cond(
            tf.io.is_jpeg(image),
            lambda: tf.image.decode_and_crop_jpeg(image, window, channels=3),
            lambda: tf.io.decode_image(image, channels=3, expand_animations=False)[y : y + h, x : x + w],
        )
    else:
        crop = augment.decode_crop(image, window)
    out = tf.image.resize(tf.cast(crop, tf.float32), [resolution, resolution], method="bilinear", antialias=False)
    if cfg.flip:
        flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
        out = tf.where(flip, out[:, ::-1], out)
    out = out / 255.0
    if cfg.pca_std > 0:
        out = augment.lighting(out, seeds[2], cfg.pca_std)
    out = (out - tf.constant(cfg.mean, tf.float32)) / tf.constant(cfg.std, tf.float32)
    if cfg.channel_order == "bgr":
        out = out[..., ::-1]
    return tf.cast(out, tf.dtypes.as_dtype(cfg.output_dtype))


def train_input(config, variant: str = "device"):
    """The training input of ``variant`` ('device', 'host': the trainer's with that ``dataset.normalize_on``;
    'autotune': 'device' with tf.data's autotuning on, as before it was turned off; 'old': the pipeline before issue
    19) for ``config``."""
    import tensorflow as tf

    from regnet_jax.data import pipeline

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    config = config.copy_and_resolve_references()
    config.dataset.normalize_on = {"old": "host", "autotune": "device"}.get(variant, variant)
    if variant in ("device", "host"):
        return pipeline.TrainInput(config)
    if variant == "autotune":

        class AutotunedTrainInput(pipeline.TrainInput):
            def dataset(self, epoch, start_step=0):
                return pipeline._options(super().dataset(epoch, start_step), autotune=True)

        return AutotunedTrainInput(config)

    class LegacyTrainInput(pipeline.TrainInput):
        def _augment(self, ds, epoch, needed):
            cfg, res = self.config.dataset, self.config.resolution
            base = tf.constant([self.config.seed, epoch], tf.int64)

            def preprocess(index, element):
                position, ex = element
                seed = tf.random.experimental.stateless_fold_in(base, position)
                image = _legacy_train_preprocess(ex["image"], seed, cfg, res)
                return {"image": image, "label": ex["label"], pipeline._INDEX: index}

            ds = ds.enumerate().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = ds.ignore_errors().take(needed)
            batches = ds.batch(self.local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
            return pipeline._options(batches, autotune=True)  # as before issue 19

    return LegacyTrainInput(config)


def measure(
    data_dir: str,
    threads: int,
    resolution: int,
    batch: int,
    batches: int,
    variant: str = "device",
    prepared_dir: str = "",
) -> dict[str, float]:
    """Images/s (wall) and images per CPU-second of the training input pipeline over ``batches`` batches (after one
    warm-up batch), from a folder dataset or from a prepared directory (``prepared_dir``)."""
    import tensorflow as tf

    from regnet_jax.models import zoo

    config = zoo.get_config("regnetx_200mf")
    config.batch_size, config.resolution = batch, resolution
    config.dataset.name, config.dataset.data_dir = "folder", data_dir
    if prepared_dir:
        from regnet_jax.data import prepared

        config.dataset.prepared_dir = prepared_dir
        config.dataset.name = prepared.read_index(prepared_dir)["source"]["name"]
    train = train_input(config, variant)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    epochs, it = 0, None
    t0, c0, n = None, 0.0, 0
    while n < batches:
        if it is None:
            it = train.dataset(epochs).with_options(options).as_numpy_iterator()
            epochs += 1
        try:
            next(it)
        except StopIteration:
            it = None
            continue
        if t0 is None:
            # tf.data's threads are this process's: its own CPU time (children's would add other work, e.g. a test's)
            t0, c0 = time.perf_counter(), time.process_time()  # the first batch pays for thread start-up
            continue
        n += 1
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "images_per_s": n * batch / seconds,
        "images_per_s_per_thread": n * batch / seconds / threads,
        "images_per_cpu_s": n * batch / cpu if cpu > 0 else float("nan"),
        "seconds": seconds,
        "cpu_seconds": cpu,
    }
