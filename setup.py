"""regnet_jax: RegNet / AnyNet in JAX + Flax, faithful to pycls."""

from setuptools import find_packages, setup

# Versions seen importing and running together (CPU, Python 3.11).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "clu==0.0.12",
    "ml_collections==1.1.0",
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",  # clu.metric_writers needs it; tensorflow-cpu 2.21 no longer pulls it in
    "tensorflow-datasets==4.9.10",
    "absl-py>=2.1",
    "numpy>=1.26",
    "matplotlib>=3.8",
    "scikit-learn>=1.4",  # ships the offline quickstart dataset (8x8 digits)
    "pillow>=10",
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-timeout>=2.3", "gcsfs", "gcp-storage-emulator"],  # the last two: tests/test_gcs_emulator.py
    "gcs": ["gcsfs"],  # gs:// workdirs, weights, sweeps and data (regnet_jax/paths.py)
    # Only for reading .pth/.pyth files and for the PyTorch side of the benchmarks.
    "torch": ["torch==2.13.0"],
}

setup(
    name="regnet_jax",
    version="0.1.0",
    description="RegNet and AnyNet (Designing Network Design Spaces) in JAX/Flax: models, training, design-space sweeps",
    packages=find_packages(include=["regnet_jax", "regnet_jax.*"]),
    package_data={"regnet_jax": ["assets/*.tsv", "assets/*.md"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="MIT",
)
