"""Keep library chatter out of the command-line tools' output; real warnings still show.

Every ``python -m regnet_jax.<tool>`` calls ``quiet_tool()`` from the package's ``__init__``, before the tool's module
(and so TensorFlow or JAX) is imported. It hides:

* TensorFlow's C++ start-up lines: its INFO/WARNING log (``TF_CPP_MIN_LOG_LEVEL=2``; errors still show) and the oneDNN
  notice, which TensorFlow prints whatever that level is, unless oneDNN's custom CPU kernels are off
  (``TF_ENABLE_ONEDNN_OPTS=0``; TensorFlow only decodes and augments images here, and the tests run so too);
* INFO and DEBUG records that installed libraries log through Python's ``logging`` (JAX's "Unable to initialize backend
  'tpu'", orbax's lines per checkpoint). Their warnings and errors, Python ``warnings``, and every record that
  regnet_jax itself logs are kept.

The library entry points (``train_and_evaluate``, ``evaluate``) call ``quiet_library_logs()`` too, and the data pipeline
sets TensorFlow's log level (``quiet_environment("TF_CPP_MIN_LOG_LEVEL")``) before it imports TensorFlow: this module
is the one place that sets these variables. An environment variable that is already set wins over these defaults.
``REGNET_JAX_VERBOSE=1`` turns all of it off.
"""

from __future__ import annotations

import logging
import os
import site
import sys
import sysconfig

VERBOSE_ENV = "REGNET_JAX_VERBOSE"
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # regnet_jax/


def verbose() -> bool:
    """Whether the user asked for every library's output (``REGNET_JAX_VERBOSE`` set to anything but '' or '0')."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def started_as_tool() -> bool:
    """Whether this process is running ``python -m regnet_jax.<tool>`` and is still locating that module.

    While ``-m`` locates a module (importing its parent packages), ``sys.argv[0]`` is ``'-m'`` (Python's documented
    behaviour), so a package ``__init__`` can tell that it is being imported to run one of its modules as a program.
    """
    return sys.argv[:1] == ["-m"]


def quiet_environment(*names: str) -> None:
    """Set the environment defaults of QUIET_ENVIRONMENT (``names`` only, if given; before TensorFlow is imported),
    unless verbose."""
    if not verbose():
        for name, value in QUIET_ENVIRONMENT.items():
            if not names or name in names:
                os.environ.setdefault(name, value)


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.update(site.getsitepackages() + [site.getusersitepackages()])
    return tuple(os.path.abspath(d) + os.sep for d in dirs)


class LibraryChatterFilter(logging.Filter):
    """Drops INFO and DEBUG records logged from installed libraries' (and the standard library's) code."""

    def __init__(self) -> None:
        super().__init__()
        self._library_dirs = _library_dirs()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        path = os.path.abspath(record.pathname)
        return path.startswith(_PACKAGE_DIR) or not path.startswith(self._library_dirs)


def quiet_library_logs() -> None:
    """Filter library INFO/DEBUG records (orbax's lines per checkpoint, gcsfs's per file, JAX's back-end notices) out of
    absl's log handler, what the tools and the trainer log through, unless verbose. Idempotent."""
    from absl import logging as absl_logging

    if verbose():
        return
    # The handler: records that reach the console through the root logger (JAX's, gcsfs's); the "absl" logger: what
    # libraries log through absl itself (orbax), also kept out of other handlers of that logger (a sweep's train.log).
    for target in (absl_logging.get_absl_handler(), logging.getLogger("absl")):
        if not any(isinstance(f, LibraryChatterFilter) for f in target.filters):
            target.addFilter(LibraryChatterFilter())


def quiet_tool() -> None:
    """Both: the quiet environment defaults and the log filter."""
    quiet_environment()
    quiet_library_logs()
