"""Training and inference speed on synthetic data: images/s, ms/step, compile time, FLOP rate, peak memory.

    result = benchmark(config, mode="train", batch=32)      # python -m regnet_jax.benchmark
    prep = prepare(config, mode="train", batch=32); times = time_steps(prep.run, steps=10, warmup=2)

Warm-up steps are excluded; the step time is the median over ``steps`` timed steps, each ended by a device sync. The
batch is global and split over the devices (``num_devices=0``: all local devices, data parallel; N: the first N).
Train mode times the trainer's step (``regnet_jax.training.steps``: shard_map, the recipe's SGD) with the config's
``grad_accum_steps`` micro-batches and BatchNorm statistics over groups of its ``bn_group_size`` images (a zoo
config's 100 epochs: its batch / 8, pycls's per-GPU groups; its :25ep/:10ep: 128; 0: the whole batch), capped at one
micro-batch: at a ``batch`` below one group, BatchNorm spans the whole (micro-)batch, across the devices. Infer mode
times a shard_map forward pass. GFLOPs are analytic multiply-adds from ``regnet_jax.models.complexity`` (a train step
counts 3x the forward); TFLOP/s counts 2 FLOPs per multiply-add.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from regnet_jax.config import ConfigError, complete_config
from regnet_jax.core.distributed import divide_batch, make_mesh, shard_batch
from regnet_jax.core.memory import release_free_heap
from regnet_jax.models import conv, create_model
from regnet_jax.models.complexity import count

MODES = ("train", "infer")
DTYPES = ("float32", "bfloat16")
STEP_IMPLS = ("auto", "parallel")  # both: the trainer's step
TRAIN_FLOPS_FACTOR = 3  # forward + backward (data and weight gradients) ~ 3x the forward multiply-adds


@dataclasses.dataclass
class Result:
    """One benchmark run; ``gflops_per_image`` is analytic multiply-adds (x3 for train), ``tflops`` is 2 FLOPs/MAC."""

    model: str
    mode: str
    dtype: str
    batch: int
    resolution: int
    devices: int
    backend: str
    device_kind: str
    conv_impl: str
    step_impl: str
    compile_s: float
    ms_per_step: float | None  # None with compile_only
    ms_per_step_min: float | None
    images_per_s: float | None
    ms_per_image: float | None
    gflops_per_image: float
    tflops: float | None
    peak_memory_bytes: int | None
    params: int
    acts: int
    steps: int
    load_average: float | None

    def summary(self) -> str:
        if self.ms_per_step is None:
            return f"{self.model} {self.mode} {self.dtype} batch {self.batch} @ {self.resolution}px: compile {self.compile_s:.1f} s"
        mem = f", peak memory {self.peak_memory_bytes / 2**30:.2f} GiB" if self.peak_memory_bytes else ""
        return (
            f"{self.model} {self.mode} {self.dtype} batch {self.batch} @ {self.resolution}px on {self.devices} "
            f"{self.backend} device(s) ({self.device_kind}; conv {self.conv_impl}; step {self.step_impl}):\n"
            f"  {self.images_per_s:.1f} images/s, {self.ms_per_step:.1f} ms/step (median of {self.steps}, min "
            f"{self.ms_per_step_min:.1f}), compile {self.compile_s:.1f} s\n"
            f"  {self.gflops_per_image:.3f} GFLOPs/image (multiply-adds{', x3 for train' if self.mode == 'train' else ''}), "
            f"{self.tflops:.3f} TFLOP/s achieved (2 FLOPs per multiply-add){mem}"
        )


def select_devices(num_devices: int) -> list[jax.Device]:
    """The first ``num_devices`` local devices (0 = all)."""
    devices = jax.local_devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ConfigError(
            f"--devices={num_devices} is invalid: this host has {len(devices)} {devices[0].platform} device(s); use 0 for all"
        )
    return devices[: num_devices or len(devices)]


def peak_memory(devices: list[jax.Device]) -> int | None:
    """The largest peak allocation over ``devices``, where the backend reports it (GPU/TPU; not XLA:CPU)."""
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # backends without allocator statistics raise instead of returning None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def time_steps(
    run: Callable[[], Any], steps: int, warmup: int, progress: Callable[[str], None] | None = None
) -> list[float]:
    """Seconds per call of ``run`` (which must return something to block on) after ``warmup`` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(run())
    times: list[float] = []
    start = time.perf_counter()
    for i in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - t)
        if progress and (i + 1) % max(1, steps // 5) == 0 and i + 1 < steps:
            eta = (time.perf_counter() - start) / (i + 1) * (steps - i - 1)
            progress(f"  step {i + 1}/{steps}: {times[-1] * 1e3:.1f} ms, ETA {eta:.0f} s")
    return times


def _synthetic_batch(batch: int, resolution: int, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((batch, resolution, resolution, 3), dtype=np.float32),
        "label": rng.integers(0, num_classes, (batch,), dtype=np.int32),
    }


def _infer_step(
    config: ml_collections.ConfigDict, dtype: str, mesh, data: dict[str, jax.Array]
) -> tuple[Callable, tuple]:
    """A jitted shard_map forward pass (eval mode), and its arguments."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    model = create_model(config, dtype=dtype)
    shape = data["image"].shape[1:]
    variables = jax.jit(
        lambda rng: model.init(rng, jnp.zeros((1, *shape), jnp.float32), train=False),
        out_shardings=NamedSharding(mesh, P()),
    )(jax.random.PRNGKey(0))
    axis = mesh.axis_names[0]
    # shard_map rather than sharding propagation: plain jit partitioning of a grouped convolution gathers the whole
    # batch on every device (openxla/xla#48086).
    forward = jax.shard_map(
        lambda v, x: model.apply(v, x, train=False), mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(axis)
    )
    return jax.jit(forward), (variables, data["image"])


def _parallel_train_step(
    config: ml_collections.ConfigDict, dtype: str, mesh, data: dict[str, jax.Array]
) -> tuple[Callable, tuple]:
    """The trainer's step (regnet_jax.training.steps + optimizer, the recipe's SGD) with ``config.grad_accum_steps``
    micro-batches and BatchNorm statistics over groups of ``config.bn_group_size`` images (0: the whole batch), at most
    one micro-batch: a smaller batch is one group."""
    from regnet_jax.training import steps
    from regnet_jax.training.optimizer import make_optimizer

    model = create_model(config, bn_axis_name=mesh.axis_names[0], dtype=dtype)
    shape = data["image"].shape[1:]
    params = jax.eval_shape(lambda: steps.init_variables(model, jax.random.PRNGKey(0), shape))["params"]
    tx = make_optimizer(config, 1000, params)
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), shape, mesh)
    accum = config.grad_accum_steps
    group = min(
        config.bn_group_size, data["image"].shape[0] // accum
    )  # a --batch below one statistics group: one group
    step = steps.make_train_step(
        model, tx, mesh, num_classes=config.model.num_classes, bn_group_size=group, grad_accum_steps=accum
    )
    return step, (state, data)


def resolve_step_impl(step_impl: str) -> str:
    """The train step ``step_impl`` names: 'parallel' (the trainer's) for 'auto' and 'parallel'."""
    if step_impl not in STEP_IMPLS:
        raise ConfigError(f"--step={step_impl!r} is invalid: must be one of {STEP_IMPLS}")
    return "parallel"


@dataclasses.dataclass
class PreparedStep:
    """A compiled step on a synthetic batch: ``run()`` executes one step and returns something to block on."""

    run: Callable[[], Any]
    compiled: Any  # the jax.stages.Compiled step (its HLO, cost and memory analyses)
    compile_s: float
    devices: list[jax.Device]
    step_impl: str
    resolution: int


def prepare(
    config: ml_collections.ConfigDict,
    *,
    mode: str = "train",
    batch: int = 32,
    dtype: str = "float32",
    resolution: int = 0,
    num_devices: int = 0,
    step_impl: str = "auto",
    on_stage: Callable[[str], Any] | None = None,
) -> PreparedStep:
    """Build, compile (timed) and wrap one train or inference step of ``config``'s model on a synthetic batch.

    The C heap's free memory goes back to the system after the compilation and after the first step (a warm-up
    step: the time of that step includes it). ``on_stage('built')`` is called once the variables, optimizer state
    and batch are on the devices, and ``on_stage('compiled')`` after the compilation (benchmarks/memory_breakdown.py
    measures the memory there)."""
    config = complete_config(config)  # an older config file may lack recipe fields
    if mode not in MODES:
        raise ConfigError(f"--mode={mode!r} is invalid: must be one of {MODES}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype={dtype!r} is invalid: must be one of {DTYPES}")
    devices = select_devices(num_devices)
    n = len(devices)
    divide_batch(
        batch,
        n,
        f"--batch={batch} is invalid: it must be a positive multiple of the {n} device(s) (or use --devices=1)",
    )
    resolution = resolution or int(config.resolution)
    mesh = make_mesh(devices)
    data = shard_batch(_synthetic_batch(batch, resolution, config.model.num_classes), mesh)
    step_impl = resolve_step_impl(step_impl) if mode == "train" else "forward"
    make = {"parallel": _parallel_train_step, "forward": _infer_step}[step_impl]
    step, args = make(config, dtype, mesh, data)
    if on_stage:
        on_stage("built")
    t = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t
    # The compilers' freed memory (the step's and the initialisation's, ~1 GB for a RegNetY-400MF train step on CPU)
    # would otherwise stay resident in the C heap for the process's life, counted in every step's peak memory.
    release_free_heap()
    if on_stage:
        on_stage("compiled")
    first = [True]

    def settle(out):
        # The first step frees memory too (loading the compiled code, its first scratch buffers: up to 0.3 GB): it goes
        # back once that step is done, so that it is not counted in the steady state either (as in the trainer).
        if first[0]:
            first[0] = False
            jax.block_until_ready(out)
            release_free_heap()
        return out

    if mode == "train":
        state = [args[0]]

        def run():
            state[0], metrics = compiled(state[0], args[1])
            return settle(metrics)

    else:

        def run():
            return settle(compiled(*args))

    return PreparedStep(run, compiled, compile_s, devices, step_impl, resolution)


def benchmark(
    config: ml_collections.ConfigDict,
    *,
    mode: str = "train",
    batch: int = 32,
    dtype: str = "float32",
    steps: int = 10,
    warmup: int = 2,
    resolution: int = 0,
    num_devices: int = 0,
    step_impl: str = "auto",
    compile_only: bool = False,
    name: str = "",
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Time ``steps`` train or inference steps of ``config``'s model on a synthetic global batch of ``batch``."""
    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps={steps} / --warmup={warmup} are invalid: need steps >= 1 and warmup >= 0")
    name = name or str(config.model.get("type"))
    prep = prepare(
        config, mode=mode, batch=batch, dtype=dtype, resolution=resolution, num_devices=num_devices, step_impl=step_impl
    )
    if progress:
        progress(f"{name}: compiled the {mode} step in {prep.compile_s:.1f} s")
    times = [] if compile_only else time_steps(prep.run, steps, warmup, progress)
    return make_result(config, name, mode, dtype, batch, prep, times)


def make_result(
    config: ml_collections.ConfigDict,
    name: str,
    mode: str,
    dtype: str,
    batch: int,
    prep: PreparedStep,
    times: list[float],
) -> Result:
    """The ``Result`` of ``times`` (seconds per step; empty if only compiled) for a prepared step."""
    counts = count(config.model, prep.resolution)
    gflops = counts["flops"] * (TRAIN_FLOPS_FACTOR if mode == "train" else 1) / 1e9
    med = statistics.median(times) if times else None
    ips = batch / med if med else None
    return Result(
        model=name,
        mode=mode,
        dtype=dtype,
        batch=batch,
        resolution=prep.resolution,
        devices=len(prep.devices),
        backend=prep.devices[0].platform,
        device_kind=prep.devices[0].device_kind,
        conv_impl=conv.get_conv_impl(),
        step_impl=prep.step_impl,
        compile_s=round(prep.compile_s, 2),
        ms_per_step=med * 1e3 if med else None,
        ms_per_step_min=min(times) * 1e3 if times else None,
        images_per_s=ips,
        ms_per_image=med * 1e3 / batch if med else None,
        gflops_per_image=gflops,
        tflops=2 * gflops * ips / 1e3 if ips else None,
        peak_memory_bytes=peak_memory(prep.devices),
        params=counts["params"],
        acts=counts["acts"],
        steps=len(times),
        load_average=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    )
