"""RegNetX-800MF: the recipe of pycls's configs/dds_baselines/regnetx/RegNetX-800MF_dds_8gpu.yaml (docs/fidelity.md#model-zoo).

Train (100 epochs, global batch 1024, lr 0.8, cosine, 5-epoch linear warmup from 0.1x, Nesterov SGD, wd 5e-5;
BatchNorm statistics per 128 images, as on pycls's 8 GPUs):

    python -m regnet_jax.train --config=configs/regnetx_800mf.py --workdir=DIR

The same math on one GPU: add ``--config.grad_accum_steps=8`` (docs/training.md, "Reproducing pycls").

Design-space schedules of the paper: ``--config=configs/regnetx_800mf.py:25ep`` (batch 128, lr 0.1) and ``:10ep``
(batch 128, lr 0.05), both without warmup.

Expected ImageNet top-1 error: 24.8±0.09 % (paper, 5 runs); released pycls checkpoint 24.846 % top-1 /
7.592 % top-5.
Both are pycls's published numbers (the paper; pycls's MODEL_ZOO.md), not reproduced by this project.

Complexity at 224 px: flops 799,700,712 (0.800 G multiply-adds), params 7,259,656
(7.260 M), acts 5,148,744 (5.149 M).
"""

import ml_collections

from regnet_jax.models import zoo


def get_config(schedule: str = "") -> ml_collections.ConfigDict:
    """The RegNetX-800MF config; ``schedule`` is '' (100 epochs), '25ep' or '10ep'."""
    return zoo.get_config("regnetx_800mf", schedule)
