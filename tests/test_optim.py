"""The pycls recipe: lr schedules of every epoch (pycls/core/optimizer.py: get_epoch_lr; docs/fidelity.md#training-recipe), PyTorch SGD semantics, weight-decay groups, loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax.config import base_config, base_lr, describe_lr
from regnet_jax.models import zoo
from regnet_jax.training import optimizer
from tests.helpers_train import TINY_MODEL, tiny_config


def reference_lr(base_lr, epoch, max_epoch, warmup_epochs, warmup_factor=0.1):
    """pycls/core/optimizer.py: get_epoch_lr with lr_fun_cos, written out independently of regnet_jax.training.optimizer."""
    lr = base_lr * 0.5 * (1 + math.cos(math.pi * epoch / max_epoch))
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        lr *= warmup_factor * (1 - alpha) + alpha
    return lr


def epoch_lr(config, epoch):
    """The learning rate at ``epoch`` of a config's per-epoch schedule (an integer epoch index, as pycls sets it)."""
    o = config.optim
    lr = base_lr(config) * 0.5 * (1.0 + math.cos(math.pi * epoch / config.num_epochs))
    if epoch < o.warmup_epochs:
        alpha = epoch / o.warmup_epochs
        lr *= o.warmup_factor * (1.0 - alpha) + alpha
    return lr


@pytest.mark.parametrize(
    "name, schedule, lr, epochs, warmup",
    [
        ("regnety_4gf", "", 0.4, 100, 5),
        ("regnetx_200mf", "", 0.8, 100, 5),
        ("regnety_16gf", "", 0.2, 100, 5),
        ("resnet50", "", 0.2, 100, 0),
        ("regnety_4gf", "25ep", 0.1, 25, 0),
        ("regnetx_400mf", "10ep", 0.05, 10, 0),
    ],
)
def test_lr_of_every_epoch(name, schedule, lr, epochs, warmup):
    config = zoo.get_config(name, schedule)
    assert (base_lr(config), config.num_epochs, config.optim.warmup_epochs) == (lr, epochs, warmup)
    steps_per_epoch = 7
    schedule_fn = jax.jit(optimizer.lr_schedule(config, steps_per_epoch))
    steps = jnp.arange(epochs * steps_per_epoch)
    got = np.asarray(schedule_fn(steps)).reshape(epochs, steps_per_epoch)
    want = np.array([reference_lr(lr, e, epochs, warmup) for e in range(epochs)])
    np.testing.assert_allclose(got, np.repeat(want[:, None], steps_per_epoch, 1), rtol=1e-6)  # constant within an epoch
    for e in range(epochs):
        assert epoch_lr(config, e) == pytest.approx(want[e], rel=1e-12)


def test_warmup_multipliers_are_the_documented_ones():
    config = zoo.get_config("regnety_4gf")
    factors = [epoch_lr(config, e) / (0.4 * 0.5 * (1 + math.cos(math.pi * e / 100))) for e in range(6)]
    np.testing.assert_allclose(factors, [0.1, 0.28, 0.46, 0.64, 0.82, 1.0], rtol=1e-12)


def test_per_step_lr_option():
    config = zoo.get_config("regnety_4gf")
    config.optim.lr_per_step = True
    fn = optimizer.lr_schedule(config, 10)
    for step in (0, 3, 25, 999):
        assert float(fn(step)) == pytest.approx(reference_lr(0.4, step / 10, 100, 5), rel=1e-5)


def test_lr_follows_the_batch_unless_pinned():
    assert base_lr(base_config(TINY_MODEL, batch_size=256)) == pytest.approx(0.2)
    config = zoo.get_config("regnety_4gf")  # batch 512: lr 0.4
    assert base_lr(config) == pytest.approx(0.4)
    config.batch_size = 256  # e.g. --config.batch_size=256 on the command line, or a fork of the config file
    assert base_lr(config) == pytest.approx(0.2) and epoch_lr(config, 50) == pytest.approx(0.1)
    config.batch_size = 4
    assert base_lr(config) == pytest.approx(0.1 * 4 / 128)
    ten = zoo.get_config("regnetx_400mf", "10ep")  # 0.05 per 128 images
    ten.batch_size = 256
    assert base_lr(ten) == pytest.approx(0.1)
    config.optim.base_lr = 0.3  # pinned: whatever the batch
    assert base_lr(config) == 0.3 and "pinned" in describe_lr(config) and "0.003125" in describe_lr(config)


def test_sgd_matches_pytorch_nesterov_with_weight_decay():
    torch = pytest.importorskip("torch", reason="torch (the optional 'torch' extra) is the reference implementation")
    config = tiny_config(num_epochs=4)
    config.optim.warmup_epochs = 1
    rng = np.random.default_rng(0)
    params = {
        "conv": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
        "head": {"bias": rng.normal(size=(4,)).astype(np.float32)},
    }
    grads = [jax.tree_util.tree_map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(8)]
    steps_per_epoch = 2
    tx = optimizer.make_optimizer(config, steps_per_epoch, params)
    state, p = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, p)
        p = jax.tree_util.tree_map(lambda a, u: a + u, p, updates)

    tp = [
        torch.tensor(params["conv"]["kernel"], requires_grad=True),
        torch.tensor(params["head"]["bias"], requires_grad=True),
    ]
    opt = torch.optim.SGD(tp, lr=1.0, momentum=0.9, nesterov=True, weight_decay=config.optim.weight_decay, dampening=0)
    for i, g in enumerate(grads):
        for group in opt.param_groups:  # pycls sets the lr once per epoch
            group["lr"] = reference_lr(config.optim.base_lr, i // steps_per_epoch, 4, 1)
        tp[0].grad, tp[1].grad = torch.tensor(g["conv"]["kernel"]), torch.tensor(g["head"]["bias"])
        opt.step()
    np.testing.assert_allclose(p["conv"]["kernel"], tp[0].detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p["head"]["bias"], tp[1].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_weight_decay_can_exclude_bn_and_biases():
    params = {
        "stem": {"conv": {"kernel": jnp.ones((3, 3, 3, 8))}, "bn": {"scale": jnp.ones(8), "bias": jnp.ones(8)}},
        "s1": {
            "b1": {
                "f": {
                    "a_bn": {"scale": jnp.ones(8)},
                    "se": {"f_ex_0": {"kernel": jnp.ones((8, 2)), "bias": jnp.ones(2)}},
                }
            }
        },
        "head": {"fc": {"kernel": jnp.ones((8, 10)), "bias": jnp.ones(10)}},
    }
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    for exclude in (False, True):
        config = tiny_config()
        config.optim.wd_exclude_bn_bias = exclude
        tx = optimizer.make_optimizer(config, 10, params)
        updates, _ = tx.update(zeros, tx.init(params), params)
        decayed = {
            jax.tree_util.keystr(k): bool(np.any(np.asarray(u) != 0))
            for k, u in jax.tree_util.tree_flatten_with_path(updates)[0]
        }
        for key, moved in decayed.items():
            is_bn_or_bias = "bn" in key or key.endswith("['bias']")
            assert moved == (not (exclude and is_bn_or_bias)), key


def test_cross_entropy_with_label_smoothing():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    labels = jnp.array([0, 1])
    logp = np.asarray(jax.nn.log_softmax(logits))
    np.testing.assert_allclose(optimizer.cross_entropy(logits, labels, 3), [-logp[0, 0], -logp[1, 1]], rtol=1e-6)
    eps = 0.1
    targets = np.full((2, 3), eps / 3)
    targets[[0, 1], [0, 1]] += 1 - eps
    np.testing.assert_allclose(optimizer.cross_entropy(logits, labels, 3, eps), -(targets * logp).sum(1), rtol=1e-6)
