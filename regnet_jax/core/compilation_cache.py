"""JAX's persistent compilation cache: a resumed run, a preempted job's restart and a sweep's retry load their compiled
steps from disk instead of compiling them again (tens of seconds on a CPU, minutes on a pod).

    define_flag(flag_values)                       # --compilation_cache=DIR|auto|off (train, evaluate, benchmark, sweep)
    enable(option='auto', process_count=None) -> str | None   # the directory in use, or None (off); said at exit
    resolve(option, process_count) -> (directory | None, why)  # the same decision, changing nothing
    stats() -> {'loaded': n, 'written': m}          # executables this process loaded from / wrote to the cache

A run-time option, not a recipe field: it never changes what a run computes, so it is not in config.json and not in
a resumed run's config diff. The decision, in order:

* ``off``: no cache.
* ``DIR`` (a local path or ``gs://...``): that directory, also in a multi-process run (name a directory every host
  reads, e.g. on a shared file system: JAX writes entries only from process 0). On CPU a multi-process run never
  uses it (``core.distributed`` turns JAX's cache off there: a process that loads an executable while another
  compiles it hangs in the first Gloo collective, issue 21).
* ``auto`` (the default): JAX's own setting if there is one (``JAX_COMPILATION_CACHE_DIR``, or
  ``jax_compilation_cache_dir`` set by the program; ``JAX_ENABLE_COMPILATION_CACHE=false`` turns it off); else, in a
  single process (one host, any number of local devices), ``$XDG_CACHE_HOME/regnet_jax/xla`` or
  ``~/.cache/regnet_jax/xla``, local to the host; in a multi-process run, off.

Several processes on one host may share a directory. JAX's writer (``jax._src.lru_cache.LRUCache.put``, JAX 0.10 to
0.12) writes an entry in place, so another process can read half an entry (JAX then warns and compiles) and a process
killed while writing leaves a truncated entry that every later run warns about and recompiles (``put`` never
replaces an existing key). ``enable`` therefore has JAX write each entry to a temporary file renamed into place
(atomic on a local or NFS file system; object storage writes whole objects anyway).
"""

from __future__ import annotations

import atexit
import os
import secrets
from typing import Any

import jax
from absl import flags, logging

from regnet_jax.core.errors import ConfigError

AUTO, OFF = "auto", "off"
FLAG = "compilation_cache"
DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
MIN_COMPILE_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
JAX_DEFAULT_MIN_COMPILE_TIME_S = 1.0
# Cache every executable, however fast it compiled (JAX's default: those over 1 s). The trainer's start compiles about a
# dozen small jitted operations besides the initialisation and the step (0.02-0.5 s each, 1-2.5 s together on the
# loaded 2-core machine of docs/performance.md); one of them loads from the cache in about a fifth of its compile time
# (25 ms against 125 ms there, tracing included), and their entries are a few kB each.
MIN_COMPILE_TIME_S = 0.0
# Words a user may mean as a switch; as a directory they would silently create ./false etc.
_NOT_DIRECTORIES = ("", "on", "true", "yes", "1", "none", "false", "no", "0", "disable", "disabled")

_counts = {"loaded": 0, "written": 0}
_listening = False
_in_use: str | None = None


def define_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """``--compilation_cache=DIR|auto|off`` for a command that compiles steps."""
    flags.DEFINE_string(
        FLAG, AUTO, "JAX's persistent compilation cache, so a rerun loads compiled steps instead of compiling them: "
        "a directory (local or gs://), 'off', or 'auto' (JAX_COMPILATION_CACHE_DIR if set; else in a single process "
        "$XDG_CACHE_HOME/regnet_jax/xla or ~/.cache/regnet_jax/xla; off in a multi-process run).",
        flag_values=flag_values,
    )  # fmt: skip

    def check(value: str) -> bool:
        try:
            parse(value)
        except ConfigError as e:
            raise flags.ValidationError(str(e)) from None
        return True

    flags.register_validator(FLAG, check, flag_values=flag_values)


def default_dir() -> str:
    """``$XDG_CACHE_HOME/regnet_jax/xla``, or ``~/.cache/regnet_jax/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "regnet_jax", "xla")


def parse(option: str | None) -> str:
    """``'auto'``, ``'off'`` or a directory (local ones made absolute, ``~`` expanded); a ConfigError otherwise."""
    text = (option if option is not None else AUTO).strip()
    if text.lower() in (AUTO, OFF):
        return text.lower()
    if text.lower() in _NOT_DIRECTORIES:
        raise ConfigError(f"--{FLAG}={option!r}: give a directory, 'auto' (the default) or 'off'")
    if "://" in text:
        return text
    return os.path.abspath(os.path.expanduser(text))


def _process_count() -> int:
    """The number of processes, without starting JAX's backends (a command may still configure them)."""
    initialized = getattr(jax.distributed, "is_initialized", None)
    if initialized is not None and not initialized():
        return 1
    return jax.process_count()


def resolve(option: str | None, process_count: int) -> tuple[str | None, str]:
    """The cache directory ``option`` means in a run of ``process_count`` processes (None: no cache), and why."""
    choice = parse(option)
    if choice == OFF:
        return None, f"--{FLAG}=off"
    if choice != AUTO:
        return choice, f"--{FLAG}"
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured, DIR_ENV if os.environ.get(DIR_ENV) == configured else "jax_compilation_cache_dir"
    if process_count > 1:
        return None, f"the default in a multi-process run: name a directory every host reads with --{FLAG}=DIR"
    if not jax.config.jax_enable_compilation_cache:
        return None, "JAX's cache is switched off: jax_enable_compilation_cache / JAX_ENABLE_COMPILATION_CACHE"
    return default_dir(), "the default"


def enable(option: str | None = AUTO, process_count: int | None = None) -> str | None:
    """Turn JAX's persistent compilation cache on or off as ``option`` says (module docstring); at exit, once something
    was compiled or loaded, log one line with the counts and the directory. Call it before the first compilation.
    Returns the directory or None."""
    global _in_use
    if process_count is None:
        process_count = _process_count()
    directory, why = resolve(option, process_count)
    if directory is None:
        if jax.config.jax_enable_compilation_cache:
            jax.config.update("jax_enable_compilation_cache", False)
        _in_use = None
        logging.info("compilation cache: off (%s)", why)
        return None
    if "://" not in directory and (problem := _unwritable(directory)):  # JAX would only warn at each compilation
        jax.config.update("jax_enable_compilation_cache", False)
        _in_use = None
        logging.warning("compilation cache: off (%s cannot be written: %s)", directory, problem)
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    if (
        MIN_COMPILE_TIME_ENV not in os.environ
        and jax.config.jax_persistent_cache_min_compile_time_secs == JAX_DEFAULT_MIN_COMPILE_TIME_S
    ):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    install_atomic_writes()
    if not jax.config.jax_enable_compilation_cache:  # e.g. core.distributed's multi-process CPU guard (issue 21)
        _in_use = None
        cpu = process_count > 1 and jax.default_backend() == "cpu"
        logging.warning("compilation cache: off (%s is not used: %s)", directory,
                        "a multi-process CPU run cannot share compiled steps, docs/training.md" if cpu
                        else "jax_enable_compilation_cache / JAX_ENABLE_COMPILATION_CACHE is off")  # fmt: skip
        return None
    _count_cache_events()
    _in_use = f"{directory} ({why})"
    logging.vlog(1, "compilation cache: %s", _in_use)  # said at exit, once something was compiled or loaded
    return directory


def _unwritable(directory: str) -> str:
    """Why JAX could not write entries into the local ``directory`` (made if missing), or ''."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return "" if os.access(directory, os.W_OK | os.X_OK) else "no write permission"


def stats() -> dict[str, int]:
    """Executables this process loaded from the persistent cache and wrote to it (since ``enable``)."""
    return dict(_counts)


def _on_event(event: str, **kwargs: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _counts["loaded"] += 1
    elif (
        event == "/jax/compilation_cache/cache_misses"
    ):  # recorded as JAX writes an entry (compilation_cache.put_executable_and_time)
        _counts["written"] += 1


def _report() -> None:
    if _in_use is not None and any(_counts.values()):  # a command that stopped before compiling says nothing
        logging.info(
            "compilation cache: %d executable(s) loaded, %d compiled and written (%s)",
            _counts["loaded"],
            _counts["written"],
            _in_use,
        )


def _count_cache_events() -> None:
    global _listening
    if not _listening:
        jax.monitoring.register_event_listener(_on_event)
        atexit.register(_report)
        _listening = True


def install_atomic_writes() -> bool:
    """Make JAX write each cache entry to a temporary file that is then renamed into place (module docstring).

    Replaces the cache class that ``jax._src.compilation_cache.get_file_cache`` builds (private JAX, 0.10 to 0.12)
    with a subclass whose ``put`` is atomic for a local directory without a size limit; with a size limit
    (``jax_compilation_cache_max_size``) JAX's own file lock already serialises readers and writers, and object
    storage is written whole. Returns False (and changes nothing) where JAX's cache does not look as expected."""
    try:
        from jax._src import compilation_cache, lru_cache
    except ImportError:
        return False
    base, suffix = getattr(compilation_cache, "LRUCache", None), getattr(lru_cache, "_CACHE_SUFFIX", None)
    if base is None or suffix is None or not callable(getattr(base, "put", None)):
        return False
    if getattr(base, "atomic_writes", False):
        return True

    class AtomicWriteCache(base):
        atomic_writes = True

        def put(self, key: str, value: bytes) -> None:
            directory = str(self.path)
            if getattr(self, "eviction_enabled", True) or "://" in directory or not key:
                return super().put(key, value)
            final = os.path.join(directory, f"{key}{suffix}")
            if os.path.exists(final):  # as JAX: an existing entry is kept
                return
            tmp = os.path.join(directory, f".{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            try:
                with open(tmp, "xb") as f:
                    f.write(value)
                os.replace(tmp, final)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    compilation_cache.LRUCache = AtomicWriteCache
    return True
