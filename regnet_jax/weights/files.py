"""Weights-only checkpoints: Flax variables plus the model config and the input conventions they expect.

Layout of such a directory (what ``convert`` writes and ``train``/``evaluate``/``predict`` load)::

    DIR/meta.json      {"format", "model": config.model, "input": {"channel_order", "mean", "std", "resolution",
                       "crop_fraction"}, "source"}   (weights written before resolution/crop_fraction lack them)
    DIR/variables/     orbax checkpoint of {"params": ..., "batch_stats": ...}

DIR may be local or ``gs://`` (``regnet_jax.core.paths``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from regnet_jax.config import IMAGENET_MEAN, IMAGENET_STD
from regnet_jax.core import paths
from regnet_jax.core.errors import UserError

FORMAT = "regnet_jax.weights/1"


class WeightsError(UserError):
    """A weights directory is missing, incomplete or not in this format."""


def input_spec(
    channel_order: str = "rgb",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    resolution: int = 224,
    crop_fraction: float = 224 / 256,
) -> dict[str, Any]:
    """Input conventions: channel order of the network's input, the RGB mean/std on [0, 1] pixels, and the image
    size the model was trained and evaluated at (evaluation: resize to resolution / crop_fraction, centre-crop)."""
    if channel_order not in ("rgb", "bgr"):
        raise WeightsError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    return {"channel_order": channel_order, "mean": list(map(float, mean)), "std": list(map(float, std)),
            "resolution": int(resolution), "crop_fraction": float(crop_fraction)}  # fmt: skip


def save_weights(
    directory: paths.PathLike,
    variables: Mapping[str, Any],
    model: Mapping[str, Any],
    input_conventions: Mapping[str, Any] | None = None,
    source: str = "",
) -> None:
    """Write ``{'params', 'batch_stats'}`` with the model config and input conventions to ``directory`` (must not exist)."""
    import orbax.checkpoint as ocp

    directory = paths.resolve(directory)
    if directory.exists():
        raise WeightsError(f"{directory} already exists: choose a new output directory (nothing is overwritten)")
    tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    tree = jax.tree_util.tree_map(np.asarray, dict(tree))
    with paths.writing(directory), ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "variables", tree)
    meta = {
        "format": FORMAT,
        "model": dict(model),
        "input": dict(input_conventions or input_spec()),
        "source": source,
    }
    paths.write_json(directory / "meta.json", meta)  # last: a directory without it is not a weights directory


def is_weights_dir(directory: paths.PathLike) -> bool:
    """Whether ``directory`` looks like a weights directory (meta.json and variables/), not a training workdir."""
    return paths.isfile(paths.join(directory, "meta.json")) and paths.isdir(paths.join(directory, "variables"))


def read_meta(directory: paths.PathLike) -> dict[str, Any]:
    """The ``meta.json`` of a weights directory: ``{"format", "model", "input", "source"}``.

    ``read_meta(dir)["model"]`` is the ``config.model`` to fine-tune these weights with.
    """
    directory = paths.resolve(directory)
    if not is_weights_dir(directory):
        raise WeightsError(
            f"{directory} is not a regnet_jax weights directory (expected meta.json and variables/ in it)"
        )
    try:
        meta = paths.read_json(directory / "meta.json")
    except (OSError, ValueError) as e:
        raise WeightsError(f"{directory}/meta.json cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsError(f"{directory}/meta.json is not in format {FORMAT!r}")
    for key in ("model", "input"):
        if not isinstance(meta.get(key), dict):
            raise WeightsError(f"{directory}/meta.json has no {key!r} entry")
    return meta


def load_weights(directory: paths.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(variables, meta)`` from a directory written by ``save_weights``."""
    import orbax.checkpoint as ocp

    directory = paths.resolve(directory)
    meta = read_meta(directory)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(directory / "variables")
    except Exception as e:  # orbax raises many types for truncated or corrupt files
        raise WeightsError(
            f"could not read {directory}/variables ({type(e).__name__}: {e}); the checkpoint is incomplete or corrupt"
        ) from e
    return jax.tree_util.tree_map(np.asarray, tree), meta
