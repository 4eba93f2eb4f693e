"""Parity with pycls on the golden cases of tests/data (made by the real pycls; tests/data/README.md).

Under ``jax.jit`` with XLA's default optimisation, as the trainer runs the model, and with each convolution
lowering: eval and train logits and the loss within 1e-5 (relative), every parameter's gradient within 1e-4, the
updated BatchNorm running statistics within 1e-5. The references are pycls's float64 outputs; pycls's own float32 run
is within 1e-7 (outputs) and 7e-6 (gradients) of them, and so is regnet_jax's (about 5e-6 for gradients).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from regnet_jax.models import create_model, layers, model_spec
from regnet_jax.models.complexity import count
from regnet_jax.weights.layouts import from_pycls, to_pycls
from tests import golden

LOWERINGS = ("xla", "vjp")  # the GPU/TPU lowering and the CPU default
# 'blocked' shares 'vjp''s forward pass and differs only where autodiff takes over: checked on the grouped cases.
RUNS = [(case, impl) for case in golden.CASES for impl in LOWERINGS] + [("regnety", "blocked"), ("regnetx", "blocked")]


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@contextlib.contextmanager
def _lowering(impl: str):
    """Trace with the grouped-convolution lowering ``impl``."""
    before = layers.get_conv_impl()
    layers.set_conv_impl(impl)
    try:
        yield
    finally:
        layers.set_conv_impl(before)


@functools.cache
def _case(name: str) -> tuple[dict, dict, dict]:
    meta, arrays = golden.load(name)
    return meta, arrays, from_pycls(golden.state_dict(meta, arrays), meta["model"])


@functools.cache
def _outputs(name: str, impl: str) -> dict[str, np.ndarray]:
    """regnet_jax's outputs for a case, pycls names: one jitted eval pass and one train step, as the trainer jits it."""
    meta, _, variables = _case(name)
    x, y = golden.train_inputs(meta)
    x, y = jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(y)
    model = create_model(meta["model"])

    def run(variables):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, updates["batch_stats"])

        (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        return model.apply(variables, x, train=False), logits, loss, grads, stats

    with _lowering(impl):
        logits_eval, logits_train, loss, grads, stats = jax.jit(run)(variables)
    out = {"logits_eval": logits_eval, "logits_train": logits_train, "loss_train": loss}
    out.update({f"grad/{k}": v for k, v in to_pycls({"params": grads}).items()})
    out.update({f"after/{k}": v for k, v in to_pycls({"batch_stats": stats}).items()})
    return {k: np.asarray(v) for k, v in out.items()}


def _errors(name: str, impl: str, prefix: str) -> dict[str, float]:
    _, arrays, _ = _case(name)
    got = _outputs(name, impl)
    keys = [k for k in arrays if k.startswith(prefix)]
    assert keys and set(keys) == {k for k in got if k.startswith(prefix)}, (
        f"{prefix}: regnet_jax and pycls have different keys"
    )
    return {k: rel_err(got[k], arrays[k]) for k in keys}


@pytest.mark.parametrize("name", [*golden.CASES, "regnety_200mf"])
def test_pycls_built_the_same_architecture(name):
    meta, _ = golden.load(name)
    spec, p = model_spec(meta["model"]), meta["pycls_args"]
    assert (list(spec.depths), list(spec.widths), list(spec.strides), spec.stem_w) == (
        p["ds"],
        p["ws"],
        p["ss"],
        p["stem_w"],
    )
    if spec.block_type == "res_bottleneck_block":  # pycls's other blocks take no bottleneck or group widths
        assert (list(spec.bot_muls), list(spec.group_ws)) == (p["bms"], p["gws"])
    assert spec.se_ratio == (p["se_r"] or 0) and spec.num_classes == p["nc"]
    assert count(meta["model"], meta["resolution"]) == meta["complexity"]


@pytest.mark.parametrize("name, impl", RUNS)
def test_logits_and_loss(name, impl):
    errors = {
        k: rel_err(_outputs(name, impl)[k], _case(name)[1][k]) for k in ("logits_eval", "logits_train", "loss_train")
    }
    assert max(errors.values()) <= 1e-5, errors


@pytest.mark.parametrize("name, impl", RUNS)
def test_every_gradient(name, impl):
    errors = _errors(name, impl, "grad/")
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, (worst, errors[worst])


@pytest.mark.parametrize("name, impl", RUNS)
def test_updated_running_statistics(name, impl):
    errors = _errors(name, impl, "after/")
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-5, (worst, errors[worst])


def test_zoo_regnety_200mf_eval_logits():
    """A real zoo model at its real resolution (RegNetY-200MF, seeded weights, calibrated statistics, 224 px), with the
    default lowering."""
    meta, arrays, variables = _case("regnety_200mf")
    x, _ = golden.train_inputs(meta)
    model = create_model(meta["model"])
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert logits.dtype == jnp.float32
    assert rel_err(logits, arrays["logits_eval"]) <= 1e-5
