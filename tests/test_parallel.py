"""The sharded train/eval steps: 8 devices compute exactly what 1 device computes with the same global batch."""

import jax
import numpy as np
import pytest

from regnet_jax.core import distributed
from regnet_jax.models import create_model
from regnet_jax.training import optimizer
from regnet_jax.training import steps as train_steps
from tests.helpers_train import tiny_config

IMAGE = (16, 16, 3)


def _setup(**overrides):
    config = tiny_config(**overrides)
    model = create_model(config, bn_axis_name=distributed.AXIS)
    shapes = jax.eval_shape(lambda: train_steps.init_variables(model, jax.random.key(0), IMAGE))
    return config, model, optimizer.make_optimizer(config, steps_per_epoch=2, params=shapes["params"])


def _batches(n, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.normal(size=(batch, *IMAGE)).astype(np.float32),
            "label": rng.integers(0, 10, batch).astype(np.int32),
        }
        for _ in range(n)
    ]


def _train(model, tx, devices, batches, **step_kw):
    mesh = distributed.make_mesh(devices)
    state = train_steps.create_train_state(
        model, tx, jax.random.key(0), IMAGE, mesh, ema=bool(step_kw.get("ema_decay"))
    )
    step = train_steps.make_train_step(model, tx, mesh, num_classes=10, **step_kw)
    losses = []
    for b in batches:
        state, m = step(state, distributed.shard_batch(b, mesh))
        losses.append(float(m["loss"]))
        assert int(m["count"]) == len(b["label"])
    return jax.device_get(state), losses


def _assert_trees_close(a, b, rtol=2e-5, atol=1e-6):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
        )


def test_eight_devices_equal_one_device():
    assert jax.device_count() == 8
    _, model, tx = _setup()
    batches = _batches(3)
    one, loss1 = _train(model, tx, jax.devices()[:1], batches, ema_decay=0.9)
    eight, loss8 = _train(model, tx, jax.devices(), batches, ema_decay=0.9)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    _assert_trees_close(eight.params, one.params)
    _assert_trees_close(eight.batch_stats, one.batch_stats)
    _assert_trees_close(eight.ema, one.ema)
    assert len(set(loss1)) == 3  # the steps really changed the parameters (a no-op step would also "match")


def test_unsynchronised_bn_is_rejected():
    """Per-device BN statistics are not replicated: the sharded step refuses to return them as replicated state."""
    _, model, tx = _setup()
    with pytest.raises(ValueError, match="replicated"):
        _train(model.clone(bn_axis_name=None), tx, jax.devices(), _batches(1))


def test_eval_step_masks_padding():
    _, model, tx = _setup()
    mesh = distributed.make_mesh()
    state = train_steps.create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    step = train_steps.make_eval_step(model, mesh, num_classes=10)
    (batch,) = _batches(1)
    full = jax.device_get(
        step(state.variables(), distributed.shard_batch({**batch, "mask": np.ones(16, np.float32)}, mesh))
    )
    mask = (np.arange(16) < 5).astype(np.float32)
    part = jax.device_get(step(state.variables(), distributed.shard_batch({**batch, "mask": mask}, mesh)))
    logits = model.apply(jax.device_get(state.variables()), batch["image"], train=False)
    top1 = np.argmax(logits, -1) == batch["label"]
    assert full["count"] == 16 and part["count"] == 5
    assert full["top1"] == top1.sum() and part["top1"] == top1[:5].sum()
    ce = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), batch["label"][:, None], 1)[:, 0]
    np.testing.assert_allclose(part["loss"], ce[:5].sum(), rtol=1e-5)


@pytest.mark.parametrize("enabled", [False, None])
def test_no_distributed_init_without_cluster(enabled, monkeypatch):
    for var in (
        "SLURM_NTASKS",
        "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES",
        "MEGASCALE_COORDINATOR_ADDRESS",
        "JAX_COORDINATOR_ADDRESS",
    ):
        monkeypatch.delenv(var, raising=False)
    assert distributed.maybe_initialize_distributed(enabled) is False
