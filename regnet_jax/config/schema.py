"""The config schema shared by every tool: its fields and defaults, validation, and the training-schedule presets.

``config.model`` describes an AnyNet or a RegNet (field names are a public contract: sweeps, configs and the
trainer all use them); the rest of the config describes data, optimisation and the run. ``base_config`` writes every
field with its default; ``validate_config`` returns the complete config (``complete_config``: the fields an older
config or a workdir's config.json lacks, filled with the values it was trained with) and turns every bad value into
a ``ConfigError`` that names the field, the value and what is allowed. These are the only places that know a
field's default: the rest of the package reads the fields of a complete config.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from typing import Any

import ml_collections

from regnet_jax.core.distributed import batch_layout
from regnet_jax.core.errors import ConfigError

MODEL_TYPES = ("regnet", "anynet")
STEM_TYPES = ("simple_stem_in", "res_stem_in", "res_stem_cifar")
BLOCK_TYPES = ("vanilla_block", "res_basic_block", "res_bottleneck_block")
ACTIVATIONS = ("relu", "silu", "swish", "gelu")
DTYPES = ("float32", "bfloat16", "float16")

COMMON_FIELDS = ("type", "stem_type", "stem_w", "block_type", "se_ratio", "num_classes")
REGNET_FIELDS = ("depth", "w0", "wa", "wm", "group_w", "bot_mul")
ANYNET_FIELDS = ("depths", "widths", "strides", "bot_muls", "group_ws")
# AnyNet fields only bottleneck blocks use; optional (and ignored) for basic and vanilla blocks. (A RegNet's bot_mul
# and group_w stay required: as in pycls they adjust the stage widths whatever the block.)
BOTTLENECK_ONLY_FIELDS = {"bot_muls": 1.0, "group_ws": 1}
# Optional model fields and their defaults (absent = default).
OPTIONAL_MODEL_FIELDS: dict[str, Any] = {
    "activation": "relu",
    "zero_init_last_bn": False,
    "dtype": "float32",
    "param_dtype": "float32",
}
QUANT = 8


def _as_dict(model: Any) -> dict[str, Any]:
    if isinstance(model, ml_collections.ConfigDict):
        return model.to_dict()
    if isinstance(model, Mapping):
        return dict(model)
    raise ConfigError(f"config.model must be a ConfigDict or a mapping, got {type(model).__name__}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config.model.{field}={value!r} is invalid: must be {allowed}")


def _check_bot_mul(field: str, b: Any) -> None:
    _check(
        _is_num(b) and b > 0 and (b < 1 or float(b).is_integer()),
        field,
        b,
        "> 0, and an integer when >= 1 (e.g. 0.25, 1, 4)",
    )


def validate_model(model: Any) -> dict[str, Any]:
    """Check a model config; return it as a plain dict with the optional fields filled in."""
    m = _as_dict(model)
    mtype = m.get("type")
    _check(mtype in MODEL_TYPES, "type", mtype, f"one of {MODEL_TYPES}")
    own = REGNET_FIELDS if mtype == "regnet" else ANYNET_FIELDS
    other = ANYNET_FIELDS if mtype == "regnet" else REGNET_FIELDS
    known = set(COMMON_FIELDS) | set(own) | set(OPTIONAL_MODEL_FIELDS)
    for k in m:
        if k in other:
            raise ConfigError(
                f"config.model.{k} is a field of type '{'anynet' if mtype == 'regnet' else 'regnet'}' models, not '{mtype}': remove it"
            )
        if k not in known:
            raise ConfigError(
                f"config.model.{k} is not a model field; known fields for type '{mtype}': {sorted(known)}"
            )
    optional = BOTTLENECK_ONLY_FIELDS if mtype == "anynet" and m.get("block_type") != "res_bottleneck_block" else {}
    required = [k for k in (*COMMON_FIELDS, *own) if k not in optional]
    for k in required:
        if k not in m or m[k] is None:
            raise ConfigError(
                f"config.model.{k} is missing: type '{mtype}' models with block_type {m.get('block_type')!r} need {required}"
            )
    for k, default in optional.items():
        if m.get(k) is None:
            m[k] = [default] * len(m["depths"]) if isinstance(m["depths"], (list, tuple)) else None
    for k, default in OPTIONAL_MODEL_FIELDS.items():
        m.setdefault(k, default)

    _check(m["stem_type"] in STEM_TYPES, "stem_type", m["stem_type"], f"one of {STEM_TYPES}")
    _check(m["block_type"] in BLOCK_TYPES, "block_type", m["block_type"], f"one of {BLOCK_TYPES}")
    _check(_is_int(m["stem_w"]) and m["stem_w"] > 0, "stem_w", m["stem_w"], "a positive integer")
    _check(_is_int(m["num_classes"]) and m["num_classes"] > 0, "num_classes", m["num_classes"], "a positive integer")
    _check(
        _is_num(m["se_ratio"]) and 0 <= m["se_ratio"] <= 1,
        "se_ratio",
        m["se_ratio"],
        "in [0, 1] (0 = no SE; RegNetY uses 0.25)",
    )
    if m["se_ratio"] > 0 and m["block_type"] != "res_bottleneck_block":
        raise ConfigError(
            f"config.model.se_ratio={m['se_ratio']} needs block_type 'res_bottleneck_block' (SE sits inside the bottleneck); got '{m['block_type']}'"
        )
    _check(m["activation"] in ACTIVATIONS, "activation", m["activation"], f"one of {ACTIVATIONS}")
    _check(isinstance(m["zero_init_last_bn"], bool), "zero_init_last_bn", m["zero_init_last_bn"], "True or False")
    for k in ("dtype", "param_dtype"):
        _check(m[k] in DTYPES, k, m[k], f"one of {DTYPES}")

    if mtype == "regnet":
        _check(_is_int(m["depth"]) and m["depth"] >= 1, "depth", m["depth"], "a positive integer (number of blocks)")
        _check(
            _is_int(m["w0"]) and m["w0"] > 0 and m["w0"] % QUANT == 0, "w0", m["w0"], f"a positive multiple of {QUANT}"
        )
        _check(_is_num(m["wa"]) and m["wa"] >= 0, "wa", m["wa"], ">= 0")
        _check(_is_num(m["wm"]) and m["wm"] > 1, "wm", m["wm"], "> 1 (wm <= 1 would give a single stage width)")
        _check(_is_int(m["group_w"]) and m["group_w"] >= 1, "group_w", m["group_w"], "a positive integer")
        _check_bot_mul("bot_mul", m["bot_mul"])
        return m

    m.update({k: list(m[k]) for k in ANYNET_FIELDS if isinstance(m[k], (list, tuple))})
    for k in ANYNET_FIELDS:
        _check(isinstance(m[k], list) and len(m[k]) > 0, k, m[k], "a non-empty list with one entry per stage")
    n = len(m["depths"])
    for k in ANYNET_FIELDS[1:]:
        if len(m[k]) != n:
            raise ConfigError(
                f"config.model.{k} has {len(m[k])} entries but depths has {n}: give one entry per stage in each list"
            )
    for i in range(n):
        d, w, s, b, g = (m[k][i] for k in ANYNET_FIELDS)
        _check(_is_int(d) and d >= 1, f"depths[{i}]", d, "a positive integer")
        _check(_is_int(w) and w >= 1, f"widths[{i}]", w, "a positive integer")
        _check(s in (1, 2), f"strides[{i}]", s, "1 or 2")
        _check_bot_mul(f"bot_muls[{i}]", b)
        _check(_is_int(g) and g >= 1, f"group_ws[{i}]", g, "a positive integer")
        if m["block_type"] == "res_bottleneck_block":
            w_b = int(round(w * b))
            if w_b < 1 or w_b % g:
                raise ConfigError(
                    f"config.model stage {i + 1}: bottleneck width round(widths[{i}]*bot_muls[{i}]) = round({w}*{b}) = {w_b} "
                    f"is not divisible by group_ws[{i}]={g}; choose widths/group widths so that it is, or use "
                    "regnet_jax.models.regnet.adjust_block_compatibility"
                )
    return m


def model_config(**fields: Any) -> ml_collections.ConfigDict:
    """A validated ``config.model`` from keyword fields (the optional fields filled in)."""
    return ml_collections.ConfigDict(validate_model(fields))


# The paper's design-space schedules (Radosavovic et al. 2020, §3.2 fn. 5, §4, App. C) and the zoo recipe (pycls dds_baselines yamls, pycls/core/optimizer.py; docs/fidelity.md#training-recipe). Their learning rate is
# given per 128 images (``optim.lr_per_128``): the zoo's 0.8 at batch 1024 is 0.1 per 128, the 10-epoch
# schedule's 0.05 at batch 128 is 0.05 per 128. The design-space runs trained on one GPU at batch 128, so their
# BatchNorm statistics groups hold 128 images; the zoo's 100-epoch runs used 8 GPUs, so zoo.get_config sets its
# groups to batch / 8 (here 0: one group, the whole batch).
SCHEDULES: dict[str, dict[str, Any]] = {
    "100ep": dict(num_epochs=100, batch_size=None, lr_per_128=0.1, warmup_epochs=5, bn_group_size=0),
    "25ep": dict(num_epochs=25, batch_size=128, lr_per_128=0.1, warmup_epochs=0, bn_group_size=128),
    "10ep": dict(num_epochs=10, batch_size=128, lr_per_128=0.05, warmup_epochs=0, bn_group_size=128),
}
LR_PER_128 = 0.1  # pycls's zoo recipe as a linear scaling rule: lr 0.1 per 128 images of the global batch (0.8 at 1024; docs/fidelity.md#training-recipe)
PRECISE_BN_IMAGES = 8192  # images used by precise BN (pycls's BN.NUM_SAMPLES_PRECISE)


def _rule_lr(config: ml_collections.ConfigDict) -> float:
    return config.optim.lr_per_128 * config.batch_size / 128


def base_lr(config: ml_collections.ConfigDict) -> float:
    """The learning rate the schedule starts from: ``optim.base_lr`` when it is set (> 0), else the linear scaling
    rule ``optim.lr_per_128 * batch_size / 128``, so that changing the batch changes the lr with it. (Here, not in
    the optimizer: comparing two configs, ``config.diff``, compares their resolved learning rates.)"""
    return float(config.optim.base_lr) if config.optim.base_lr else _rule_lr(config)


def describe_lr(config: ml_collections.ConfigDict) -> str:
    """Where ``base_lr(config)`` comes from, for the log: the rule with its numbers, or the pinned value."""
    rule = _rule_lr(config)
    if config.optim.base_lr:
        return f"base lr {base_lr(config):g}, pinned by config.optim.base_lr (the rule lr_per_128 x batch / 128 would give {rule:g})"
    return f"base lr {rule:g} = config.optim.lr_per_128 {config.optim.lr_per_128:g} x batch {config.batch_size} / 128"


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on [0, 1] pixels (pycls/datasets/imagenet.py: _MEAN, _STD)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_BAD_IMAGE_FRACTION = 0.01  # of an epoch's training images that may be undecodable (skipped) before the run stops
DATASET_KINDS = ("imagenet2012", "folder", "synthetic", "quickstart", "<any TFDS image-classification name>")


def base_config(model: Mapping[str, Any], batch_size: int = 1024, schedule: str = "100ep") -> ml_collections.ConfigDict:
    """A complete training config for ``model`` with pycls's zoo recipe (docs/fidelity.md#training-recipe) and the named schedule.

    ``batch_size`` is the 100-epoch batch (the zoo table's); the 10/25-epoch schedules use 128 as in the paper.
    Every field is documented in docs/training.md.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(
            f"schedule {schedule!r} is unknown: use one of {sorted(SCHEDULES)} (e.g. --config=configs/regnetx_400mf.py:25ep)"
        )
    preset = SCHEDULES[schedule]
    bs = preset["batch_size"] or batch_size
    c = ml_collections.ConfigDict()
    c.model = model_config(**dict(model))
    c.resolution = 224
    c.schedule = schedule
    c.num_epochs = preset["num_epochs"]
    c.batch_size = bs  # global, over all devices of all processes, per optimizer step
    c.grad_accum_steps = 1  # micro-batches per optimizer step (k of them = the math of k times as many devices)
    c.bn_group_size = preset["bn_group_size"]  # images per BatchNorm statistics group; 0 = the whole global batch
    c.precise_bn = False  # recompute the BN running statistics on training images after every epoch (pycls option)
    c.precise_bn_images = PRECISE_BN_IMAGES
    c.eval_batch_size = 0  # 0 = same as batch_size
    c.seed = 0
    c.dataset = ml_collections.ConfigDict(
        dict(
            name="imagenet2012",  # 'imagenet2012', any TFDS name, 'folder', 'synthetic' or 'quickstart'
            data_dir="",  # TFDS data dir ('' = TFDS default) or the root of a folder dataset
            train_split="train",
            eval_split="validation",
            num_train_examples=0,  # 0 = the whole split; >0 = use only the first N (and N synthetic images)
            num_eval_examples=0,
            channel_order="rgb",  # 'bgr' for pycls weights (pycls/datasets/imagenet.py: ImageNet._prepare_im; docs/fidelity.md#augmentation)
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            eval_crop_fraction=224 / 256,  # eval: resize the shorter side to resolution / this, centre-crop
            min_area=0.08,  # inception crop area fraction U(min_area, 1)
            aspect_ratio=(3 / 4, 4 / 3),
            flip=True,
            pca_std=0.1,  # PCA lighting noise (0 = off)
            shuffle_buffer=16_384,  # TFDS streams only; in-memory and folder datasets are fully permuted
            cache=False,
            output_dtype="float32",  # or 'bfloat16'
            # Where training images are normalised: 'device' (the host sends uint8 pixels and each image's lighting
            # shift, 4x fewer bytes; the same images to half a uint8 level, from rounding the resized pixels) or 'host'
            normalize_on="device",
            prefetch=2,  # batches on device ahead of the step
            max_bad_image_fraction=MAX_BAD_IMAGE_FRACTION,  # undecodable training images are skipped; more per epoch stop the run
            synthetic_like="",  # name='synthetic': stand in for this dataset (its number of classes); smoke mode sets it
            prepared_dir="",  # '' = off; a directory of python -m regnet_jax.prepare: decoded, resized images read instead
        )
    )
    c.optim = ml_collections.ConfigDict(
        dict(
            base_lr=0.0,  # 0 = the linear rule: lr_per_128 * batch_size / 128; > 0 pins the lr whatever the batch
            lr_per_128=preset["lr_per_128"],
            momentum=0.9,
            nesterov=True,
            weight_decay=5e-5,
            wd_exclude_bn_bias=False,  # pycls decays every parameter
            warmup_epochs=preset["warmup_epochs"],
            warmup_factor=0.1,
            lr_per_step=False,  # pycls sets the lr once per epoch
            label_smoothing=0.0,
            ema_decay=0.0,  # 0 = no EMA; e.g. 0.9999 keeps an EMA of params and BN stats, evaluated separately
        )
    )
    c.log_every_steps = 50
    c.eval_every_epochs = 1
    c.checkpoint_every_steps = 0  # 0 = at the end of every epoch only
    c.keep_checkpoints = 3  # the last N are kept, plus the best by top-1 error
    c.init_from = ""  # fine-tuning: a weights directory (regnet_jax.convert) or a training workdir
    c.freeze_trunk = False  # with init_from: train only the head (linear probe; the trunk's BN stays in eval mode)
    c.profile_steps = ()  # (start, end): a jax.profiler trace of those steps into the workdir (regnet_jax.training.profiling)
    return c


def _field_error(field: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config.{field}={value!r} is invalid: must be {allowed}")


def _is_step_window(steps: Any) -> bool:
    if not isinstance(steps, (tuple, list)):
        return False
    return len(steps) == 0 or (len(steps) == 2 and all(_is_int(s) for s in steps) and 0 <= steps[0] < steps[1])


# Fields added after the first configs were written. A config without one (an older config file, the config.json of
# an older run, a sweep's) was trained with this value: ``complete_config`` fills it in.
ADDED_FIELDS: dict[str, Any] = {
    "grad_accum_steps": 1,
    "bn_group_size": 0,  # the whole global batch
    "precise_bn": False,
    "precise_bn_images": PRECISE_BN_IMAGES,
    "profile_steps": (),
    "dataset.max_bad_image_fraction": MAX_BAD_IMAGE_FRACTION,
    "dataset.prepared_dir": "",  # read the dataset itself
    "dataset.normalize_on": "host",
    "optim.lr_per_128": LR_PER_128,
    "dataset.synthetic_like": "",
}


def complete_config(config: ml_collections.ConfigDict | Mapping[str, Any]) -> Any:
    """A copy of ``config`` (a ConfigDict or a plain nested dict, e.g. a workdir's config.json) with every
    ``ADDED_FIELDS`` field it lacks filled in; a group the config has not at all (a model-only config) stays absent."""
    config = copy.deepcopy(config)
    unlocked = config.unlocked() if isinstance(config, ml_collections.ConfigDict) else contextlib.nullcontext()
    with unlocked:
        for path, default in ADDED_FIELDS.items():
            *groups, field = path.split(".")
            node = config
            for group in groups:
                node = node[group] if group in node else None
                if node is None:
                    break
            if node is not None and field not in node:
                node[field] = copy.deepcopy(default)
    return config


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The complete config (``complete_config``: a copy, every field present) after checking every field, model and
    training; raises ConfigError naming the field and the fix."""
    config = complete_config(config)
    validate_model(config.model)
    lr_per_128, bad_fraction = config.optim.lr_per_128, config.dataset.max_bad_image_fraction
    checks = [
        ("resolution", _is_int(config.resolution) and config.resolution >= 8, "an integer >= 8 (pixels)"),
        ("num_epochs", _is_int(config.num_epochs) and config.num_epochs >= 1, "a positive integer"),
        ("batch_size", _is_int(config.batch_size) and config.batch_size >= 1, "a positive integer (global batch)"),
        (
            "grad_accum_steps",
            _is_int(config.grad_accum_steps) and config.grad_accum_steps >= 1,
            "a positive integer (1 = no accumulation)",
        ),
        (
            "bn_group_size",
            _is_int(config.bn_group_size) and config.bn_group_size >= 0,
            "0 (the whole global batch) or a positive integer (images)",
        ),
        ("precise_bn", isinstance(config.precise_bn, bool), "True or False"),
        (
            "precise_bn_images",
            _is_int(config.precise_bn_images) and config.precise_bn_images >= 1,
            "a positive integer (images)",
        ),
        (
            "eval_batch_size",
            _is_int(config.eval_batch_size) and config.eval_batch_size >= 0,
            "0 (= batch_size) or a positive integer",
        ),
        ("seed", _is_int(config.seed), "an integer"),
        (
            "dataset.name",
            isinstance(config.dataset.name, str) and config.dataset.name,
            f"a dataset name: {', '.join(DATASET_KINDS)}",
        ),
        ("dataset.channel_order", config.dataset.channel_order in ("rgb", "bgr"), "'rgb' or 'bgr'"),
        (
            "dataset.synthetic_like",
            isinstance(config.dataset.synthetic_like, str),
            "'' or a dataset name, e.g. 'imagenet2012'",
        ),
        ("dataset.mean", len(config.dataset.mean) == 3, "3 numbers (RGB, on [0, 1] pixels)"),
        (
            "dataset.std",
            len(config.dataset.std) == 3 and all(s > 0 for s in config.dataset.std),
            "3 positive numbers (RGB)",
        ),
        ("dataset.eval_crop_fraction", 0 < config.dataset.eval_crop_fraction <= 1, "in (0, 1], e.g. 0.875 = 224/256"),
        ("dataset.min_area", 0 < config.dataset.min_area <= 1, "in (0, 1]"),
        (
            "dataset.aspect_ratio",
            len(config.dataset.aspect_ratio) == 2
            and 0 < config.dataset.aspect_ratio[0] <= config.dataset.aspect_ratio[1],
            "(low, high) with 0 < low <= high",
        ),
        ("dataset.pca_std", config.dataset.pca_std >= 0, ">= 0"),
        ("dataset.output_dtype", config.dataset.output_dtype in ("float32", "bfloat16"), "'float32' or 'bfloat16'"),
        (
            "dataset.normalize_on",
            config.dataset.normalize_on in ("host", "device"),
            "'device' (uint8 batches, normalised on the accelerator) or 'host'",
        ),
        (
            "dataset.num_train_examples",
            _is_int(config.dataset.num_train_examples) and config.dataset.num_train_examples >= 0,
            "0 (all) or a positive integer",
        ),
        (
            "dataset.max_bad_image_fraction",
            _is_num(bad_fraction) and 0 <= bad_fraction <= 1,
            "in [0, 1] (0 = stop at the first undecodable training image)",
        ),
        (
            "dataset.prepared_dir",
            isinstance(config.dataset.prepared_dir, str),
            "'' (off) or a directory written by python -m regnet_jax.prepare",
        ),
        (
            "dataset.num_eval_examples",
            _is_int(config.dataset.num_eval_examples) and config.dataset.num_eval_examples >= 0,
            "0 (all) or a positive integer",
        ),
        (
            "optim.base_lr",
            _is_num(config.optim.base_lr) and config.optim.base_lr >= 0,
            "0 (the linear rule: optim.lr_per_128 x batch_size / 128) or a positive number",
        ),
        (
            "optim.lr_per_128",
            _is_num(lr_per_128) and lr_per_128 > 0,
            "a positive number (the lr per 128 images of the global batch)",
        ),
        ("optim.momentum", 0 <= config.optim.momentum < 1, "in [0, 1)"),
        ("optim.weight_decay", config.optim.weight_decay >= 0, ">= 0"),
        (
            "optim.warmup_epochs",
            _is_int(config.optim.warmup_epochs) and config.optim.warmup_epochs >= 0,
            "an integer >= 0",
        ),
        ("optim.warmup_factor", 0 <= config.optim.warmup_factor <= 1, "in [0, 1]"),
        ("optim.label_smoothing", 0 <= config.optim.label_smoothing < 1, "in [0, 1)"),
        ("optim.ema_decay", 0 <= config.optim.ema_decay < 1, "in [0, 1) (0 = off)"),
        ("log_every_steps", _is_int(config.log_every_steps) and config.log_every_steps >= 1, "a positive integer"),
        (
            "eval_every_epochs",
            _is_int(config.eval_every_epochs) and config.eval_every_epochs >= 0,
            "0 (only at the end) or a positive integer",
        ),
        (
            "checkpoint_every_steps",
            _is_int(config.checkpoint_every_steps) and config.checkpoint_every_steps >= 0,
            "0 (every epoch) or a positive integer",
        ),
        ("keep_checkpoints", _is_int(config.keep_checkpoints) and config.keep_checkpoints >= 1, "a positive integer"),
        (
            "profile_steps",
            _is_step_window(config.profile_steps),
            "() (off) or (start, end) with 0 <= start < end, e.g. (100, 110)",
        ),
    ]
    for field, ok, allowed in checks:
        if not ok:
            value = config
            for part in field.split("."):
                value = value[part]
            raise _field_error(field, value, allowed)
    batch_layout(config.batch_size, 1, config.grad_accum_steps, config.bn_group_size)  # the device-independent part
    if config.freeze_trunk and not config.init_from:
        raise ConfigError(
            "config.freeze_trunk=True needs config.init_from (a weights directory or a training workdir): a linear probe of a random trunk is meaningless"
        )
    if config.freeze_trunk and config.precise_bn:
        raise ConfigError(
            "config.precise_bn=True with config.freeze_trunk=True: a linear probe keeps the trunk's BN statistics fixed; set precise_bn=False"
        )
    return config
