"""The paper's design-space studies as sweep specs (see experiments/README.md for commands and compute costs).

    python -m regnet_jax.sweep setup --config=experiments/paper.py:NAME --out=sweeps/NAME

(an unknown NAME is an error that lists the names.)

Names:
  fig5_anynetx_a, fig5_anynetx_b, fig5_anynetx_c, fig7_anynetx_d, fig7_anynetx_e, fig9_regnetx
      500 models each, 360-400 MF, 10 epochs (batch 128, lr 0.05) on ImageNet (paper §3, Figs. 5, 7, 9).
  fig11_regnetx_{200mf,400mf,800mf,1.6gf,3.2gf,6.4gf,12.8gf}
      RegNetX (b = 1, d <= 40, wm >= 2, params/acts limits) trends across flop regimes: 100 models per regime,
      flops in [0.9F, F], 25 epochs (batch 128, lr 0.1) (paper §4, Fig. 11); at 3.2GF and 6.4GF 16 <= g <= 64 with
      8 | g (App. D), above that wider g, w0 and wa (see _wider).
  fig14_{base,inverted,depthwise,se,swish,res192,res256,res288}
      the §4 alternatives at 400MF, 25 epochs: inverted bottleneck (bot_mul 4, i.e. b = 1/4), depthwise (g = 1),
      SE (RegNetY), Swish, and other resolutions at the same flops (Fig. 14).
  sec5_regnetx_{200mf,...,32gf}, sec5_regnety_{...}
      the best-of-25 selection of §5: 25 models with 12 <= d <= 28 per regime, trained with the full 100-epoch recipe
      at batch 1024, lr 0.8, 5 warmup epochs, in every regime; retrain the best 5 times (README). That is pycls's zoo
      recipe up to 1.6GF only: its zoo trained the 3.2GF to 16GF models (RegNetY: to 12GF) at batch 512 (lr 0.4,
      BatchNorm over 64 images per GPU) and RegNetX-32GF, RegNetY-16GF and RegNetY-32GF at batch 256 (lr 0.2, 32
      per GPU), so from 3.2GF up these specs are this repository's choice; setup --batch_size=512
      --set=bn_group_size=64 (or 256 and 32) follows the zoo (experiments/README.md, "The §5 setup deviates ...").
      pycls ran these on 8 GPUs (128 images and one BatchNorm group per GPU at batch 1024); the launcher gives each
      model one device, so the specs set ``grad_accum_steps=8`` and ``bn_group_size=128``: the same math on one
      device, at one GPU's memory (SEC5_RECIPE).

The 10/25-epoch studies train at batch 128 with BatchNorm over all 128 images, as pycls's one-GPU sweeps did.
"""

import ml_collections

from regnet_jax.config import ConfigError

REGIMES = {"200mf": 0.2e9, "400mf": 0.4e9, "600mf": 0.6e9, "800mf": 0.8e9, "1.6gf": 1.6e9, "3.2gf": 3.2e9,
           "4gf": 4.0e9, "6.4gf": 6.4e9, "8gf": 8.0e9, "12gf": 12e9, "12.8gf": 12.8e9, "16gf": 16e9, "32gf": 32e9}  # fmt: skip
WIDE_GROUPS = "power2_or_log_uniform:16:64:8"  # App. D: 16 <= g <= 64 with 8 | g at 3.2GF


def _wider(flops: float) -> dict:
    """Ranges for the larger regimes. App. D widens g at 3.2GF; beyond 6.4GF we also widen g, w0 and wa (our
    extrapolation: pycls notes its default ranges are good up to 16GF, and X-32GF has w0 = 320)."""
    if flops < 3.2e9:
        return {}
    if flops <= 6.4e9:
        return {"dists": {"group_w": WIDE_GROUPS}, "max_draws": 3_000_000}
    g = "power2_or_log_uniform:16:128:8" if flops <= 16e9 else "power2_or_log_uniform:16:256:8"
    return {
        "dists": {"group_w": g, "w0": "log_uniform:8:512:8", "wa": "log_uniform:8.0:512.0:0.1"},
        "max_draws": 3_000_000,
    }


# §5's 8-GPU recipe on one device per model: 8 micro-batches of 128 images, each its own BatchNorm group. With D
# devices per model, set grad_accum_steps = 8 / D instead (setup --set=grad_accum_steps=..., experiments/README.md).
SEC5_RECIPE = {"grad_accum_steps": 8, "bn_group_size": 128}


def _spec(space: str, n: int, flops: float, schedule: str, **extra) -> dict:
    spec = dict(space=space, n=n, seed=0, flops=(0.9 * flops, flops), schedule=schedule, dataset="imagenet2012")
    spec.update(extra)
    return spec


def _table() -> dict[str, dict]:
    t = {}
    for fig, space in [("fig5", "anynetx_a"), ("fig5", "anynetx_b"), ("fig5", "anynetx_c"), ("fig7", "anynetx_d"),
                       ("fig7", "anynetx_e"), ("fig9", "regnetx")]:  # fmt: skip
        t[f"{fig}_{space}"] = _spec(space, 500, 400e6, "10ep")
    for r in ("200mf", "400mf", "800mf", "1.6gf", "3.2gf", "6.4gf", "12.8gf"):
        t[f"fig11_regnetx_{r}"] = _spec("regnetx_constrained", 100, REGIMES[r], "25ep", **_wider(REGIMES[r]))
    base = _spec("regnetx_constrained", 100, 400e6, "25ep")
    t["fig14_base"] = base
    t["fig14_inverted"] = {**base, "dists": {"bot_mul": "choice:4.0"}}
    t["fig14_depthwise"] = {**base, "dists": {"group_w": "choice:1"}}
    t["fig14_se"] = {**base, "model": {"se_ratio": 0.25}}
    t["fig14_swish"] = {**base, "model": {"activation": "silu"}}
    for res in (192, 256, 288):
        t[f"fig14_res{res}"] = {**base, "resolution": res}
    for r in ("200mf", "400mf", "600mf", "800mf", "1.6gf", "3.2gf", "4gf", "6.4gf", "8gf", "12gf", "16gf", "32gf"):
        t[f"sec5_regnetx_{r}"] = _spec(
            "regnetx_constrained_d12_28", 25, REGIMES[r], "100ep", train=SEC5_RECIPE, **_wider(REGIMES[r])
        )
        t[f"sec5_regnety_{r}"] = {**t[f"sec5_regnetx_{r}"], "model": {"se_ratio": 0.25}}
    return t


STUDIES = _table()


def get_config(name: str = "list") -> ml_collections.ConfigDict:
    """The sweep spec ``name`` (one of STUDIES)."""
    if name not in STUDIES:
        raise ConfigError(f"experiments/paper.py has no study {name!r}; the names are: " + ", ".join(STUDIES))
    spec = dict(STUDIES[name])
    spec["name"] = name
    return ml_collections.ConfigDict(spec)
