"""Test set-up: 8 emulated CPU devices (for the sharded code) and TensorFlow as quiet as the tools run it."""

from regnet_jax.core import logs

logs.quiet_environment()  # before anything imports TensorFlow

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
