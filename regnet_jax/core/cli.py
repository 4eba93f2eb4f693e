"""The runner every command shares: flags defined on demand, ``--NAME.FIELD=VALUE`` overrides, one error pattern.

Every command (``regnet_jax/<command>.py``) has the same shape, and importing it defines no flags::

    def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
        define_config_flag("config", "...", flag_values=flag_values)     # regnet_jax.config.files
        flags.DEFINE_string("workdir", None, "...", flag_values=flag_values)

    def main(argv: list[str]) -> int | None:    # reads flags.FLAGS: flags, call, print; returns the exit status
        ...

    if __name__ == "__main__":
        run(main, define_flags)

A mistake in the command line (an unknown flag, a missing or broken config file, an unknown or misspelt config
field, a value of the wrong type) and any ``UserError`` raised by ``main`` print ``error: <one line>`` on stderr and
exit with status 2; Ctrl-C prints ``interrupted: <one line>`` and exits with status 130 (``core.interrupts``: a second
Ctrl-C ends the process at once); anything else keeps its traceback. Only this runner ends the process.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable

from absl import app, flags

from regnet_jax.core import interrupts
from regnet_jax.core.errors import ConfigError, UserError

EXIT_USAGE = 2  # bad input: a config, a file, an argument (any UserError)


@dataclasses.dataclass(frozen=True)
class Override:
    """One ``--config.PATH=TEXT``; ``text`` is None for a bare ``--config.PATH`` (or ``--noconfig.PATH``: negated)."""

    path: str
    text: str | None
    negated: bool = False
    flag: str = "config"

    def __str__(self) -> str:
        if self.text is None:
            return f"--{'no' if self.negated else ''}{self.flag}.{self.path}"
        return f"--{self.flag}.{self.path}={self.text}"


class OverridableFlag(flags.Flag):
    """A flag ``--NAME=...`` that takes ``--NAME.FIELD=VALUE`` overrides: ``parse_flags`` takes them out of the
    command line and sets ``overrides`` before absl parses the flag's value (``regnet_jax.config.files``'s
    ``--config`` is one)."""

    overrides: list[Override] = []


def _split_overrides(argv: list[str], names: list[str]) -> tuple[list[str], dict[str, list[Override]]]:
    """Take every ``--NAME.FIELD[=VALUE]`` / ``--noNAME.FIELD`` of an overridable flag NAME out of ``argv``."""
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
    """absl's flag parsing plus the overridable flags' overrides; any mistake is a one-line error and exit status 2.
    Returns the positional arguments (with the program name first)."""
    try:
        names = [n for n in flag_values if isinstance(flag_values[n], OverridableFlag) and flag_values[n].name == n]
        argv, overrides = _split_overrides(argv, names)
        for name in names:
            flag_values[name].overrides = overrides[name]
        rest = flag_values(argv)
        for name in names:
            if overrides[name] and flag_values[name].value is None:
                raise ConfigError(f"{overrides[name][0]} needs a config file to override: add --{name}=FILE")
        return rest
    except (UserError, flags.Error) as e:
        _exit_usage(e)
    except KeyboardInterrupt as e:  # while a config file runs
        print(interrupts.message(e), file=sys.stderr)
        sys.exit(interrupts.EXIT_INTERRUPTED)


def _exit_usage(e: Exception) -> None:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def run(
    main: Callable[[list[str]], int | None], define_flags: Callable[[flags.FlagValues], None] | None = None
) -> None:
    """Define the command's flags, then ``absl.app.run(main)``: command-line mistakes and any ``UserError`` become
    'error: ...' and exit status 2, Ctrl-C (``KeyboardInterrupt``, ``core.interrupts.Interrupted``) 'interrupted: ...'
    and exit status 130; ``main``'s return value is the exit status (None: 0)."""
    interrupts.set_handler(interrupts.on_first_interrupt)
    if define_flags is not None:
        define_flags(flags.FLAGS)

    def wrapped(argv: list[str]) -> int | None:
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt as e:
            interrupts.set_handler(interrupts.on_interrupt_again)
            print(interrupts.message(e), file=sys.stderr, flush=True)
            interrupts.set_handler(
                interrupts.on_interrupt_after_report
            )  # the exit may wait for threads: Ctrl-C ends it now
            sys.exit(interrupts.EXIT_INTERRUPTED)

    app.run(wrapped, flags_parser=parse_flags)
