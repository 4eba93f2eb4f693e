"""What changed between the config a run started with and the one it is resumed with, and whether that is allowed.

    changes = diff.diff(saved, new)          # [Change('optim.label_smoothing', 0.0, 0.1), ...]
    harmful = [c for c in changes if not c.harmless]

A change is *harmless* when it leaves what is trained and what is measured as they were: how often to log,
evaluate or checkpoint, the evaluation batch (evaluation is exact whatever the batch), the input pipeline's
prefetch and cache, where the data lives, where images are normalised (``dataset.normalize_on``: the same images
to half a uint8 level), the bad-image tolerance, ``init_from`` (read only at step 0), and a field
the saved config lacks (added to regnet_jax after the run started; its default is the old behaviour; both configs
are compared complete, ``schema.complete_config``, so a field whose old value the schema knows counts as that value).
Every other change (model, optimiser, schedule, epochs, batch, data, augmentation, seed, ...) changes the run's meaning:
``check_resume`` refuses it unless the user asks to continue with it (``--allow_config_change``, docs/training.md).
The learning rate is compared as resolved (``regnet_jax.config.base_lr``), however it is written.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import ml_collections

from regnet_jax.config.files import flat_fields
from regnet_jax.config.schema import base_lr, complete_config
from regnet_jax.core.errors import ConfigError

HARMLESS = frozenset({
    "log_every_steps", "eval_every_epochs", "eval_batch_size", "checkpoint_every_steps", "keep_checkpoints",
    "init_from", "dataset.prefetch", "dataset.cache", "dataset.data_dir", "dataset.max_bad_image_fraction", "profile_steps",
    "dataset.normalize_on",
})  # fmt: skip
_MISSING = "<absent>"


@dataclasses.dataclass(frozen=True)
class Change:
    """One field whose value differs (``_MISSING`` where a side lacks the field)."""

    path: str
    old: Any
    new: Any

    @property
    def harmless(self) -> bool:
        return self.path in HARMLESS or self.old == _MISSING

    def __str__(self) -> str:
        return f"{self.path}: {self.old!r} -> {self.new!r}"


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat fields of the complete config, its learning rate resolved (lr_per_128 x batch / 128, or the pinned
    base_lr)."""
    config = complete_config(json.loads(json.dumps(config)))  # as JSON: tuples are lists
    flat = flat_fields(config)
    if "optim.base_lr" in flat and "batch_size" in flat:
        flat["optim.base_lr"] = base_lr(ml_collections.ConfigDict(config))
        flat.pop("optim.lr_per_128", None)
    return flat


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """The fields of two configs (plain nested dicts, e.g. config.json and the new config) that differ, sorted."""
    a, b = _comparable(old), _comparable(new)
    return [
        Change(k, a.get(k, _MISSING), b.get(k, _MISSING))
        for k in sorted(set(a) | set(b))
        if a.get(k, _MISSING) != b.get(k, _MISSING)
    ]


def describe(changes: list[Change]) -> str:
    """'a: 1 -> 2; b: ...' for messages."""
    return "; ".join(map(str, changes))


def check_resume(workdir: str, saved: Mapping[str, Any], new: Mapping[str, Any], allow: bool) -> list[Change]:
    """The changes from the config ``workdir``'s run started with (``saved``) to ``new``; raises ConfigError naming
    them when one changes the run's meaning and ``allow`` is False."""
    changes = diff(saved, new)
    harmful = [c for c in changes if not c.harmless]
    if harmful and not allow:
        raise ConfigError(
            f"{workdir} holds a run started with another config: {describe(harmful)}. Resuming would change what it "
            f"trains: resume with its own config (--config={workdir}/config.json), start a new --workdir, or pass "
            "--allow_config_change to continue with the new config (the old one is kept in config_history.jsonl)"
        )
    return changes
