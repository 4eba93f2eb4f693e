"""Checkpoints: corrupt ones are reported, moved aside (never deleted) and the previous one is used; a checkpoint of
another model is a clear error; fine-tuning merges pretrained weights with a re-initialised head."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax.models import create_model
from regnet_jax.training import checkpoint
from regnet_jax.training import steps as train_steps
from regnet_jax.training.checkpoint import Checkpointer, CheckpointError
from regnet_jax.weights.pretrained import Pretrained, merge_pretrained
from tests.helpers_train import TINY_MODEL


def _state(scale):
    return {"w": jnp.full((4, 3), scale, jnp.float32), "b": jnp.arange(3.0) * scale}


def _save_steps(workdir, steps):
    ckpt = Checkpointer(str(workdir), keep=10)
    for s in steps:
        state = _state(float(s))
        ckpt.save(s, state, {"step": s, "signature": checkpoint.state_signature(state)})
    ckpt.wait()
    ckpt.close()


def _corrupt(step_dir):
    """Garble every data file of a saved state (as a torn copy or a bad disk would)."""
    for root, _, files in os.walk(step_dir / "state"):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "r+b") as fh:
                size = os.path.getsize(path)
                fh.write(b"\x00garbage" * max(1, size // 8))


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    _save_steps(tmp_path, [1, 2, 3])
    _corrupt(tmp_path / "checkpoints" / "3")
    ckpt = Checkpointer(str(tmp_path), keep=10)
    with caplog.at_level(logging.ERROR):
        state, meta = ckpt.restore_latest(_state(0.0))
    ckpt.close()
    assert meta["step"] == 2
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 2.0))
    assert any("checkpoints/3 cannot be read" in r.getMessage() for r in caplog.records)
    moved = [p for p in os.listdir(tmp_path / "checkpoints") if p.startswith("3.corrupt-")]
    assert len(moved) == 1  # kept for inspection, not deleted
    assert Checkpointer(str(tmp_path), keep=10).steps() == [1, 2]


def test_all_checkpoints_corrupt_is_an_error(tmp_path):
    _save_steps(tmp_path, [1])
    _corrupt(tmp_path / "checkpoints" / "1")
    ckpt = Checkpointer(str(tmp_path))
    with pytest.raises(CheckpointError, match="could be read"):
        ckpt.restore_latest(_state(0.0))
    ckpt.close()


def test_checkpoint_of_another_model_is_not_treated_as_corrupt(tmp_path):
    _save_steps(tmp_path, [1])
    ckpt = Checkpointer(str(tmp_path))
    with pytest.raises(CheckpointError, match="different train state"):
        ckpt.restore_latest({"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)})
    ckpt.close()
    assert os.path.isdir(tmp_path / "checkpoints" / "1")


def test_keeps_last_n_plus_best(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2)
    errs = {1: 50.0, 2: 10.0, 3: 30.0, 4: None, 5: 40.0}
    for s, err in errs.items():
        ckpt.save(s, _state(float(s)), {"step": s}, {"top1_err": err} if err is not None else None)
        ckpt.wait()
    assert ckpt.steps() == [2, 4, 5]
    ckpt.close()


def _variables(model_cfg, seed=0):
    """Random arrays with the model's variable shapes (values do not matter here; no compilation needed)."""
    model = create_model(model_cfg)
    shapes = jax.eval_shape(lambda: train_steps.init_variables(model, jax.random.key(0), (16, 16, 3)))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def test_merge_pretrained_reinitialises_only_a_different_head():
    pre_vars = _variables(TINY_MODEL, seed=1)
    pre = Pretrained(pre_vars, dict(TINY_MODEL), {}, "test weights")
    target = dict(TINY_MODEL, num_classes=3)
    fresh = _variables(target, seed=2)
    merged, reinit = merge_pretrained(fresh, pre, target)
    assert reinit
    flat = jax.tree_util.tree_flatten_with_path(merged)[0]
    for path, value in flat:
        key = jax.tree_util.keystr(path)
        source = fresh if "head" in key else pre_vars
        expected = next(v for p, v in jax.tree_util.tree_flatten_with_path(source)[0] if jax.tree_util.keystr(p) == key)
        np.testing.assert_array_equal(value, expected, err_msg=key)
    same, reinit = merge_pretrained(_variables(TINY_MODEL, seed=3), pre, TINY_MODEL)
    assert not reinit
    np.testing.assert_array_equal(same["params"]["head"]["fc"]["kernel"], pre_vars["params"]["head"]["fc"]["kernel"])


def test_merge_pretrained_errors_name_the_problem():
    pre_vars = _variables(TINY_MODEL)
    pre = Pretrained(pre_vars, dict(TINY_MODEL), {}, "test weights")
    wider = dict(TINY_MODEL, widths=[24], group_ws=[24])
    with pytest.raises(CheckpointError, match=r"widths: \(16,\) \(pretrained\) vs \(24,\)"):
        merge_pretrained(_variables(wider), pre, wider)
    broken = jax.tree_util.tree_map(lambda x: x, pre_vars)
    del broken["params"]["stem"]["bn"]
    with pytest.raises(CheckpointError, match="missing: .*stem/bn/bias"):
        merge_pretrained(_variables(TINY_MODEL), Pretrained(broken, dict(TINY_MODEL), {}, "broken"), TINY_MODEL)
    reshaped = jax.tree_util.tree_map(lambda x: x, pre_vars)
    reshaped["params"]["stem"]["conv"]["kernel"] = np.zeros((1, 1, 3, 8), np.float32)
    with pytest.raises(CheckpointError, match=r"stem/conv/kernel has shape \(1, 1, 3, 8\)"):
        merge_pretrained(_variables(TINY_MODEL), Pretrained(reshaped, dict(TINY_MODEL), {}, "reshaped"), TINY_MODEL)
