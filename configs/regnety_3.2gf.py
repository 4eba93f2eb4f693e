"""RegNetY-3.2GF: the recipe of pycls's configs/dds_baselines/regnety/RegNetY-3.2GF_dds_8gpu.yaml (docs/fidelity.md#model-zoo).

Train (100 epochs, global batch 512, lr 0.4, cosine, 5-epoch linear warmup from 0.1x, Nesterov SGD, wd 5e-5;
BatchNorm statistics per 64 images, as on pycls's 8 GPUs):

    python -m regnet_jax.train --config=configs/regnety_3.2gf.py --workdir=DIR

The same math on one GPU: add ``--config.grad_accum_steps=8`` (docs/training.md, "Reproducing pycls").

Design-space schedules of the paper: ``--config=configs/regnety_3.2gf.py:25ep`` (batch 128, lr 0.1) and ``:10ep``
(batch 128, lr 0.05), both without warmup.

Expected ImageNet top-1 error: 21.0±0.05 % (paper, 5 runs); released pycls checkpoint 21.074 % top-1 /
5.454 % top-5.
Both are pycls's published numbers (the paper; pycls's MODEL_ZOO.md), not reproduced by this project.

Complexity at 224 px: flops 3,176,496,162 (3.176 G multiply-adds), params 19,436,338
(19.436 M), acts 11,263,418 (11.263 M).
"""

import ml_collections

from regnet_jax.models import zoo


def get_config(schedule: str = "") -> ml_collections.ConfigDict:
    """The RegNetY-3.2GF config; ``schedule`` is '' (100 epochs), '25ep' or '10ep'."""
    return zoo.get_config("regnety_3.2gf", schedule)
