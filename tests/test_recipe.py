"""The pycls recipe on any number of devices: BatchNorm statistics groups, gradient accumulation, precise BN.

The same optimizer steps on 8 devices, on 1 device with 8 micro-batches and on 2 devices with 4 give the same
parameters and BN running statistics; groups spanning devices equal groups inside one device; one step equals
pycls's 4-GPU DistributedDataParallel step (tests/data/ddp_step.npz); precise BN equals the statistics recomputed by
hand; the trainer applies it.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from regnet_jax import config as config_lib
from regnet_jax import data
from regnet_jax.config import ConfigError
from regnet_jax.core import distributed
from regnet_jax.core.distributed import batch_layout
from regnet_jax.models import create_model, zoo
from regnet_jax.models.layers import BatchNorm
from regnet_jax.train import train_and_evaluate
from regnet_jax.training import optimizer, precise_bn
from regnet_jax.training import steps as train_steps
from regnet_jax.weights.layouts import from_pycls, to_pycls
from regnet_jax.weights.pretrained import load_pretrained
from tests import golden
from tests.helpers_train import tiny_config

IMAGE = (16, 16, 3)
BATCH = 128
# Plain conv-BN-ReLU blocks: the grouping is the same for every block type, and these compile fastest.
VANILLA = dict(
    type="anynet", stem_type="simple_stem_in", stem_w=8, block_type="vanilla_block", depths=[1, 1], widths=[8, 16],
    strides=[2, 2], bot_muls=[1.0, 1.0], group_ws=[8, 16], se_ratio=0.0, num_classes=10,
)  # fmt: skip


def _assert_trees_close(a, b, rtol=2e-5, atol=1e-6):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
        )


def _max_abs_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def _random_batches(n, batch, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.normal(size=(batch, *IMAGE)).astype(np.float32),
            "label": rng.integers(0, 10, batch).astype(np.int32),
        }
        for _ in range(n)
    ]


def _vanilla_model():
    config = tiny_config(**{"optim.base_lr": 0.5, "optim.warmup_epochs": 0})
    config.model = VANILLA
    return config, create_model(config, bn_axis_name=distributed.AXIS)


@pytest.fixture(scope="module")
def runs():
    """``run(devices, bn_group_size, grad_accum_steps, order=None, accumulation='auto')``: the state after 3 steps at
    batch 128 (memoised). On CPU 'auto' unrolls the micro-batches; 'loop' is what GPUs and TPUs run."""
    config, model = _vanilla_model()
    params = jax.eval_shape(lambda: train_steps.init_variables(model, jax.random.key(0), IMAGE))["params"]
    tx = optimizer.make_optimizer(config, steps_per_epoch=2, params=params)
    batches = _random_batches(3, BATCH)
    initial = jax.device_get(
        train_steps.create_train_state(model, tx, jax.random.key(0), IMAGE, distributed.make_mesh(), ema=True)
    )
    done = {}

    def run(devices, group, accum, order=None, accumulation="auto"):
        key = (devices, group, accum, None if order is None else tuple(order), accumulation)
        if key not in done:
            mesh = distributed.make_mesh(jax.devices()[:devices])
            state = distributed.replicate(initial, mesh)
            step = train_steps.make_train_step(
                model,
                tx,
                mesh,
                num_classes=10,
                ema_decay=0.5,
                bn_group_size=group,
                grad_accum_steps=accum,
                accumulation=accumulation,
            )
            losses = []
            for b in batches:
                b = b if order is None else {k: v[order] for k, v in b.items()}
                state, m = step(state, distributed.shard_batch(b, mesh))
                losses.append(float(m["loss"]))
                assert int(m["count"]) == BATCH
            done[key] = (jax.device_get(state), losses)
        return done[key]

    return run


def _assert_same_training(a, b):
    (sa, la), (sb, lb) = a, b
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    _assert_trees_close(sa.params, sb.params)
    _assert_trees_close(sa.batch_stats, sb.batch_stats)
    _assert_trees_close(sa.ema, sb.ema)


def test_groups_of_16_on_8_devices_equal_1x8_and_2x4_accumulation(runs):
    """Issue 12 (a): 8 devices x 16 images == 1 device x 8 micro-batches of 16 (in a loop) == 2 devices x 4
    micro-batches (unrolled)."""
    assert jax.device_count() == 8
    reference = runs(8, 16, 1)
    _assert_same_training(runs(1, 16, 8, accumulation="loop"), reference)
    _assert_same_training(runs(2, 16, 4), reference)
    assert len(set(reference[1])) == 3  # the steps changed the parameters


def test_groups_spanning_devices_equal_groups_inside_a_device(runs):
    """Groups of 32 on 2 devices x 4 micro-batches (each group spans both devices: BN averages over the mesh's inner
    axis; fed the batch in the order that makes its groups the same images, see regnet_jax.training.steps) == 1 device x 4
    micro-batches of one group each."""
    reference = runs(1, 32, 4, accumulation="loop")
    # 2 devices x 4 micro-batches: micro-batch i's group is rows [16i, 16i+16) of device 0 and of device 1.
    order = np.concatenate([np.arange(32 * i + 16 * d, 32 * i + 16 * d + 16) for d in range(2) for i in range(4)])
    _assert_same_training(runs(2, 32, 4, order, accumulation="loop"), reference)
    # The grouping matters: groups of 16 train differently (so the equalities above can fail).
    assert _max_abs_diff(reference[0].params, runs(8, 16, 1)[0].params) > 1e-4
    assert _max_abs_diff(reference[0].batch_stats, runs(8, 16, 1)[0].batch_stats) > 1e-4


@pytest.mark.parametrize(
    "batch, devices, accum, group, message",
    [
        (
            80,
            8,
            4,
            0,
            "batch_size=80 is not divisible by the 8 devices x config.grad_accum_steps=4 micro-batches: use a multiple of 32",
        ),
        (128, 8, 2, 0, "bn_group_size=0 .* cannot be combined with config.grad_accum_steps=2"),
        (128, 1, 1, 48, "bn_group_size=48 does not divide the 128 images"),
        (
            96,
            8,
            1,
            8,
            r"bn_group_size=8 cannot be formed from the 8 devices' micro-batches of 12 images.*\[1, 2, 3, 4, 6, 12, 24, 48, 96\]",
        ),
    ],
)
def test_impossible_layouts_are_clear_errors(batch, devices, accum, group, message):
    with pytest.raises(ConfigError, match=message):
        batch_layout(batch, devices, accum, group)


def test_layouts_and_recipe_defaults():
    lay = batch_layout(1024, 256, 1, 128)  # a v5e-256 slice at the zoo's batch: 4 images per chip
    assert (lay.micro_batch, lay.devices_per_group, lay.groups_per_device, lay.num_groups) == (4, 32, 1, 8)
    lay = batch_layout(1024, 1, 8, 128)  # one GPU reproducing 8
    assert (lay.micro_batch, lay.devices_per_group, lay.groups_per_device, lay.num_groups) == (128, 1, 1, 8)
    assert batch_layout(512, 8, 1, 0).group_size == 512  # 0: the whole global batch
    assert zoo.get_config("regnety_4gf").bn_group_size == 64 and zoo.get_config("regnetx_400mf").bn_group_size == 128
    assert zoo.get_config("resnet50").bn_group_size == 32 and zoo.get_config("regnety_4gf", "25ep").bn_group_size == 128
    assert config_lib.base_config(VANILLA).bn_group_size == 0
    bad = tiny_config(batch_size=32, bn_group_size=64)
    with pytest.raises(ConfigError, match="bn_group_size=64 does not divide the 32 images"):
        config_lib.validate_config(bad)


class _RecordBNInputs:
    """An interceptor that sows every BatchNorm's input (to compute its statistics by hand)."""

    def __call__(self, next_fun, args, kwargs, context):
        if isinstance(context.module, BatchNorm) and context.method_name == "__call__":
            context.module.sow("intermediates", "bn_input", args[0])
        return next_fun(*args, **kwargs)


def _stats_by_hand(model, variables, batches, group):
    """Each BN layer's mean and unbiased variance of its input, per group of ``group`` consecutive images of a batch
    run alone in train mode, averaged over groups and batches (pycls's precise BN)."""
    plain = model.clone(bn_axis_name=None)
    sums: dict = {}

    @jax.jit
    def bn_inputs(x):
        with nn.intercept_methods(_RecordBNInputs()):
            _, out = plain.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"])
        return out["intermediates"]

    n = 0
    for batch in batches:
        for start in range(0, len(batch["image"]), group):
            inputs = jax.device_get(bn_inputs(batch["image"][start : start + group]))
            for path, x in jax.tree_util.tree_flatten_with_path(inputs)[0]:
                x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
                layer = tuple(k.key for k in path[:-2])  # drop ('bn_input', tuple index)
                mean, var = sums.get(layer, (0.0, 0.0))
                sums[layer] = (mean + x.mean(0), var + x.var(0, ddof=1))
            n += 1
    return {layer: (mean / n, var / n) for layer, (mean, var) in sums.items()}


def test_precise_bn_equals_statistics_recomputed_by_hand(runs):
    """Issue 12 (c), on 2 devices with 2 micro-batches and 2 statistics groups of 16 per micro-batch and device."""
    _, model = _vanilla_model()
    mesh = distributed.make_mesh(jax.devices()[:2])
    variables = runs(8, 16, 1)[0].variables()  # trained weights; precise BN ignores the old running statistics
    batches = _random_batches(3, BATCH, seed=1)
    step = train_steps.make_bn_stats_step(model, mesh, bn_group_size=16, grad_accum_steps=2)
    stats = jax.device_get(
        precise_bn.recompute_batch_stats(step, variables, (distributed.shard_batch(b, mesh) for b in batches), 2)
    )
    expected = _stats_by_hand(model, variables, batches[:2], 16)  # count=2: only the first two batches
    flat, running = (
        {tuple(k.key for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(t)[0]}
        for t in (stats, variables["batch_stats"])
    )
    assert len(expected) == 5 and len(flat) == 10  # every BN layer: the stem's and two per vanilla block
    for layer, (mean, var) in expected.items():
        np.testing.assert_allclose(flat[(*layer, "mean")], mean, rtol=1e-4, atol=1e-5, err_msg=str(layer))
        np.testing.assert_allclose(flat[(*layer, "var")], var, rtol=1e-4, atol=1e-5, err_msg=str(layer))
        assert np.max(np.abs(flat[(*layer, "var")] - running[(*layer, "var")])) > 1e-2  # not the old running statistics
    assert precise_bn.num_batches(8192, 1024, 1251) == 8 and precise_bn.num_batches(8192, 16384, 78) == 1


def test_trainer_applies_precise_bn_with_groups_and_accumulation(tmp_path):
    """One epoch with precise BN: the checkpoint holds the statistics of the epoch's first images (model and EMA)."""
    config = tiny_config(
        num_epochs=1,
        bn_group_size=8,
        grad_accum_steps=2,
        precise_bn=True,
        precise_bn_images=64,
        **{"optim.ema_decay": 0.5},
    )  # 32 images per step, 2 per device and micro-batch: groups of 8 span 4 devices
    config.model = VANILLA
    train_and_evaluate(config, str(tmp_path))
    mesh = distributed.make_mesh()
    step = train_steps.make_bn_stats_step(
        create_model(config, bn_axis_name=distributed.AXIS), mesh, bn_group_size=8, grad_accum_steps=2
    )
    for ema in (False, True):
        variables = load_pretrained(str(tmp_path), ema=ema).variables
        batches = data.device_prefetch(data.TrainInput(config).epoch(0), mesh)
        expected = precise_bn.recompute_batch_stats(step, variables, batches, 2)
        _assert_trees_close(variables["batch_stats"], jax.device_get(expected), rtol=1e-5, atol=1e-6)


def _rel_err(a, b) -> float:
    """max |a - b| / max |b| (as tests/test_parity.py)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_one_step_equals_pycls_ddp_on_4_gpus():
    """Issue 12 (b): pycls's 4-GPU DDP step (tests/data/ddp_step.npz: 16 images in 4 chunks, BN per chunk, mean
    gradient, one Nesterov SGD step) with bn_group_size=4 on 1 device with 2 micro-batches (a loop) of 2 groups (the tests above
    show that other layouts compute the same). Tolerances as tests/test_parity.py: 1e-5 loss and statistics; the
    parameter updates (lr x gradient) to 1e-4 of their largest value plus the rounding of the parameters themselves:
    an update is read as (p + u) - p, and both the golden p + u (stored in float32) and ours are rounded to float32,
    so each element can be off by one float32 step of p (half a step each). For s3.b2.f.se.f_ex.0.weight
    (max |u| 5.2e-4, max |p| 1.07) one step is 2.3e-4 of max |u|: measured 5.8e-5 (JAX 0.10.2 and 0.12.1 here) and
    1.16e-4 on another CPU, and a float64 JAX step differs from the golden by 1.1e-4 (the golden's own rounding)."""
    devices, accum = 1, 2
    meta, want = golden.load("ddp_step")
    case_meta, case_arrays = golden.load(meta["case"])
    before = golden.state_dict(case_meta, case_arrays)
    x, y = golden.seeded_inputs(
        meta["seeds"]["inputs"], meta["batch"], meta["resolution"], meta["model"]["num_classes"]
    )
    config = config_lib.base_config(meta["model"], batch_size=meta["batch"])
    config.optim.update(
        base_lr=meta["lr"],
        momentum=meta["momentum"],
        nesterov=meta["nesterov"],
        weight_decay=meta["weight_decay"],
        warmup_epochs=0,
    )
    variables = from_pycls(before, meta["model"])
    tx = optimizer.make_optimizer(config, steps_per_epoch=1, params=variables["params"])
    mesh = distributed.make_mesh(jax.devices()[:devices])
    state = distributed.replicate(train_steps.state_from_variables(variables, tx, ema=False), mesh)
    step = train_steps.make_train_step(
        create_model(config, bn_axis_name=distributed.AXIS), tx, mesh, num_classes=meta["model"]["num_classes"],
        bn_group_size=meta["per_chunk"], grad_accum_steps=accum, accumulation="loop",
    )  # fmt: skip
    batch = {"image": x.transpose(0, 2, 3, 1), "label": y.astype(np.int32)}
    state, metrics = step(state, distributed.shard_batch(batch, mesh))
    assert _rel_err(metrics["loss"], want["loss"]) <= 1e-5
    got = to_pycls(jax.device_get(state.variables()))
    over = {}
    for k in golden.parameters(case_meta):
        got_u, want_u = np.float64(got[k]) - before[k], np.float64(want[f"param/{k}"]) - before[k]
        limit = 1e-4 * np.abs(want_u).max() + np.spacing(np.float32(np.abs(before[k]).max()))
        if np.abs(got_u - want_u).max() > limit:
            over[k] = (np.abs(got_u - want_u).max(), limit)
    assert not over, over
    stats = [k for k in got if golden.is_running_stat(k)]
    chunks = [[want[f"after/c{c}/{k}"] for c in range(meta["chunks"])] for k in stats]
    assert max(_rel_err(got[k], np.mean(c, axis=0)) for k, c in zip(stats, chunks)) <= 1e-5  # the mean over the groups
    assert max(_rel_err(c[0], np.mean(c, axis=0)) for c in chunks) > 1e-3  # not rank 0's (DDP's), which differs
