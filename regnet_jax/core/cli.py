"""Shared plumbing of the command-line tools: the ``--config`` flag, and one-line errors (exit status 2) for bad input.

    define_config_flag("config", "A config file, e.g. configs/regnetx_400mf.py[:25ep].")
    run(main)     # FLAGS.config is the loaded ConfigDict, with every --config.FIELD=VALUE applied

A mistake in the command line (an unknown flag, a missing or broken config file, an unknown or misspelt config
field, a value of the wrong type) and a ``ConfigError`` raised by ``main`` print ``error: <one line>`` on stderr
and exit with status 2. With ``REGNET_JAX_SMOKE=1`` every config is shrunk as it is loaded (``regnet_jax.smoke``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping

import ml_collections
from absl import app, flags

from regnet_jax import smoke
from regnet_jax.config import ConfigError
from regnet_jax.config_file import Override, apply_overrides, load_config_file

EXIT_USAGE = 2


class _ConfigFileFlag(flags.Flag):
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
        config = apply_overrides(config, self.overrides)
        if smoke.active():
            config = smoke.shrink_config(config)
        if self.lock and isinstance(config, ml_collections.ConfigDict):
            config.lock()
        return config


def define_config_flag(name: str, help_string: str, lock: bool = True, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define ``--NAME`` (a config file; its ``--NAME.FIELD=VALUE`` overrides are applied by ``parse_flags``)."""
    flags.DEFINE_flag(_ConfigFileFlag(name, help_string, lock), flag_values)


def config_path(flag_values: flags.FlagValues, name: str = "config") -> str:
    """The file (and ':arg') a config flag was given as."""
    return flag_values[name].path


def _split_overrides(argv: list[str], names: list[str]) -> tuple[list[str], dict[str, list[Override]]]:
    """Take every ``--NAME.FIELD[=VALUE]`` / ``--noNAME.FIELD`` of a config flag NAME out of ``argv``."""
    pattern = re.compile(rf"^--?(no)?({'|'.join(map(re.escape, names))})\.([^=]*)(=(.*))?$", re.S)
    rest, overrides = [], {n: [] for n in names}
    for i, arg in enumerate(argv):
        m = pattern.match(arg) if i and names else None
        if arg == "--":
            rest += argv[i:]
            break
        if not m:
            rest.append(arg)
            continue
        negated, name, path, _, text = m.groups()
        if negated and text is not None:
            raise ConfigError(f"{arg}: --no{name}.FIELD takes no value; write --{name}.{path}={text}")
        overrides[name].append(Override(path, text, bool(negated), name))
    return rest, overrides


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's flag parsing plus the config flags' overrides; any mistake is a one-line error and exit status 2.
    Returns the positional arguments (with the program name first)."""
    try:
        names = [n for n in flag_values if isinstance(flag_values[n], _ConfigFileFlag) and flag_values[n].name == n]
        argv, overrides = _split_overrides(argv, names)
        for name in names:
            flag_values[name].overrides = overrides[name]
        rest = flag_values(argv)
        for name in names:
            if overrides[name] and flag_values[name].value is None:
                raise ConfigError(f"{overrides[name][0]} needs a config file to override: add --{name}=FILE")
        return rest
    except (ConfigError, flags.Error) as e:
        _exit_usage(e)


def _exit_usage(e: Exception) -> None:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def run(main: Callable[[list[str]], None], user_errors: tuple[type[Exception], ...] = ()) -> None:
    """``absl.app.run(main)``, turning command-line mistakes, ConfigError (and ``user_errors``) into 'error: ...'
    and exit status 2."""

    def wrapped(argv: list[str]) -> None:
        try:
            main(argv)
        except (ConfigError, *user_errors) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USAGE)

    app.run(wrapped, flags_parser=parse_flags)
