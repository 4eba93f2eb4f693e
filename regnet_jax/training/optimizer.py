"""Optimisation as in the pycls recipe (pycls/core/optimizer.py, pycls/core/net.py; docs/fidelity.md#training-recipe): the lr schedule, SGD with weight decay, the loss.

* ``lr_schedule(config, steps_per_epoch)``: cosine decay from ``regnet_jax.config.base_lr(config)`` (the linear
  scaling rule unless pinned) to 0 with linear warmup from ``warmup_factor``; pycls evaluates it at the integer epoch
  index (the lr is set once per epoch); ``optim.lr_per_step`` evaluates it at fractional epochs.
* ``make_optimizer(config, steps_per_epoch, params)``: PyTorch-style SGD (L2 weight decay added to the gradient,
  v = mu * v + g, Nesterov update g + mu * v, p -= lr * update), optionally without decay on BN and bias parameters,
  optionally with everything but the head frozen (linear probe).
* ``cross_entropy(logits, labels, num_classes, label_smoothing)``: soft-target cross-entropy, mean over the batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from regnet_jax.config import base_lr


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the optimizer step (jit-friendly, float32): cosine decay from ``base_lr`` to
    0 over the epochs, with linear warmup over ``warmup_epochs`` from ``warmup_factor`` times it.

    0.5 * (1 + cos(pi * e / E)) is evaluated as sin(pi/2 * (E - e) / E)^2 with E - e from exact integer step
    counts: the plain form loses ~1e-4 relative precision to cancellation in float32 near the end of training.
    """
    o, epochs, lr0 = config.optim, config.num_epochs, base_lr(config)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.int32)
        if o.lr_per_step:
            epoch = step / steps_per_epoch
            remaining = (epochs * steps_per_epoch - step) / steps_per_epoch
        else:
            epoch = (step // steps_per_epoch).astype(jnp.float32)
            remaining = (epochs - step // steps_per_epoch).astype(jnp.float32)
        lr = lr0 * jnp.square(jnp.sin(0.5 * jnp.pi * remaining / epochs))
        if o.warmup_epochs > 0:
            alpha = epoch / o.warmup_epochs
            lr = jnp.where(epoch < o.warmup_epochs, lr * (o.warmup_factor * (1.0 - alpha) + alpha), lr)
        return lr

    return schedule


def lr_at_step(config: ml_collections.ConfigDict, step: int, steps_per_epoch: int) -> float:
    """The lr the optimizer applies at ``step`` (0-based), as a Python float (for logging)."""
    return float(lr_schedule(config, steps_per_epoch)(step))


def is_bn_or_bias(path: tuple[str, ...]) -> bool:
    """pycls's custom-weight-decay groups: BN parameters and biases (matched by name)."""
    return path[-1] == "bias" or "bn" in path[-2]


def _label_tree(params: Any, label: Any) -> Any:
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: label(k) for k in flat})


def make_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int, params: Any
) -> optax.GradientTransformation:
    """SGD with momentum / Nesterov, L2 weight decay and the lr schedule of ``config``; see the module docstring."""
    o = config.optim
    decay_mask = _label_tree(params, lambda k: not (o.wd_exclude_bn_bias and is_bn_or_bias(k)))
    tx = optax.chain(
        optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
        optax.trace(decay=o.momentum, nesterov=o.nesterov),
        optax.scale_by_learning_rate(lr_schedule(config, steps_per_epoch)),
    )
    if config.freeze_trunk:
        labels = _label_tree(params, lambda k: "train" if k[0] == "head" else "frozen")
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example soft-target cross-entropy, -sum(y * log_softmax(logits)), in float32."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
