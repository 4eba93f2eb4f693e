"""Test set-up: 8 emulated CPU devices (for the sharded code) and TensorFlow as quiet as the tools run it."""

import os
import tempfile

from regnet_jax.core import logs

logs.quiet_environment()  # before anything imports TensorFlow
# The commands' compilation cache (--compilation_cache=auto) goes where the trainer tests keep theirs
# (tests/helpers_train.py), not into ~/.cache: the command-line tools the tests start inherit this.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"regnet_jax_test_xla_cache_{os.getuid()}")
)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
