"""regnet_jax: RegNet / AnyNet in JAX + Flax, faithful to pycls."""

from setuptools import find_packages, setup

# Ranges: from the oldest tested version to below the next release that may break the API (JAX and Flax break
# between minor releases while below 1.0). The exact tested sets are in constraints/ (README, "Install").
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.13",
    "jaxlib>=0.10.2,<0.13",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "ml_collections>=1.1.0,<2",
    "tensorflow-cpu>=2.21,<2.22",
    "tensorboard>=2.21,<2.22",  # event protos for training/events.py's TensorBoard writer; tensorflow-cpu 2.21 no longer pulls it in
    "tensorflow-datasets>=4.9.10,<5",
    "absl-py>=2.1,<3",
    "numpy>=2.4,<3",
    "matplotlib>=3.11,<4",
    "scikit-learn>=1.9,<2",  # ships the offline quickstart dataset (8x8 digits)
    "pillow>=13,<14",
]

EXTRAS = {
    "test": [
        "pytest>=9,<10",
        "pytest-timeout>=2.4,<3",
        "ruff>=0.17.6,<0.18",  # .ci/run checks formatting and lint (pyproject.toml)
        "gcsfs>=2026.9",  # tests/test_gcs_emulator.py: gs:// through the Cloud Storage emulator
        "gcp-storage-emulator>=2026.7",
    ],
    "gcs": ["gcsfs>=2026.9"],  # gs:// workdirs, weights, sweeps and data (regnet_jax/core/paths.py)
    # Only for reading .pth/.pyth files and for the PyTorch side of the benchmarks (torchvision: the input-pipeline
    # benchmark's peer, PyTorch's stock ImageFolder + DataLoader).
    "torch": ["torch>=2.13,<3", "torchvision>=0.28,<1"],
}

setup(
    name="regnet_jax",
    version="0.2.0",
    description="RegNet and AnyNet (Designing Network Design Spaces) in JAX/Flax: models, training, design-space sweeps",
    packages=find_packages(include=["regnet_jax", "regnet_jax.*"]),
    package_data={
        "regnet_jax": ["assets/*.tsv", "assets/*.md", "models/conv_choice.json"]
    },  # conv_choice: what conv_impl="auto" picks
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="MIT",
)
