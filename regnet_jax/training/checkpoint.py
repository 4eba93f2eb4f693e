"""Training checkpoints: an orbax ``CheckpointManager`` under ``WORKDIR/checkpoints`` holding the full train state
(step, params, optimizer, BN stats, EMA) plus a JSON ``meta`` item (epoch, data position, wall time).

* Saves are asynchronous and atomic (orbax writes a temporary directory and renames it when complete), so a process
  killed mid-save leaves the previous checkpoints intact.
* Kept: the last ``keep`` checkpoints plus the best one by evaluation top-1 error.
* ``restore_latest`` tries the newest checkpoint first; one that cannot be read is reported, moved aside to
  ``<step>.corrupt-<time>`` (never deleted) and the previous one is used.
* The workdir may be local or ``gs://`` (``regnet_jax.core.paths``). Every process takes part in saves and restores
  (orbax writes each array once); a full disk or an unwritable location stops the run with a ``StorageError`` naming
  the directory and the space needed, before the save when the free space is known to be short (local disks).

``abstract_train_state(config, mesh)`` is the restore target of the state a config trains (how a workdir's weights
are read without training: ``regnet_jax.weights.pretrained``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from regnet_jax.core import paths
from regnet_jax.core.distributed import sync_processes
from regnet_jax.core.errors import ConfigError

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
            return int(
                _SLACK * (sum(int(getattr(x, "nbytes", 0)) for x in jax.tree_util.tree_leaves(state)) + _METADATA_BYTES)
            )
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
                    sync_processes(f"moved_corrupt_{step}")
                    self.manager.reload()
        if steps:
            raise CheckpointError(
                f"none of the checkpoints {steps} in {self.directory} could be read"
                + (
                    " (each was moved aside as <step>.corrupt-*); run again to start from scratch"
                    if move_corrupt
                    else ""
                )
            )
        return None

    def wait(self) -> None:
        """Wait for the running save; raises StorageError if it failed for lack of space or permission."""
        with self._storage_errors():
            self.manager.wait_until_finished()

    def close(self) -> None:
        with self._storage_errors():
            self.manager.close()


def state_signature(tree: Any) -> str:
    """A short hash of a pytree's paths, shapes and dtypes: two states restore into each other iff they match."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    desc = sorted(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}:{x.dtype}" for p, x in leaves)
    return hashlib.sha1("\n".join(desc).encode()).hexdigest()[:16]


def abstract_train_state(config: ml_collections.ConfigDict, mesh: Any) -> Any:
    """ShapeDtypeStructs (replicated on ``mesh``) of the train state that ``config`` trains: a restore target."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from regnet_jax.models import create_model
    from regnet_jax.training.optimizer import make_optimizer
    from regnet_jax.training.steps import init_variables, state_from_variables

    model = create_model(config)
    shape = (config.resolution, config.resolution, 3)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), shape))
    tx = make_optimizer(config, 1, variables["params"])
    state = jax.eval_shape(lambda v: state_from_variables(v, tx, config.optim.ema_decay > 0), variables)
    sharding = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), state)
