"""The design-space toolkit: spaces and samplers, the sweep lifecycle, and the paper's analysis tools.

See docs/design_space.md. The command line is ``python -m regnet_jax.sweep setup|launch|collect|analyze``.
"""

from regnet_jax.design_space.distributions import Dist
from regnet_jax.design_space.spaces import (
    SPACES,
    Constraint,
    DesignSpace,
    Sample,
    SampleResult,
    TooFewModelsError,
    get_space,
    register,
    sample_space,
)

__all__ = [
    "SPACES",
    "Constraint",
    "DesignSpace",
    "Dist",
    "Sample",
    "SampleResult",
    "TooFewModelsError",
    "get_space",
    "register",
    "sample_space",
]
