"""Test set-up: 8 emulated CPU devices (for the sharded code), XLA's cheapest compilation and TensorFlow as quiet as the
tools run it; the scenarios that run other processes start at once, beside the in-process tests (tests/background.py)."""

import os
import tempfile

import pytest

from regnet_jax.core import logs

logs.quiet_environment()  # before anything imports TensorFlow
# Compiling is most of the suite's time, and without XLA's backend (LLVM) optimisation it is much shorter; the HLO
# programs are the same, and every comparison (parity with pycls, golden files, one run against another) holds at its
# tolerance. The processes the tests start inherit it. A level already in XLA_FLAGS wins
# (XLA_FLAGS=--xla_backend_optimization_level=2, XLA's default, runs the suite as users run the code).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"])
    )
# The commands' compilation cache (--compilation_cache=auto) goes where the trainer tests keep theirs
# (tests/helpers_train.py), not into ~/.cache: the command-line tools the tests start inherit this.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"regnet_jax_test_xla_cache_{os.getuid()}")
)

import jax  # noqa: E402

from tests import background  # noqa: E402  (after the environment above: the scenarios' processes get it)

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="session", autouse=True)
def _background_scenarios(request, tmp_path_factory):
    background.worker.start(request.session.items, tmp_path_factory)
    yield
    background.worker.stop()


def pytest_collection_modifyitems(items):
    """The docs harness's test runs last: the background worker, which starts the scenario needed last first, then
    runs the longest scenario (the harness, ~2 min) beside all the in-process tests, and the test finds it done."""
    items.sort(key=lambda item: "documented_commands" in getattr(item, "fixturenames", ()))
