"""JAX's persistent compilation cache (regnet_jax.core.compilation_cache): the option, the defaults, atomic writes,
and a rerun that loads the compiled steps instead of compiling them."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest
from absl import flags
from helpers_train import REPO, cli_env, tiny_config, write_config_file
from jax._src import compilation_cache as jax_cache

from regnet_jax.config import ConfigError
from regnet_jax.core import compilation_cache as cc
from regnet_jax.core.cli import parse_flags
from regnet_jax.design_space import launch

JAX_OPTIONS = (
    "jax_compilation_cache_dir",
    "jax_enable_compilation_cache",
    "jax_persistent_cache_min_compile_time_secs",
)


@pytest.fixture
def jax_options(monkeypatch):
    """Restore JAX's cache options and the cache class after the test (enable() changes them process-wide)."""
    saved = {k: getattr(jax.config, k) for k in JAX_OPTIONS}
    monkeypatch.setattr(jax_cache, "LRUCache", jax_cache.LRUCache)
    monkeypatch.delenv(cc.DIR_ENV, raising=False)
    monkeypatch.delenv(cc.MIN_COMPILE_TIME_ENV, raising=False)
    yield
    for k, v in saved.items():
        jax.config.update(k, v)


def test_parse_option(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert cc.parse("auto") == cc.parse(None) == cc.parse(" AUTO ") == "auto"
    assert cc.parse("off") == cc.parse("Off") == "off"
    assert cc.parse("xla") == str(tmp_path / "xla")  # relative: made absolute
    assert cc.parse("~/c") == os.path.join(os.path.expanduser("~"), "c")
    assert cc.parse("gs://bucket/xla") == "gs://bucket/xla"
    for word in ("", "false", "0", "none", "on", "true"):
        with pytest.raises(ConfigError, match="give a directory, 'auto'"):
            cc.parse(word)


def test_flag_rejects_a_switch_word():
    fv = flags.FlagValues()
    cc.define_flag(fv)
    assert fv(["prog"]) and fv.compilation_cache == "auto"
    with pytest.raises(SystemExit) as e:
        parse_flags(["prog", "--compilation_cache=false"], fv)
    assert e.value.code == 2


def test_defaults(jax_options, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", True)
    # Single process: the user's cache directory; multi-process: off unless a directory is named.
    assert cc.resolve("auto", 1) == (str(tmp_path / "xdg" / "regnet_jax" / "xla"), "the default")
    assert cc.resolve("auto", 2)[0] is None
    assert cc.resolve(str(tmp_path / "d"), 2)[0] == str(tmp_path / "d")
    assert cc.resolve("off", 1)[0] is None
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cc.default_dir() == os.path.join(os.path.expanduser("~"), ".cache", "regnet_jax", "xla")
    # JAX's own setting (JAX_COMPILATION_CACHE_DIR, read into jax.config at import) wins over the default ...
    monkeypatch.setenv(cc.DIR_ENV, str(tmp_path / "env"))
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "env"))
    assert cc.resolve("auto", 1) == (str(tmp_path / "env"), cc.DIR_ENV)
    assert cc.resolve("auto", 2)[0] == str(tmp_path / "env")  # the user named it
    assert cc.resolve(str(tmp_path / "flag"), 1)[0] == str(tmp_path / "flag")  # ... the flag wins over it
    # JAX_ENABLE_COMPILATION_CACHE=false: off.
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", False)
    assert cc.resolve("auto", 1)[0] is None


def test_enable_sets_jax(jax_options, tmp_path):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", cc.JAX_DEFAULT_MIN_COMPILE_TIME_S)
    assert cc.enable(str(tmp_path / "c"), process_count=1) == str(tmp_path / "c")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c") and jax.config.jax_enable_compilation_cache
    assert jax.config.jax_persistent_cache_min_compile_time_secs == cc.MIN_COMPILE_TIME_S
    assert getattr(jax_cache.LRUCache, "atomic_writes", False)
    assert cc.enable("auto", process_count=2) == str(tmp_path / "c")  # the directory set above is JAX's setting now
    assert cc.enable("off", process_count=1) is None and not jax.config.jax_enable_compilation_cache
    # JAX's cache switched off before enable() (core.distributed's multi-process CPU guard): a named directory is unused.
    assert cc.enable(str(tmp_path / "c"), process_count=1) is None


def test_an_unwritable_directory_turns_it_off(jax_options, tmp_path):
    (tmp_path / "file").write_text("")
    assert cc.enable(str(tmp_path / "file" / "xla"), process_count=1) is None  # cannot be made: off, not an error
    assert not jax.config.jax_enable_compilation_cache


def test_atomic_writes(jax_options, tmp_path):
    assert cc.install_atomic_writes()
    cache = jax_cache.LRUCache(str(tmp_path), max_size=-1)
    cache.put("k", b"first")
    cache.put("k", b"second")  # as JAX: an existing entry is kept
    assert cache.get("k") == b"first"
    with pytest.raises(TypeError):
        cache.put("broken", None)  # a write that fails leaves nothing behind
    assert sorted(os.listdir(tmp_path)) == ["k-cache"]
    assert cache.get("broken") is None


def _log_says(log: pathlib.Path, pattern: str) -> re.Match:
    text = log.read_text()
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in the log:\n{text[-3000:]}"
    return m


def _run(module: str, args: list[str], log: pathlib.Path, timeout: float, **env: str) -> int:
    """``python -m module args`` on one CPU device."""
    env = cli_env(1) | env
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=timeout)  # fmt: skip
    log.write_text(out.stdout)
    return out.returncode


@pytest.mark.timeout(150)
def test_second_run_loads_the_compiled_steps(tmp_path):
    """The sweep's second model of the same shape (a new workdir) loads every executable the first run wrote."""
    config = write_config_file(tmp_path / "tiny.py", tiny_config(num_epochs=1, **{"dataset.num_eval_examples": 16}))
    cache = tmp_path / "cache"
    for i in (1, 2):
        log = tmp_path / f"run{i}.log"
        rc = _run(
            "regnet_jax.train",
            [f"--config={config}", f"--workdir={tmp_path / f'w{i}'}", f"--compilation_cache={cache}"],
            log,
            timeout=140,
        )
        assert rc == 0, log.read_text()[-3000:]
        loaded, written = map(
            int,
            _log_says(
                log,
                r"compilation cache: (\d+) executable\(s\) loaded, (\d+) compiled and written "
                rf"\({re.escape(str(cache))} \(--compilation_cache\)\)",
            ).groups(),
        )
        entries = sorted(p.name for p in cache.iterdir())
        if i == 1:
            assert loaded == 0 and written == len(entries) > 0 and any(e.startswith("jit_step") for e in entries), (
                entries
            )
            first = entries
        else:
            assert loaded == len(first) and written == 0 and entries == first


@pytest.mark.timeout(90)
def test_off_writes_nothing(tmp_path):
    """--compilation_cache=off: nothing is written, even where JAX_COMPILATION_CACHE_DIR names a directory."""
    config = write_config_file(tmp_path / "tiny.py", tiny_config())
    env_dir, log = tmp_path / "env_cache", tmp_path / "bench.log"
    args = [f"--config={config}", "--batch=8", "--compile_only", "--compilation_cache=off"]
    assert _run("regnet_jax.benchmark", args, log, timeout=80, **{cc.DIR_ENV: str(env_dir)}) == 0, log.read_text()[
        -3000:
    ]
    _log_says(log, r"compilation cache: off \(--compilation_cache=off\)")
    assert not env_dir.exists() or not list(env_dir.iterdir())


def test_sweep_passes_the_option_to_its_trainers(tmp_path):
    launcher = launch.Launcher.__new__(launch.Launcher)
    launcher._config_file = lambda mid: f"{mid}.py"
    launcher.sweep_dir = type("S", (), {"run_dir": staticmethod(lambda mid: f"runs/{mid}")})()
    launcher.opts = launch.LaunchOptions(compilation_cache=str(tmp_path / "c"))
    assert launcher._trainer_cmd("m0")[-1] == f"--compilation_cache={tmp_path / 'c'}" and launcher._trainer_env() == {}
    launcher.opts = launch.LaunchOptions(compilation_cache="off", trainer="my_trainer --flag")
    assert not any("compilation_cache" in a for a in launcher._trainer_cmd("m0"))
    assert launcher._trainer_env() == {"JAX_ENABLE_COMPILATION_CACHE": "false"}
    launcher.opts = launch.LaunchOptions(trainer="my_trainer")
    assert launcher._trainer_env() == {}
    assert (
        launch._cache_flag("auto") == ""
        and launch._cache_flag(str(tmp_path / "c")) == f" --compilation_cache={tmp_path / 'c'}"
    )
