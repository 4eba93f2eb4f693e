"""Training and inference speed on synthetic data: images/s, ms/step, compile time, FLOP rate, peak memory
(``regnet_jax.benchmarking``); and the input pipeline's throughput.

    python -m regnet_jax.benchmark --config=configs/regnety_400mf.py --mode=train --batch=32
    python -m regnet_jax.benchmark --config=configs/regnety_4gf.py --mode=infer --batch=256 --dtype=bfloat16 --json
    python -m regnet_jax.benchmark --config=configs/regnety_4gf.py --mode=train --compile_only
    python -m regnet_jax.benchmark --zoo --mode=infer --batch=8 --steps=3 --resolution=128 --out=zoo_bench
    python -m regnet_jax.benchmark --input_pipeline [--data_dir=DIR] [--threads=1] [--batch=64] [--steps=20]
    python -m regnet_jax.benchmark --input_pipeline --prepared_dir=DIR [--resolution=64]

Warm-up steps are excluded; the step time is the median over ``--steps`` timed steps, each ended by a device sync. The
batch is global and split over the devices (``--devices=0``: all local devices, data parallel; N: the first N). Train
mode times the trainer's step (shard_map, the recipe's SGD) with the config's ``grad_accum_steps`` and BatchNorm
statistics over groups of its ``bn_group_size`` images (a zoo config's 100 epochs: its batch / 8; at a ``--batch``
below one group, the whole batch). GFLOPs are analytic multiply-adds (a train step counts 3x the forward); TFLOP/s
counts 2 FLOPs per multiply-add.

``--input_pipeline`` times the training input pipeline (decode + inception crop + flip + lighting + normalise) on a
folder dataset (DIR/train/<class>/<image>.jpg), by default a temporary folder of ImageNet-sized photo-like JPEGs
(500x375 windows of real photographs, ~110 kB): ``--steps`` batches of ``--batch`` (default 20 of 64) at
``--resolution`` (default 224), after one warm-up batch. ``--threads`` bounds tf.data's thread pool, so images/s with
--threads=1 is the per-core rate; images per CPU-second are printed too (on a busy machine the only fair figure).
``--prepared_dir`` times the same pipeline reading a prepared directory (``python -m regnet_jax.prepare``) instead of
JPEGs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time

import jax
from absl import flags

from regnet_jax.benchmarking.input_pipeline import IMAGENET_SIZE, measure, write_jpegs
from regnet_jax.benchmarking.timing import DTYPES, MODES, STEP_IMPLS, benchmark
from regnet_jax.benchmarking.zoo_report import pearson_r, run_zoo, write_zoo_outputs, zoo_names, zoo_table
from regnet_jax.config import ConfigError, config_path, define_config_flag, smoke
from regnet_jax.core import compilation_cache
from regnet_jax.core.cli import run
from regnet_jax.models import conv

# --input_pipeline: its own defaults of the flags it shares with the model benchmark (where they are not given).
INPUT_PIPELINE_DEFAULTS = dict(batch=64, steps=20, resolution=224)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    kw = dict(flag_values=flag_values)
    define_config_flag("config", "A config file, e.g. configs/regnety_400mf.py.", lock=False, **kw)
    flags.DEFINE_enum("mode", "train", list(MODES), "Time a training step or an inference forward pass.", **kw)
    flags.DEFINE_integer(
        "batch", 32, "Global batch, split over the devices (--input_pipeline: the batch, default 64).", **kw
    )
    flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Compute dtype (parameters stay float32).", **kw)
    flags.DEFINE_integer(
        "steps", 10, "Timed steps (the median is reported; --input_pipeline: timed batches, default 20).", **kw
    )
    flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.", **kw)
    flags.DEFINE_integer(
        "resolution", 0, "Image size (0: the config's resolution, 224 for the zoo and --input_pipeline).", **kw
    )
    flags.DEFINE_integer("devices", 0, "Local devices to use: 0 = all (data parallel), N = the first N.", **kw)
    flags.DEFINE_integer("cpu_devices", 0, "XLA:CPU only: split the host into this many devices (e.g. one per core) for data "
                         "parallelism.", **kw)  # fmt: skip
    flags.DEFINE_enum(
        "step", "auto", list(STEP_IMPLS), "Train step: the trainer's (auto and parallel are the same).", **kw
    )
    flags.DEFINE_enum(
        "conv_impl", None, list(conv.CONV_IMPLS), "Convolution lowering (default: REGNET_JAX_CONV_IMPL or auto).", **kw
    )
    flags.DEFINE_bool("compile_only", False, "Only compile the step and report the compile time.", **kw)
    flags.DEFINE_bool(
        "json", False, "Print one JSON object (a list with --zoo) on stdout; progress goes to stderr.", **kw
    )
    flags.DEFINE_bool(
        "zoo", False, "Benchmark the 24 RegNet zoo models and write a table and a time-vs-flops/acts plot.", **kw
    )
    flags.DEFINE_string("zoo_models", "", "With --zoo: a comma-separated subset of zoo names.", **kw)
    flags.DEFINE_string("out", "zoo_benchmark", "With --zoo: the output directory.", **kw)
    flags.DEFINE_bool("input_pipeline", False, "Time the training input pipeline instead of the model.", **kw)
    flags.DEFINE_string("data_dir", "", "With --input_pipeline: a folder dataset root (DIR/train/<class>/*.jpg); default: "
                        "write photo-like JPEGs.", **kw)  # fmt: skip
    flags.DEFINE_string("prepared_dir", "", "With --input_pipeline: read this prepared directory (python -m regnet_jax.prepare) "
                        "instead of JPEGs.", **kw)  # fmt: skip
    flags.DEFINE_integer(
        "threads", 1, "With --input_pipeline: tf.data's thread pool size (1 = the per-core rate).", **kw
    )
    compilation_cache.define_flag(flag_values)


def _print(msg: str) -> None:
    print(msg, file=sys.stderr if flags.FLAGS.json else sys.stdout, flush=True)


def _input_pipeline(FLAGS: flags.FlagValues) -> None:
    sizes = {k: FLAGS[k].value if FLAGS[k].present else v for k, v in INPUT_PIPELINE_DEFAULTS.items()}
    sizes = smoke.limits("input-pipeline benchmark", **sizes)
    batch, batches, resolution = sizes["batch"], sizes["steps"], sizes["resolution"]
    data_dir = FLAGS.data_dir
    if not data_dir and not FLAGS.prepared_dir:
        data_dir = tempfile.mkdtemp(prefix="jpeg_bench_")
        needed = batch * (batches + 1)
        t = time.perf_counter()
        write_jpegs(data_dir, needed, IMAGENET_SIZE)
        print(
            f"wrote {needed} photo-like {IMAGENET_SIZE[0]}x{IMAGENET_SIZE[1]} JPEGs to {data_dir} in {time.perf_counter() - t:.1f}s"
        )
    load = os.getloadavg()[0]
    out = measure(data_dir, FLAGS.threads, resolution, batch, batches, prepared_dir=FLAGS.prepared_dir)
    source = f"prepared {FLAGS.prepared_dir}" if FLAGS.prepared_dir else "JPEG"
    print(
        f"input pipeline ({source}): {out['images_per_s']:.1f} images/s with {FLAGS.threads} thread(s) "
        f"({out['images_per_s_per_thread']:.1f} images/s per thread; {out['images_per_cpu_s']:.1f} images per CPU-second), "
        f"{resolution}px, batch {batch}; load average before {load:.2f}"
    )


def main(argv: list[str]) -> None:
    del argv
    FLAGS = flags.FLAGS
    if FLAGS.input_pipeline:
        _input_pipeline(FLAGS)
        return
    if FLAGS.cpu_devices:
        jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
    if FLAGS.conv_impl:
        conv.set_conv_impl(FLAGS.conv_impl)
    compilation_cache.enable(FLAGS.compilation_cache)  # --compile_only times a cache load when the step is cached
    names = zoo_names(FLAGS.zoo_models) if FLAGS.zoo else []
    sizes = smoke.limits("benchmark", batch=FLAGS.batch, steps=FLAGS.steps, warmup=FLAGS.warmup, resolution=FLAGS.resolution,
                         models=len(names))  # fmt: skip
    names = names[: sizes.pop("models")]
    kwargs = dict(
        mode=FLAGS.mode,
        dtype=FLAGS.dtype,
        num_devices=FLAGS.devices,
        step_impl=FLAGS.step,
        compile_only=FLAGS.compile_only,
        **sizes,
    )
    if FLAGS.zoo:
        results = run_zoo(names, progress=_print, **kwargs)
        if loaded := compilation_cache.stats()["loaded"]:
            _print(f"note: {loaded} executable(s) came from the compilation cache (their compile times are load times)")
        files = write_zoo_outputs(results, FLAGS.out)
        if FLAGS.json:
            print(json.dumps([dataclasses.asdict(r) for r in results]))
            return
        print(zoo_table(results))
        ms = [r.ms_per_image for r in results]
        print(
            f"time/image vs flops r = {pearson_r([r.gflops_per_image for r in results], ms):.3f}, vs acts r = {pearson_r([r.acts for r in results], ms):.3f}"
        )
        print("wrote " + ", ".join(files.values()))
        return
    if FLAGS.config is None:
        raise ConfigError("give --config=configs/<model>.py (or --zoo for all zoo models)")
    name = os.path.splitext(os.path.basename(config_path(FLAGS).split(":")[0]))[0]
    result = benchmark(FLAGS.config, name=name, progress=_print, **kwargs)
    if loaded := compilation_cache.stats()["loaded"]:
        _print(f"note: {loaded} executable(s) came from the compilation cache, so the compile time is a load time; "
               "--compilation_cache=off times a fresh compile")  # fmt: skip
    print(json.dumps(dataclasses.asdict(result)) if FLAGS.json else result.summary())


if __name__ == "__main__":
    run(main, define_flags)
