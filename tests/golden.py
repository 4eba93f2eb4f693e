"""The golden pycls cases in tests/data: seeded weights and inputs (numpy only), and loading a case.

Shared by the generator (``tests/data/make_golden.py``, which runs pycls under PyTorch) and the tests (which run
regnet_jax): both draw the same weights and inputs from the same seeds, so only pycls's outputs and the calibrated
BatchNorm running statistics are stored. Nothing here imports JAX or PyTorch.
"""

from __future__ import annotations

import json
import pathlib
import zlib
from typing import Any

import numpy as np

DATA = pathlib.Path(__file__).resolve().parent / "data"
# The narrow train-mode cases (tests/data/README.md): pycls built each from its own config.
CASES = ("regnety", "regnetx", "resnet_bottleneck", "basic", "vanilla")


def seeded_tensor(key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The float32 value of state-dict entry ``key`` (PyTorch layout and shape) for ``seed``.

    Each key has its own generator, so the value does not depend on which other keys exist. Convs follow pycls's
    init (N(0, 2 / fan_out)); linear layers N(0, 1 / fan_in), so logits are O(1); BatchNorm scales U(0.5, 1.5) and
    biases N(0, 0.1^2), so that a wrong affine mapping cannot pass.
    """
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    if len(shape) == 4:
        x = rng.standard_normal(shape) * np.sqrt(2.0 / (shape[0] * shape[2] * shape[3]))
    elif len(shape) == 2:
        x = rng.standard_normal(shape) / np.sqrt(shape[1])
    elif key.endswith(".weight"):
        x = rng.uniform(0.5, 1.5, shape)
    else:
        x = 0.1 * rng.standard_normal(shape)
    return x.astype(np.float32)


def seeded_inputs(seed: int, n: int, resolution: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, labels)``: ``n`` standard-normal NCHW float32 images and int64 labels in ``[0, num_classes)``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, resolution, resolution)).astype(np.float32)
    return x, rng.integers(0, num_classes, n)


def is_running_stat(key: str) -> bool:
    """Whether a state-dict key is a BatchNorm running statistic (stored in the data, not drawn)."""
    return key.endswith((".running_mean", ".running_var"))


def parameters(meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The seeded trainable parameters of a case (pycls names, PyTorch shapes)."""
    seed = meta["seeds"]["weights"]
    return {k: seeded_tensor(k, tuple(s), seed) for k, s in meta["state_dict"].items() if not is_running_stat(k)}


def load(name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of the case ``name``: ``tests/data/NAME.json`` and the arrays of ``NAME.npz``."""
    meta = json.loads((DATA / f"{name}.json").read_text())
    with np.load(DATA / f"{name}.npz") as f:
        arrays = {k: f[k] for k in f.files}
    return meta, arrays


def state_dict(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The full pycls state dict the outputs were computed with: seeded parameters + calibrated running statistics."""
    return {**parameters(meta), **{k[len("stats/") :]: v for k, v in arrays.items() if k.startswith("stats/")}}


def train_inputs(meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The train-mode (and eval-mode) batch of a case, NCHW, and its labels."""
    return seeded_inputs(meta["seeds"]["inputs"], meta["batch"], meta["resolution"], meta["model"]["num_classes"])
