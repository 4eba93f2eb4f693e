"""RegNetY-32GF: the recipe of pycls's configs/dds_baselines/regnety/RegNetY-32GF_dds_8gpu.yaml (docs/fidelity.md#model-zoo).

Train (100 epochs, global batch 256, lr 0.2, cosine, 5-epoch linear warmup from 0.1x, Nesterov SGD, wd 5e-5;
BatchNorm statistics per 32 images, as on pycls's 8 GPUs):

    python -m regnet_jax.train --config=configs/regnety_32gf.py --workdir=DIR

The same math on one GPU: add ``--config.grad_accum_steps=8`` (docs/training.md, "Reproducing pycls").

Design-space schedules of the paper: ``--config=configs/regnety_32gf.py:25ep`` (batch 128, lr 0.1) and ``:10ep``
(batch 128, lr 0.05), both without warmup.

Expected ImageNet top-1 error: 19.0±0.12 % (paper, 5 runs); released pycls checkpoint 19.066 % top-1 /
4.568 % top-5.
Both are pycls's published numbers (the paper; pycls's MODEL_ZOO.md), not reproduced by this project.

Complexity at 224 px: flops 32,279,583,362 (32.280 G multiply-adds), params 145,046,770
(145.047 M), acts 30,261,570 (30.262 M).
"""

import ml_collections

from regnet_jax.models import zoo


def get_config(schedule: str = "") -> ml_collections.ConfigDict:
    """The RegNetY-32GF config; ``schedule`` is '' (100 epochs), '25ep' or '10ep'."""
    return zoo.get_config("regnety_32gf", schedule)
