"""Test set-up: 8 emulated CPU devices (for the sharded code), quiet TensorFlow, the shared reference data."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
    """../shared/reference (the golden pycls outputs); the tests that need it fail loudly if it is missing."""
    if not (SHARED_REFERENCE / "regnety_200mf.npz").exists():
        pytest.fail(f"golden reference data not found at {SHARED_REFERENCE}: check out the project with shared/ beside it")
    return SHARED_REFERENCE
