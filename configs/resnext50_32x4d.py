"""ResNeXt-50 32x4d: the recipe of pycls's configs/dds_baselines/resnext/X-50-32x4d_dds_8gpu.yaml, as an AnyNet (docs/fidelity.md#model-zoo).

Train (100 epochs, global batch 256, lr 0.2, cosine, no warmup (as in the pycls yaml), Nesterov SGD, wd 5e-5;
BatchNorm statistics per 32 images, as on pycls's 8 GPUs):

    python -m regnet_jax.train --config=configs/resnext50_32x4d.py --workdir=DIR

The same math on one GPU: add ``--config.grad_accum_steps=8`` (docs/training.md, "Reproducing pycls").

Design-space schedules of the paper: ``--config=configs/resnext50_32x4d.py:25ep`` (batch 128, lr 0.1) and ``:10ep``
(batch 128, lr 0.05), both without warmup.

Expected ImageNet top-1 error: 21.9±0.10 % (paper, 5 runs); released pycls checkpoint 21.884 % top-1 /
6.062 % top-5.
Both are pycls's published numbers (the paper; pycls's MODEL_ZOO.md), not reproduced by this project.

Complexity at 224 px: flops 4,230,480,872 (4.230 G multiply-adds), params 25,028,904
(25.029 M), acts 14,602,216 (14.602 M).
"""

import ml_collections

from regnet_jax.models import zoo


def get_config(schedule: str = "") -> ml_collections.ConfigDict:
    """The ResNeXt-50 32x4d config; ``schedule`` is '' (100 epochs), '25ep' or '10ep'."""
    return zoo.get_config("resnext50_32x4d", schedule)
