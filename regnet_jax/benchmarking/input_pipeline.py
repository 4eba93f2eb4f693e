"""Input-pipeline throughput on a folder of JPEGs: decode + inception crop + flip + lighting + normalise, batched.

    write_jpegs(root, num_images, (500, 375))      # photo-like JPEGs in ROOT/train/<class>/ (width x height)
    measure(data_dir, threads=1, resolution=224, batch=64, batches=20)   # images/s of the training pipeline
    measure("", ..., prepared_dir=DIR)             # the same from prepared data (python -m regnet_jax.prepare)

``python -m regnet_jax.benchmark --input_pipeline [--data_dir=DIR] [--threads=N]`` runs it (without ``--data_dir``
on a temporary folder of ImageNet-sized synthetic JPEGs); ``threads`` bounds tf.data's thread pool, so images/s with
one thread is the per-core rate; ``images_per_cpu_s`` divides by the CPU time the process spent instead (all its threads),
a rate that holds on a loaded machine. benchmarks/input_pipeline.py compares it with what the model consumes;
benchmarks/prepared_data.py compares the JPEG and the prepared paths.
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


def measure(data_dir: str, threads: int, resolution: int, batch: int, batches: int, prepared_dir: str = "") -> dict[str, float]:
    """Images/s of the training input pipeline over ``batches`` batches (after one warm-up batch), from a folder
    dataset or from a prepared directory (``prepared_dir``): the time spent getting batches, not building each
    epoch's pipeline (which a real epoch, thousands of batches, amortises)."""
    import tensorflow as tf

    from regnet_jax.data import TrainInput, prepared
    from regnet_jax.models import zoo

    config = zoo.get_config("regnetx_200mf")
    config.batch_size, config.resolution = batch, resolution
    config.dataset.name, config.dataset.data_dir = "folder", data_dir
    if prepared_dir:
        config.dataset.prepared_dir = prepared_dir
        config.dataset.name = prepared.read_index(prepared_dir)["source"]["name"]
    train = TrainInput(config)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    epochs, it = 0, None
    started, n, seconds, cpu = False, 0, 0.0, 0.0
    while n < batches:
        if it is None:  # building an epoch's pipeline (tracing its functions) is not timed: once per epoch in training
            it = train.dataset(epochs).with_options(options).as_numpy_iterator()
            epochs += 1
        t, c = time.perf_counter(), time.process_time()
        try:
            next(it)
        except StopIteration:
            it = None
            continue
        if not started:  # the first batch pays for thread start-up
            started = True
            continue
        seconds, cpu = seconds + time.perf_counter() - t, cpu + time.process_time() - c
        n += 1
    return {"images_per_s": n * batch / seconds, "images_per_s_per_thread": n * batch / seconds / threads, "seconds": seconds,
            "cpu_seconds": cpu, "images_per_cpu_s": n * batch / cpu}  # fmt: skip
