"""Test set-up: 8 emulated CPU devices (for the sharded code) and quiet libraries (regnet_jax.logs)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
