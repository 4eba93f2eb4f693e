"""Data parallelism with pmap semantics, written as ``jax.jit(jax.shard_map(...))`` over a 1-D mesh of all devices.

Public API (usable outside the trainer, e.g. by benchmarks)::

    maybe_initialize_distributed(enabled=None, coordinator_address='', num_processes=0, process_id=-1,
                                 heartbeat_timeout_s=100) -> bool
    make_mesh(devices=None, axis_name='batch') -> Mesh           # all devices of all processes, one named axis
    shard_batch(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]   # process-local rows -> global
    replicate(tree, mesh) -> tree of replicated global arrays      # host values identical on every process
    create_train_state(model, tx, rng, image_shape, mesh, ema=False) -> TrainState  # initialised replicated
    make_train_step(model, tx, mesh, *, num_classes, label_smoothing=0.0, ema_decay=0.0, bn_train=True)
        -> step(state, batch) -> (state, metrics)   # state donated; metrics: loss, correct, count, finite (loss and params)
    make_eval_step(model, mesh, *, num_classes) -> step(variables, batch) -> {loss, top1, top5, count} (sums)

``model`` must be built with ``create_model(config, bn_axis_name=AXIS)`` so that BatchNorm averages its batch
statistics over the devices (synchronised BN). The state is replicated (``P()``), batches are sharded on their
leading axis (``P(AXIS)``).

Gradients: inside ``shard_map`` (``check_vma=True``) the params are invariant over the axis while the per-device loss
varies, so ``jax.grad`` already sums the per-device gradients over the axis. The per-device loss is therefore the
local sum divided by the *global* batch, giving the global-mean gradient with no further ``pmean`` (a ``pmean`` on top
would be a second reduction: N times too large). tests/test_parallel.py checks 8 devices against 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from regnet_jax.config import ConfigError
from regnet_jax.optim import cross_entropy

AXIS = "batch"
HEARTBEAT_TIMEOUT_S = 100  # jax.distributed's default


def _cluster_detected() -> bool:
    """A multi-process launch that ``jax.distributed.initialize()`` can configure itself: ``JAX_COORDINATOR_ADDRESS``
    is set, or one of JAX's own cluster environments (``jax._src.clusters``, what ``initialize()`` auto-detects) is
    present with more than one process: SLURM, Open MPI, or a Cloud TPU slice, found through ``TPU_WORKER_HOSTNAMES``
    (GKE) or, on a TPU VM reached with ``gcloud ... ssh --worker=all``, the TPU metadata server (its worker list).
    Kubernetes is left to ``--distributed`` (JAX's check needs the cluster API and warns in every plain pod)."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    from jax._src import clusters  # private, but exactly the detection jax.distributed.initialize() performs

    for env in (clusters.OmpiCluster, clusters.SlurmCluster, clusters.GceTpuCluster, clusters.GkeTpuCluster):  # JAX's order
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
    enabled: bool | None = None, coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
) -> bool:
    """Call ``jax.distributed.initialize`` if asked (``enabled=True``) or, with ``enabled=None``, if a cluster launch
    is detected. Empty/zero/negative arguments are left to JAX's auto-detection. Returns whether it initialised.

    A process that stops sending heartbeats for ``heartbeat_timeout_s`` is taken for dead by JAX's coordination
    service, which then ends every other process (so a dead host never leaves the others hanging)."""
    if enabled is False or (enabled is None and not _cluster_detected()):
        return False
    kwargs: dict[str, Any] = {"heartbeat_timeout_seconds": heartbeat_timeout_s}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes:
        kwargs["num_processes"] = num_processes
    if process_id >= 0:
        kwargs["process_id"] = process_id
    jax.distributed.initialize(**kwargs)
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


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; ``ema`` is ``{}`` or ``{'params', 'batch_stats'}``."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema: Any

    def variables(self, ema: bool = False) -> dict[str, Any]:
        src = self.ema if ema else {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": src["params"], "batch_stats": src["batch_stats"]}


def init_variables(model, rng: jax.Array, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Model variables for NHWC images of ``image_shape`` (no mapped axis needed: BN does not sync at init)."""
    variables = model.clone(bn_axis_name=None).init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def state_from_variables(variables: dict[str, Any], tx: optax.GradientTransformation, ema: bool) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
        ema=jax.tree_util.tree_map(jnp.copy, dict(variables)) if ema else {},
    )


def create_train_state(
    model, tx: optax.GradientTransformation, rng: jax.Array, image_shape: tuple[int, int, int], mesh: Mesh, ema: bool = False
) -> TrainState:
    """A freshly initialised state, computed directly into replicated arrays on ``mesh``."""

    def init(rng):
        return state_from_variables(init_variables(model, rng, image_shape), tx, ema)

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))(rng)


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    ema_decay: float = 0.0,
    bn_train: bool = True,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted, sharded SGD step; ``bn_train=False`` keeps BN in inference mode (linear probe of a frozen trunk)."""
    axis = mesh.axis_names[0]

    def per_device(state: TrainState, batch: dict[str, jax.Array]):
        images, labels = batch["image"], batch["label"]
        global_batch = images.shape[0] * jax.lax.axis_size(axis)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            if bn_train:
                logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
                batch_stats = updates["batch_stats"]
            else:
                logits, batch_stats = model.apply(variables, images, train=False), state.batch_stats
            loss = cross_entropy(logits, labels, num_classes, label_smoothing).sum() / global_batch
            return loss, (logits, batch_stats)

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema_decay:
            new = {"params": params, "batch_stats": batch_stats}
            ema = jax.tree_util.tree_map(lambda e, x: ema_decay * e + (1.0 - ema_decay) * x, ema, new)
        loss = jax.lax.psum(loss, axis)
        correct = jax.lax.psum(jnp.sum(jnp.argmax(logits, -1) == labels), axis)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, ema=ema)
        # Finite loss *and* finite updated parameters: the loss only reveals a diverged update one step later, and a
        # checkpoint of this step must never hold NaN/inf weights.
        finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)]))
        metrics = {"loss": loss, "correct": correct, "count": jnp.asarray(global_batch, jnp.int32), "finite": finite}
        return new_state, metrics

    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()))
    return jax.jit(mapped, donate_argnums=0)


def make_eval_step(model, mesh: Mesh, *, num_classes: int) -> Callable[[dict[str, Any], dict[str, jax.Array]], dict[str, jax.Array]]:
    """Jitted, sharded evaluation of one padded batch: sums of loss, top-1/top-5 hits and real examples (``mask``)."""
    axis = mesh.axis_names[0]
    k = min(5, num_classes)

    def per_device(variables, batch):
        logits = model.apply(variables, batch["image"], train=False)
        labels, mask = batch["label"], batch["mask"]
        top = jax.lax.top_k(logits, k)[1]
        sums = {
            "loss": jnp.sum(cross_entropy(logits, labels, num_classes) * mask),
            "top1": jnp.sum((top[:, 0] == labels) * mask),
            "top5": jnp.sum(jnp.any(top == labels[:, None], axis=-1) * mask),
            "count": jnp.sum(mask),
        }
        return jax.lax.psum(sums, axis)

    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P()))
