"""RegNetX-600MF: the recipe of pycls's configs/dds_baselines/regnetx/RegNetX-600MF_dds_8gpu.yaml (docs/fidelity.md#model-zoo).

Train (100 epochs, global batch 1024, lr 0.8, cosine, 5-epoch linear warmup from 0.1x, Nesterov SGD, wd 5e-5;
BatchNorm statistics per 128 images, as on pycls's 8 GPUs):

    python -m regnet_jax.train --config=configs/regnetx_600mf.py --workdir=DIR

The same math on one GPU: add ``--config.grad_accum_steps=8`` (docs/training.md, "Reproducing pycls").

Design-space schedules of the paper: ``--config=configs/regnetx_600mf.py:25ep`` (batch 128, lr 0.1) and ``:10ep``
(batch 128, lr 0.05), both without warmup.

Expected ImageNet top-1 error: 25.9±0.03 % (paper, 5 runs); released pycls checkpoint 25.864 % top-1 /
8.198 % top-5.
Both are pycls's published numbers (the paper; pycls's MODEL_ZOO.md), not reproduced by this project.

Complexity at 224 px: flops 600,891,112 (0.601 G multiply-adds), params 6,196,040
(6.196 M), acts 3,975,096 (3.975 M).
"""

import ml_collections

from regnet_jax.models import zoo


def get_config(schedule: str = "") -> ml_collections.ConfigDict:
    """The RegNetX-600MF config; ``schedule`` is '' (100 epochs), '25ep' or '10ep'."""
    return zoo.get_config("regnetx_600mf", schedule)
