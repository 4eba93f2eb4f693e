"""Regenerate the golden pycls data in tests/data (not run by CI; see tests/data/README.md).

    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install torch==2.13.0 numpy yacs && /tmp/golden-venv/bin/pip install --no-deps pycls==0.1.1
    /tmp/golden-venv/bin/python tests/data/make_golden.py [CASE ...]

Every model is pycls's own class (AnyNet / RegNet from pycls.models), built from pycls's own config (pycls.core.config
``cfg``) by ``pycls.core.builders.build_model``; the optimizer step is ``pycls.core.optimizer.construct_optimizer``.
Only pycls's model and optimizer code is imported, so pycls's data-loading dependencies (OpenCV, simplejson) are not
needed. Weights and inputs are drawn from numpy seeds by tests/golden.py, which the tests use to draw them again.

The stored outputs come from pycls run in float64 (from the same float32 weights, statistics and inputs), so they are
exact to float32 rounding; ``pycls_float32_error`` in each JSON file records how far pycls's own float32 run is from
them, i.e. how well conditioned the case is.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import golden  # noqa: E402  (tests/golden.py: the seeded weights and inputs)
import pycls.core.builders as builders  # noqa: E402
import pycls.core.net as net  # noqa: E402
import pycls.core.optimizer as optimizer  # noqa: E402
from pycls.core.config import cfg, reset_cfg  # noqa: E402

TRAIN = dict(batch=4, resolution=128)
CALIBRATION = dict(batch=16)
SEEDS = dict(weights=0, calibration=1)
INPUT_SEEDS = range(2, 66)  # the train batch's seed is the one of these with the widest margins (see margins())
DDP_INPUT_SEEDS = range(2, 258)  # four times the images: more seeds to find as wide margins

# regnet_jax config.model of each case (pycls's own config is set from it below).
_NO_SE = dict(se_ratio=0.0, num_classes=10)
CASES: dict[str, dict] = {
    # stages [16, 32, 64] x [1, 1, 2], group width 8 (2, 4, 8 groups), SE
    "regnety": dict(type="regnet", depth=4, w0=16, wa=16.0, wm=2.0, group_w=8, bot_mul=1.0, se_ratio=0.25,
                    stem_type="simple_stem_in", stem_w=16, block_type="res_bottleneck_block", num_classes=10),
    # stages [8, 16, 32, 64] x [1, 1, 3, 1], group width 8 (1, 2, 4, 8 groups)
    "regnetx": dict(type="regnet", depth=6, w0=8, wa=8.0, wm=2.0, group_w=8, bot_mul=1.0, se_ratio=0.0,
                    stem_type="simple_stem_in", stem_w=16, block_type="res_bottleneck_block", num_classes=10),
    # ResNet stem (7x7 s2 + max-pool), bottleneck 1/4 with 1 or 2 groups, stride-1 projection shortcut in stage 1
    "resnet_bottleneck": dict(type="anynet", stem_type="res_stem_in", stem_w=16, block_type="res_bottleneck_block",
                              depths=[1, 2, 1], widths=[32, 64, 128], strides=[1, 2, 2], bot_muls=[0.25, 0.25, 0.25],
                              group_ws=[8, 8, 16], **_NO_SE),
    "basic": dict(type="anynet", stem_type="simple_stem_in", stem_w=8, block_type="res_basic_block", depths=[1, 2],
                  widths=[16, 24], strides=[2, 2], bot_muls=[1.0, 1.0], group_ws=[1, 1], **_NO_SE),
    "vanilla": dict(type="anynet", stem_type="res_stem_cifar", stem_w=8, block_type="vanilla_block", depths=[1, 1, 1],
                    widths=[8, 16, 32], strides=[2, 2, 2], bot_muls=[1.0, 1.0, 1.0], group_ws=[1, 1, 1], **_NO_SE),
}  # fmt: skip
ZOO = dict(name="regnety_200mf", batch=2, resolution=224, calibration_batch=8,
           model=dict(type="regnet", depth=13, w0=24, wa=36.44, wm=2.49, group_w=8, bot_mul=1.0, se_ratio=0.25,
                      stem_type="simple_stem_in", stem_w=32, block_type="res_bottleneck_block", num_classes=1000))  # fmt: skip
# The data-parallel step (tests/data/README.md, ddp_step.npz): the 'regnety' case on 4 simulated GPUs.
DDP = dict(case="regnety", chunks=4, per_chunk=4, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5)


def set_pycls_cfg(model: dict) -> None:
    """pycls's global config for ``model`` (a regnet_jax config.model)."""
    reset_cfg()
    cfg.MODEL.TYPE = model["type"]
    cfg.MODEL.NUM_CLASSES = model["num_classes"]
    section = cfg.REGNET if model["type"] == "regnet" else cfg.ANYNET
    section.STEM_TYPE, section.STEM_W, section.BLOCK_TYPE = model["stem_type"], model["stem_w"], model["block_type"]
    section.SE_ON, section.SE_R = model["se_ratio"] > 0, model["se_ratio"] or section.SE_R
    if model["type"] == "regnet":
        cfg.REGNET.DEPTH, cfg.REGNET.W0, cfg.REGNET.WA, cfg.REGNET.WM = (
            model["depth"],
            model["w0"],
            model["wa"],
            model["wm"],
        )
        cfg.REGNET.GROUP_W, cfg.REGNET.BOT_MUL = model["group_w"], model["bot_mul"]
    else:
        cfg.ANYNET.DEPTHS, cfg.ANYNET.WIDTHS, cfg.ANYNET.STRIDES = model["depths"], model["widths"], model["strides"]
        bottleneck = model["block_type"] == "res_bottleneck_block"  # pycls's other blocks refuse bot_muls/group_ws
        cfg.ANYNET.BOT_MULS = model["bot_muls"] if bottleneck else []
        cfg.ANYNET.GROUP_WS = model["group_ws"] if bottleneck else []


def build(model: dict, resolution: int) -> tuple[torch.nn.Module, dict]:
    """pycls's model for ``model`` and what pycls says about it (its AnyNet arguments and complexity)."""
    set_pycls_cfg(model)
    cfg.TRAIN.IM_SIZE = resolution
    torch_model = builders.build_model()
    args = builders.get_model().get_args()
    info = {
        "pycls_args": dict(args),
        "complexity": net.complexity(builders.get_model()),
    }
    return torch_model, info


def load_state(module: torch.nn.Module, sd: dict[str, np.ndarray], dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``module`` in ``dtype`` holding ``sd`` (num_batches_tracked keeps its own value)."""
    m = copy.deepcopy(module).to(dtype)
    own = m.state_dict()
    missing = set(own) - set(sd) - {k for k in own if k.endswith("num_batches_tracked")}
    assert not missing and not set(sd) - set(own), (missing, set(sd) - set(own))
    m.load_state_dict({**own, **{k: torch.from_numpy(v).to(dtype) for k, v in sd.items()}})
    return m


def calibrate(module: torch.nn.Module, params: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """BatchNorm running statistics from a float64 train-mode pass over ``x`` (cumulative average, as pycls's
    precise BN computes them), rounded to float32."""
    m = copy.deepcopy(module).double()
    m.load_state_dict({**m.state_dict(), **{k: torch.from_numpy(v).double() for k, v in params.items()}})
    for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None
    m.train()
    with torch.no_grad():
        m(torch.from_numpy(x).double())
    return {k: v.float().numpy() for k, v in m.state_dict().items() if golden.is_running_stat(k)}


def margins(m: torch.nn.Module, xs: list[np.ndarray]) -> dict[str, float]:
    """How far a float64 train-mode pass over each batch in ``xs`` is from a kink: the smallest |ReLU input| and the
    smallest gap between the largest and second-largest (positive) value of a max-pool window, each relative to the
    std of the layer's input. A float32 run whose rounding error exceeds a margin routes a gradient differently from float64."""
    out = {"relu": np.inf, "maxpool": np.inf}

    def relu(mod, inp):
        out["relu"] = min(out["relu"], float(inp[0].abs().min() / inp[0].std()))

    def maxpool(mod, inp):
        t = inp[0]
        n, c, h, w = t.shape
        windows = F.unfold(F.pad(t.reshape(n * c, 1, h, w), (1, 1, 1, 1), value=-np.inf), 3, stride=2)
        top2 = windows.topk(2, dim=1).values
        gap = (top2[:, 0] - top2[:, 1])[top2[:, 0] > 0]  # a tie at 0 (after a ReLU) has no gradient to misroute
        out["maxpool"] = min(out["maxpool"], float(gap.min() / t.std()))

    hooks = [r.register_forward_pre_hook(relu) for r in m.modules() if isinstance(r, torch.nn.ReLU)]
    hooks += [r.register_forward_pre_hook(maxpool) for r in m.modules() if isinstance(r, torch.nn.MaxPool2d)]
    m.train()
    with torch.no_grad():
        for x in xs:
            m(torch.from_numpy(x).double())
    for h in hooks:
        h.remove()
    return {k: float(f"{v:.3g}") for k, v in out.items() if np.isfinite(v)}


def widest_margins(
    module: torch.nn.Module, sd: dict[str, np.ndarray], draw, seeds: range = INPUT_SEEDS
) -> tuple[int, dict[str, float]]:
    """The seed in ``seeds`` whose batches (``draw(seed)``, a list) are furthest from every kink, and its margins."""
    m = load_state(module, sd, torch.float64)
    scored = [(seed, margins(m, draw(seed))) for seed in seeds]
    return max(scored, key=lambda s: min(s[1].values()))


def train_step(m: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """One train-mode forward and backward of pycls's loss (mean cross-entropy); returns (logits, loss)."""
    dtype = next(m.parameters()).dtype
    m.train()
    m.zero_grad()
    logits = m(torch.from_numpy(x).to(dtype))
    loss = builders.build_loss_fun()(logits, torch.from_numpy(y))
    loss.backward()
    return logits.detach(), loss.detach()


def outputs(
    module: torch.nn.Module, sd: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, dtype: torch.dtype
) -> dict[str, np.ndarray]:
    """Eval logits, then train logits, loss, every parameter's gradient and the updated running statistics."""
    m = load_state(module, sd, dtype)
    m.eval()
    with torch.no_grad():
        out = {"logits_eval": m(torch.from_numpy(x).to(dtype)).numpy()}
    logits, loss = train_step(m, x, y)
    out.update(logits_train=logits.numpy(), loss_train=loss.numpy())
    out.update({f"grad/{k}": p.grad.numpy() for k, p in m.named_parameters()})
    out.update({f"after/{k}": v.numpy() for k, v in m.state_dict().items() if golden.is_running_stat(k)})
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (the tests' measure)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def conditioning(f32: dict[str, np.ndarray], f64: dict[str, np.ndarray]) -> dict[str, float]:
    """Max relative error of pycls's float32 run against its float64 run, per kind of output."""
    kinds = {}
    for k in f64:
        kind = k.split("/")[0]
        kinds[kind] = max(kinds.get(kind, 0.0), rel_err(f32[k], f64[k]))
    return {k: float(f"{v:.3g}") for k, v in kinds.items()}


def case_meta(name: str, model: dict, info: dict, module: torch.nn.Module, batch: int, resolution: int) -> dict:
    return {
        "case": name, "model": model, **info, "batch": batch, "resolution": resolution, "seeds": dict(SEEDS),
        "state_dict": {k: list(v.shape) for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")},
        "generated_with": {"pycls": importlib.metadata.version("pycls"), "torch": torch.__version__, "numpy": np.__version__},
    }  # fmt: skip


def write(name: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    np.savez_compressed(
        HERE / f"{name}.npz",
        **{k: np.asarray(v, np.float32 if v.dtype.kind == "f" else v.dtype) for k, v in arrays.items()},
    )
    (HERE / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")


def make_case(name: str, model: dict) -> tuple[torch.nn.Module, dict, dict[str, np.ndarray]]:
    module, info = build(model, TRAIN["resolution"])
    meta = case_meta(name, model, info, module, TRAIN["batch"], TRAIN["resolution"])
    params = golden.parameters(meta)
    x_cal, _ = golden.seeded_inputs(
        SEEDS["calibration"], CALIBRATION["batch"], TRAIN["resolution"], model["num_classes"]
    )
    stats = calibrate(module, params, x_cal)
    sd = {**params, **stats}
    draw = lambda seed: [golden.seeded_inputs(seed, meta["batch"], meta["resolution"], model["num_classes"])[0]]  # noqa: E731
    meta["seeds"]["inputs"], meta["margins"] = widest_margins(module, sd, draw)
    x, y = golden.train_inputs(meta)
    f64 = outputs(module, sd, x, y, torch.float64)
    meta["pycls_float32_error"] = conditioning(outputs(module, sd, x, y, torch.float32), f64)
    write(name, meta, {**{f"stats/{k}": v for k, v in stats.items()}, **f64})
    return module, meta, sd


def make_zoo() -> None:
    name, model, res = ZOO["name"], ZOO["model"], ZOO["resolution"]
    module, info = build(model, res)
    meta = case_meta(name, model, info, module, ZOO["batch"], res)
    meta["seeds"]["inputs"] = INPUT_SEEDS[0]  # eval mode only: no gradients, so no kinks to avoid
    params = golden.parameters(meta)
    x_cal, _ = golden.seeded_inputs(SEEDS["calibration"], ZOO["calibration_batch"], res, model["num_classes"])
    stats = calibrate(module, params, x_cal)
    x, _ = golden.train_inputs(meta)
    out = {}
    for dtype in (torch.float64, torch.float32):
        m = load_state(module, {**params, **stats}, dtype).eval()
        with torch.no_grad():
            out[dtype] = m(torch.from_numpy(x).to(dtype)).numpy()
    meta["pycls_float32_error"] = {"logits_eval": float(f"{rel_err(out[torch.float32], out[torch.float64]):.3g}")}
    write(name, meta, {**{f"stats/{k}": v for k, v in stats.items()}, "logits_eval": out[torch.float64]})


def ddp_outputs(
    module: torch.nn.Module, sd: dict[str, np.ndarray], chunks: list[tuple[np.ndarray, np.ndarray]], dtype: torch.dtype
) -> dict[str, np.ndarray]:
    """Each chunk in train mode on its own model copy (per-GPU BatchNorm), gradients averaged, one pycls SGD step."""
    out, grads, losses = {}, [], []
    for c, (x, y) in enumerate(chunks):
        m = load_state(module, sd, dtype)
        _, loss = train_step(m, x, y)
        losses.append(loss.item())
        grads.append({name: p.grad.clone() for name, p in m.named_parameters()})
        out.update(
            {f"after/c{c}/{name}": v.numpy() for name, v in m.state_dict().items() if golden.is_running_stat(name)}
        )
    m = load_state(module, sd, dtype)
    for name, p in m.named_parameters():
        p.grad = sum(g[name] for g in grads) / len(grads)
        out[f"grad/{name}"] = p.grad.numpy().copy()
    cfg.OPTIM.BASE_LR, cfg.OPTIM.MOMENTUM, cfg.OPTIM.NESTEROV = DDP["lr"], DDP["momentum"], DDP["nesterov"]
    cfg.OPTIM.WEIGHT_DECAY, cfg.OPTIM.DAMPENING, cfg.BN.USE_CUSTOM_WEIGHT_DECAY = DDP["weight_decay"], 0.0, False
    optimizer.construct_optimizer(m).step()
    out.update({f"param/{name}": p.detach().numpy() for name, p in m.named_parameters()})
    out.update(chunk_losses=np.array(losses), loss=np.array(np.mean(losses)))
    return out


def make_ddp_step(module: torch.nn.Module, meta: dict, sd: dict[str, np.ndarray]) -> None:
    """tests/data/ddp_step.npz: the 'regnety' case's global batch of 16 as 4-GPU DDP computes it (README.md)."""
    n, k = DDP["chunks"] * DDP["per_chunk"], DDP["per_chunk"]

    def chunks(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        x, y = golden.seeded_inputs(seed, n, meta["resolution"], meta["model"]["num_classes"])
        return [(x[c * k : (c + 1) * k], y[c * k : (c + 1) * k]) for c in range(DDP["chunks"])]

    seed, ddp_margins = widest_margins(module, sd, lambda seed: [x for x, _ in chunks(seed)], DDP_INPUT_SEEDS)
    set_pycls_cfg(meta["model"])
    f64 = ddp_outputs(module, sd, chunks(seed), torch.float64)
    f32 = ddp_outputs(module, sd, chunks(seed), torch.float32)
    ddp_meta = {"case": DDP["case"], "model": meta["model"], "resolution": meta["resolution"], "batch": n, **DDP,
                "dampening": 0.0, "seeds": {**meta["seeds"], "inputs": seed}, "margins": ddp_margins,
                "pycls_float32_error": conditioning(f32, f64), "generated_with": meta["generated_with"]}  # fmt: skip
    write("ddp_step", ddp_meta, f64)
    print("ddp_step", ddp_margins, ddp_meta["pycls_float32_error"])


def main(only: list[str]) -> None:
    """Regenerate the files of the cases named in ``only`` ('ddp_step', 'regnety_200mf', a case name), or all."""
    torch.manual_seed(0)  # only pycls's own init uses it, and every value is overwritten
    wanted = lambda name: not only or name in only  # noqa: E731
    for name, model in CASES.items():
        if wanted(name) or (name == DDP["case"] and wanted("ddp_step")):
            module, meta, sd = make_case(name, model)
            print(
                name, meta["pycls_args"]["ws"], meta["pycls_args"]["ds"], meta["margins"], meta["pycls_float32_error"]
            )
            if name == DDP["case"] and wanted("ddp_step"):
                make_ddp_step(module, meta, sd)
    if wanted(ZOO["name"]):
        make_zoo()
    total = sum(p.stat().st_size for p in HERE.iterdir() if p.suffix in (".npz", ".json"))
    print(f"tests/data: {total / 2**20:.2f} MiB")


if __name__ == "__main__":
    main(sys.argv[1:])
