"""Quickstart: a small RegNetY trained offline on real images, in a few minutes on a laptop CPU.

The data are scikit-learn's handwritten digits (1,797 8x8 scans of 10 digits, shipped inside the scikit-learn wheel:
nothing is downloaded), upscaled to 32x32 and split 80/20 into train (1,438) and test (359)::

    python -m regnet_jax.train --config=configs/quickstart.py --workdir=/tmp/quickstart

prints the final test accuracy; curves land in /tmp/quickstart/curves.png. For a quicker run (design-space sweeps,
smoke tests) shorten the schedule: ``--config.num_epochs=5``.
"""

import ml_collections

from regnet_jax.config import base_config

MODEL = dict(
    type="regnet", stem_type="simple_stem_in", stem_w=16, block_type="res_bottleneck_block",
    depth=4, w0=16, wa=16.0, wm=2.0, group_w=64, bot_mul=1.0, se_ratio=0.25, num_classes=10,
)  # fmt: skip
# Stages: widths 16, 32, 64, depths 1, 1, 2. group_w=64 makes every 3x3 conv dense (g = min(group_w, w)), which is
# fast on CPU whatever grouped-conv lowering is in use (XLA's native grouped-conv backward is slow: jax-ml/jax#13800).


def get_config() -> ml_collections.ConfigDict:
    """The quickstart config (a complete training config; override any field with --config.FIELD=VALUE)."""
    config = base_config(MODEL, batch_size=64, schedule="100ep")
    config.num_epochs = 30
    config.resolution = 32
    config.eval_batch_size = 120
    config.dataset.name = "quickstart"
    config.dataset.eval_split = "test"
    # Digits are small, centred and not mirror-symmetric: milder crops, no flip, no colour noise.
    config.dataset.min_area = 0.35
    config.dataset.flip = False
    config.dataset.pca_std = 0.0
    config.dataset.eval_crop_fraction = 1.0
    config.optim.lr_per_128 = 0.4  # lr 0.2 at batch 64 (the linear rule scales it with --config.batch_size)
    config.optim.warmup_epochs = 1
    config.log_every_steps = 100
    config.eval_every_epochs = 5
    return config
