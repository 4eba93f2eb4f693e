"""regnet_jax: RegNet and AnyNet ("Designing Network Design Spaces", Radosavovic et al., CVPR 2020) in JAX/Flax."""

from regnet_jax import logs as _logs

__version__ = "0.1.0"

if _logs.started_as_tool():  # python -m regnet_jax.<tool>: before the tool imports TensorFlow or JAX
    _logs.quiet_tool()
