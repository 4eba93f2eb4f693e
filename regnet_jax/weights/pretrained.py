"""Starting points for fine-tuning, evaluation, prediction and export: the weights of a weights directory or of a
training workdir's newest good checkpoint, with the model config they belong to and the input conventions they expect.

    pretrained = load_pretrained(path)          # a weights directory (weights.files) or a training workdir
    variables, head_reinitialised = merge_pretrained(fresh_variables, pretrained, config.model)

``merge_pretrained`` puts them into a new model's variables, re-initialising the head if the class count differs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from regnet_jax.config import complete_config
from regnet_jax.core import paths
from regnet_jax.core.distributed import make_mesh, to_host
from regnet_jax.models import model_spec
from regnet_jax.training.checkpoint import Checkpointer, CheckpointError, abstract_train_state, checkpoint_dir
from regnet_jax.training.records import CONFIG_FILE
from regnet_jax.weights.files import input_spec, is_weights_dir, load_weights


@dataclasses.dataclass
class Pretrained:
    """Variables to start from, with the model config they belong to and the input conventions they expect."""

    variables: dict[str, Any]
    model: dict[str, Any]
    input: dict[str, Any]
    source: str


def read_workdir_config(workdir: paths.PathLike) -> ml_collections.ConfigDict:
    """The complete config a training workdir's run trains (its config.json; an older run's completed with the values
    it was trained with, ``config.complete_config``)."""
    path = paths.join(workdir, CONFIG_FILE)
    try:
        return complete_config(ml_collections.ConfigDict(paths.read_json(path)))
    except FileNotFoundError:
        raise CheckpointError(
            f"{workdir} is not a training workdir (no config.json) nor a weights directory (no meta.json)"
        ) from None
    except NotADirectoryError:  # a file: e.g. a weights file given where its directory is expected
        raise CheckpointError(
            f"{workdir} is a file, not a training workdir nor a weights directory (python -m regnet_jax.convert makes a "
            "weights directory from a weights file)"
        ) from None


def load_pretrained(path: paths.PathLike, *, ema: bool = False) -> Pretrained:
    """Variables from a weights directory (``weights.files``) or from the newest good checkpoint of a workdir
    (local or ``gs://``)."""
    path = paths.resolve(path)
    if is_weights_dir(path):
        if ema:
            raise CheckpointError(f"{path} is a weights directory (one set of weights, no EMA copy): drop --ema")
        variables, meta = load_weights(path)
        return Pretrained(variables, dict(meta["model"]), dict(meta["input"]), f"weights {path}")
    config = read_workdir_config(path)
    if ema and config.optim.ema_decay <= 0:
        raise CheckpointError(f"{path} was trained without EMA (config.optim.ema_decay=0): drop --ema")
    checkpointer = Checkpointer(path, read_only=True)
    try:
        restored = checkpointer.restore_latest(abstract_train_state(config, make_mesh()), move_corrupt=False)
    finally:
        checkpointer.close()
    if restored is None:
        raise CheckpointError(f"training workdir {path} has no checkpoint yet in {checkpoint_dir(path)}")
    state, meta = restored
    variables = jax.tree_util.tree_map(to_host, state.variables(ema))
    d = config.dataset
    conventions = input_spec(d.channel_order, tuple(d.mean), tuple(d.std), config.resolution, d.eval_crop_fraction)
    return Pretrained(variables, config.model.to_dict(), conventions, f"workdir {path} step {meta['step']}")


def _spec_without_classes(model: Any):
    spec = model_spec(dict(model))
    return dataclasses.replace(spec, num_classes=0), spec.num_classes


def merge_pretrained(fresh: dict[str, Any], pretrained: Pretrained, model: Any) -> tuple[dict[str, Any], bool]:
    """``fresh`` (a new model's variables) with every array replaced by ``pretrained``'s; the head keeps its fresh
    initialisation when the number of classes differs. Returns (variables, head_reinitialised).

    Raises CheckpointError naming the fields or keys on any other difference (architecture, missing or extra keys,
    shapes).
    """
    want, want_classes = _spec_without_classes(model)
    have, have_classes = _spec_without_classes(pretrained.model)
    if want != have:
        diffs = [
            f"{f.name}: {getattr(have, f.name)} (pretrained) vs {getattr(want, f.name)} (config)"
            for f in dataclasses.fields(want)
            if getattr(want, f.name) != getattr(have, f.name)
        ]
        raise CheckpointError(f"{pretrained.source} is a different architecture than config.model: " + "; ".join(diffs))
    reinit_head = want_classes != have_classes
    merged = {}
    for coll in ("params", "batch_stats"):
        flat_new = traverse_util.flatten_dict(fresh.get(coll, {}))
        flat_pre = traverse_util.flatten_dict(pretrained.variables.get(coll, {}))
        keep = {k for k in flat_new if reinit_head and k[0] == "head"}
        missing = sorted("/".join(k) for k in flat_new.keys() - flat_pre.keys() - keep)
        extra = sorted("/".join(k) for k in flat_pre.keys() - flat_new.keys() if not (reinit_head and k[0] == "head"))
        if missing or extra:
            raise CheckpointError(f"{pretrained.source}: {coll} keys missing: {missing[:10]}; unexpected: {extra[:10]}")
        out = {}
        for k, v in flat_new.items():
            if k in keep:
                out[k] = v
                continue
            p = np.asarray(flat_pre[k])
            if p.shape != tuple(v.shape):
                raise CheckpointError(
                    f"{pretrained.source}: {coll} {'/'.join(k)} has shape {p.shape}, the model needs {tuple(v.shape)}"
                )
            out[k] = p.astype(v.dtype)
        merged[coll] = traverse_util.unflatten_dict(out)
    return merged, reinit_head
