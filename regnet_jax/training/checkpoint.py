"""Training checkpoints: an orbax ``CheckpointManager`` under ``WORKDIR/checkpoints`` holding the full train state
(step, params, optimizer, BN stats, EMA) plus a JSON ``meta`` item (epoch, data position, wall time).

* Saves are asynchronous and atomic (orbax writes a temporary directory and renames it when complete), so a process
  killed mid-save leaves the previous checkpoints intact.
* Kept: the last ``keep`` checkpoints plus the best one by evaluation top-1 error.
* ``restore_latest`` tries the newest checkpoint first; one that cannot be read is reported, moved aside to
  ``<step>.corrupt-<time>`` (never deleted) and the previous one is used.
* The workdir may be local or ``gs://`` (``regnet_jax.paths``). Every process takes part in saves and restores
  (orbax writes each array once); a full disk or an unwritable location stops the run with a ``StorageError`` naming
  the directory and the space needed, before the save when the free space is known to be short (local disks).

Starting points for fine-tuning and evaluation: ``load_pretrained(path)`` reads a weights directory
(``regnet_jax.weights``) or a training workdir into a ``Pretrained`` (variables, model config, input conventions);
``merge_pretrained`` puts them into a new model's variables, re-initialising the head if the class count differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from regnet_jax import paths
from regnet_jax.config import ConfigError

log = logging.getLogger(__name__)


class CheckpointError(ConfigError):
    """No readable checkpoint where one was expected; the message says what was found and what to do."""


def checkpoint_dir(workdir: paths.PathLike) -> paths.Path:
    return paths.join(workdir, "checkpoints")


# What a checkpoint needs beyond the size of its arrays (or of the previous checkpoint): orbax's metadata files and
# the JSON meta item, and some slack (checkpoints of one run differ a little in size).
_METADATA_BYTES = 256 << 10
_SLACK = 1.1


class Checkpointer:
    """Save and restore the train state of a workdir (see the module docstring)."""

    def __init__(self, workdir: paths.PathLike, keep: int = 3, *, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        self._bytes_per_save = 0
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(n=keep),
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda m: -m["top1_err"], n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, cleanup_tmp_directories=True, read_only=read_only, create=not read_only
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Start saving ``state`` at ``step`` (returns once the arrays are copied off the devices).

        Raises StorageError, before writing anything, when the local directory is not writable or has less free space
        than a checkpoint takes, and when this save or the previous (asynchronous) one failed for lack of space or
        permission.
        """
        if step in self.manager.all_steps():
            return
        needed = self._bytes_needed(state)
        try:  # before orbax starts: its background threads outlive a failed save by minutes
            paths.check_writable(self.directory, needed)
        except paths.StorageError as e:
            raise paths.StorageError(f"cannot save the checkpoint of step {step}: {e}{self._kept()}") from None
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        with self._storage_errors(needed):
            self.manager.save(step, args=args, metrics=metrics)

    def _bytes_needed(self, state: Any) -> int:
        """What one checkpoint takes: a saved one's size on a local disk (measured once), else the arrays' size."""
        if not self._bytes_per_save:
            steps = self.steps()
            on_disk = paths.tree_bytes(self.directory / str(steps[-1])) if steps else 0
            if on_disk:
                self._bytes_per_save = int(_SLACK * on_disk)
                return self._bytes_per_save
            return int(_SLACK * (sum(int(getattr(x, "nbytes", 0)) for x in jax.tree_util.tree_leaves(state)) + _METADATA_BYTES))
        return self._bytes_per_save

    def _kept(self) -> str:
        with contextlib.suppress(Exception):  # reporting an error: never replace it by another one
            self.manager.wait_until_finished()  # the saves before the failed one complete
        with contextlib.suppress(Exception):
            self.manager.reload()  # only the checkpoints complete on disk, not the one that failed
        steps = self.steps()
        return f" (the checkpoints up to step {steps[-1]} are intact: it resumes from there)" if steps else ""

    @contextlib.contextmanager
    def _storage_errors(self, needed: int = 0) -> Iterator[None]:
        """A save that failed for lack of space or permission: StorageError naming the directory and what is kept."""
        try:
            yield
        except Exception as e:
            err = paths.storage_error(self.directory, e, needed)
            if err is None:
                raise
            raise paths.StorageError(f"{err}{self._kept()}") from e

    def _restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        out = self.manager.restore(step, args=args)
        return out["state"], dict(out["meta"])

    def _check_signature(self, step: int, target: Any) -> None:
        """A readable checkpoint of a different model/optimizer is a user error, not corruption: say so."""
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception:  # unreadable meta: let the full restore report it as corrupt
            return
        saved, wanted = meta.get("signature"), state_signature(target)
        if saved and saved != wanted:
            raise CheckpointError(
                f"the checkpoints in {self.directory} hold a different train state (model, optimizer or EMA setting) "
                f"than this config builds (signature {saved} vs {wanted}): use a new --workdir, or the config it was trained with"
            )

    def restore_latest(self, target: Any, *, move_corrupt: bool = True) -> tuple[Any, dict[str, Any]] | None:
        """(state, meta) of the newest readable checkpoint, shaped and sharded like ``target``; None if there is none.

        An unreadable checkpoint is reported and skipped; with ``move_corrupt`` it is also renamed out of the way
        (``<step>.corrupt-<time>``) so that training can save that step again. Nothing is deleted.
        """
        steps = self.steps()
        for i, step in enumerate(reversed(steps)):
            self._check_signature(step, target)
            try:
                return self._restore(step, target)
            except Exception as e:  # orbax raises many types for truncated, missing or garbled files
                path = self.directory / str(step)
                moved = f"{path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}" if move_corrupt else path
                log.error(
                    "checkpoint %s cannot be read (%s: %s); %s; %s",
                    path, type(e).__name__, str(e)[:300], f"moved it to {moved}" if move_corrupt else "skipping it",
                    "using the previous one" if i + 1 < len(steps) else "no other checkpoint is left",
                )  # fmt: skip
                if move_corrupt:
                    if jax.process_index() == 0:
                        paths.rename(path, moved)
                    _sync(f"moved_corrupt_{step}")
                    self.manager.reload()
        if steps:
            raise CheckpointError(
                f"none of the checkpoints {steps} in {self.directory} could be read"
                + (" (each was moved aside as <step>.corrupt-*); run again to start from scratch" if move_corrupt else "")
            )
        return None

    def metrics(self, step: int) -> dict[str, float] | None:
        return self.manager.metrics(step)

    def wait(self) -> None:
        """Wait for the running save; raises StorageError if it failed for lack of space or permission."""
        with self._storage_errors():
            self.manager.wait_until_finished()

    def close(self) -> None:
        with self._storage_errors():
            self.manager.close()


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def state_signature(tree: Any) -> str:
    """A short hash of a pytree's paths, shapes and dtypes: two states restore into each other iff they match."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    desc = sorted(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}:{x.dtype}" for p, x in leaves)
    return hashlib.sha1("\n".join(desc).encode()).hexdigest()[:16]


def host(x: Any) -> np.ndarray:
    """A replicated (possibly multi-process) array as numpy, from this process's first shard."""
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


@dataclasses.dataclass
class Pretrained:
    """Variables to start from, with the model config they belong to and the input conventions they expect."""

    variables: dict[str, Any]
    model: dict[str, Any]
    input: dict[str, Any]
    source: str


def read_workdir_config(workdir: paths.PathLike) -> ml_collections.ConfigDict:
    path = paths.join(workdir, "config.json")
    try:
        return ml_collections.ConfigDict(paths.read_json(path))
    except FileNotFoundError:
        raise CheckpointError(f"{workdir} is not a training workdir (no config.json) nor a weights directory (no meta.json)") from None


def abstract_train_state(config: ml_collections.ConfigDict, mesh: Any) -> Any:
    """ShapeDtypeStructs (replicated on ``mesh``) of the train state that ``config`` trains: a restore target."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from regnet_jax import optim, parallel
    from regnet_jax.models import create_model

    model = create_model(config)
    shape = (config.resolution, config.resolution, 3)
    variables = jax.eval_shape(lambda: parallel.init_variables(model, jax.random.key(0), shape))
    tx = optim.make_optimizer(config, 1, variables["params"])
    state = jax.eval_shape(lambda v: parallel.state_from_variables(v, tx, config.optim.ema_decay > 0), variables)
    sharding = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), state)


def load_pretrained(path: paths.PathLike, *, ema: bool = False) -> Pretrained:
    """Variables from a weights directory (``regnet_jax.weights``) or from the newest good checkpoint of a workdir
    (local or ``gs://``)."""
    from regnet_jax import parallel, weights

    path = paths.resolve(path)
    if weights.is_weights_dir(path):
        if ema:
            raise CheckpointError(f"{path} is a weights directory (one set of weights, no EMA copy): drop --ema")
        variables, meta = weights.load_weights(path)
        return Pretrained(variables, dict(meta["model"]), dict(meta["input"]), f"weights {path}")
    config = read_workdir_config(path)
    if ema and config.optim.ema_decay <= 0:
        raise CheckpointError(f"{path} was trained without EMA (config.optim.ema_decay=0): drop --ema")
    ckpt = Checkpointer(path, read_only=True)
    try:
        restored = ckpt.restore_latest(abstract_train_state(config, parallel.make_mesh()), move_corrupt=False)
    finally:
        ckpt.close()
    if restored is None:
        raise CheckpointError(f"training workdir {path} has no checkpoint yet in {checkpoint_dir(path)}")
    state, meta = restored
    variables = jax.tree_util.tree_map(host, state.variables(ema))
    d = config.dataset
    conventions = weights.input_spec(d.channel_order, tuple(d.mean), tuple(d.std), config.resolution, d.eval_crop_fraction)
    return Pretrained(variables, config.model.to_dict(), conventions, f"workdir {path} step {meta['step']}")



def _spec_without_classes(model: Any):
    from regnet_jax.models import model_spec

    spec = model_spec(dict(model))
    return dataclasses.replace(spec, num_classes=0), spec.num_classes


def merge_pretrained(fresh: dict[str, Any], pre: Pretrained, model: Any) -> tuple[dict[str, Any], bool]:
    """``fresh`` (a new model's variables) with every array replaced by ``pre``'s; the head keeps its fresh
    initialisation when the number of classes differs. Returns (variables, head_reinitialised).

    Raises CheckpointError naming the fields or keys on any other difference (architecture, missing or extra keys,
    shapes).
    """
    from flax import traverse_util

    want, want_classes = _spec_without_classes(model)
    have, have_classes = _spec_without_classes(pre.model)
    if want != have:
        diffs = [f"{f.name}: {getattr(have, f.name)} (pretrained) vs {getattr(want, f.name)} (config)" for f in dataclasses.fields(want) if getattr(want, f.name) != getattr(have, f.name)]
        raise CheckpointError(f"{pre.source} is a different architecture than config.model: " + "; ".join(diffs))
    reinit_head = want_classes != have_classes
    merged = {}
    for coll in ("params", "batch_stats"):
        flat_new = traverse_util.flatten_dict(fresh.get(coll, {}))
        flat_pre = traverse_util.flatten_dict(pre.variables.get(coll, {}))
        keep = {k for k in flat_new if reinit_head and k[0] == "head"}
        missing = sorted("/".join(k) for k in flat_new.keys() - flat_pre.keys() - keep)
        extra = sorted("/".join(k) for k in flat_pre.keys() - flat_new.keys() if not (reinit_head and k[0] == "head"))
        if missing or extra:
            raise CheckpointError(f"{pre.source}: {coll} keys missing: {missing[:10]}; unexpected: {extra[:10]}")
        out = {}
        for k, v in flat_new.items():
            if k in keep:
                out[k] = v
                continue
            p = np.asarray(flat_pre[k])
            if p.shape != tuple(v.shape):
                raise CheckpointError(f"{pre.source}: {coll} {'/'.join(k)} has shape {p.shape}, the model needs {tuple(v.shape)}")
            out[k] = p.astype(v.dtype)
        merged[coll] = traverse_util.unflatten_dict(out)
    return merged, reinit_head
