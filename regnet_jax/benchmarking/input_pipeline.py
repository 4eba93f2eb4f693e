"""Input-pipeline throughput on a folder of JPEGs: decode + inception crop + flip + lighting + normalise, batched.

    python -m regnet_jax.data.benchmark --data_dir=DIR [--threads=1] [--resolution=224] [--batch=64] [--batches=20]

DIR is a folder dataset (DIR/train/<class>/<image>.jpg). Without --data_dir, a temporary folder of ImageNet-sized
synthetic JPEGs (500x375, smooth random content, quality 90) is written first. ``--threads`` bounds tf.data's
thread pool, so images/s with --threads=1 is the per-core rate.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def write_jpeg_folder(root: str, num_images: int, size: tuple[int, int] = (375, 500), classes: int = 4, seed: int = 0) -> str:
    """ImageNet-like JPEGs (smooth random images, so they compress like photos) in ROOT/train/<class>/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(num_images):
        d = os.path.join(root, "train", f"class{i % classes}")
        os.makedirs(d, exist_ok=True)
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        noise = rng.normal(0, 8, (h, w, 3))
        pixels = np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(d, f"{i:05d}.jpg"), quality=90)
    return root


def measure(data_dir: str, threads: int, resolution: int, batch: int, batches: int) -> dict[str, float]:
    """Images/s of the training input pipeline over ``batches`` batches (after one warm-up batch)."""
    import tensorflow as tf

    from regnet_jax import zoo
    from regnet_jax.data import TrainInput

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


def main(argv: list[str]) -> None:
    del argv
    from regnet_jax import smoke

    if smoke.active():
        FLAGS.batch, FLAGS.batches, FLAGS.resolution = 4, 2, smoke.RESOLUTION
        smoke.announce(f"input-pipeline benchmark: {FLAGS.batches} batches of {FLAGS.batch} at {FLAGS.resolution} px")
    data_dir = FLAGS.data_dir
    if not data_dir:
        data_dir = tempfile.mkdtemp(prefix="jpeg_bench_")
        needed = FLAGS.batch * (FLAGS.batches + 1)
        t = time.perf_counter()
        write_jpeg_folder(data_dir, needed)
        print(f"wrote {needed} synthetic 500x375 JPEGs to {data_dir} in {time.perf_counter() - t:.1f}s")
    out = measure(data_dir, FLAGS.threads, FLAGS.resolution, FLAGS.batch, FLAGS.batches)
    print(
        f"input pipeline: {out['images_per_s']:.1f} images/s with {FLAGS.threads} thread(s) "
        f"({out['images_per_s_per_thread']:.1f} images/s per thread), {FLAGS.resolution}px, batch {FLAGS.batch}"
    )


if __name__ == "__main__":
    flags.DEFINE_string("data_dir", "", "Folder dataset root (DIR/train/<class>/*.jpg); default: write synthetic JPEGs.")
    flags.DEFINE_integer("threads", 1, "tf.data thread pool size (1 = per-core rate).")
    flags.DEFINE_integer("resolution", 224, "Training resolution.")
    flags.DEFINE_integer("batch", 64, "Batch size.")
    flags.DEFINE_integer("batches", 20, "Batches to time (after one warm-up batch).")
    app.run(main)
