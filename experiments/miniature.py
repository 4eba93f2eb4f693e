"""The miniature: the paper's method end to end on one CPU machine, on the offline digits of the quickstart.

Three design spaces (AnyNetX_A, AnyNetX_E, RegNetX), scaled down to 32x32 images: at most 4 blocks per AnyNet stage
and 16 blocks per RegNet, widths up to 128 (RegNet: w0, wa <= 64), b and g as in the paper, and the regime 1.2-1.6 M
flops at 32 px (the quickstart model has 0.95 M). Each model trains with the paper's 10-epoch design-space recipe
(batch 128, lr 0.05, cosine, no warmup) on the quickstart's data pipeline. ``experiments/miniature.sh`` runs it all::

    bash experiments/miniature.sh /tmp/regnet_miniature          # see experiments/README.md for its run time

One space by hand::

    python -m regnet_jax.sweep setup --config=experiments/miniature.py:anynetx_a --out=/tmp/mini/anynetx_a
"""

import os

import ml_collections

QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "quickstart.py")
MINI_ANYNET = {"depth": "log_uniform:1:4:1", "width": "log_uniform:8:128:8"}
MINI_REGNET = {"depth": "uniform:4:16:1", "w0": "log_uniform:8:64:8", "wa": "log_uniform:4.0:64.0:0.1"}
SPACES = ("anynetx_a", "anynetx_e", "regnetx")


def get_config(space: str = "anynetx_a") -> ml_collections.ConfigDict:
    """The miniature sweep of ``space`` (any registered space; the three above are the ones the script runs)."""
    c = ml_collections.ConfigDict()
    c.name = space
    c.space = space
    c.n = 12
    c.seed = 0
    c.flops = (1.2e6, 1.6e6)
    c.base = os.path.normpath(QUICKSTART)
    c.num_epochs = 10
    c.batch_size = 128
    c.dists = MINI_REGNET if space.startswith("regnet") else MINI_ANYNET
    c.model = {"stem_w": 16}
    c.train = {"optim": {"lr_per_128": 0.05, "warmup_epochs": 0}, "eval_every_epochs": 2, "log_every_steps": 11}
    return c
