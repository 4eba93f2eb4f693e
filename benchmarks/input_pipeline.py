"""Input pipeline throughput: images/s per CPU core for the ImageNet training augmentation beside PyTorch's stock
loader on the same JPEGs and cores, and whether the pipeline or the model is the bottleneck for a number of devices.

    python benchmarks/input_pipeline.py                       # 512 generated JPEGs; 1 and all cores; PyTorch beside
    python benchmarks/input_pipeline.py --cores=1,2 --variants=device,host,old --rounds=3   # the candidates again
    python benchmarks/input_pipeline.py --model=regnety_4gf --devices=1,8,64
    python benchmarks/input_pipeline.py --model_images_per_s=2400 --devices=8   # your measured per-device train rate
    python benchmarks/input_pipeline.py --measure_model --batch=32               # measure the model on this host's device

The script writes ``--num_images`` photo-like JPEG files of ImageNet size (``--size``, default 500x375, the most
common ImageNet shape: windows of the photographs scikit-learn ships, with mild grain, quality 96, ~110 kB each as
ImageNet's) into a folder dataset. It then times, each in a fresh process pinned to the same 1, 2, ... cores
(``os.sched_setaffinity``), one warm-up pass and ``--epochs`` timed passes of batch ``--batch`` of:

* the trainer's own input pipeline (``regnet_jax.data.TrainInput``: file reads, JPEG decode fused with the Inception
  crop, resize to 224, flip, PCA lighting, normalisation, batching; tf.data with a thread pool of that many cores),
  for each ``--variants`` entry: ``device`` (the default, ``dataset.normalize_on='device'``: uint8 batches and
  lighting shifts leave the host; the normalisation, one elementwise op on the accelerator, is not timed), ``host``
  (normalised float32 batches), ``autotune`` (``device`` with tf.data's autotuning on, as before it was turned off:
  it left whole epochs partly idle), ``old`` (the pipeline before issue 19);
* PyTorch's stock loader, when torch and torchvision are installed (the optional ``torch`` extra): torchvision
  ``ImageFolder`` + ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``,
  ``DataLoader(batch_size=32, shuffle=True, num_workers=cores)``.

Each row gives images/s by the wall clock and per CPU-second (user + system time of the process, its threads and its
worker processes), the ratio to PyTorch on the same cores, and the 1-minute load average before it: a row measured
after a load above ``--max_load`` (0.5) is marked unreliable (speed figures count only from an idle machine;
``--settle_s`` waits up to that long for the load to fall first). On a busy machine only the per-CPU-second figures
mean anything. With ``--rounds=N`` the rows are measured N times, interleaved, and the medians reported.

It then compares the pipeline's capacity (cores x per-core rate) with what the model
consumes on N devices (N x per-device train images/s): by default the per-V100 rate implied by pycls MODEL_ZOO.md's
100-epoch training times on 8 V100s (pycls MODEL_ZOO.md, "train (hr)"; docs/fidelity.md#model-zoo), or ``--model_images_per_s``, or a measurement of
``regnet_jax.benchmark`` on this host (``--measure_model``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from regnet_jax.benchmarking.input_pipeline import (
    MAX_LOAD,
    VARIANTS,
    cpu_seconds,
    settle,
    write_jpegs,
)  # photo-like JPEGs (width x height)
from regnet_jax.core import logs

logs.quiet_environment("TF_CPP_MIN_LOG_LEVEL")

IMAGENET_TRAIN_IMAGES = 1_281_167
# Hours for 100 epochs on 8 V100 (pycls MODEL_ZOO.md, "train (hr)" column): per-GPU training images/s = 1.28M * 100 / (8 h).
ZOO_SIZES = ("200mf", "400mf", "600mf", "800mf", "1.6gf", "3.2gf", "4gf", "6.4gf", "8gf", "12gf", "16gf", "32gf")
V100_TRAIN_HOURS = {
    **dict(
        zip((f"regnetx_{s}" for s in ZOO_SIZES), (3.0, 4.2, 4.5, 5.9, 8.9, 15.1, 17.9, 24.3, 23.7, 34.6, 41.3, 81.8))
    ),
    **dict(
        zip((f"regnety_{s}" for s in ZOO_SIZES), (3.3, 5.3, 5.3, 6.1, 10.3, 17.0, 17.5, 27.2, 29.3, 36.9, 50.8, 79.4))
    ),
}


def v100_images_per_s(model: str) -> float:
    """Per-GPU training images/s implied by pycls MODEL_ZOO.md's 100-epoch time on 8 V100s."""
    return IMAGENET_TRAIN_IMAGES * 100 / (V100_TRAIN_HOURS[model] * 3600) / 8


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TORCH = "pytorch"


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None


def _regnet_jax_epochs(root: str, cores: int, batch: int, resolution: int, variant: str):
    import tensorflow as tf

    from regnet_jax.benchmarking.input_pipeline import train_input
    from regnet_jax.models import zoo

    config = zoo.get_config("regnety_400mf")
    config.dataset.name = "folder"
    config.dataset.data_dir = root
    config.batch_size = batch
    config.resolution = resolution
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = cores
    train = train_input(config, variant)

    def epoch(e: int):
        for b in train.dataset(e).with_options(opts).as_numpy_iterator():
            yield len(b["label"])

    return epoch


def _torch_epochs(root: str, cores: int, batch: int, resolution: int):
    import multiprocessing

    import torch
    import torchvision
    from torchvision import transforms as T

    torch.set_num_threads(1)
    transform = T.Compose(
        [
            T.RandomResizedCrop(resolution),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(os.path.join(root, "train"), transform=transform)

    # Workers forked, as a DataLoader started from a plain `python` script on Linux (Python < 3.14) forks them: this
    # process was spawned, and its own default would spawn them (each re-importing torch, every pass).
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None

    def epoch(e: int):
        generator = torch.Generator()
        generator.manual_seed(e)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            num_workers=cores,
            generator=generator,
            multiprocessing_context=context,
        )
        for _, labels in loader:  # the workers are joined at the end of the pass: their CPU time is then counted
            yield len(labels)

    return epoch


def _worker(loader: str, root: str, cores: int, batch: int, resolution: int, epochs: int, conn) -> None:
    """Pinned to the first ``cores`` cores before TensorFlow or PyTorch start their threads: images/s (wall) and images
    per CPU-second of ``loader`` (a regnet_jax variant or TORCH) over ``epochs`` passes after a warm-up pass."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    try:
        if loader == TORCH:
            epoch = _torch_epochs(root, cores, batch, resolution)
        else:
            epoch = _regnet_jax_epochs(root, cores, batch, resolution, loader)
        sum(epoch(0))  # warm-up: file cache, thread pools, autotuning, worker start-up code paths
        c0, t0 = cpu_seconds(), time.perf_counter()
        images = sum(sum(epoch(e)) for e in range(1, epochs + 1))
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        conn.send(
            dict(images=images, wall_s=wall, cpu_s=cpu, images_per_s=images / wall, images_per_cpu_s=images / cpu)
        )
    except Exception as e:  # reported by the parent
        conn.send(dict(error=f"{type(e).__name__}: {e}"))


def measure_loader(loader: str, root: str, cores: int, batch: int, resolution: int, epochs: int) -> dict[str, Any]:
    """One measurement of ``loader`` in a fresh process restricted to ``cores`` cores."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh process: no thread pool, cache or import of an earlier row carries over
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(loader, root, cores, batch, resolution, epochs, child))
    proc.start()
    try:
        if not parent.poll(1800):
            raise TimeoutError(f"the {loader} measurement on {cores} core(s) took more than 30 minutes")
        out = parent.recv()
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.terminate()
    if "error" in out:
        raise RuntimeError(f"the {loader} measurement on {cores} core(s) failed: {out['error']}")
    return out


def label(loader: str) -> str:
    return "PyTorch DataLoader" if loader == TORCH else f"regnet_jax ({loader})"


def summarize(runs: list[dict[str, Any]], max_load: float) -> list[dict[str, Any]]:
    """Median per (cores, loader) over the rounds; each row's ratio to PyTorch's row on the same cores, and whether
    it is reliable (every round and PyTorch's started at a load average <= ``max_load``)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["cores"], r["loader"]), []).append(r)
    rows = []
    for (cores, loader), rs in groups.items():
        rows.append(dict(
            cores=cores, loader=loader, rounds=len(rs), load_before=max(r["load_before"] for r in rs),
            images_per_s=statistics.median(r["images_per_s"] for r in rs),
            images_per_cpu_s=statistics.median(r["images_per_cpu_s"] for r in rs),
        ))  # fmt: skip
    for row in rows:
        peer = next((r for r in rows if r["cores"] == row["cores"] and r["loader"] == TORCH), None)
        row["x_torch_wall"] = row["images_per_s"] / peer["images_per_s"] if peer else None
        row["x_torch_cpu"] = row["images_per_cpu_s"] / peer["images_per_cpu_s"] if peer else None
        loads = [row["load_before"]] + ([peer["load_before"]] if peer else [])
        row["reliable"] = max(loads) <= max_load
    return rows


def format_table(rows: list[dict[str, Any]], max_load: float) -> str:
    ratio = lambda x: f"{x:.2f}x" if x is not None else "-"  # noqa: E731
    lines = [
        "| cores | loader | load before | images/s (wall) | images per CPU-s | x PyTorch (wall) | x PyTorch (per CPU-s) | reliable |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        note = "yes" if r["reliable"] else f"no: load > {max_load:g} before it or its peer"
        lines.append(
            f"| {r['cores']} | {label(r['loader'])} | {r['load_before']:.2f} | {r['images_per_s']:.0f} | {r['images_per_cpu_s']:.0f} | "
            f"{ratio(r['x_torch_wall'])} | {ratio(r['x_torch_cpu'])} | {note} |"
        )
    return "\n".join(lines)


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
    p.add_argument("--num_images", type=int, default=512)
    p.add_argument("--size", default="500x375", help="JPEG width x height")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="timed passes over the images (after one warm-up pass)")
    p.add_argument("--cores", default="", help="comma-separated core counts to measure (default: 1 and all)")
    p.add_argument(
        "--variants", default="device", help=f"regnet_jax pipelines to time, comma-separated: {', '.join(VARIANTS)}"
    )
    p.add_argument("--no_torch", action="store_true", help="skip the PyTorch peer")
    p.add_argument(
        "--rounds", type=int, default=1, help="measure every row this many times, interleaved; medians reported"
    )
    p.add_argument(
        "--max_load", type=float, default=MAX_LOAD, help="rows measured after a higher 1-minute load are unreliable"
    )
    p.add_argument(
        "--settle_s",
        type=float,
        default=60.0,
        help="wait up to this long before each row for the load to fall to --max_load",
    )
    p.add_argument("--model", default="regnety_400mf", help="zoo model whose training rate the pipeline must feed")
    p.add_argument("--devices", default="1,8", help="device counts to judge")
    p.add_argument("--host_cores", type=int, default=0, help="cores feeding those devices (default: this host's)")
    p.add_argument(
        "--model_images_per_s", type=float, default=0.0, help="per-device train images/s (default: V100 rate)"
    )
    p.add_argument(
        "--measure_model", action="store_true", help="measure the per-device rate with regnet_jax.benchmark here"
    )
    p.add_argument(
        "--data_dir", default="", help="reuse/keep the generated JPEGs here (default: a temporary directory)"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    available = len(os.sched_getaffinity(0))
    cores = sorted({int(c) for c in args.cores.split(",") if c} or {1, available})
    if max(cores) > available or min(cores) < 1:
        sys.exit(f"error: --cores={args.cores} is invalid: this process may use 1..{available} cores")
    variants = [v for v in args.variants.split(",") if v]
    if not variants or set(variants) - set(VARIANTS):
        sys.exit(f"error: --variants={args.variants} is invalid: a comma-separated list of {', '.join(VARIANTS)}")
    w, h = (int(v) for v in args.size.lower().split("x"))
    log = lambda msg: print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    loaders = list(variants)
    if args.no_torch:
        log("PyTorch peer skipped (--no_torch)")
    elif torch_available():
        loaders.append(TORCH)
    else:
        log(
            "PyTorch peer skipped: torch and torchvision are not installed (the optional extra: pip install -e '.[torch]')"
        )
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or tmp
        if not os.path.isdir(os.path.join(root, "train")):
            t = time.perf_counter()
            nbytes = write_jpegs(root, args.num_images, (w, h))
            log(
                f"wrote {args.num_images} photo-like JPEGs of {w}x{h} ({nbytes / args.num_images / 1e3:.0f} kB each) in {time.perf_counter() - t:.1f} s"
            )
        num_images = sum(len(files) for _, _, files in os.walk(os.path.join(root, "train")))
        for rnd in range(args.rounds):
            for c in cores:
                for loader in loaders:
                    load = settle(args.max_load, args.settle_s)
                    r = measure_loader(loader, root, c, args.batch, args.resolution, args.epochs)
                    runs.append(dict(r, cores=c, loader=loader, round=rnd, load_before=load))
                    log(
                        f"round {rnd + 1}/{args.rounds}, {c} core(s), {label(loader)}: {r['images_per_s']:.1f} images/s, "
                        f"{r['images_per_cpu_s']:.1f} per CPU-second (load average before {load:.2f})"
                    )
    rows = summarize(runs, args.max_load)
    first = variants[0]
    rates = {r["cores"]: r["images_per_s"] for r in rows if r["loader"] == first}
    one_core = next((r for r in rows if r["loader"] == first and r["cores"] == 1), None)
    # One fully used core's rate: per CPU-second (on an idle machine the wall rate on one pinned core is the same).
    per_core = (
        one_core["images_per_cpu_s"] if one_core else max(r["images_per_cpu_s"] for r in rows if r["loader"] == first)
    )
    if args.model_images_per_s:
        model_ips, source = args.model_images_per_s, "--model_images_per_s"
    elif args.measure_model:
        from regnet_jax.benchmarking import timing
        from regnet_jax.models import zoo

        r = timing.benchmark(
            zoo.get_config(args.model), mode="train", batch=args.batch, steps=3, num_devices=1, name=args.model
        )
        model_ips, source = r.images_per_s, f"measured here on 1 {r.backend} device ({r.device_kind})"
    else:
        if args.model not in V100_TRAIN_HOURS:
            sys.exit(
                f"error: no reference V100 rate for --model={args.model}: give --model_images_per_s or --measure_model"
            )
        model_ips, source = (
            v100_images_per_s(args.model),
            "V100, from pycls MODEL_ZOO.md's 100-epoch training time on 8 GPUs",
        )
    host_cores = args.host_cores or available
    measured = rates.get(host_cores, 0.0)  # else extrapolated linearly from one core
    verdicts = [verdict(per_core, host_cores, model_ips, int(d), measured) for d in args.devices.split(",") if d]
    reliable = all(r["reliable"] for r in rows)
    result = dict(
        loaders=rows, runs=runs, reliable=reliable, per_core_images_per_s=per_core, rates_by_cores=rates, model=args.model,
        model_images_per_s=model_ips, model_rate_source=source, host_cores=host_cores, host_rate_measured=bool(measured),
        verdicts=verdicts,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(f"\n{args.batch} images per batch at {args.resolution} px, {args.epochs} timed passes over {num_images} JPEGs after a warm-up pass"
          f"{f', medians of {args.rounds} rounds' if args.rounds > 1 else ''}:\n")  # fmt: skip
    print(format_table(rows, args.max_load))
    if not reliable:
        print(
            f"\nrows marked unreliable were measured after a 1-minute load average above {args.max_load:g}: only the per-CPU-second figures compare"
        )
    print(
        f"\nper core ({label(first)}): {per_core:.1f} images per CPU-second; {args.model} trains at {model_ips:.1f} images/s per device ({source})"
    )
    print(
        f"{host_cores} host cores deliver {verdicts[0]['pipeline_images_per_s']:.0f} images/s ({'measured' if measured else 'extrapolated from one core'})"
    )
    for r in verdicts:
        print(
            f"{r['devices']:>4} device(s): model needs {r['model_needs_images_per_s']:8.0f} images/s = {r['cores_needed']:6.1f} cores; "
            f"pipeline gives {r['pipeline_images_per_s']:8.0f} -> bottleneck: {r['bottleneck']}"
        )


if __name__ == "__main__":
    main()
