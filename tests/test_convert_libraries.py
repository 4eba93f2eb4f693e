"""Against the real libraries, when installed (they are not dependencies; skipped otherwise): torchvision and timm
RegNets with random weights and random BN statistics give the same logits in PyTorch and, converted, in Flax."""

import importlib

import jax
import numpy as np
import pytest

from regnet_jax.models import create_model, zoo
from regnet_jax.weights import layouts

pytestmark = pytest.mark.timeout(300)


def _library(name):
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 (a torchvision built for another torch raises RuntimeError, not ImportError)
        pytest.skip(f"{name} is not usable here ({type(e).__name__}: {str(e)[:100]}): not compared against it")


def _randomise_bn(torch, module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def _compare(torch, module, sd_layout, zoo_name, tmp_path):
    """Logits of ``module`` vs Flax after converting its saved state dict with the zoo config (variant if needed)."""
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    path = str(tmp_path / "w.pth")
    torch.save(module.state_dict(), path)
    sd = layouts.read_state_dict(path)
    model, note = layouts.resolve_model(sd, zoo.get_config(zoo_name), sd_layout)
    inferred, _ = layouts.resolve_model(sd, None, sd_layout)
    flax_model = create_model(model)
    got = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(layouts.from_layout(sd, model, sd_layout), x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    return model, inferred, note


@pytest.mark.parametrize(
    "tv_name, zoo_name, variant",
    [
        ("regnet_y_400mf", "regnety_400mf", False),
        ("regnet_x_400mf", "regnetx_400mf", True),
        ("regnet_y_800mf", "regnety_800mf", True),
    ],
)
def test_torchvision_models(tv_name, zoo_name, variant, tmp_path):
    torch = _library("torch")
    models = _library("torchvision.models")
    module = _randomise_bn(torch, getattr(models, tv_name)(), seed=1)
    model, inferred, note = _compare(torch, module, "torchvision", zoo_name, tmp_path)
    assert bool(note) == variant
    assert model["widths"] == inferred["widths"] if variant else model == zoo.get_config(zoo_name).model.to_dict()


@pytest.mark.parametrize(
    "timm_name, zoo_name, variant",
    [
        ("regnety_002", "regnety_200mf", False),
        ("regnetx_004_tv", "regnetx_400mf", True),
        ("regnety_008_tv", "regnety_800mf", True),
    ],
)
def test_timm_models(timm_name, zoo_name, variant, tmp_path):
    torch = _library("torch")
    timm = _library("timm")
    module = _randomise_bn(torch, timm.create_model(timm_name, pretrained=False), seed=2)
    _, _, note = _compare(torch, module, "timm", zoo_name, tmp_path)
    assert bool(note) == variant
