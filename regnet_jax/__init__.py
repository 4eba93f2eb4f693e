"""regnet_jax: RegNet and AnyNet ("Designing Network Design Spaces", Radosavovic et al., CVPR 2020) in JAX/Flax."""

__version__ = "0.1.0"
