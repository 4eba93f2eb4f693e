"""Classify images with converted or trained weights: the top-k classes with names and probabilities.

    results = predict(checkpoint, ["cat.jpg"], k=5)     # python -m regnet_jax.predict

``checkpoint`` is a weights directory (``python -m regnet_jax.convert``) or a training workdir (its newest good
checkpoint). Preprocessing is the evaluation transform: resize the shorter side to ``resolution / crop_fraction``,
centre-crop ``resolution``, then the channel order and mean/std the weights expect (pycls weights: BGR). The
resolution and crop fraction are the model's own (a workdir's config, a weights directory's meta.json; 224 and
0.875 for weights that do not record them); ``resolution`` / ``crop_fraction`` override them. Class names: the 1000
ImageNet classes shipped in ``regnet_jax/assets/imagenet_classes.tsv``, or ``labels_file`` (one name per line) for
other heads.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np

from regnet_jax.core import paths
from regnet_jax.core.errors import UserError

IMAGENET_CLASSES = "imagenet_classes.tsv"
DEFAULT_RESOLUTION, DEFAULT_CROP_FRACTION = 224, 224 / 256  # for weights that do not record theirs (ImageNet's)


class PredictError(UserError):
    """Bad images, labels or arguments; the message names the file and the fix."""


def imagenet_classes() -> list[tuple[str, str]]:
    """The 1000 ImageNet-1k classes in label order, as ``(wordnet id, name)`` (torchvision's names)."""
    text = resources.files("regnet_jax").joinpath("assets", IMAGENET_CLASSES).read_text(encoding="utf-8")
    rows = [tuple(line.split("\t", 1)) for line in text.splitlines() if line]
    return [(wnid, name) for wnid, name in rows]


def class_names(num_classes: int, labels_file: str = "") -> list[str]:
    """Names for a head of ``num_classes``: from ``labels_file``, else ImageNet's when there are 1000, else 'class i'."""
    if labels_file:
        try:
            names = [line.strip() for line in paths.read_text(labels_file).splitlines() if line.strip()]
        except OSError as e:
            raise PredictError(f"cannot read --labels file {labels_file} ({e.strerror or e})") from e
        if len(names) != num_classes:
            raise PredictError(
                f"--labels file {labels_file} has {len(names)} names but the model has {num_classes} classes"
            )
        return names
    if num_classes == 1000:
        return [name for _, name in imagenet_classes()]
    return [f"class {i}" for i in range(num_classes)]


def preprocess(path: str, conventions: dict[str, Any], resolution: int, crop_fraction: float) -> np.ndarray:
    """One image file as the network's HxWx3 float32 input (the evaluation transform and the weights' conventions)."""
    import ml_collections
    import tensorflow as tf

    from regnet_jax.data.augment import eval_preprocess

    if not paths.isfile(path):
        raise PredictError(f"image {path} does not exist")
    cfg = ml_collections.ConfigDict(
        dict(eval_crop_fraction=crop_fraction, mean=tuple(conventions["mean"]), std=tuple(conventions["std"]),
             channel_order=conventions["channel_order"], output_dtype="float32")
    )  # fmt: skip
    try:
        return eval_preprocess(tf.constant(paths.read_bytes(path)), cfg, resolution).numpy()
    except tf.errors.OpError as e:
        raise PredictError(
            f"cannot decode {path} as an image (JPEG, PNG, GIF or BMP): {e.message.splitlines()[0]}"
        ) from e


def top_k(probs: np.ndarray, names: list[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one probability vector, best first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": int(i), "name": names[i], "prob": float(probs[i])} for i in order]


def format_results(results: list[dict[str, Any]]) -> str:
    """The human-readable listing: each image, then its classes ranked with percentages."""
    lines = []
    for r in results:
        lines.append(r["image"])
        lines += [
            f"  {rank}. {100 * c['prob']:6.2f}%  {c['name']} ({c['label']})" for rank, c in enumerate(r["top"], 1)
        ]
    return "\n".join(lines)


def predict(
    checkpoint: str,
    images: list[str],
    *,
    k: int = 5,
    resolution: int = 0,
    crop_fraction: float = 0.0,
    labels_file: str = "",
    ema: bool = False,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """``[{"image", "top": [{"label", "name", "prob"}, ...]}]`` for each image, in order; ``resolution`` and
    ``crop_fraction`` 0 = the model's own (see the module docstring)."""
    import jax

    from regnet_jax.models import create_model
    from regnet_jax.weights.pretrained import load_pretrained

    if not images:
        raise PredictError("give one or more image files after the flags")
    if k < 1 or 0 < resolution < 8 or resolution < 0 or not 0 <= crop_fraction <= 1 or batch_size < 1:
        raise PredictError(
            "need --top_k >= 1, --resolution >= 8 (0: the model's), 0 < --crop_fraction <= 1 (0: the model's) and --batch_size >= 1"
        )
    missing = [p for p in images if not paths.isfile(p)]
    if missing:  # before the (slow) loading of the weights
        raise PredictError(f"{len(missing)} of the images do not exist: {', '.join(missing[:3])}")
    pretrained = load_pretrained(checkpoint, ema=ema)
    resolution = resolution or pretrained.input.get("resolution", DEFAULT_RESOLUTION)
    crop_fraction = crop_fraction or pretrained.input.get("crop_fraction", DEFAULT_CROP_FRACTION)
    names = class_names(pretrained.model["num_classes"], labels_file)
    model = create_model(pretrained.model)
    apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False).astype("float32"), axis=-1))
    variables = jax.device_put(pretrained.variables)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = np.stack([preprocess(p, pretrained.input, resolution, crop_fraction) for p in chunk])
        pad = batch_size - len(chunk) if len(images) > batch_size else 0  # one compiled shape for every chunk
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        probs = np.asarray(apply(variables, x))[: len(chunk)]
        out += [{"image": p, "top": top_k(pr, names, min(k, len(names)))} for p, pr in zip(chunk, probs)]
    return out
