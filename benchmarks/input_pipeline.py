"""Input pipeline throughput: images/s per CPU core for the ImageNet training augmentation, and whether the pipeline
or the model is the bottleneck for a given number of accelerators.

    python benchmarks/input_pipeline.py                       # 256 generated JPEGs, 1 core and all cores
    python benchmarks/input_pipeline.py --model=regnety_4gf --devices=1,8,64
    python benchmarks/input_pipeline.py --model_images_per_s=2400 --devices=8   # your measured per-device train rate
    python benchmarks/input_pipeline.py --measure_model --batch=32               # measure the model on this host's device

The script writes ``--num_images`` JPEG files of ImageNet size (``--size``, default 500x375, the most common ImageNet
shape; quality 90, random colour fields plus grain so that they compress like photos, about 100 kB each as in
ImageNet) into a folder
dataset, then times the trainer's own input pipeline over them (``regnet_jax.data.TrainInput``: file reads, JPEG
decode fused with the Inception crop, resize to 224, flip, PCA lighting, normalisation, batching), in a subprocess
pinned to 1, 2, ... cores. It then compares the pipeline's capacity (cores x per-core rate) with what the model
consumes on N devices (N x per-device train images/s): by default the per-V100 rate implied by pycls MODEL_ZOO.md's
100-epoch training times on 8 V100s (pycls MODEL_ZOO.md, "train (hr)"; docs/fidelity.md#model-zoo), or ``--model_images_per_s``, or a measurement of
``regnet_jax.benchmark`` on this host (``--measure_model``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from regnet_jax.benchmarking.input_pipeline import write_jpegs  # photo-like JPEGs (width x height)
from regnet_jax.core import logs

logs.quiet_environment("TF_CPP_MIN_LOG_LEVEL")

IMAGENET_TRAIN_IMAGES = 1_281_167
# Hours for 100 epochs on 8 V100 (pycls MODEL_ZOO.md, "train (hr)" column): per-GPU training images/s = 1.28M * 100 / (8 h).
V100_TRAIN_HOURS = dict(
    zip(
        [f"regnetx_{s}" for s in ("200mf", "400mf", "600mf", "800mf", "1.6gf", "3.2gf", "4gf", "6.4gf", "8gf", "12gf", "16gf", "32gf")],
        (3.0, 4.2, 4.5, 5.9, 8.9, 15.1, 17.9, 24.3, 23.7, 34.6, 41.3, 81.8),
    )
) | dict(
    zip(
        [f"regnety_{s}" for s in ("200mf", "400mf", "600mf", "800mf", "1.6gf", "3.2gf", "4gf", "6.4gf", "8gf", "12gf", "16gf", "32gf")],
        (3.3, 5.3, 5.3, 6.1, 10.3, 17.0, 17.5, 27.2, 29.3, 36.9, 50.8, 79.4),
    )
)


def v100_images_per_s(model: str) -> float:
    """Per-GPU training images/s implied by pycls MODEL_ZOO.md's 100-epoch time on 8 V100s."""
    return IMAGENET_TRAIN_IMAGES * 100 / (V100_TRAIN_HOURS[model] * 3600) / 8


def _pipeline_worker(root: str, cores: int, batch: int, resolution: int, epochs: int, conn) -> None:
    """Pinned to ``cores`` cores before TensorFlow starts its threads: images/s of the trainer's training pipeline."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    import tensorflow as tf

    from regnet_jax import data
    from regnet_jax.models import zoo

    config = zoo.get_config("regnety_400mf")
    config.dataset.name = "folder"
    config.dataset.data_dir = root
    config.batch_size = batch
    config.resolution = resolution
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = cores
    train = data.TrainInput(config)
    count, start = 0, None
    for epoch in range(epochs + 1):  # epoch 0 warms up (file cache, thread pools, autotuning)
        if epoch == 1:
            start = time.perf_counter()
        for b in train.dataset(epoch).with_options(opts).as_numpy_iterator():
            count += len(b["label"]) if epoch else 0
    conn.send(count / (time.perf_counter() - start))


def pipeline_images_per_s(root: str, cores: int, batch: int, resolution: int, epochs: int) -> float:
    """Training-pipeline images/s in a fresh process restricted to ``cores`` cores."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_pipeline_worker, args=(root, cores, batch, resolution, epochs, child))
    proc.start()
    try:
        if not parent.poll(1800):
            raise TimeoutError(f"the pipeline measurement on {cores} core(s) took more than 30 minutes")
        return parent.recv()
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.terminate()


def verdict(per_core: float, host_cores: int, model_ips: float, devices: int, have: float = 0.0) -> dict[str, Any]:
    """Pipeline vs model for ``devices`` devices fed by ``host_cores`` cores at ``per_core`` images/s each (or at
    ``have`` images/s in all, when that was measured)."""
    need = model_ips * devices
    have = have or per_core * host_cores
    return dict(
        devices=devices,
        model_needs_images_per_s=need,
        pipeline_images_per_s=have,
        cores_needed=need / per_core,
        bottleneck="input pipeline" if have < need else "model",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_images", type=int, default=256)
    p.add_argument("--size", default="500x375", help="JPEG width x height")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="timed passes over the images (after one warm-up pass)")
    p.add_argument("--cores", default="", help="comma-separated core counts to measure (default: 1 and all)")
    p.add_argument("--model", default="regnety_400mf", help="zoo model whose training rate the pipeline must feed")
    p.add_argument("--devices", default="1,8", help="device counts to judge")
    p.add_argument("--host_cores", type=int, default=0, help="cores feeding those devices (default: this host's)")
    p.add_argument("--model_images_per_s", type=float, default=0.0, help="per-device train images/s (default: V100 rate)")
    p.add_argument("--measure_model", action="store_true", help="measure the per-device rate with regnet_jax.benchmark here")
    p.add_argument("--data_dir", default="", help="reuse/keep the generated JPEGs here (default: a temporary directory)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    available = len(os.sched_getaffinity(0))
    cores = sorted({int(c) for c in args.cores.split(",") if c} or {1, available})
    if max(cores) > available or min(cores) < 1:
        sys.exit(f"error: --cores={args.cores} is invalid: this process may use 1..{available} cores")
    w, h = (int(v) for v in args.size.lower().split("x"))
    log = lambda msg: print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or tmp
        if not os.path.isdir(os.path.join(root, "train")):
            t = time.perf_counter()
            nbytes = write_jpegs(root, args.num_images, (w, h))
            log(
                f"wrote {args.num_images} JPEGs of {w}x{h} ({nbytes / args.num_images / 1e3:.0f} kB each) in {time.perf_counter() - t:.1f} s"
            )
        rates = {}
        for c in cores:
            rates[c] = pipeline_images_per_s(root, c, args.batch, args.resolution, args.epochs)
            log(f"training pipeline on {c} core(s): {rates[c]:.1f} images/s ({rates[c] / c:.1f} per core)")
    per_core = rates[1] if 1 in rates else max(r / c for c, r in rates.items())
    if args.model_images_per_s:
        model_ips, source = args.model_images_per_s, "--model_images_per_s"
    elif args.measure_model:
        from regnet_jax.benchmarking import timing
        from regnet_jax.models import zoo

        r = timing.benchmark(zoo.get_config(args.model), mode="train", batch=args.batch, steps=3, num_devices=1, name=args.model)
        model_ips, source = r.images_per_s, f"measured here on 1 {r.backend} device ({r.device_kind})"
    else:
        if args.model not in V100_TRAIN_HOURS:
            sys.exit(f"error: no reference V100 rate for --model={args.model}: give --model_images_per_s or --measure_model")
        model_ips, source = v100_images_per_s(args.model), "V100, from pycls MODEL_ZOO.md's 100-epoch training time on 8 GPUs"
    host_cores = args.host_cores or available
    measured = rates.get(host_cores, 0.0)  # else extrapolated linearly from one core
    rows = [verdict(per_core, host_cores, model_ips, int(d), measured) for d in args.devices.split(",") if d]
    result = dict(
        per_core_images_per_s=per_core, rates_by_cores=rates, model=args.model, model_images_per_s=model_ips,
        model_rate_source=source, host_cores=host_cores, host_rate_measured=bool(measured), verdicts=rows,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(f"\nper core: {per_core:.1f} images/s; {args.model} trains at {model_ips:.1f} images/s per device ({source})")
    print(
        f"{host_cores} host cores deliver {rows[0]['pipeline_images_per_s']:.0f} images/s ({'measured' if measured else 'extrapolated from one core'})"
    )
    for r in rows:
        print(
            f"{r['devices']:>4} device(s): model needs {r['model_needs_images_per_s']:8.0f} images/s = {r['cores_needed']:6.1f} cores; "
            f"pipeline gives {r['pipeline_images_per_s']:8.0f} -> bottleneck: {r['bottleneck']}"
        )


if __name__ == "__main__":
    main()
