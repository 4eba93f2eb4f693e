"""What the pycls recipe's BatchNorm statistics groups and gradient accumulation cost, against the plain step.

    python benchmarks/recipe_cost.py --config=configs/regnety_400mf.py --resolution=64 \\
        --layouts=64:0:1,64:16:1,64:8:1,64:16:4,64:16:2 [--devices=1] [--rounds=5] [--steps=3]
    python benchmarks/recipe_cost.py --config=configs/regnety_4gf.py --compile_only --conv_impl=xla --accumulation=loop \\
        --layouts=512:64:8,512:64:2,512:64:1,64:64:1,32:32:1,2:2:1   # per-device memory estimates at 224 px

Each layout ``BATCH:GROUP:ACCUM`` is the trainer's step (``regnet_jax.training.steps.make_train_step``) at global
batch BATCH with ``bn_group_size=GROUP`` and ``grad_accum_steps=ACCUM`` (``64:0:1`` is the plain step: BatchNorm
statistics over the whole batch, across the devices). The timed steps alternate between the layouts round by round, so
a changing machine load affects them alike; the median ms/step per layout is printed. The memory column is XLA's
memory analysis of the compiled step per device (arguments + outputs - aliased + temporaries): an estimate of peak
memory that exists on every backend, also where the allocator reports nothing (XLA:CPU). It reflects the backend that
compiled it (fusion, convolution lowering differ between CPU, GPU and TPU), so treat CPU figures as estimates for
accelerators. ``--accumulation=loop`` is what GPUs and TPUs run ('auto' unrolls the micro-batches on CPU, which saves
time there but no memory).
"""

from __future__ import annotations

import os
import statistics
import sys

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from regnet_jax.benchmarking import timing
from regnet_jax.config import ConfigError
from regnet_jax.core import distributed
from regnet_jax.models import create_model, layers
from regnet_jax.training import steps as train_steps
from regnet_jax.training.optimizer import make_optimizer

config_flags.DEFINE_config_file("config", None, "A training config, e.g. configs/regnety_400mf.py.", lock_config=False)
flags.DEFINE_list("layouts", ["64:0:1", "64:16:1", "64:16:4"], "BATCH:GROUP:ACCUM, comma-separated.")
flags.DEFINE_integer("resolution", 0, "Image size (0: the config's).")
flags.DEFINE_integer("devices", 1, "Local devices (data parallel over the first N).")
flags.DEFINE_integer("cpu_devices", 0, "XLA:CPU only: split the host into this many devices.")
flags.DEFINE_integer("rounds", 5, "Rounds; each times --steps steps of every layout.")
flags.DEFINE_integer("steps", 3, "Timed steps per layout and round (after one untimed step).")
flags.DEFINE_bool("compile_only", False, "Only compile: print the memory estimates.")
flags.DEFINE_enum(
    "conv_impl", None, list(layers.CONV_IMPLS), "Convolution lowering (default: REGNET_JAX_CONV_IMPL or auto)."
)
flags.DEFINE_enum(
    "accumulation",
    "auto",
    list(train_steps.ACCUMULATION_LOOPS),
    "Micro-batches in a loop, unrolled, or auto (unrolled on CPU).",
)
FLAGS = flags.FLAGS


def parse_layout(text: str) -> tuple[int, int, int]:
    """'BATCH:GROUP:ACCUM' -> (batch, bn_group_size, grad_accum_steps)."""
    try:
        batch, group, accum = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"--layouts entry {text!r} is invalid: write BATCH:GROUP:ACCUM, e.g. 64:16:4") from None
    return batch, group, accum


def memory_estimate(compiled) -> int:
    """Bytes per device from XLA's memory analysis of a compiled step."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes


def prepare(config, mesh, resolution: int, batch: int, group: int, accum: int, accumulation: str = "auto"):
    """The compiled trainer step for one layout, its arguments and its memory estimate."""
    model = create_model(config, bn_axis_name=distributed.AXIS)
    shape = (resolution, resolution, 3)
    params = jax.eval_shape(lambda: train_steps.init_variables(model, jax.random.key(0), shape))["params"]
    tx = make_optimizer(config, 1000, params)
    state = train_steps.create_train_state(model, tx, jax.random.key(0), shape, mesh)
    rng = np.random.default_rng(0)
    data = {
        "image": rng.standard_normal((batch, *shape), dtype=np.float32),
        "label": rng.integers(0, config.model.num_classes, (batch,), dtype=np.int32),
    }
    data = distributed.shard_batch(data, mesh)
    step = train_steps.make_train_step(
        model,
        tx,
        mesh,
        num_classes=config.model.num_classes,
        bn_group_size=group,
        grad_accum_steps=accum,
        accumulation=accumulation,
    )
    compiled = step.lower(state, data).compile()
    return compiled, [state, data], memory_estimate(compiled)


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.cpu_devices:
        jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
    if FLAGS.conv_impl:
        layers.set_conv_impl(FLAGS.conv_impl)
    if FLAGS.config is None:
        raise ConfigError("give --config=configs/<model>.py")
    config = FLAGS.config
    resolution = FLAGS.resolution or config.resolution
    mesh = distributed.make_mesh(timing.select_devices(FLAGS.devices))
    layouts = [parse_layout(t) for t in FLAGS.layouts]
    print(f"{os.path.basename(sys.argv[0])}: {config.model.type} model at {resolution} px on {mesh.size} {jax.devices()[0].platform} "
          f"device(s), conv {layers.get_conv_impl()}, accumulation {FLAGS.accumulation}; load average {os.getloadavg()[0]:.2f} "
          "at start", flush=True)  # fmt: skip
    prepared = {}
    for layout in layouts:
        prepared[layout] = prepare(config, mesh, resolution, *layout, accumulation=FLAGS.accumulation)
        print(f"  compiled {layout}: {prepared[layout][2] / 2**20:.1f} MiB per device (XLA estimate)", flush=True)
    times: dict[tuple[int, int, int], list[float]] = {layout: [] for layout in layouts}
    if not FLAGS.compile_only:
        for _ in range(FLAGS.rounds):
            for layout, (compiled, args, _) in prepared.items():

                def run():
                    args[0], metrics = compiled(*args)
                    return metrics

                times[layout] += timing.time_steps(run, FLAGS.steps, warmup=1)
    plain = statistics.median(times[layouts[0]]) if times[layouts[0]] else None
    print(
        "| batch | bn_group_size | grad_accum_steps | ms/step (median) | vs first | memory per device (XLA estimate, MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for layout in layouts:
        med = statistics.median(times[layout]) * 1e3 if times[layout] else None
        ms = f"{med:.1f}" if med else "-"
        ratio = f"{med / (plain * 1e3):.2f}x" if med and plain else "-"
        print(f"| {layout[0]} | {layout[1]} | {layout[2]} | {ms} | {ratio} | {prepared[layout][2] / 2**20:.1f} |")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    from regnet_jax.core.cli import run as run_cli

    run_cli(main)
