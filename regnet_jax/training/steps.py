"""The train, BatchNorm-statistics and evaluation steps: data parallelism with pmap semantics, written as
``jax.jit(jax.shard_map(...))``, with pycls's per-GPU BatchNorm statistics and gradient accumulation on any number of
devices. (The mesh, sharding and the processes are ``regnet_jax.core.distributed``'s.)

Public API (usable outside the trainer, e.g. by benchmarks)::

    create_train_state(model, tx, rng, image_shape, mesh, ema=False) -> TrainState  # initialised replicated
    make_train_step(model, tx, mesh, *, num_classes, label_smoothing=0.0, ema_decay=0.0, bn_train=True,
                    bn_group_size=0, grad_accum_steps=1, accumulation='auto')
        -> step(state, batch) -> (state, metrics)   # state donated; metrics: loss, correct, count, finite (loss and params)
    make_bn_stats_step(model, mesh, *, bn_group_size=0, grad_accum_steps=1) -> step(variables, batch) -> batch_stats
    make_eval_step(model, mesh, *, num_classes) -> step(variables, batch) -> {loss, top1, top5, count} (sums)

``model`` must be built with ``create_model(config, bn_axis_name=AXIS)``: BatchNorm averages its batch statistics
over the mesh axis AXIS. The state is replicated (``P()``), batches are sharded on their leading axis.

BatchNorm statistics groups (``bn_group_size``, ``core.distributed.batch_layout``): each BN layer normalises over groups of
``bn_group_size`` images, whatever the device count (0: one group, the whole global batch). The train step views the
1-D mesh as a 2-D mesh (GROUPS, AXIS) whose inner axis AXIS holds the devices of one group, so BN's ``pmean`` over AXIS
averages within a group only; a group smaller than a device's batch is a slice of it (``vmap`` over the slices).
On a 1-D mesh of 8 devices, 8 groups of one device each is pycls's per-GPU BN; one group of 8 devices is synchronised
BN; a v5e-256 slice at batch 1024 with groups of 128 has 32 devices per group.

Gradient accumulation (``grad_accum_steps`` = k): the batch passed to the step is the whole optimizer step's global
batch; each device splits its rows into k micro-batches (micro-batch i = the i-th slice of every device's rows) and
runs them one after another (``lax.scan``: one micro-batch's activations live at a time; unrolled on XLA:CPU, whose
convolution gradients run ~10x slower inside a loop). This is exactly the math of
k times as many devices: the loss is the sum over all images divided by the global batch, BN normalises per group,
one optimizer update. The groups are formed within a micro-batch; for groups spanning devices, which images share a
group is a fixed permutation of the k-times-more-devices run's (a different, equally random split of a shuffled batch).

Gradients: the parameters are cast to device-varying, each device differentiates its share of the loss (its local
sum divided by the *global* batch, over all its micro-batches), and one ``psum`` over all devices gives the
global-mean gradient, once per optimizer step. (Without the cast, ``jax.grad`` of replicated parameters under
``check_vma=True`` inserts that same sum itself; a ``pmean`` on top would be N times too large.)

BN running statistics: the mean over all groups of the step (all devices and micro-batches) of each group's update
``momentum * running + (1 - momentum) * group statistics``, i.e. the update with the groups' mean statistics. pycls
under DistributedDataParallel keeps rank 0's (its buffers are broadcast from rank 0 at every forward): one group's.
Both have the same expectation; the mean has 1/num_groups of the variance and does not depend on which device is
first or on how the groups are laid out over devices and micro-batches, so 8 devices, 1 device x 8 micro-batches and
2 devices x 4 give the same running statistics. tests/test_parallel.py and tests/test_recipe.py check all of this.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from regnet_jax.core.distributed import DATA_AXES, GROUPS, BatchLayout, batch_layout, group_mesh
from regnet_jax.training.optimizer import cross_entropy


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
    model,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    image_shape: tuple[int, int, int],
    mesh: Mesh,
    ema: bool = False,
) -> TrainState:
    """A freshly initialised state, computed directly into replicated arrays on ``mesh``."""

    def init(rng):
        return state_from_variables(init_variables(model, rng, image_shape), tx, ema)

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))(rng)


def _apply_grouped(model, variables: dict[str, Any], images: jax.Array, layout: BatchLayout) -> tuple[jax.Array, Any]:
    """Train-mode forward of one device's micro-batch in ``layout``'s BN groups: ``groups_per_device`` equal slices,
    or one group shared with the other devices on the mesh axis AXIS.

    Returns the logits and the updated BN running statistics averaged over the slices (the update is linear in the
    batch statistics, so this is the update with the slices' mean statistics). ``vmap`` over the slices keeps every
    layer a single batched op. Groups inside one device need no collective, so BN skips its ``pmean`` (pycls's
    per-GPU BN communicates nothing either).
    """
    groups = layout.groups_per_device
    if layout.devices_per_group == 1:
        model = model.clone(bn_axis_name=None)

    def apply(x):
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]

    if groups == 1:
        return apply(images)
    logits, stats = jax.vmap(apply)(images.reshape(groups, -1, *images.shape[1:]))
    return logits.reshape(-1, logits.shape[-1]), jax.tree_util.tree_map(lambda s: s.mean(0), stats)


def _mean_over_groups(stats_sum: Any, layout: BatchLayout) -> Any:
    """The running statistics of the step: the mean over all its groups of this device's sum over its micro-batches.

    Within a group spanning devices (AXIS) they are already equal (BN averaged there), so only GROUPS is averaged.
    """
    axes = DATA_AXES if layout.devices_per_group == 1 else GROUPS
    return jax.lax.pmean(jax.tree_util.tree_map(lambda s: s / layout.micro_steps, stats_sum), axes)


def _micro_batches(x: jax.Array, steps: int) -> jax.Array:
    """(steps * b, ...) -> (steps, b, ...): micro-batch i is the i-th slice of this device's rows."""
    return x.reshape(steps, x.shape[0] // steps, *x.shape[1:])


ACCUMULATION_LOOPS = ("auto", "loop", "unrolled")


def _unrolled(accumulation: str, mesh: Mesh) -> bool:
    """Whether micro-batches are unrolled: 'auto' unrolls on XLA:CPU, which runs convolution gradients inside a loop
    an order of magnitude slower than outside one (and where memory is rarely the limit); a loop elsewhere."""
    if accumulation not in ACCUMULATION_LOOPS:
        raise ValueError(f"accumulation={accumulation!r} is invalid: must be one of {ACCUMULATION_LOOPS}")
    return accumulation == "unrolled" or (accumulation == "auto" and np.asarray(mesh.devices).flat[0].platform == "cpu")


def _sum_over_micro_steps(fn: Callable, steps: int, *batch: jax.Array, unroll: bool = False) -> Any:
    """``fn(*micro_batch)`` summed over ``steps`` micro-batches, run one after another (``lax.scan``), so only one
    micro-batch's activations are live at a time; ``steps == 1`` calls ``fn`` on the whole batch. ``unroll``: the same
    sum as straight-line code (XLA may then keep every micro-batch's activations live: no memory saving)."""
    if steps == 1:
        return fn(*batch)

    def body(total, micro):
        out = fn(*micro)
        return jax.tree_util.tree_map(jnp.add, total, out), None

    # zeros_like of the abstract outputs keeps their device-variance type, which the scan carry must match.
    zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(fn, *(x[: x.shape[0] // steps] for x in batch)))
    total, _ = jax.lax.scan(body, zeros, tuple(_micro_batches(x, steps) for x in batch), unroll=steps if unroll else 1)
    return total


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    ema_decay: float = 0.0,
    bn_train: bool = True,
    bn_group_size: int = 0,
    grad_accum_steps: int = 1,
    accumulation: str = "auto",
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted, sharded SGD step; ``bn_train=False`` keeps BN in inference mode (linear probe of a frozen trunk).

    ``bn_group_size`` / ``grad_accum_steps`` are ``config.bn_group_size`` / ``config.grad_accum_steps`` (see the
    module docstring); the batch passed in is the whole optimizer step's global batch, sharded over ``mesh``.
    ``accumulation``: how the micro-batches run, 'loop' (one micro-batch's activations at a time), 'unrolled' or
    'auto' (unrolled on CPU, see ``_unrolled``).
    """
    unroll = _unrolled(accumulation, mesh)

    def per_device(layout: BatchLayout, state: TrainState, batch: dict[str, jax.Array]):
        # Gradients of per-device ("varying") parameters are this device's share, summed over the devices once after
        # all micro-batches, instead of once per micro-batch.
        params = jax.lax.pcast(state.params, DATA_AXES, to="varying")

        def micro_step(images, labels):
            def loss_fn(params):
                variables = {"params": params, "batch_stats": state.batch_stats}
                if bn_train:
                    logits, batch_stats = _apply_grouped(model, variables, images, layout)
                else:
                    logits, batch_stats = model.apply(variables, images, train=False), {}
                loss = cross_entropy(logits, labels, num_classes, label_smoothing).sum() / layout.global_batch
                return loss, (logits, batch_stats)

            (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            correct = jnp.sum(jnp.argmax(logits, -1) == labels)
            return grads, batch_stats, loss, correct

        grads, batch_stats, loss, correct = _sum_over_micro_steps(
            micro_step, layout.micro_steps, batch["image"], batch["label"], unroll=unroll
        )
        grads = jax.lax.psum(grads, DATA_AXES)
        batch_stats = _mean_over_groups(batch_stats, layout) if bn_train else state.batch_stats
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema_decay:
            new = {"params": params, "batch_stats": batch_stats}
            ema = jax.tree_util.tree_map(lambda e, x: ema_decay * e + (1.0 - ema_decay) * x, ema, new)
        loss = jax.lax.psum(loss, DATA_AXES)
        correct = jax.lax.psum(correct, DATA_AXES)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, ema=ema
        )
        # Finite loss *and* finite updated parameters: the loss only reveals a diverged update one step later, and a
        # checkpoint of this step must never hold NaN/inf weights.
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)])
        )
        metrics = {
            "loss": loss,
            "correct": correct,
            "count": jnp.asarray(layout.global_batch, jnp.int32),
            "finite": finite,
        }
        return new_state, metrics

    return jax.jit(
        _grouped_shard_map(per_device, mesh, bn_group_size, grad_accum_steps),
        donate_argnums=0,
        out_shardings=NamedSharding(mesh, P()),
    )


def make_bn_stats_step(
    model, mesh: Mesh, *, bn_group_size: int = 0, grad_accum_steps: int = 1
) -> Callable[[dict[str, Any], dict[str, jax.Array]], Any]:
    """``step(variables, batch) -> batch_stats``: every BN layer's batch mean and unbiased batch variance, averaged
    over the batch's statistics groups, grouped exactly as ``make_train_step`` groups them (precise BN)."""
    # BN momentum 0: the "updated running statistics" are the batch statistics themselves (pycls sets momentum 1).
    stats_model = model.clone(bn_momentum=0.0)

    def per_device(layout: BatchLayout, variables: dict[str, Any], batch: dict[str, jax.Array]):
        def micro_step(images):
            return _apply_grouped(stats_model, variables, images, layout)[1]

        stats = _sum_over_micro_steps(micro_step, layout.micro_steps, batch["image"])
        return _mean_over_groups(stats, layout)

    return jax.jit(
        _grouped_shard_map(per_device, mesh, bn_group_size, grad_accum_steps, out_specs=P()),
        out_shardings=NamedSharding(mesh, P()),
    )


def _grouped_shard_map(
    per_device: Callable, mesh: Mesh, bn_group_size: int, grad_accum_steps: int, out_specs=(P(), P())
) -> Callable:
    """``shard_map`` of ``per_device(layout, replicated, batch)`` over the group view of ``mesh``; the layout (and so
    the mesh shape) follows from the global batch, known when the step is traced. Callers jit it with outputs on
    ``mesh`` itself: arrays on the group view would not match the next call's cached executable and recompile it."""

    def step(replicated, batch):
        layout = batch_layout(batch["image"].shape[0], mesh.size, grad_accum_steps, bn_group_size)
        mapped = jax.shard_map(
            functools.partial(per_device, layout), mesh=group_mesh(mesh, layout.devices_per_group),
            in_specs=(P(), P(DATA_AXES)), out_specs=out_specs,
        )  # fmt: skip
        return mapped(replicated, batch)

    return step


def make_eval_step(
    model, mesh: Mesh, *, num_classes: int
) -> Callable[[dict[str, Any], dict[str, jax.Array]], dict[str, jax.Array]]:
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
