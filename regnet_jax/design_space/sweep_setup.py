"""``setup``: a sweep spec -> one complete training config per sampled model, plus a summary.

A sweep spec is a plain dict (or the ConfigDict of an ``experiments/*.py`` file) with these fields; absent fields take
the defaults in ``SPEC_DEFAULTS``:

    name        label in reports ('' = the sweep directory's name)
    space       a registered design space (``regnet_jax.design_space.SPACES``)
    n, seed     number of models and the sampling seed
    flops, params, acts   [lo, hi] complexity regime at the training resolution (0 = unbounded; flops = mult-adds)
    schedule    '10ep' / '25ep' / '100ep' preset of regnet_jax.config.base_config (used when ``base`` is '')
    base        a training config file to start from, e.g. 'configs/quickstart.py' ('' = base_config(schedule))
    dataset, num_epochs, resolution, batch_size   overrides of the training config (0/'' = keep); the lr follows
                a batch-size override (the linear rule, optim.lr_per_128; a pinned optim.base_lr is scaled too); a batch smaller
                than one BatchNorm statistics group (bn_group_size) makes it one group
    dists       {param: 'kind:low:high:q'} distributions replacing the space's (a fork)
    model       {field: value} fixed config.model fields replacing the space's (e.g. {'se_ratio': 0.25})
    train       any other training-config override, {'optim.base_lr': 0.1} or nested {'optim': {'base_lr': 0.1}}
    max_draws   give up (with a clear error) after this many draws
"""

from __future__ import annotations

import ast
import copy
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from regnet_jax.config import SCHEDULES, ConfigError, base_config, complete_config, validate_config
from regnet_jax.config.files import flat_fields, load_config_file, set_field
from regnet_jax.core import paths
from regnet_jax.design_space.layout import SweepDir, SweepError, model_id, write_json
from regnet_jax.design_space.spaces import CX_METRICS, DesignSpace, SampleResult, get_space, sample_space
from regnet_jax.models.zoo import ZOO

SPEC_DEFAULTS: dict[str, Any] = dict(
    name="",
    space="",
    n=0,
    seed=0,
    flops=[0, 0],
    params=[0, 0],
    acts=[0, 0],
    schedule="10ep",
    base="",
    dataset="",
    num_epochs=0,
    resolution=0,
    batch_size=0,
    dists={},
    model={},
    train={},
    max_draws=1_000_000,
)

CONFIG_PY = '''"""Model {mid} of sweep {name!r} (design space {space}), written by `python -m regnet_jax.sweep setup`.

Train it on its own:  python -m regnet_jax.train --config={py} --workdir={workdir}
The config is the JSON file beside this one; edit that file, not this one.
"""

import json
import pathlib

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The complete training config of this model."""
    return ml_collections.ConfigDict(json.loads(pathlib.Path(__file__).with_suffix(".json").read_text()))
'''


def normalize_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with defaults filled in, JSON-able, checked for unknown fields and obvious mistakes."""
    spec = _plain(spec)
    unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
    if unknown:
        raise ConfigError(f"sweep spec fields {unknown} are unknown; the fields are {sorted(SPEC_DEFAULTS)}")
    out = {**copy.deepcopy(SPEC_DEFAULTS), **spec}
    if not out["space"]:
        raise ConfigError(
            "the sweep needs a design space: --space=NAME (e.g. anynetx_a, regnetx) or a sweep config with `space`"
        )
    if not isinstance(out["n"], int) or out["n"] < 1:
        raise ConfigError(f"n={out['n']!r}: give the number of models with --n=N (N >= 1)")
    for m in CX_METRICS:
        v = out[m]
        if not (
            isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) and x >= 0 for x in v)
        ):
            raise ConfigError(f"{m}={v!r}: give a range LO,HI (0 = unbounded), e.g. --{m}=360e6,400e6")
        if v[0] and v[1] and v[0] > v[1]:
            raise ConfigError(f"{m}={v!r}: the low end is above the high end")
        out[m] = [float(x) for x in v]
    out["train"] = flat_fields(out["train"])  # ConfigDicts cannot hold dotted keys
    if not out["base"] and out["schedule"] not in SCHEDULES:
        raise ConfigError(f"schedule {out['schedule']!r} is unknown: use one of {sorted(SCHEDULES)}")
    return out


def _plain(spec: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(spec, ml_collections.ConfigDict):
        spec = spec.to_dict()
    return json.loads(json.dumps(dict(spec)))


def space_for(spec: Mapping[str, Any]) -> DesignSpace:
    """The spec's design space, forked with its ``dists`` / ``model`` overrides if any (named after them, e.g.
    ``anynetx_e+activation=silu``)."""
    space = get_space(spec["space"])
    model = {k: v for k, v in spec["model"].items() if k != "num_classes"}
    if spec["dists"] or model:
        changes = [f"{k}={v}" for k, v in {**spec["dists"], **model}.items()]
        space = space.fork(f"{space.name}+{'+'.join(changes)}", dists=spec["dists"], model=model)
    return space


def training_template(spec: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The training config every model of the sweep shares (its ``model`` is a placeholder, replaced per sample)."""
    if spec["base"]:
        config = load_config_file(spec["base"])
        if not isinstance(config, ml_collections.ConfigDict) or "model" not in config:
            raise ConfigError(f"base config {spec['base']!r} must return a complete training ConfigDict (with a model)")
        config = complete_config(config)  # a copy, with the fields an older config file lacks
    else:
        config = base_config(ZOO["regnetx_200mf"].model, schedule=spec["schedule"])
    if spec["dataset"]:
        config.dataset.name = spec["dataset"]
    if spec["num_epochs"]:
        config.num_epochs = int(spec["num_epochs"])
        config.optim.warmup_epochs = min(config.optim.warmup_epochs, config.num_epochs)
    if spec["resolution"]:
        config.resolution = int(spec["resolution"])
    if spec["batch_size"]:
        if config.optim.base_lr:  # pinned by the base config: keep it the same per image (the lr rule does the rest)
            config.optim.base_lr = config.optim.base_lr * spec["batch_size"] / config.batch_size
        config.batch_size = int(spec["batch_size"])
        if config.bn_group_size > config.batch_size:  # a batch below one BN statistics group: one group
            config.bn_group_size = config.batch_size
    if "num_classes" in spec["model"]:
        config.model.num_classes = int(spec["model"]["num_classes"])
    for key, value in spec["train"].items():
        set_field(config, key, value, label=f"train override {key}={value!r}")
    return config


def model_config(template: ml_collections.ConfigDict, model: Mapping[str, Any]) -> dict[str, Any]:
    """The complete, validated training config (as a plain dict) of one sampled model."""
    config = copy.deepcopy(template)
    config.model = ml_collections.ConfigDict(dict(model))
    return json.loads(validate_config(config).to_json_best_effort())


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, float)
    return {"min": float(a.min()), "mean": float(a.mean()), "median": float(np.median(a)), "max": float(a.max())}


def _regime(spec: Mapping[str, Any]) -> dict[str, list[float]]:
    return {m: spec[m] for m in CX_METRICS if any(spec[m])}


def _check_existing(sweep_dir: SweepDir, spec: dict[str, Any]) -> int:
    """How many models ``sweep_dir`` already holds for this spec (0 if new); raises if it holds a different sweep."""
    if not sweep_dir.exists():
        return 0
    old = sweep_dir.spec()["spec"]
    diff = sorted(k for k in set(old) | set(spec) if k != "n" and old.get(k) != spec.get(k))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {spec.get(k)!r}" for k in diff)
        raise SweepError(
            f"{sweep_dir.root} already holds a different sweep ({detail}); choose a new --out (nothing was changed)"
        )
    have = len(sweep_dir.model_ids())
    if spec["n"] < have:
        raise SweepError(
            f"{sweep_dir.root} already holds {have} models, more than n={spec['n']}; use --n={have} or more (models are never removed)"
        )
    return have


def setup_sweep(spec: Mapping[str, Any], out: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample the sweep's models and write their configs into ``out``; returns sweep.json's content.

    Rerunning with the same spec does nothing; with a larger ``n`` it appends models (sampling is sequential from
    the seed, so the first models are the same ones); any other change is refused, so results are never mixed.
    """
    spec = normalize_spec(spec)
    spec["name"] = spec["name"] or paths.resolve(out).name
    sweep_dir = SweepDir(out)
    have = _check_existing(sweep_dir, spec)
    if have == spec["n"]:
        log(f"setup: {out} already holds the {have} models of this sweep; nothing to do")
        return sweep_dir.spec()
    space = space_for(spec)
    template = training_template(spec)
    resolution, num_classes = int(template.resolution), int(template.model.num_classes)
    result = sample_space(space, spec["n"], spec["seed"], resolution=resolution, num_classes=num_classes,
                          regime=_regime(spec), max_draws=spec["max_draws"], log=log)  # fmt: skip
    configs = [model_config(template, s.model) for s in result.samples]
    for i in range(have):
        if sweep_dir.config(model_id(i)) != configs[i]:
            raise SweepError(
                f"{out}: model {model_id(i)} on disk differs from what this spec samples now (was the code or a config file changed?); use a new --out"
            )
    for i in range(have, spec["n"]):
        mid = model_id(i)
        write_json(sweep_dir.config_json(mid), configs[i])
        paths.write_text(
            sweep_dir.config_py(mid),
            CONFIG_PY.format(
                mid=mid,
                name=spec["name"],
                space=space.name,
                py=sweep_dir.config_py(mid),
                workdir=sweep_dir.run_dir(mid),
            ),
        )
    write_json(sweep_dir.summary_path, _summary(result))
    info = {
        "spec": spec,
        "space": space.describe(),
        "resolution": resolution,
        "num_classes": num_classes,
        "num_epochs": int(template.num_epochs),
        "sampling": {"draws": result.draws, "rejected": result.rejected, "seconds": round(result.seconds, 3)},
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(sweep_dir.spec_path, info)
    fl = _stats([s.complexity["flops"] for s in result.samples])
    log(
        f"setup: {spec['n']} models of {space.name} ({spec['n'] - have} new) in {out}/configs: flops {fl['min'] / 1e6:.3g}-"
        f"{fl['max'] / 1e6:.3g} M (mean {fl['mean'] / 1e6:.3g} M) at {resolution} px, {template.num_epochs} epochs each; "
        f"{result.draws:,} draws in {result.seconds:.1f}s"
    )
    log(f"next: python -m regnet_jax.sweep launch --out={out}")
    return info


def _summary(result: SampleResult) -> dict[str, Any]:
    models = [
        {"id": model_id(i), "values": s.values, "model": s.model, "complexity": s.complexity}
        for i, s in enumerate(result.samples)
    ]  # fmt: skip
    return {
        "num_models": len(models),
        "complexity": {m: _stats([s.complexity[m] for s in result.samples]) for m in CX_METRICS},
        "draws": result.draws,
        "rejected": result.rejected,
        "models": models,
    }


def read_spec_file(path: str) -> dict[str, Any]:
    """A sweep spec from a JSON file or an ml_collections config file (``file.py[:arg]``)."""
    return _plain(load_config_file(path))


# ---------------------------------------------------------------- spec values written on the command line

_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}


def parse_number(text: str) -> float:
    """'360e6', '360M', '0.4G' -> a float."""
    t = text.strip().lower()
    scale = _SUFFIX.get(t[-1:], 1.0)
    try:
        return float(t[:-1] if t[-1:] in _SUFFIX else t) * scale
    except ValueError:
        raise ConfigError(f"{text!r} is not a number (write e.g. 360e6 or 360M)") from None


def parse_range(text: str, what: str) -> list[float]:
    """'LO,HI' (each a ``parse_number``) -> [lo, hi]; ``what`` names the flag in errors."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ConfigError(f"--{what}={text!r}: write LO,HI, e.g. --{what}=360e6,400e6 (0 = unbounded)")
    return [parse_number(p) for p in parts]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_pairs(items: list[str], flag: str, literal: bool) -> dict[str, Any]:
    """['KEY=VALUE', ...] -> {KEY: VALUE} (VALUE a Python literal where it reads as one, with ``literal``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--{flag}={item!r}: write KEY=VALUE")
        out[key.strip()] = _literal(value) if literal else value
    return out
