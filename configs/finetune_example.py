"""Fine-tune a pretrained RegNetY-400MF on TFDS ``tf_flowers`` (5 classes): a new head, everything else loaded.

    python -m regnet_jax.convert --from=pycls --checkpoint=RegNetY-400MF_dds_8gpu.pyth \\
        --config=configs/regnety_400mf.py --output=/tmp/y400mf
    python -m regnet_jax.train --config=configs/finetune_example.py:/tmp/y400mf --workdir=/tmp/flowers

The argument after ':' is ``config.init_from``: a weights directory (as written by ``regnet_jax.convert``) or a
training workdir. The weights' input conventions (pycls: BGR) are applied to the data automatically.
Linear probe instead (frozen trunk, only the head trains): add ``--config.freeze_trunk=True --config.optim.lr_per_128=0.2`` (lr 0.1 at batch 64).
tf_flowers has a single split of 3,670 images; the last 10% are held out for evaluation.
"""

import ml_collections

from regnet_jax.config import ConfigError
from regnet_jax.models import zoo


def get_config(init_from: str = "") -> ml_collections.ConfigDict:
    """Fine-tuning config; ``init_from`` (the ':' argument) is the pretrained weights directory or workdir."""
    if not init_from:
        raise ConfigError("give the pretrained weights: --config=configs/finetune_example.py:WEIGHTS_DIR_OR_WORKDIR")
    config = zoo.get_config("regnety_400mf", "10ep")  # the pretrained architecture; 10 epochs at batch 128
    config.init_from = init_from
    config.model.num_classes = 5
    config.dataset.name = "tf_flowers"
    config.dataset.train_split = "train[:90%]"
    config.dataset.eval_split = "train[90%:]"
    config.batch_size = 64
    config.bn_group_size = 0  # BatchNorm over the whole batch of 64 (the 10ep groups of 128 do not fit)
    # A tenth of from-scratch training's rate (the zoo and 25-epoch rule: 0.1 per 128 images, lr 0.05 at batch 64; the
    # 10-epoch schedule this config starts from: 0.05 per 128, lr 0.025), as in the README: the trunk is already
    # trained. At batch 64 the lr is 0.01 * 64 / 128 = 0.005 (config.optim.base_lr would pin it whatever the batch).
    config.optim.lr_per_128 = 0.01
    config.optim.warmup_epochs = 1
    return config
