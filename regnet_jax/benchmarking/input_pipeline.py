"""Input-pipeline throughput on a folder of JPEGs: decode + inception crop + flip + lighting + normalise, batched.

    write_jpegs(root, num_images, (500, 375))      # photo-like JPEGs in ROOT/train/<class>/ (width x height)
    measure(data_dir, threads=1, resolution=224, batch=64, batches=20)   # images/s of the training pipeline

``python -m regnet_jax.benchmark --input_pipeline [--data_dir=DIR] [--threads=N]`` runs it (without ``--data_dir``
on a temporary folder of ImageNet-sized synthetic JPEGs); ``threads`` bounds tf.data's thread pool, so images/s with
one thread is the per-core rate. benchmarks/input_pipeline.py compares it with what the model consumes.
"""

from __future__ import annotations

import os
import time

import numpy as np

IMAGENET_SIZE = (500, 375)  # width x height: the most common ImageNet shape


def write_jpegs(root: str, num_images: int, size: tuple[int, int] = IMAGENET_SIZE, num_classes: int = 4, seed: int = 0) -> int:
    """``num_images`` photo-like JPEGs (width x height ``size``) in ``root/train/<class>/``; returns the total bytes.

    Low-frequency colour fields plus mild noise, quality 90: they compress like natural photos (about 100 kB each at
    ImageNet size, as ImageNet's do), unlike white noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    total = 0
    for i in range(num_images):
        coarse = rng.uniform(0, 255, (h // 6 + 2, w // 6 + 2, 3)).astype(np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        arr = np.asarray(img, np.int16) + rng.integers(-20, 21, (h, w, 3))
        d = os.path.join(root, "train", f"class{i % num_classes}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"img{i:05d}.jpg")
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        total += os.path.getsize(path)
    return total


def measure(data_dir: str, threads: int, resolution: int, batch: int, batches: int) -> dict[str, float]:
    """Images/s of the training input pipeline over ``batches`` batches (after one warm-up batch)."""
    import tensorflow as tf

    from regnet_jax.data import TrainInput
    from regnet_jax.models import zoo

    config = zoo.get_config("regnetx_200mf")
    config.batch_size, config.resolution = batch, resolution
    config.dataset.name, config.dataset.data_dir = "folder", data_dir
    train = TrainInput(config)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    epochs, it = 0, None
    t0, n = None, 0
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
            t0 = time.perf_counter()  # the first batch pays for thread start-up
            continue
        n += 1
    seconds = time.perf_counter() - t0
    return {"images_per_s": n * batch / seconds, "images_per_s_per_thread": n * batch / seconds / threads, "seconds": seconds}
