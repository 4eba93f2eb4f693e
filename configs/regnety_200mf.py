"""RegNetY-200MF: the recipe of pycls's configs/dds_baselines/regnety/RegNetY-200MF_dds_8gpu.yaml (docs/fidelity.md#model-zoo).

Train (100 epochs, global batch 1024, lr 0.8, cosine, 5-epoch linear warmup from 0.1x, Nesterov SGD, wd 5e-5;
BatchNorm statistics per 128 images, as on pycls's 8 GPUs):

    python -m regnet_jax.train --config=configs/regnety_200mf.py --workdir=DIR

The same math on one GPU: add ``--config.grad_accum_steps=8`` (docs/training.md, "Reproducing pycls").

Design-space schedules of the paper: ``--config=configs/regnety_200mf.py:25ep`` (batch 128, lr 0.1) and ``:10ep``
(batch 128, lr 0.05), both without warmup.

Expected ImageNet top-1 error: 29.6±0.11 % (paper, 5 runs); released pycls checkpoint 29.658 % top-1 /
10.378 % top-5.
Both are pycls's published numbers (the paper; pycls's MODEL_ZOO.md), not reproduced by this project.

Complexity at 224 px: flops 199,519,076 (0.200 G multiply-adds), params 3,162,996
(3.163 M), acts 2,168,052 (2.168 M).
"""

import ml_collections

from regnet_jax.models import zoo


def get_config(schedule: str = "") -> ml_collections.ConfigDict:
    """The RegNetY-200MF config; ``schedule`` is '' (100 epochs), '25ep' or '10ep'."""
    return zoo.get_config("regnety_200mf", schedule)
