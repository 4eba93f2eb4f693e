"""Precise BatchNorm statistics, pycls's ``BN.USE_PRECISE_STATS`` (``config.precise_bn``).

After every epoch, before evaluating, the BN running statistics are replaced by statistics recomputed with the
current weights on ``config.precise_bn_images`` training images (default 8,192, pycls's ``BN.NUM_SAMPLES_PRECISE``):
``num_batches = floor(images / batch_size)`` global batches (at least one, at most an epoch), each run in train mode
with the training's statistics groups; the new mean is the mean of the groups' batch means and the new variance the
mean of their unbiased batch variances (pycls: "mean(mean(batch)) and mean(var(batch))", averaged over its GPUs).
They do not depend on the old running statistics. With an EMA the EMA weights get their own recomputed statistics.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from regnet_jax.training.steps import TrainState


def num_batches(num_images: int, global_batch: int, steps_per_epoch: int) -> int:
    """Global batches used for ``num_images`` images: pycls's floor division, but at least 1 and at most an epoch."""
    return max(1, min(num_images // global_batch, steps_per_epoch))


def recompute_batch_stats(
    stats_step: Callable, variables: dict[str, Any], batches: Iterable[dict[str, Any]], count: int
) -> Any:
    """The mean of ``stats_step(variables, batch)`` (``steps.make_bn_stats_step``) over the first ``count`` batches."""
    total, seen = None, 0
    for batch in itertools.islice(batches, count):
        stats = stats_step(variables, batch)
        total = stats if total is None else jax.tree_util.tree_map(jnp.add, total, stats)
        seen += 1
    if not seen:
        raise ValueError("precise BN got no training batches")
    return jax.tree_util.tree_map(lambda t: t / seen, total)


def apply_precise_bn(
    state: TrainState, stats_step: Callable, batches: Callable[[], Iterator[dict[str, Any]]], count: int
) -> TrainState:
    """``state`` with its BN running statistics (and its EMA's, if any) recomputed on ``count`` batches of
    ``batches()`` (called once per set of weights: the same images for both)."""
    state = state.replace(batch_stats=recompute_batch_stats(stats_step, state.variables(), batches(), count))
    if state.ema:
        ema_stats = recompute_batch_stats(stats_step, state.variables(ema=True), batches(), count)
        state = state.replace(ema={**state.ema, "batch_stats": ema_stats})
    return state
