"""The foundation every package uses: errors, paths (local and gs://), logs, the command-line runner, distribution.

Imports nothing else of regnet_jax, and nothing heavy at package import (``regnet_jax/__init__`` imports ``core.logs``
before a command imports TensorFlow or JAX).
"""
