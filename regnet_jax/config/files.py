"""Config files and command-line overrides, every mistake a one-line ``ConfigError`` that names the file or field.

    config = load_config_file("configs/regnetx_400mf.py:25ep")     # get_config('25ep') of that file
    apply_overrides(config, [Override("model.depths", "(3,4,23,3)")])   # --config.model.depths=(3,4,23,3)
    define_config_flag("config", "A config file, e.g. configs/regnetx_400mf.py[:25ep].", flag_values=flag_values)
    config_path(flag_values)                                       # the file (and ':arg') it was given as

A config file is a Python file with ``get_config()`` (or ``get_config(arg)``, given as ``file.py:arg``). An override
sets one existing field (at any depth), its text parsed by the field's current type; lists and tuples take a Python
literal (``(3,4,23,3)`` or ``3,4,23,3``). Unknown fields are refused with the closest known names.

A command's ``--config`` flag: its value is the file's config with the ``--config.FIELD=VALUE`` overrides applied
(``regnet_jax.core.cli.parse_flags`` collects them), shrunk in smoke mode (``config.smoke``), and locked.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import json
import os
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
from absl import flags

from regnet_jax.config.smoke import shrink_loaded
from regnet_jax.core.cli import OverridableFlag, Override
from regnet_jax.core.errors import ConfigError

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _closest(name: str, choices: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(name, list(choices), n=3, cutoff=0.7)


def _missing_file_error(path: str) -> ConfigError:
    folder = os.path.dirname(path) or "."
    hint = ""
    if os.path.isdir(folder):
        ext = os.path.splitext(path)[1] or ".py"
        near = _closest(os.path.basename(path), (f for f in os.listdir(folder) if f.endswith(ext)))
        if near:
            hint = f"; did you mean {' or '.join(os.path.join(os.path.dirname(path), f) for f in near)}?"
    return ConfigError(
        f"config file {path} does not exist (looked in {os.getcwd()}){hint or ': give e.g. --config=configs/quickstart.py'}"
    )


def _error_in_file(path: str, e: BaseException) -> ConfigError:
    """'FILE line N: Error: message' for an exception raised while running a config file (its deepest line in FILE)."""
    if isinstance(e, SyntaxError) and e.filename and os.path.abspath(e.filename) == os.path.abspath(path):
        text = f" in {e.text.strip()!r}" if e.text and e.text.strip() else ""
        return ConfigError(f"{path} line {e.lineno}: {type(e).__name__}: {e.msg}{text}")
    lines = [
        f.lineno for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)
    ]
    where = f"{path} line {lines[-1]}" if lines else path
    return ConfigError(f"{where}: {type(e).__name__}: {e}")


def _call_get_config(path: str, module: Any, arg: str | None) -> Any:
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(
            f"{path} has no get_config() function: a config file defines get_config() returning the config"
        )
    args = () if arg is None else (arg,)
    try:
        inspect.signature(get_config).bind(*args)
    except TypeError:
        if arg is None:
            raise ConfigError(f"{path} needs an argument after ':' (see its docstring): --config={path}:ARG") from None
        raise ConfigError(
            f"{path} takes no ':' argument (its get_config() has no parameter): use --config={path}"
        ) from None
    return get_config(*args)


def _load_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} line {e.lineno}: invalid JSON: {e.msg}") from None


def load_config_file(path_arg: str) -> Any:
    """``get_config()`` of a config file, or ``get_config(arg)`` for ``'file.py:arg'`` (as ml_collections does);
    the content of a ``.json`` file (e.g. a workdir's config.json)."""
    path, sep, arg = path_arg.partition(":")
    if not path:
        raise ConfigError("the config file name is empty: give e.g. --config=configs/quickstart.py")
    if not os.path.isfile(path):
        raise _missing_file_error(path)
    if path.endswith(".json"):
        if sep:
            raise ConfigError(f"{path} is a JSON file: it takes no ':' argument")
        return _load_json(path)
    name = "regnet_jax_config_" + "".join(
        c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0]
    )
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return _call_get_config(path, module, arg if sep else None)
    except ConfigError:
        raise
    except Exception as e:  # a bug in the user's config file: report its file, line and error, not our traceback
        raise _error_in_file(path, e) from None


def flat_fields(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'base_lr': 0.1}} -> {'optim.base_lr': 0.1}: the leaves of nested mappings by dotted path."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flat_fields(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _leaf_paths(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        out += _leaf_paths(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [f"{prefix}{k}"]
    return out


def _unknown_field(
    config: ml_collections.ConfigDict, node: ml_collections.ConfigDict, where: str, key: str, label: str, prefix: str
) -> ConfigError:
    near = [f"{where}.{k}"[len("config.") :] for k in _closest(key, node.keys())]
    by_leaf: dict[str, list[str]] = {}  # the same name elsewhere, e.g. --config.base_lr -> optim.base_lr
    for p in _leaf_paths(config):
        by_leaf.setdefault(p.rsplit(".", 1)[-1], []).append(p)
    near += [p for leaf in _closest(key, by_leaf) for p in by_leaf[leaf] if p not in near]
    if near:
        hint = "did you mean " + " or ".join(f"{prefix}{p}" for p in near[:3]) + "?"
    else:
        hint = f"its fields are {', '.join(sorted(node.keys()))}"
    return ConfigError(f"{label}: {where} has no field {key!r}; {hint}")


def _parent(
    config: ml_collections.ConfigDict, path: str, label: str, prefix: str
) -> tuple[ml_collections.ConfigDict, str]:
    """The group holding the existing field ``path`` ('optim.base_lr') and its name; unknown fields are refused."""
    node, parts = config, path.split(".")
    for i, key in enumerate(parts):
        where = ".".join(["config", *parts[:i]])
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"{label}: {where} is {node!r}, not a group of fields")
        if not key or key not in node:
            raise _unknown_field(config, node, where, key, label, prefix)
        if i < len(parts) - 1:
            node = node[key]
    return node, parts[-1]


def _assign(node: ml_collections.ConfigDict, key: str, value: Any, label: str) -> None:
    try:
        node[key] = value
    except TypeError as e:  # ConfigDict's own type check
        raise ConfigError(f"{label}: {e}") from None


def set_field(config: ml_collections.ConfigDict, path: str, value: Any, label: str) -> None:
    """``config.<path> = value`` for an existing field (in place); ``label`` names the override in errors."""
    node, key = _parent(config, path, label, prefix="")
    _assign(node, key, value, label)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "True or False"
    if isinstance(v, (int, float)):
        return "a number"
    return "a string" if isinstance(v, str) else type(v).__name__


def _parse_sequence(ov: Override, old: list | tuple, where: str) -> list | tuple:
    try:
        value = ast.literal_eval(ov.text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, (list, tuple)):
        example = "(" + ", ".join(map(repr, old)) + ("," if len(old) == 1 else "") + ")"
        raise ConfigError(
            f"{ov}: {where} is a {type(old).__name__}: write a Python list or tuple, e.g. --{ov.flag}.{ov.path}='{example}' (quoted for the shell)"
        )
    kinds = {_kind(x) for x in old}
    for x in value:
        if kinds and _kind(x) not in kinds:
            raise ConfigError(f"{ov}: {where} holds {' / '.join(sorted(kinds))}; {x!r} is not")
    return type(old)(value)


def _parse_value(ov: Override, old: Any, where: str) -> Any:
    """The override's text as a value of ``old``'s type."""
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(
            f"{ov}: {where} is a group of fields; set them one by one, e.g. --{ov.flag}.{ov.path}.{next(iter(old.keys()), 'FIELD')}=VALUE"
        )
    if isinstance(old, bool):
        if ov.text is None:
            return not ov.negated
        if ov.text.lower() in _TRUE + _FALSE:
            return ov.text.lower() in _TRUE
        raise ConfigError(f"{ov}: {where} is True or False, not {ov.text!r}")
    if ov.text is None:
        raise ConfigError(f"{ov}: {where} needs a value: write --{ov.flag}.{ov.path}=VALUE (it is {old!r} now)")
    if isinstance(old, int):
        try:
            return int(ov.text)
        except ValueError:
            raise ConfigError(f"{ov}: {where} is an integer (it is {old!r} now); {ov.text!r} is not one") from None
    if isinstance(old, float):
        try:
            return float(ov.text)
        except ValueError:
            raise ConfigError(f"{ov}: {where} is a number (it is {old!r} now); {ov.text!r} is not one") from None
    if isinstance(old, str):
        return ov.text
    if isinstance(old, (list, tuple)):
        return _parse_sequence(ov, old, where)
    try:
        value = ast.literal_eval(ov.text)
    except (ValueError, SyntaxError):
        value = ov.text  # a None field: a literal if it reads as one, else the string
    if old is not None and not isinstance(value, type(old)):
        raise ConfigError(f"{ov}: {where} is a {type(old).__name__} (it is {old!r} now); {ov.text!r} is not")
    return value


def apply_override(config: ml_collections.ConfigDict, ov: Override) -> None:
    """Set one existing field of ``config`` (in place) from a command-line override."""
    node, key = _parent(config, ov.path, str(ov), prefix=f"--{ov.flag}.")
    _assign(node, key, _parse_value(ov, node[key], f"config.{ov.path}"), str(ov))


def apply_overrides(config: Any, overrides: Iterable[Override]) -> Any:
    """Apply ``overrides`` in order (the last one of a field wins); returns ``config``."""
    overrides = list(overrides)
    if overrides and not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{overrides[0]}: the config file returned a {type(config).__name__}, not an ml_collections.ConfigDict, so it has no fields to set"
        )
    for ov in overrides:
        apply_override(config, ov)
    return config


def _not_a_config(path_arg: str, value: Any) -> ConfigError:
    """A config file that gave something other than a config (a mapping of fields)."""
    path, sep, arg = path_arg.partition(":")
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    source = "its content is" if path.endswith(".json") else f"its get_config({repr(arg) if sep else ''}) returned"
    expected = ("a JSON object of config fields" if path.endswith(".json")
                else "an ml_collections.ConfigDict (e.g. `return ml_collections.ConfigDict(...)`; see configs/quickstart.py)")  # fmt: skip
    hint = " (does get_config() end with `return config`?)" if value is None and not path.endswith(".json") else ""
    return ConfigError(
        f"{path} is not a config: {source} {shown} (type {type(value).__name__}){hint}; expected {expected}"
    )


class _ConfigFileFlag(OverridableFlag):
    """``--NAME=FILE[:ARG]``: its value is the file's config with the ``--NAME.FIELD=VALUE`` overrides applied."""

    def __init__(self, name: str, help_string: str, lock: bool):
        super().__init__(flags.ArgumentParser(), flags.ArgumentSerializer(), name, None, help_string)
        self.lock = lock
        self.path: str | None = None  # as given, with any ':ARG'
        self.overrides: list[Override] = []  # set by parse_flags before absl parses the command line

    def _parse(self, argument):
        if argument is None or isinstance(argument, ml_collections.ConfigDict):
            return argument
        self.path = argument
        config = load_config_file(argument)
        if isinstance(config, Mapping) and not isinstance(config, ml_collections.ConfigDict):  # a .json file
            config = ml_collections.ConfigDict(config)
        if not isinstance(config, ml_collections.ConfigDict):
            raise _not_a_config(argument, config)
        config = shrink_loaded(apply_overrides(config, self.overrides))
        if self.lock and isinstance(config, ml_collections.ConfigDict):
            config.lock()
        return config


def define_config_flag(
    name: str, help_string: str, lock: bool = True, flag_values: flags.FlagValues = flags.FLAGS
) -> None:
    """Define ``--NAME`` (a config file; its ``--NAME.FIELD=VALUE`` overrides are applied by ``parse_flags``)."""
    flags.DEFINE_flag(_ConfigFileFlag(name, help_string, lock), flag_values)


def config_path(flag_values: flags.FlagValues, name: str = "config") -> str:
    """The file (and ':arg') a config flag was given as."""
    return flag_values[name].path
