"""Training and inference speed on synthetic data: images/s, ms/step, compile time, FLOP rate, peak memory.

    python -m regnet_jax.benchmark --config=configs/regnety_400mf.py --mode=train --batch=32
    python -m regnet_jax.benchmark --config=configs/regnety_4gf.py --mode=infer --batch=256 --dtype=bfloat16 --json
    python -m regnet_jax.benchmark --config=configs/regnety_4gf.py --mode=train --compile_only
    python -m regnet_jax.benchmark --zoo --mode=infer --batch=8 --steps=3 --resolution=128 --out=zoo_bench

Warm-up steps are excluded; the step time is the median over ``--steps`` timed steps, each ended by a device sync.
The batch is global and split over the devices (``--devices=0``: all local devices, data parallel; N: the first N).
Train mode times the trainer's step (``regnet_jax.parallel``: shard_map, synchronised BN, the recipe's SGD) when
available, else a local jitted SGD step. GFLOPs are analytic multiply-adds from ``regnet_jax.complexity`` (a train
step counts 3x the forward); TFLOP/s counts 2 FLOPs per multiply-add.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from regnet_jax import complexity, smoke
from regnet_jax.config import ConfigError, recipe_options
from regnet_jax.models import conv, create_model

MODES = ("train", "infer")
DTYPES = ("float32", "bfloat16")
STEP_IMPLS = ("auto", "parallel", "local")
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


def time_steps(run: Callable[[], Any], steps: int, warmup: int, progress: Callable[[str], None] | None = None) -> list[float]:
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


def _mesh(devices: list[jax.Device]):
    from jax.sharding import Mesh

    return Mesh(np.asarray(devices), ("batch",))


def _put(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    from jax.sharding import NamedSharding, PartitionSpec as P

    return {k: jax.device_put(v, NamedSharding(mesh, P(mesh.axis_names[0]))) for k, v in batch.items()}


def _infer_step(config: ml_collections.ConfigDict, dtype: str, mesh, data: dict[str, jax.Array]) -> tuple[Callable, tuple]:
    """A jitted shard_map forward pass (eval mode), and its arguments."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    model = create_model(config, dtype=dtype)
    shape = data["image"].shape[1:]
    variables = jax.jit(
        lambda rng: model.init(rng, jnp.zeros((1, *shape), jnp.float32), train=False),
        out_shardings=NamedSharding(mesh, P()),
    )(jax.random.PRNGKey(0))
    axis = mesh.axis_names[0]
    # shard_map rather than sharding propagation: plain jit partitioning of a grouped convolution gathers the whole
    # batch on every device (openxla/xla#48086).
    forward = jax.shard_map(lambda v, x: model.apply(v, x, train=False), mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(axis))
    return jax.jit(forward), (variables, data["image"])


def _parallel_train_step(config: ml_collections.ConfigDict, dtype: str, mesh, data: dict[str, jax.Array]) -> tuple[Callable, tuple]:
    """The trainer's step (regnet_jax.parallel + regnet_jax.optim): synchronised BN, the recipe's SGD."""
    from regnet_jax import optim, parallel

    model = create_model(config, bn_axis_name=mesh.axis_names[0], dtype=dtype)
    shape = data["image"].shape[1:]
    params = jax.eval_shape(lambda: parallel.init_variables(model, jax.random.PRNGKey(0), shape))["params"]
    tx = optim.make_optimizer(config, 1000, params)
    state = parallel.create_train_state(model, tx, jax.random.PRNGKey(0), shape, mesh)
    recipe = recipe_options(config)
    accum, group = recipe["grad_accum_steps"], recipe["bn_group_size"]
    group = min(group, data["image"].shape[0] // accum)  # a --batch below one statistics group: one group
    step = parallel.make_train_step(model, tx, mesh, num_classes=config.model.num_classes, bn_group_size=group, grad_accum_steps=accum)
    return step, (state, data)


def _local_train_step(config: ml_collections.ConfigDict, dtype: str, mesh, data: dict[str, jax.Array]) -> tuple[Callable, tuple]:
    """A self-contained SGD (momentum 0.9, Nesterov) step under shard_map with per-device BN statistics."""
    import optax
    from jax.sharding import NamedSharding, PartitionSpec as P

    axis = mesh.axis_names[0]
    model = create_model(config, dtype=dtype)
    shape = data["image"].shape[1:]
    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)

    def init(rng):
        v = model.init(rng, jnp.zeros((1, *shape), jnp.float32), train=False)
        return v["params"], v["batch_stats"], tx.init(v["params"])

    state = jax.jit(init, out_shardings=NamedSharding(mesh, P()))(jax.random.PRNGKey(0))
    global_batch = data["image"].shape[0]

    def per_device(state, batch):
        params, batch_stats, opt_state = state

        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": batch_stats}, batch["image"], train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).sum() / global_batch, upd["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        # Per-device BN statistics are averaged so that the replicated state stays replicated.
        new_stats = jax.lax.pmean(new_stats, axis)
        return (optax.apply_updates(params, updates), new_stats, opt_state), jax.lax.psum(loss, axis)

    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()))
    return jax.jit(mapped, donate_argnums=0), (state, data)


def resolve_step_impl(step_impl: str) -> str:
    """'parallel' if regnet_jax.parallel (the trainer's step) is importable, else 'local', for 'auto'."""
    if step_impl not in STEP_IMPLS:
        raise ConfigError(f"--step={step_impl!r} is invalid: must be one of {STEP_IMPLS}")
    if step_impl != "auto":
        return step_impl
    try:
        from regnet_jax import parallel

        return "parallel" if hasattr(parallel, "make_train_step") else "local"
    except ImportError:
        return "local"


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
) -> PreparedStep:
    """Build, compile (timed) and wrap one train or inference step of ``config``'s model on a synthetic batch."""
    if mode not in MODES:
        raise ConfigError(f"--mode={mode!r} is invalid: must be one of {MODES}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype={dtype!r} is invalid: must be one of {DTYPES}")
    devices = select_devices(num_devices)
    if batch < len(devices) or batch % len(devices):
        raise ConfigError(
            f"--batch={batch} is invalid: it must be a positive multiple of the {len(devices)} device(s) (or use --devices=1)"
        )
    resolution = resolution or int(config.get("resolution", 224))
    mesh = _mesh(devices)
    data = _put(_synthetic_batch(batch, resolution, config.model.num_classes), mesh)
    step_impl = resolve_step_impl(step_impl) if mode == "train" else "forward"
    make = {"parallel": _parallel_train_step, "local": _local_train_step, "forward": _infer_step}[step_impl]
    step, args = make(config, dtype, mesh, data)
    t = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t
    if mode == "train":
        state = [args[0]]

        def run():
            state[0], metrics = compiled(state[0], args[1])
            return metrics

    else:

        def run():
            return compiled(*args)

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
    prep = prepare(config, mode=mode, batch=batch, dtype=dtype, resolution=resolution, num_devices=num_devices, step_impl=step_impl)
    if progress:
        progress(f"{name}: compiled the {mode} step in {prep.compile_s:.1f} s")
    times = [] if compile_only else time_steps(prep.run, steps, warmup, progress)
    return make_result(config, name, mode, dtype, batch, prep, times)


def make_result(
    config: ml_collections.ConfigDict, name: str, mode: str, dtype: str, batch: int, prep: PreparedStep, times: list[float]
) -> Result:
    """The ``Result`` of ``times`` (seconds per step; empty if only compiled) for a prepared step."""
    cx = complexity.count(config.model, prep.resolution)
    gflops = cx["flops"] * (TRAIN_FLOPS_FACTOR if mode == "train" else 1) / 1e9
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
        params=cx["params"],
        acts=cx["acts"],
        steps=len(times),
        load_average=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    )


# ---------------------------------------------------------------- zoo


def zoo_names(selection: str = "") -> list[str]:
    """The 24 RegNetX/Y zoo models, or the comma-separated ``selection`` (any zoo names, checked)."""
    from regnet_jax import zoo

    if not selection:
        return [n for n in zoo.ZOO if n.startswith("regnet")]
    names = [n.strip() for n in selection.split(",") if n.strip()]
    unknown = [n for n in names if n not in zoo.ZOO]
    if unknown:
        raise ConfigError(f"--zoo_models: unknown model(s) {unknown}; choose from {list(zoo.ZOO)}")
    return names


def run_zoo(names: list[str], progress: Callable[[str], None] = print, **kwargs: Any) -> list[Result]:
    """``benchmark`` for each zoo model, printing a line (and an ETA) per model."""
    from regnet_jax import zoo

    results: list[Result] = []
    start = time.perf_counter()
    for i, name in enumerate(names):
        config = zoo.get_config(name)
        r = benchmark(smoke.shrink_config(config) if smoke.active() else config, name=name, **kwargs)
        results.append(r)
        eta = (time.perf_counter() - start) / (i + 1) * (len(names) - i - 1)
        progress(
            f"[{i + 1}/{len(names)}] {name}: {r.ms_per_image:.2f} ms/image, {r.images_per_s:.1f} images/s, compile {r.compile_s:.1f} s (ETA {eta:.0f} s)"
        )
    return results


def pearson_r(x: list[float], y: list[float]) -> float:
    """Pearson correlation coefficient (nan for fewer than 2 points or a constant series)."""
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def zoo_table(results: list[Result]) -> str:
    """A markdown table: model, GFLOPs (forward MACs), Macts, Mparams, ms/image, images/s, compile s."""
    lines = [
        "| model | GFLOPs | Macts | Mparams | ms/image | images/s | compile s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        fwd = r.gflops_per_image / (TRAIN_FLOPS_FACTOR if r.mode == "train" else 1)
        lines.append(
            f"| {r.model} | {fwd:.3f} | {r.acts / 1e6:.3f} | {r.params / 1e6:.3f} | {r.ms_per_image:.3f} | {r.images_per_s:.1f} | {r.compile_s:.1f} |"
        )
    return "\n".join(lines)


def write_zoo_outputs(results: list[Result], out_dir: str) -> dict[str, str]:
    """Write results.json, results.csv, table.md and the Fig. 12-style plot zoo_time.png into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    rows = [dataclasses.asdict(r) for r in results]
    paths = {
        k: os.path.join(out_dir, f)
        for k, f in (("json", "results.json"), ("csv", "results.csv"), ("table", "table.md"), ("plot", "zoo_time.png"))
    }
    with open(paths["json"], "w") as f:
        json.dump(rows, f, indent=1)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    r0 = results[0]
    title = f"{r0.mode} {r0.dtype}, batch {r0.batch} @ {r0.resolution}px, {r0.devices} x {r0.device_kind}"
    with open(paths["table"], "w") as f:
        f.write(f"{title}\n\n{zoo_table(results)}\n")
    fwd_gflops = [r.gflops_per_image / (TRAIN_FLOPS_FACTOR if r.mode == "train" else 1) for r in results]
    acts = [r.acts / 1e6 for r in results]
    ms = [r.ms_per_image for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, xs, label in ((axes[0], fwd_gflops, "flops (B multiply-adds)"), (axes[1], acts, "activations (M)")):
        for family, marker in (("regnetx", "o"), ("regnety", "s"), ("res", "^")):
            pts = [(x, y) for x, y, r in zip(xs, ms, results) if r.model.startswith(family)]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, label=family)
        if len(xs) >= 2:
            fit = np.polyfit(xs, ms, 1)
            grid = np.linspace(min(xs), max(xs), 50)
            ax.plot(grid, np.polyval(fit, grid), "k--", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("time per image (ms)")
        ax.set_title(f"r = {pearson_r(xs, ms):.3f}")
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=100)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------- CLI


def _print(msg: str) -> None:
    print(msg, file=sys.stderr if _FLAGS.json else sys.stdout, flush=True)


def main(argv: list[str]) -> None:
    del argv
    flags = _FLAGS
    if flags.cpu_devices:
        jax.config.update("jax_num_cpu_devices", flags.cpu_devices)
    if flags.conv_impl:
        conv.set_conv_impl(flags.conv_impl)
    kwargs = dict(
        mode=flags.mode,
        batch=flags.batch,
        dtype=flags.dtype,
        steps=flags.steps,
        warmup=flags.warmup,
        resolution=flags.resolution,
        num_devices=flags.devices,
        step_impl=flags.step,
        compile_only=flags.compile_only,
    )
    names = zoo_names(flags.zoo_models) if flags.zoo else []
    if smoke.active():
        kwargs.update(smoke.BENCHMARK)
        names = names[: smoke.BENCHMARK_ZOO_MODELS]
        smoke.announce(f"benchmark: {smoke.BENCHMARK}, at most {smoke.BENCHMARK_ZOO_MODELS} zoo models")
    if flags.zoo:
        results = run_zoo(names, progress=_print, **kwargs)
        paths = write_zoo_outputs(results, flags.out)
        if flags.json:
            print(json.dumps([dataclasses.asdict(r) for r in results]))
            return
        print(zoo_table(results))
        ms = [r.ms_per_image for r in results]
        print(
            f"time/image vs flops r = {pearson_r([r.gflops_per_image for r in results], ms):.3f}, vs acts r = {pearson_r([r.acts for r in results], ms):.3f}"
        )
        print("wrote " + ", ".join(paths.values()))
        return
    if flags.config is None:
        raise ConfigError("give --config=configs/<model>.py (or --zoo for all zoo models)")
    name = os.path.splitext(os.path.basename(config_path(flags).split(":")[0]))[0]
    result = benchmark(flags.config, name=name, progress=_print, **kwargs)
    print(json.dumps(dataclasses.asdict(result)) if flags.json else result.summary())


if __name__ == "__main__":
    from absl import flags
    from regnet_jax.cli import config_path, define_config_flag, run

    define_config_flag("config", "A config file, e.g. configs/regnety_400mf.py.", lock=False)
    flags.DEFINE_enum("mode", "train", list(MODES), "Time a training step or an inference forward pass.")
    flags.DEFINE_integer("batch", 32, "Global batch, split over the devices.")
    flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Compute dtype (parameters stay float32).")
    flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
    flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
    flags.DEFINE_integer("resolution", 0, "Image size (0: the config's resolution, 224 for the zoo).")
    flags.DEFINE_integer("devices", 0, "Local devices to use: 0 = all (data parallel), N = the first N.")
    flags.DEFINE_integer("cpu_devices", 0, "XLA:CPU only: split the host into this many devices (e.g. one per core) for data parallelism.")
    flags.DEFINE_enum("step", "auto", list(STEP_IMPLS), "Train step: the trainer's (parallel), a local SGD step, or auto.")
    flags.DEFINE_enum("conv_impl", None, list(conv.CONV_IMPLS), "Convolution lowering (default: REGNET_JAX_CONV_IMPL or auto).")
    flags.DEFINE_bool("compile_only", False, "Only compile the step and report the compile time.")
    flags.DEFINE_bool("json", False, "Print one JSON object (a list with --zoo) on stdout; progress goes to stderr.")
    flags.DEFINE_bool("zoo", False, "Benchmark the 24 RegNet zoo models and write a table and a time-vs-flops/acts plot.")
    flags.DEFINE_string("zoo_models", "", "With --zoo: a comma-separated subset of zoo names.")
    flags.DEFINE_string("out", "zoo_benchmark", "With --zoo: the output directory.")
    _FLAGS = flags.FLAGS
    run(main)
