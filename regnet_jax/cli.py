"""Shared plumbing of the command-line tools: clean one-line errors for bad input instead of tracebacks."""

from __future__ import annotations

import sys
from typing import Callable

from absl import app
from ml_collections import config_flags

from regnet_jax.config import ConfigError


def config_path(flag_values, name: str = "config") -> str:
    """The file (and ':arg') a config flag was given as."""
    return config_flags.get_config_filename(flag_values[name])


def run(main: Callable[[list[str]], None], user_errors: tuple[type[Exception], ...] = ()) -> None:
    """``absl.app.run(main)``, turning ConfigError (and ``user_errors``) into 'error: ...' and exit status 2."""

    def wrapped(argv: list[str]) -> None:
        try:
            main(argv)
        except (ConfigError, *user_errors) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped)
