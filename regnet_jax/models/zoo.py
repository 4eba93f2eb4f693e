"""The model zoo: the 24 RegNetX/Y models of the paper and the ResNet-50 / ResNeXt-50 baselines.

Numbers are from pycls (``configs/dds_baselines``, ``MODEL_ZOO.md``, ``dev/model_error.json``) and Radosavovic et al. 2020, Figs. 15-16 (docs/fidelity.md#model-zoo). ``configs/<name>.py``
files are thin wrappers over ``get_config(name, schedule)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from regnet_jax.config.schema import base_config

RECIPE_GPUS = 8  # the zoo's 100-epoch runs: 8 GPUs, BatchNorm per GPU


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    title: str
    model: dict[str, Any]
    batch_size: int  # the 100-epoch recipe's global batch on 8 GPUs; lr = 0.1 * batch / 128
    paper_err: str  # top-1 error, paper Fig. 15/16 (mean +- std of 5 runs)
    ckpt_err: tuple[float, float]  # released pycls checkpoint, top-1 / top-5 error
    warmup_epochs: int = 5


def _regnet(d: int, w0: int, wa: float, wm: float, gw: int, se: bool) -> dict[str, Any]:
    return dict(
        type="regnet", stem_type="simple_stem_in", stem_w=32, block_type="res_bottleneck_block",
        depth=d, w0=w0, wa=wa, wm=wm, group_w=gw, bot_mul=1.0, se_ratio=0.25 if se else 0.0, num_classes=1000,
    )  # fmt: skip


def _resnet(bot_mul: float, group_ws: tuple[int, ...]) -> dict[str, Any]:
    return dict(
        type="anynet", stem_type="res_stem_in", stem_w=64, block_type="res_bottleneck_block",
        depths=(3, 4, 6, 3), widths=(256, 512, 1024, 2048), strides=(1, 2, 2, 2),
        bot_muls=(bot_mul,) * 4, group_ws=group_ws, se_ratio=0.0, num_classes=1000,
    )  # fmt: skip


_REGNETS = [
    # name, title, D, W0, WA, WM, GW, batch, paper err, ckpt top-1/top-5
    ("regnetx_200mf", "RegNetX-200MF", 13, 24, 36.44, 2.49, 8, 1024, "31.1±0.09", (31.088, 11.342)),
    ("regnetx_400mf", "RegNetX-400MF", 22, 24, 24.48, 2.54, 16, 1024, "27.3±0.15", (27.382, 9.076)),
    ("regnetx_600mf", "RegNetX-600MF", 16, 48, 36.97, 2.24, 24, 1024, "25.9±0.03", (25.864, 8.198)),
    ("regnetx_800mf", "RegNetX-800MF", 16, 56, 35.73, 2.28, 16, 1024, "24.8±0.09", (24.846, 7.592)),
    ("regnetx_1.6gf", "RegNetX-1.6GF", 18, 80, 34.01, 2.25, 24, 1024, "23.0±0.13", (23.038, 6.484)),
    ("regnetx_3.2gf", "RegNetX-3.2GF", 25, 88, 26.31, 2.25, 48, 512, "21.7±0.08", (21.736, 5.862)),
    ("regnetx_4gf", "RegNetX-4.0GF", 23, 96, 38.65, 2.43, 40, 512, "21.4±0.19", (21.356, 5.736)),
    ("regnetx_6.4gf", "RegNetX-6.4GF", 17, 184, 60.83, 2.07, 56, 512, "20.8±0.07", (20.844, 5.434)),
    ("regnetx_8gf", "RegNetX-8.0GF", 23, 80, 49.56, 2.88, 120, 512, "20.7±0.07", (20.728, 5.420)),
    ("regnetx_12gf", "RegNetX-12GF", 19, 168, 73.36, 2.37, 112, 512, "20.3±0.04", (20.288, 5.284)),
    ("regnetx_16gf", "RegNetX-16GF", 22, 216, 55.59, 2.1, 128, 512, "20.0±0.11", (19.956, 5.022)),
    ("regnetx_32gf", "RegNetX-32GF", 23, 320, 69.86, 2.0, 168, 256, "19.5±0.12", (19.498, 4.878)),
    ("regnety_200mf", "RegNetY-200MF", 13, 24, 36.44, 2.49, 8, 1024, "29.6±0.11", (29.658, 10.378)),
    ("regnety_400mf", "RegNetY-400MF", 16, 48, 27.89, 2.09, 8, 1024, "25.9±0.16", (25.898, 8.070)),
    ("regnety_600mf", "RegNetY-600MF", 15, 48, 32.54, 2.32, 16, 1024, "24.5±0.07", (24.540, 7.280)),
    ("regnety_800mf", "RegNetY-800MF", 14, 56, 38.84, 2.4, 16, 1024, "23.7±0.03", (23.684, 6.846)),
    ("regnety_1.6gf", "RegNetY-1.6GF", 27, 48, 20.71, 2.65, 24, 1024, "22.0±0.08", (22.066, 6.134)),
    ("regnety_3.2gf", "RegNetY-3.2GF", 21, 80, 42.63, 2.66, 24, 512, "21.0±0.05", (21.074, 5.454)),
    ("regnety_4gf", "RegNetY-4.0GF", 22, 96, 31.41, 2.24, 64, 512, "20.6±0.08", (20.640, 5.336)),
    ("regnety_6.4gf", "RegNetY-6.4GF", 25, 112, 33.22, 2.27, 72, 512, "20.1±0.04", (20.110, 5.100)),
    ("regnety_8gf", "RegNetY-8.0GF", 17, 192, 76.82, 2.19, 56, 512, "20.1±0.09", (20.052, 5.060)),
    ("regnety_12gf", "RegNetY-12GF", 19, 168, 73.36, 2.37, 112, 512, "19.7±0.06", (19.670, 4.856)),
    ("regnety_16gf", "RegNetY-16GF", 18, 200, 106.23, 2.48, 112, 256, "19.6±0.16", (19.608, 4.944)),
    ("regnety_32gf", "RegNetY-32GF", 20, 232, 115.89, 2.53, 232, 256, "19.0±0.12", (19.066, 4.568)),
]

ZOO: dict[str, ZooEntry] = {
    name: ZooEntry(title, _regnet(d, w0, wa, wm, gw, name.startswith("regnety")), bs, err, ckpt)
    for name, title, d, w0, wa, wm, gw, bs, err, ckpt in _REGNETS
}
# The ResNe(X)t yamls set no warmup (pycls configs/dds_baselines/resnet and resnext yamls: no OPTIM.WARMUP_EPOCHS, default 0; MODEL_ZOO.md's text says 5).
ZOO["resnet50"] = ZooEntry("ResNet-50", _resnet(0.25, (64, 128, 256, 512)), 256, "23.2±0.09", (23.19, 6.63), 0)
ZOO["resnext50_32x4d"] = ZooEntry(
    "ResNeXt-50 32x4d", _resnet(0.5, (4, 8, 16, 32)), 256, "21.9±0.10", (21.884, 6.062), 0
)


def get_config(name: str, schedule: str = "") -> ml_collections.ConfigDict:
    """The complete training config of zoo model ``name``; ``schedule`` is '' / '100ep' (zoo recipe), '25ep' or '10ep'."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    entry = ZOO[name]
    config = base_config(entry.model, batch_size=entry.batch_size, schedule=schedule or "100ep")
    if not schedule or schedule == "100ep":
        config.optim.warmup_epochs = entry.warmup_epochs
        # pycls trained the zoo on 8 GPUs with per-GPU BatchNorm: statistics over batch / 8 images, kept whatever
        # hardware runs it here (docs/training.md, "Reproducing pycls").
        config.bn_group_size = entry.batch_size // RECIPE_GPUS
    return config
