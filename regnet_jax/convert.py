"""Weight layouts: pycls (PyTorch) state dicts <-> Flax variables of ``create_model(config)``.

Flax module names mirror pycls (``s1/b1/f/a_bn``), so a key maps by renaming and a transpose:
conv OIHW -> HWIO, linear and SE (O, I[, 1, 1]) -> (I, O), BN weight/bias/running_mean/running_var ->
scale/bias/mean/var.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_TORCH_ONLY = ("num_batches_tracked",)


class ConversionError(ValueError):
    """A state dict does not fit the model: the message names the key and what was expected."""


def torch_name(path: tuple[str, ...]) -> str:
    """pycls state-dict key of a Flax variable path (without the collection), e.g. ('s1','b1','f','se','f_ex_0','kernel')."""
    *mods, leaf = path
    mods = [m.replace("f_ex_", "f_ex.") for m in mods]
    return ".".join([*mods, _LEAF_TO_TORCH[leaf]])


def _to_flax(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 4:  # conv: OIHW -> HWIO
        return np.transpose(value, (2, 3, 1, 0))
    if len(shape) == 2:  # linear (O, I) or SE 1x1 conv (O, I, 1, 1) -> (I, O)
        return value.reshape(value.shape[0], -1).T
    return value


def _to_torch(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    if value.ndim == 4:
        return np.transpose(value, (3, 2, 0, 1))
    if value.ndim == 2:
        out = value.T
        return out[:, :, None, None] if any(p.startswith("f_ex_") for p in path) else out
    return value


def variable_shapes(config: Any) -> dict[str, Any]:
    """The Flax variable tree (shapes only) of the model of ``config``."""
    from regnet_jax.models import create_model

    model = create_model(config)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))


def from_pycls(state_dict: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Flax ``{'params', 'batch_stats'}`` for ``create_model(config)`` from a pycls-layout state dict of numpy arrays."""
    template = variable_shapes(config)
    sd = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith(_TORCH_ONLY)}
    used, out = set(), {}
    for col in ("params", "batch_stats"):
        flat = {}
        for path, leaf in traverse_util.flatten_dict(template[col]).items():
            key = torch_name(path)
            if key not in sd:
                raise ConversionError(f"state dict has no key {key!r} (needed for Flax {col}/{'/'.join(path)}); wrong model or layout for this file?")
            value = _to_flax(sd[key], leaf.shape)
            if value.shape != leaf.shape:
                raise ConversionError(f"{key!r} has shape {sd[key].shape}; the model of this config needs {leaf.shape} (Flax layout): wrong model for this file?")
            flat[path] = value.astype(leaf.dtype)
            used.add(key)
        out[col] = traverse_util.unflatten_dict(flat)
    extra = sorted(set(sd) - used)
    if extra:
        raise ConversionError(f"state dict has {len(extra)} keys the model does not use, e.g. {extra[:3]}: wrong model for this file?")
    return out


def to_pycls(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The pycls-layout state dict (numpy) of Flax ``{'params', 'batch_stats'}``."""
    sd = {}
    for col in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(dict(variables[col])).items():
            sd[torch_name(path)] = _to_torch(np.asarray(leaf), path)
    return sd
