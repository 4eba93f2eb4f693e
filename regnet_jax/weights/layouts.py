"""Weight layouts: pycls, torchvision and timm (PyTorch) state dicts <-> Flax variables of ``create_model(config)``.

    variables = from_pycls(state_dict, config)          # and from_torchvision, from_timm, from_layout
    state_dict = to_torchvision(variables)              # and to_pycls, to_timm, to_layout
    convert_file("pycls", "model.pyth", config, "weights_dir")     # python -m regnet_jax.convert

Flax module names mirror pycls (``s1/b1/f/a_bn``), so a key maps by renaming and a transpose:
conv OIHW -> HWIO, linear and SE (O, I[, 1, 1]) -> (I, O), BN weight/bias/running_mean/running_var ->
scale/bias/mean/var. torchvision and timm name the same modules differently (``trunk_output.block1.block1-0.f.a.0``,
``s1.b1.conv1.conv``); their RegNets are all simple-stem bottleneck RegNets, so their architecture can also be read
from the shapes of the weights (``infer_model``), which is how torchvision's different width rounding is handled.

The state-dict API takes mappings of names to numpy arrays and needs no PyTorch; only reading ``.pth``/``.pyth``
files does (``pip install 'regnet_jax[torch]'``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from regnet_jax.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError, validate_model
from regnet_jax.core import paths
from regnet_jax.core.errors import UserError
from regnet_jax.weights.files import WeightsError, input_spec, save_weights
from regnet_jax.weights.formats import read_state_dict

LAYOUTS = ("pycls", "torchvision", "timm")
# pycls trains on BGR input (pycls/datasets/imagenet.py: ImageNet._prepare_im; docs/fidelity.md#augmentation); timm flipped the stem of the pycls weights it ships to RGB.
CHANNEL_ORDER = {"pycls": "bgr", "torchvision": "rgb", "timm": "rgb"}

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_TORCH_ONLY = ("num_batches_tracked",)

# Module renames inside a block (pycls name -> layout name), and outside blocks.
_BLOCK_RENAMES = {
    "torchvision": {
        "proj": "proj.0", "bn": "proj.1",
        "f.a": "f.a.0", "f.a_bn": "f.a.1", "f.b": "f.b.0", "f.b_bn": "f.b.1", "f.c": "f.c.0", "f.c_bn": "f.c.1",
        "f.se.f_ex.0": "f.se.fc1", "f.se.f_ex.2": "f.se.fc2",
    },
    "timm": {
        "proj": "downsample.conv", "bn": "downsample.bn",
        "f.a": "conv1.conv", "f.a_bn": "conv1.bn", "f.b": "conv2.conv", "f.b_bn": "conv2.bn",
        "f.c": "conv3.conv", "f.c_bn": "conv3.bn",
        "f.se.f_ex.0": "se.fc1", "f.se.f_ex.2": "se.fc2",
    },
}  # fmt: skip
_OTHER_RENAMES = {"torchvision": {"stem.conv": "stem.0", "stem.bn": "stem.1", "head.fc": "fc"}, "timm": {}}
# Keys only one layout has, to tell the user which --from a file needs.
_LAYOUT_MARKERS = {"torchvision": "trunk_output.", "timm": ".conv1.conv.", "pycls": ".f.a_bn."}


class ConversionError(UserError):
    """A state dict does not fit the model: the message names the key and what was expected."""


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown layout {layout!r}: use one of {LAYOUTS}")


def torch_name(path: tuple[str, ...], layout: str = "pycls") -> str:
    """State-dict key of a Flax variable path (without the collection) in ``layout``.

    E.g. ('s1','b1','f','se','f_ex_0','kernel') -> 's1.b1.f.se.f_ex.0.weight' (pycls),
    'trunk_output.block1.block1-0.f.se.fc1.weight' (torchvision), 's1.b1.se.fc1.weight' (timm).
    """
    _check_layout(layout)
    *mods, leaf = path
    module = ".".join(m.replace("f_ex_", "f_ex.") for m in mods)
    if layout != "pycls":
        block = re.fullmatch(r"s(\d+)\.b(\d+)\.(.+)", module)
        if block:
            i, j, inner = int(block[1]), int(block[2]), block[3]
            inner = _BLOCK_RENAMES[layout].get(inner, inner)
            prefix = f"trunk_output.block{i}.block{i}-{j - 1}" if layout == "torchvision" else f"s{i}.b{j}"
            module = f"{prefix}.{inner}"
        else:
            module = _OTHER_RENAMES[layout].get(module, module)
    return f"{module}.{_LEAF_TO_TORCH[leaf]}"


def _to_flax(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 4 and value.ndim == 4:  # conv: OIHW -> HWIO
        return np.transpose(value, (2, 3, 1, 0))
    if len(shape) == 2 and value.ndim in (2, 4):  # linear (O, I) or SE 1x1 conv (O, I, 1, 1) -> (I, O)
        return value.reshape(value.shape[0], -1).T
    return value


def _to_torch(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    if value.ndim == 4:
        return np.transpose(value, (3, 2, 0, 1))
    if value.ndim == 2:
        out = value.T
        return out[:, :, None, None] if any(p.startswith("f_ex_") for p in path) else out
    return value


def _model_fields(config: Any) -> dict[str, Any]:
    from regnet_jax.models import resolve_model_config

    return resolve_model_config(config).to_dict()


def variable_shapes(config: Any) -> dict[str, Any]:
    """The Flax variable tree (shapes only) of the model of ``config`` (nothing is computed)."""
    from regnet_jax.models import create_model

    model = create_model(config)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))


def guess_layout(state_dict: Mapping[str, Any]) -> str | None:
    """The layout whose characteristic key names a state dict uses, or None."""
    for layout, marker in _LAYOUT_MARKERS.items():
        if any(marker in k for k in state_dict):
            return layout
    return None


def _layout_hint(state_dict: Mapping[str, Any], layout: str) -> str:
    guessed = guess_layout(state_dict)
    if guessed and guessed != layout:
        return f". This file looks like a {guessed} state dict: use --from={guessed}"
    return ". Wrong model for this file? Use the config of the model the weights were trained as"


def check_layout_fits(config: Any, layout: str) -> None:
    """Raise ConversionError unless the model of ``config`` exists in ``layout`` (torchvision/timm: RegNets only)."""
    _check_layout(layout)
    if layout == "pycls":
        return
    m = _model_fields(config)
    if m["stem_type"] != "simple_stem_in" or m["block_type"] != "res_bottleneck_block":
        raise ConversionError(
            f"{layout} RegNets are simple_stem_in + res_bottleneck_block models; this config has stem_type="
            f"{m['stem_type']!r}, block_type={m['block_type']!r}: only the pycls layout holds other architectures "
            "(convert --from=pycls, export --layout=pycls or flax)"
        )


def _torch_shape(shape: tuple[int, ...], path: tuple[str, ...]) -> tuple[int, ...]:
    """The PyTorch shape of a Flax variable of ``shape`` (for messages)."""
    if len(shape) == 4:
        h, w, i, o = shape
        return (o, i, h, w)
    if len(shape) == 2:
        return (shape[1], shape[0], 1, 1) if any(p.startswith("f_ex_") for p in path) else (shape[1], shape[0])
    return tuple(shape)


def _examples(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def from_layout(state_dict: Mapping[str, Any], config: Any, layout: str) -> dict[str, Any]:
    """Flax ``{'params', 'batch_stats'}`` for ``create_model(config)`` from a ``layout`` state dict of numpy arrays.

    Raises ConversionError naming the keys that are missing, unused or of the wrong shape.
    """
    _check_layout(layout)
    check_layout_fits(config, layout)
    template = variable_shapes(config)
    arrays = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith(_TORCH_ONLY)}
    out, used, missing, wrong = {}, set(), [], []
    for col in ("params", "batch_stats"):
        flat = {}
        for path, leaf in traverse_util.flatten_dict(template[col]).items():
            key = torch_name(path, layout)
            if key not in arrays:
                missing.append(repr(key))
                continue
            used.add(key)
            value = _to_flax(arrays[key], leaf.shape)
            if value.shape != leaf.shape:
                wrong.append(f"{key!r} has shape {arrays[key].shape}, the model needs {_torch_shape(leaf.shape, path)}")
                continue
            flat[path] = value.astype(leaf.dtype)
        out[col] = traverse_util.unflatten_dict(flat)
    extra = [repr(k) for k in sorted(set(arrays) - used)]
    if missing or wrong or extra:
        problems = [f"{len(missing)} keys missing ({_examples(missing)})"] if missing else []
        problems += [f"{len(wrong)} keys of the wrong shape ({_examples(wrong, 2)})"] if wrong else []
        problems += [f"{len(extra)} keys the model does not use ({_examples(extra)})"] if extra else []
        hint = _layout_hint(arrays, layout)
        if layout != "pycls" and wrong and not missing and not extra:
            hint += f" (or {layout}'s width rounding: resolve_model(state_dict, config, {layout!r}) builds that variant; the CLI does so itself)"
        raise ConversionError(
            f"the {layout} state dict does not fit the model of this config: {'; '.join(problems)}{hint}"
        )
    return out


def to_layout(variables: Mapping[str, Any], layout: str) -> dict[str, np.ndarray]:
    """The ``layout`` state dict (numpy, PyTorch shapes) of Flax ``{'params', 'batch_stats'}``."""
    _check_layout(layout)
    state_dict = {}
    for col in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(dict(variables.get(col, {}))).items():
            state_dict[torch_name(path, layout)] = _to_torch(np.asarray(leaf), path)
    return state_dict


def from_pycls(state_dict: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Flax variables for ``create_model(config)`` from a pycls-layout state dict (``stem.conv.weight``, ...)."""
    return from_layout(state_dict, config, "pycls")


def from_torchvision(state_dict: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Flax variables for ``create_model(config)`` from a torchvision ``regnet_*`` state dict (``stem.0.weight``, ...)."""
    return from_layout(state_dict, config, "torchvision")


def from_timm(state_dict: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Flax variables for ``create_model(config)`` from a timm ``regnet*`` state dict (``s1.b1.conv1.conv.weight``, ...)."""
    return from_layout(state_dict, config, "timm")


def to_pycls(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The pycls-layout state dict (numpy) of Flax ``{'params', 'batch_stats'}``."""
    return to_layout(variables, "pycls")


def to_torchvision(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The torchvision-layout state dict (numpy) of Flax ``{'params', 'batch_stats'}``."""
    return to_layout(variables, "torchvision")


def to_timm(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The timm-layout state dict (numpy) of Flax ``{'params', 'batch_stats'}``."""
    return to_layout(variables, "timm")


# ---------------------------------------------------------------- architecture from the weights


def _shape(state_dict: Mapping[str, Any], path: tuple[str, ...], layout: str) -> tuple[int, ...] | None:
    key = torch_name(path, layout)
    return tuple(np.shape(state_dict[key])) if key in state_dict else None


def _se_ratio(w_ins: list[int], w_ses: list[int]) -> float:
    """The ratio r with round(r * w_in) == w_se for every block, preferring RegNetY's 0.25."""
    for r in (0.25, w_ses[0] / w_ins[0]):
        if all(round(r * wi) == ws for wi, ws in zip(w_ins, w_ses)):
            return r
    raise ConversionError(
        f"SE widths {w_ses} are not round(r * w_in) of the block input widths {w_ins} for any one ratio r"
    )


def infer_model(state_dict: Mapping[str, Any], layout: str) -> dict[str, Any]:
    """An 'anynet' ``config.model`` built from the shapes of a RegNet state dict.

    Assumes what the weights cannot tell and every torchvision/timm RegNet has: a simple stem (3x3, stride 2),
    residual bottleneck blocks, stride 2 in every stage, ReLU.
    """
    _check_layout(layout)
    stem = _shape(state_dict, ("stem", "conv", "kernel"), layout)
    if stem is None or len(stem) != 4 or stem[2:] != (3, 3):
        raise ConversionError(
            f"no 3x3 stem conv {torch_name(('stem', 'conv', 'kernel'), layout)!r} (shape {stem}): not a RegNet in the {layout} layout"
            f"{_layout_hint(state_dict, layout)}"
        )
    depths, widths, bot_muls, group_ws, w_ins, w_ses = [], [], [], [], [], []
    w_in, i = stem[0], 1
    while _shape(state_dict, (f"s{i}", "b1", "f", "a", "kernel"), layout):
        j = 1
        while _shape(state_dict, (f"s{i}", f"b{j}", "f", "a", "kernel"), layout) is not None:
            b = _shape(state_dict, (f"s{i}", f"b{j}", "f", "b", "kernel"), layout)
            c = _shape(state_dict, (f"s{i}", f"b{j}", "f", "c", "kernel"), layout)
            if b is None or c is None:
                raise ConversionError(
                    f"block s{i}.b{j} has a first conv but no {'3x3' if b is None else 'last'} conv: not a bottleneck RegNet"
                )
            w_out, w_b, g = c[0], b[0], b[1]
            if j == 1:
                depths.append(0)
                widths.append(w_out)
                bot_muls.append(w_b / w_out)
                group_ws.append(g)
            elif (w_out, w_b / w_out, g) != (widths[-1], bot_muls[-1], group_ws[-1]):
                raise ConversionError(
                    f"block s{i}.b{j} has width/bottleneck/group width {(w_out, w_b, g)}, unlike the stage's first block"
                )
            se = _shape(state_dict, (f"s{i}", f"b{j}", "f", "se", "f_ex_0", "kernel"), layout)
            if se is not None:
                w_ins.append(w_in)
                w_ses.append(se[0])
            depths[-1] += 1
            w_in, j = w_out, j + 1
        i += 1
    if not depths:
        raise ConversionError(
            f"no blocks found (no key {torch_name(('s1', 'b1', 'f', 'a', 'kernel'), layout)!r}){_layout_hint(state_dict, layout)}"
        )
    if w_ses and len(w_ses) != sum(depths):
        raise ConversionError(f"only {len(w_ses)} of {sum(depths)} blocks have squeeze-excitation weights")
    head = _shape(state_dict, ("head", "fc", "kernel"), layout)
    if head is None:
        raise ConversionError(f"state dict has no classifier {torch_name(('head', 'fc', 'kernel'), layout)!r}")
    model = dict(
        type="anynet", stem_type="simple_stem_in", stem_w=stem[0], block_type="res_bottleneck_block",
        depths=depths, widths=widths, strides=[2] * len(depths), bot_muls=bot_muls, group_ws=group_ws,
        se_ratio=_se_ratio(w_ins, w_ses) if w_ses else 0.0, num_classes=head[0],
    )  # fmt: skip
    try:
        return validate_model(model)
    except ConfigError as e:
        raise ConversionError(f"the weights' shapes do not make a valid model ({e})") from e


def resolve_model(state_dict: Mapping[str, Any], config: Any | None, layout: str) -> tuple[dict[str, Any], str]:
    """``(config.model, note)`` to convert ``state_dict`` with.

    pycls weights must fit ``config``. torchvision/timm weights: without a config the architecture is read from the
    weights; with one, a model that differs from it only in stage widths (torchvision's width rounding for x_400mf,
    y_800mf, y_8gf, y_128gf; timm's ``*_tv`` models) is built as that 'anynet' variant, and ``note`` says so.
    Any other difference is left to ``from_layout``, which names the keys that do not fit.
    """
    from regnet_jax.models import model_spec

    _check_layout(layout)
    if config is None:
        if layout == "pycls":
            raise ConversionError(
                "pycls weights need --config: pycls has ResNets and AnyNets whose strides and stems the weights do not show"
            )
        return infer_model(state_dict, layout), "architecture read from the weights' shapes"
    fields = _model_fields(config)
    if layout == "pycls":
        return fields, ""
    check_layout_fits(fields, layout)
    try:
        inferred = infer_model(state_dict, layout)
    except ConversionError:
        return fields, ""  # from_layout names what is missing or wrong
    want, have = model_spec(fields), model_spec(inferred)
    have = dataclasses.replace(have, activation=want.activation, zero_init_last_bn=want.zero_init_last_bn)
    if have == want or dataclasses.replace(have, widths=want.widths, group_ws=want.group_ws) != want:
        return fields, ""
    variant = {k: v for k, v in fields.items() if k in ("activation", "zero_init_last_bn", "dtype", "param_dtype")}
    variant.update({k: inferred[k] for k in ("type", "stem_type", "stem_w", "block_type", "depths", "widths", "strides",
                                              "bot_muls", "group_ws", "se_ratio", "num_classes")})  # fmt: skip
    note = (
        f"the weights have stage widths {list(have.widths)} (group widths {list(have.group_ws)}) where the config has "
        f"{list(want.widths)} ({list(want.group_ws)}), as {layout}'s width rounding gives: built that 'anynet' variant"
    )
    return variant, note


# ---------------------------------------------------------------- files


def convert_file(
    layout: str,
    checkpoint: str,
    config: Any | None,
    output: str,
    *,
    channel_order: str = "",
    unsafe_pickle: bool = False,
) -> dict[str, Any]:
    """Convert a PyTorch checkpoint file to a weights directory (``weights.files``); returns a summary."""
    _check_layout(layout)
    output = paths.resolve(output)
    if output.exists():  # checked first: a long conversion should not end in this error
        raise WeightsError(f"{output} already exists: choose a new --output directory (nothing is overwritten)")
    state_dict = read_state_dict(checkpoint, unsafe_pickle)
    model, note = resolve_model(state_dict, config, layout)
    variables = from_layout(state_dict, model, layout)
    size = (config.resolution, config.dataset.eval_crop_fraction) if config is not None and "dataset" in config else ()
    conventions = input_spec(channel_order or CHANNEL_ORDER[layout], IMAGENET_MEAN, IMAGENET_STD, *size)
    source = f"{layout} {paths.resolve(checkpoint)}" + (f" ({note})" if note else "")
    save_weights(output, variables, model, conventions, source)
    n_params = sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(variables["params"]))
    n_tensors = len(jax.tree_util.tree_leaves(variables))
    return {
        "output": str(output),
        "model": model,
        "input": conventions,
        "note": note,
        "params": n_params,
        "tensors": n_tensors,
    }
