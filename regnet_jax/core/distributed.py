"""Many devices and processes: start-up, the mesh, moving data onto it and back, the collectives between processes,
and how a global batch is split over devices, micro-batches and BatchNorm groups.

    maybe_initialize_distributed(enabled=None, coordinator_address='', num_processes=0, process_id=-1,
                                 heartbeat_timeout_s=100) -> bool    # jax.distributed on a detected cluster launch
    make_mesh(devices=None, axis_name='batch') -> Mesh           # all devices of all processes, one named axis
    group_mesh(mesh, devices_per_group) -> Mesh                  # the train step's 2-D view (GROUPS, AXIS)
    shard_batch(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]   # process-local rows -> global
    replicate(tree, mesh) -> tree of replicated global arrays      # host values identical on every process
    to_host(x) -> np.ndarray                                       # a replicated array back on the host
    process_sum(n), broadcast_from_process_0(n), sync_processes(name), preemption_service_on(),
    reached_preemption_sync_point(step)
    watch_progress(timeout_s); report_progress()                   # a stalled multi-process run ends with one line
    batch_layout(global_batch, num_devices, grad_accum_steps, bn_group_size) -> BatchLayout
    divide_batch(batch, parts, error) -> batch // parts            # the one "batch divisible by devices" check

The collectives are no-ops in a single process; in several, every process must call them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from regnet_jax.core.errors import ConfigError

AXIS = "batch"  # the model's BN axis: the devices of one statistics group (all devices on a 1-D mesh)
GROUPS = "groups"  # the train step's outer axis: one entry per group of devices
DATA_AXES = (GROUPS, AXIS)
HEARTBEAT_TIMEOUT_S = 100  # jax.distributed's default
STALL_TIMEOUT_S = 1800  # multi-process: no finished step for this long ends the run (compiles and evaluations included)
EXIT_STALLED = 4


def cluster_detected() -> bool:
    """A multi-process launch that ``jax.distributed.initialize()`` can configure itself: ``JAX_COORDINATOR_ADDRESS``
    is set, or one of JAX's own cluster environments (``jax._src.clusters``, what ``initialize()`` auto-detects) is
    present with more than one process: SLURM, Open MPI, or a Cloud TPU slice, found through ``TPU_WORKER_HOSTNAMES``
    (GKE) or, on a TPU VM reached with ``gcloud ... ssh --worker=all``, the TPU metadata server (its worker list).
    Kubernetes is left to ``--distributed`` (JAX's check needs the cluster API and warns in every plain pod)."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    from jax._src import clusters  # private, but exactly the detection jax.distributed.initialize() performs

    for env in (
        clusters.OmpiCluster,
        clusters.SlurmCluster,
        clusters.GceTpuCluster,
        clusters.GkeTpuCluster,
    ):  # JAX's order
        try:
            if env.is_env_present():
                return env.get_process_count() > 1
        except Exception as e:  # e.g. the TPU metadata server did not answer: never guess on a possible pod slice
            raise ConfigError(
                f"could not tell whether this is a multi-process launch ({env.__name__}: {type(e).__name__}: {e}); "
                "pass --distributed (with --coordinator_address/--num_processes/--process_id if needed) or "
                "--nodistributed for a single process"
            ) from None
    return False


def maybe_initialize_distributed(
    enabled: bool | None = None,
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
) -> bool:
    """Call ``jax.distributed.initialize`` if asked (``enabled=True``) or, with ``enabled=None``, if a cluster launch
    is detected. Empty/zero/negative arguments are left to JAX's auto-detection. Returns whether it initialised.

    A process that stops sending heartbeats for ``heartbeat_timeout_s`` is taken for dead by JAX's coordination
    service, which then ends every other process (so a dead host never leaves the others hanging)."""
    if enabled is False or (enabled is None and not cluster_detected()):
        return False
    kwargs: dict[str, Any] = {"heartbeat_timeout_seconds": heartbeat_timeout_s}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes:
        kwargs["num_processes"] = num_processes
    if process_id >= 0:
        kwargs["process_id"] = process_id
    jax.distributed.initialize(**kwargs)
    if jax.process_count() > 1 and jax.default_backend() == "cpu" and jax.config.jax_enable_compilation_cache:
        # jaxlib 0.12.1 tags XLA:CPU's Gloo collectives with the executable's launch id, which derives from its
        # fingerprint; an executable loaded from the persistent compilation cache has another fingerprint than a fresh
        # compile, and on CPU only process 0 ever hits the cache (jax/_src/compiler.py writes it from process 0 only and
        # the key holds each process's topology), so the tags differ and the first all-reduce waits forever
        # (docs/hardware.md#multi-process-runs-and-the-compilation-cache). Every process compiles afresh instead.
        jax.config.update("jax_enable_compilation_cache", False)
        logging.info("multi-process CPU run: JAX's persistent compilation cache is off (a cached and a fresh executable "
                     "cannot share Gloo collectives)")  # fmt: skip
    return True


def make_mesh(devices: list[jax.Device] | None = None, axis_name: str = AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes, in id order)."""
    devices = sorted(devices or jax.devices(), key=lambda d: d.id)
    return Mesh(np.asarray(devices), (axis_name,))


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble global arrays from each process's rows (process p's rows follow process p-1's in the global batch)."""
    sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host values (the same on every process) as arrays replicated on every device of ``mesh``."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, tree)


def group_mesh(mesh: Mesh, devices_per_group: int) -> Mesh:
    """``mesh``'s devices, in order, as a 2-D mesh (GROUPS, AXIS) whose inner axis holds one BN group's devices.

    A batch sharded over ``mesh``'s axis is sharded the same way over ``P((GROUPS, AXIS))`` here (row blocks stay on
    their devices), so the train step can use this view without moving data.
    """
    devices = np.asarray(mesh.devices).reshape(-1)
    if devices.size % devices_per_group:
        raise ValueError(f"{devices_per_group} devices per BatchNorm group do not divide the {devices.size} devices")
    return Mesh(devices.reshape(-1, devices_per_group), (GROUPS, AXIS))


def to_host(x: Any) -> np.ndarray:
    """A replicated (possibly multi-process) array as numpy, from this process's first shard."""
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def process_sum(n: int) -> int:
    """The sum of ``n`` over all processes (every process must call it)."""
    if jax.process_count() == 1:
        return n
    from jax.experimental import multihost_utils

    return int(multihost_utils.process_allgather(np.int64(n)).sum())


def broadcast_from_process_0(n: int) -> int:
    """Process 0's ``n`` on every process (every process must call it)."""
    if jax.process_count() == 1:
        return n
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(n)))


def sync_processes(name: str) -> None:
    """Wait until every process reaches the barrier ``name``."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def preemption_service_on() -> bool:
    """Whether JAX's preemption service watches this process: ``jax.distributed`` is initialised and
    ``jax_enable_preemption_service`` is on (JAX's default). Its handler of SIGTERM (a preemption notice, on any one
    process) makes every process see ``reached_preemption_sync_point`` true at one step they agree on."""
    return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


def reached_preemption_sync_point(step: int) -> bool:
    """Whether a preemption notice reached any process and every process stops at ``step``; every process must ask
    at every step (False without JAX's preemption service)."""
    if not preemption_service_on():
        return False
    from jax.experimental import multihost_utils

    return multihost_utils.reached_preemption_sync_point(step)


class _StallWatch:
    """Ends this process with one line when ``report_progress`` has not been called for ``timeout_s`` seconds."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.last = time.monotonic()
        threading.Thread(target=self._watch, name="regnet_jax-stall-watch", daemon=True).start()

    def _watch(self) -> None:
        while True:
            idle = time.monotonic() - self.last
            if idle >= self.timeout_s:
                print(
                    f"error: process {jax.process_index()} of {jax.process_count()}: no training step finished in "
                    f"{idle:.0f}s (--stall_timeout_s={self.timeout_s:g}): the processes' collectives are stuck or a peer "
                    "stopped answering; ending the run. Rerun the same command on every host to resume from the last "
                    "checkpoint (raise --stall_timeout_s if compiling or evaluating takes longer)",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
                os._exit(EXIT_STALLED)
            time.sleep(min(10.0, self.timeout_s - idle))


_stall_watch: _StallWatch | None = None


def watch_progress(timeout_s: float) -> None:
    """In a multi-process run, end this process (exit status ``EXIT_STALLED``, one line) if no step finishes within
    ``timeout_s`` seconds of this call or of the last ``report_progress``: a stuck collective otherwise hangs every
    process silently. No-op in one process or with ``timeout_s <= 0``."""
    global _stall_watch
    if jax.process_count() > 1 and timeout_s > 0 and _stall_watch is None:
        _stall_watch = _StallWatch(timeout_s)


def report_progress() -> None:
    """A step (or an evaluation) finished on this process: restart the ``watch_progress`` clock."""
    if _stall_watch is not None:
        _stall_watch.last = time.monotonic()


def divide_batch(batch: int, parts: int, error: str) -> int:
    """``batch // parts``; ``ConfigError(error)`` unless ``batch`` is a positive multiple of ``parts`` (devices,
    processes, devices x micro-batches). ``error`` names the setting and the fix."""
    if batch < parts or batch % parts:
        raise ConfigError(error)
    return batch // parts


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's global batch is split over devices, micro-batches and BatchNorm groups.

    Every device runs ``micro_steps`` micro-batches of ``micro_batch`` images one after another; BatchNorm computes
    statistics over groups of ``group_size`` images: ``groups_per_device`` slices of each device's micro-batch, or
    (``devices_per_group`` > 1) the micro-batches of that many devices together.
    """

    global_batch: int
    num_devices: int
    micro_steps: int
    group_size: int

    @property
    def micro_batch(self) -> int:
        return self.global_batch // (self.num_devices * self.micro_steps)

    @property
    def groups_per_device(self) -> int:
        return max(1, self.micro_batch // self.group_size)

    @property
    def devices_per_group(self) -> int:
        return max(1, self.group_size // self.micro_batch)

    @property
    def num_groups(self) -> int:
        """Statistics groups per optimizer step (over all devices and micro-batches)."""
        return self.global_batch // self.group_size


def batch_layout(global_batch: int, num_devices: int, grad_accum_steps: int = 1, bn_group_size: int = 0) -> BatchLayout:
    """The ``BatchLayout`` of ``config.batch_size`` / ``grad_accum_steps`` / ``bn_group_size`` on ``num_devices``
    devices, or a ConfigError naming the field and the values that would work."""
    b, d, k, g = global_batch, num_devices, grad_accum_steps, bn_group_size
    across = f"the {d} devices" + (f" x config.grad_accum_steps={k} micro-batches" if k > 1 else "")
    divide_batch(b, d * k, f"config.batch_size={b} is not divisible by {across}: use a multiple of {d * k}")
    micro = b // k  # images per micro-step over all devices
    if not g:
        if k > 1:
            raise ConfigError(
                f"config.bn_group_size=0 (BatchNorm over the whole global batch) cannot be combined with "
                f"config.grad_accum_steps={k}: micro-batches run one after another. Set config.bn_group_size to the "
                f"images per statistics group, at most {micro} (e.g. {micro}, or 128 as pycls's 8-GPU recipe)"
            )
        g = b
    if micro % g:
        raise ConfigError(
            f"config.bn_group_size={g} does not divide the {micro} images of a micro-batch (config.batch_size={b} / "
            f"config.grad_accum_steps={k}): use a divisor of {micro}, or 0 for the whole batch"
        )
    per_device = micro // d
    if per_device % g and g % per_device:
        fits = [n for n in range(1, micro + 1) if micro % n == 0 and (per_device % n == 0 or n % per_device == 0)]
        raise ConfigError(
            f"config.bn_group_size={g} cannot be formed from the {d} devices' micro-batches of {per_device} images: a "
            f"group must be a slice of one device's micro-batch or several whole ones. Possible sizes here: {fits}; "
            "or change config.batch_size / config.grad_accum_steps / the device count"
        )
    return BatchLayout(b, d, k, g)
