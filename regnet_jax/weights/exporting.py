"""Trained or converted weights as one portable file, with the config beside it (``python -m regnet_jax.export``).

    export_variables(variables, model, conventions, "regnety_400mf.safetensors", layout="torchvision")
    weights, meta = read_export("regnety_400mf.safetensors")

Two files are written (neither may exist already):

* ``FILE.safetensors``: the tensors, named ``params/s1/b1/f/a/kernel`` (``--layout=flax``, Flax shapes) or by the
  PyTorch state-dict keys of pycls, torchvision or timm (PyTorch shapes: load it with ``safetensors.torch.load_file``
  into a torchvision/timm model). ``FILE.msgpack`` (Flax layout only): ``flax.serialization.msgpack_serialize`` of
  ``{'params', 'batch_stats'}``.
* ``FILE.json`` beside it (e.g. ``regnety_400mf.safetensors.json``): ``{"format", "layout", "model", "input",
  "source"}``: the ``config.model`` to build and the input conventions (channel order, mean, std, resolution, crop
  fraction). A safetensors file also carries the same JSON in its metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from regnet_jax.core import paths
from regnet_jax.core.errors import UserError
from regnet_jax.weights.formats import read_safetensors, write_safetensors
from regnet_jax.weights.layouts import check_layout_fits, to_layout

FORMAT = "regnet_jax.export/1"
EXPORT_LAYOUTS = ("flax", "pycls", "torchvision", "timm")


class ExportError(UserError):
    """Bad export arguments or an unreadable export (the message says which and what to do)."""


def _flax_flat(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from flax import traverse_util

    tree = {c: variables.get(c, {}) for c in ("params", "batch_stats")}
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _flax_tree(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    from flax import traverse_util

    tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    return {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}


def _sidecar(output: paths.PathLike) -> paths.Path:
    """FILE.safetensors.json / FILE.msgpack.json: distinct for the two formats of one name."""
    output = paths.resolve(output)
    return output.parent / (output.name + ".json")


def _existing_sidecar(path: paths.PathLike) -> paths.Path:
    """The sidecar of an export; exports written before the current naming have NAME.json."""
    legacy = paths.resolve(path).with_suffix(".json")
    return legacy if not paths.isfile(_sidecar(path)) and paths.isfile(legacy) else _sidecar(path)


def export_variables(
    variables: Mapping[str, Any],
    model: Mapping[str, Any],
    conventions: Mapping[str, Any],
    output: str,
    *,
    layout: str = "flax",
    source: str = "",
) -> tuple[str, str]:
    """Write ``variables`` to ``output`` (.safetensors or .msgpack) and the config to its .json; returns both paths."""
    output = paths.resolve(output)
    ext = output.suffix
    if ext not in (".safetensors", ".msgpack"):
        raise ExportError(f"--output must end in .safetensors or .msgpack, got {output}")
    if layout not in EXPORT_LAYOUTS:
        raise ExportError(f"layout {layout!r} is unknown: use one of {EXPORT_LAYOUTS}")
    if ext == ".msgpack" and layout != "flax":
        raise ExportError(
            "msgpack exports hold the Flax variable tree: use --layout=flax, or a .safetensors output for PyTorch layouts"
        )
    if layout != "flax":
        check_layout_fits(model, layout)
    sidecar = _sidecar(output)
    for path in (output, sidecar):
        if path.exists():
            raise ExportError(f"{path} already exists: choose another --output (nothing is overwritten)")
    meta = {"format": FORMAT, "layout": layout, "model": dict(model), "input": dict(conventions), "source": source}
    if ext == ".msgpack":
        from flax import serialization

        paths.write_bytes(output, serialization.msgpack_serialize(_flax_tree(_flax_flat(variables))))
    else:
        tensors = _flax_flat(variables) if layout == "flax" else to_layout(variables, layout)
        write_safetensors(output, tensors, {"regnet_jax": json.dumps(meta)})
    paths.write_json(sidecar, meta)
    return str(output), str(sidecar)


def read_export(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(weights, meta)`` of an export: Flax ``{'params', 'batch_stats'}`` for layout 'flax', else the state dict."""
    sidecar = _existing_sidecar(path)
    if not paths.isfile(path) or not paths.isfile(sidecar):
        raise ExportError(f"an export is two files, {path} and {sidecar}; at least one is missing")
    meta = paths.read_json(sidecar)
    if meta.get("format") != FORMAT:
        raise ExportError(f"{sidecar} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if str(path).endswith(".msgpack"):
        from flax import serialization

        tree = serialization.msgpack_restore(paths.read_bytes(path))
        return {c: tree.get(c, {}) for c in ("params", "batch_stats")}, meta
    tensors, _ = read_safetensors(path)
    return (_flax_tree(tensors) if meta["layout"] == "flax" else tensors), meta
