"""Training is bitwise repeatable on one machine with the same versions and device count (docs/figures.md): the
same config and seed give the same parameters and BatchNorm statistics, bit for bit, and the same logged losses."""

import jax
import numpy as np

from regnet_jax.train import train_and_evaluate
from regnet_jax.weights.pretrained import load_pretrained
from tests.helpers_train import tiny_config


def test_two_runs_of_one_config_are_bitwise_identical(tmp_path):
    config = tiny_config(num_epochs=1)
    config.dataset.flip = True  # every random augmentation on: crop, flip, lighting
    config.dataset.pca_std = 0.1
    runs = [train_and_evaluate(config, str(tmp_path / name)) for name in ("a", "b")]
    a, b = (load_pretrained(str(tmp_path / name)).variables for name in ("a", "b"))
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert runs[0]["final"] == runs[1]["final"]
    other = tiny_config(num_epochs=1, seed=1)
    other.dataset.flip, other.dataset.pca_std = True, 0.1
    train_and_evaluate(other, str(tmp_path / "c"))
    c = load_pretrained(str(tmp_path / "c")).variables
    assert not all(np.array_equal(x, y) for x, y in zip(leaves_a, jax.tree_util.tree_leaves(c)))  # the seed matters
