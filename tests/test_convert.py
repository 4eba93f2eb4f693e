"""pycls / torchvision / timm state dicts <-> Flax: key names, round trips, reference logits, width variants, errors."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax.config import validate_model
from regnet_jax.models import create_model, model_spec, zoo
from regnet_jax.models.complexity import count
from regnet_jax.weights import formats, layouts
from regnet_jax.weights.layouts import ConversionError
from tests import golden


def _random_variables(model, seed=0):
    """Random values of the right shapes (BN variances positive): a stronger round-trip test than an init."""
    rng = np.random.default_rng(seed)
    shapes = layouts.variable_shapes(model)

    def draw(path, s):
        x = rng.standard_normal(s.shape).astype(np.float32)
        return np.abs(x) + 0.5 if path[-1].key == "var" else x

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _equal(a, b):
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb
    for (pa, xa), (_, xb) in zip(la, lb):
        assert np.asarray(xa).shape == np.asarray(xb).shape and np.array_equal(xa, xb), jax.tree_util.keystr(pa)


def _tiny(**kw):
    base = dict(type="anynet", stem_type="simple_stem_in", stem_w=8, block_type="res_bottleneck_block", depths=[1, 2],
                widths=[8, 16], strides=[2, 2], bot_muls=[1.0, 1.0], group_ws=[8, 8], se_ratio=0.25, num_classes=10)  # fmt: skip
    return {**base, **kw}


# Independent renamings, written from torchvision/models/regnet.py (stem and every conv+BN are
# Conv2dNormActivation = Sequential(conv, bn, ...); blocks 'trunk_output.block{i}.block{i}-{j-1}'; SE fc1/fc2; 'fc')
# and timm/models/regnet.py (ConvNormAct .conv/.bn; conv1-3; 'downsample'; SEModule fc1/fc2; 'head.fc').
def _pycls_to_torchvision(key):
    key = re.sub(r"^stem\.conv\.", "stem.0.", key)
    key = re.sub(r"^stem\.bn\.", "stem.1.", key)
    key = re.sub(r"^head\.fc\.", "fc.", key)
    m = re.match(r"^s(\d+)\.b(\d+)\.(.*)$", key)
    if not m:
        return key
    rest = m[3]
    rest = re.sub(r"^proj\.", "proj.0.", rest)
    rest = re.sub(r"^bn\.", "proj.1.", rest)
    rest = re.sub(r"^f\.([abc])(_bn)?\.", lambda x: f"f.{x[1]}.{1 if x[2] else 0}.", rest)
    rest = rest.replace("f.se.f_ex.0.", "f.se.fc1.").replace("f.se.f_ex.2.", "f.se.fc2.")
    return f"trunk_output.block{m[1]}.block{m[1]}-{int(m[2]) - 1}.{rest}"


def _pycls_to_timm(key):
    m = re.match(r"^(s\d+\.b\d+)\.(.*)$", key)
    if not m:
        return key
    rest = m[2]
    rest = re.sub(r"^proj\.", "downsample.conv.", rest)
    rest = re.sub(r"^bn\.", "downsample.bn.", rest)
    rest = re.sub(r"^f\.([abc])_bn\.", lambda x: f"conv{'abc'.index(x[1]) + 1}.bn.", rest)
    rest = re.sub(r"^f\.([abc])\.", lambda x: f"conv{'abc'.index(x[1]) + 1}.conv.", rest)
    rest = rest.replace("f.se.f_ex.0.", "se.fc1.").replace("f.se.f_ex.2.", "se.fc2.")
    return f"{m[1]}.{rest}"


# ---------------------------------------------------------------- key names


@pytest.mark.parametrize(
    "path, pycls, torchvision, timm",
    [
        (("stem", "conv", "kernel"), "stem.conv.weight", "stem.0.weight", "stem.conv.weight"),
        (("stem", "bn", "mean"), "stem.bn.running_mean", "stem.1.running_mean", "stem.bn.running_mean"),
        (
            ("s1", "b1", "proj", "kernel"),
            "s1.b1.proj.weight",
            "trunk_output.block1.block1-0.proj.0.weight",
            "s1.b1.downsample.conv.weight",
        ),
        (
            ("s2", "b3", "bn", "var"),
            "s2.b3.bn.running_var",
            "trunk_output.block2.block2-2.proj.1.running_var",
            "s2.b3.downsample.bn.running_var",
        ),
        (
            ("s1", "b1", "f", "a", "kernel"),
            "s1.b1.f.a.weight",
            "trunk_output.block1.block1-0.f.a.0.weight",
            "s1.b1.conv1.conv.weight",
        ),
        (
            ("s3", "b2", "f", "b_bn", "scale"),
            "s3.b2.f.b_bn.weight",
            "trunk_output.block3.block3-1.f.b.1.weight",
            "s3.b2.conv2.bn.weight",
        ),
        (
            ("s4", "b1", "f", "c_bn", "bias"),
            "s4.b1.f.c_bn.bias",
            "trunk_output.block4.block4-0.f.c.1.bias",
            "s4.b1.conv3.bn.bias",
        ),
        (
            ("s1", "b1", "f", "se", "f_ex_0", "kernel"),
            "s1.b1.f.se.f_ex.0.weight",
            "trunk_output.block1.block1-0.f.se.fc1.weight",
            "s1.b1.se.fc1.weight",
        ),
        (
            ("s1", "b1", "f", "se", "f_ex_2", "bias"),
            "s1.b1.f.se.f_ex.2.bias",
            "trunk_output.block1.block1-0.f.se.fc2.bias",
            "s1.b1.se.fc2.bias",
        ),
        (("head", "fc", "kernel"), "head.fc.weight", "fc.weight", "head.fc.weight"),
    ],
)
def test_key_names_are_those_of_the_libraries(path, pycls, torchvision, timm):
    assert layouts.torch_name(path) == pycls
    assert layouts.torch_name(path, "torchvision") == torchvision
    assert layouts.torch_name(path, "timm") == timm


def test_pytorch_shapes_in_every_layout():
    model = zoo.get_config("regnety_200mf").model  # Y-200MF: stage 1 is 24 wide, w_se = round(0.25 * 32) = 8
    v = _random_variables(model)
    tv = layouts.to_torchvision(v)
    assert tv["stem.0.weight"].shape == (32, 3, 3, 3)  # OIHW
    assert tv["trunk_output.block1.block1-0.f.b.0.weight"].shape == (24, 8, 3, 3)  # grouped: I = group width
    assert tv["trunk_output.block1.block1-0.f.se.fc1.weight"].shape == (8, 24, 1, 1)
    assert tv["fc.weight"].shape == (1000, 368)
    np.testing.assert_array_equal(
        tv["stem.0.weight"], np.transpose(v["params"]["stem"]["conv"]["kernel"], (3, 2, 0, 1))
    )
    assert set(layouts.to_timm(v)) == {_pycls_to_timm(k) for k in layouts.to_pycls(v)}
    assert set(tv) == {_pycls_to_torchvision(k) for k in layouts.to_pycls(v)}


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
@pytest.mark.parametrize("name", ["regnetx_400mf", "regnety_800mf", "regnetx_8gf"])
def test_round_trip_zoo_models(name, layout):
    model = zoo.get_config(name).model
    v = _random_variables(model, seed=len(name))
    sd = layouts.to_layout(v, layout)
    assert len(sd) == len(jax.tree_util.tree_leaves(v))
    _equal(layouts.from_layout(sd, model, layout), v)


def test_round_trip_resnet50_pycls():
    model = zoo.get_config("resnet50").model
    v = _random_variables(model)
    _equal(layouts.from_pycls(layouts.to_pycls(v), model), v)


# ---------------------------------------------------------------- golden pycls models in three layouts


def test_reference_logits_through_every_layout():
    """pycls's eval logits of the golden RegNetY case (tests/data), from its weights in each layout."""
    meta, arrays = golden.load("regnety")
    sd = golden.state_dict(meta, arrays)
    model = create_model(meta["model"])
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    x = jnp.asarray(golden.train_inputs(meta)[0].transpose(0, 2, 3, 1))
    want = arrays["logits_eval"]

    logits = np.asarray(apply(layouts.from_pycls(sd, meta["model"]), x))
    assert np.abs(logits - want).max() / np.abs(want).max() < 1e-5

    bn_counters = {
        k.replace("running_mean", "num_batches_tracked"): np.array(7) for k in sd if k.endswith("running_mean")
    }
    tv = {_pycls_to_torchvision(k): v for k, v in {**sd, **bn_counters}.items()}
    timm = {_pycls_to_timm(k): v for k, v in {**sd, **bn_counters}.items()}
    for layout, layout_sd in (("torchvision", tv), ("timm", timm)):
        np.testing.assert_array_equal(
            np.asarray(apply(layouts.from_layout(layout_sd, meta["model"], layout), x)), logits
        )


@pytest.fixture(scope="module")
def y200mf():
    """RegNetY-200MF as pycls built it (tests/data/regnety_200mf.json) and torchvision-named weights of its shapes."""
    meta = json.loads((golden.DATA / "regnety_200mf.json").read_text())
    return meta, {_pycls_to_torchvision(k): np.zeros(s, np.float32) for k, s in meta["state_dict"].items()}


def test_architecture_read_from_the_weights(y200mf):
    meta, tv = y200mf
    p = meta["pycls_args"]
    model, note = layouts.resolve_model(tv, None, "torchvision")
    assert "from the weights" in note
    assert (model["depths"], model["widths"], model["group_ws"]) == (p["ds"], p["ws"], p["gws"])
    assert (model["stem_w"], model["se_ratio"], model["num_classes"]) == (32, 0.25, 1000)
    assert count(model) == meta["complexity"]
    # With the matching config the config itself is used, unchanged.
    assert layouts.resolve_model(tv, meta["model"], "torchvision") == (meta["model"], "")


# torchvision's round-half-up width rounding makes different networks (torchvision/models/_utils.py: _make_divisible; docs/fidelity.md#other-implementations): its stage widths and
# torchvision's own num_params.
@pytest.mark.parametrize(
    "name, tv_widths, tv_params",
    [("regnetx_400mf", [32, 64, 160, 400], 5_495_976), ("regnety_800mf", [64, 144, 320, 784], 6_432_512)],
)
@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_torchvision_width_rounding_builds_the_variant(name, tv_widths, tv_params, layout):
    config = zoo.get_config(name)
    spec = model_spec(config.model)
    tv_model = dict(type="anynet", stem_type="simple_stem_in", stem_w=32, block_type="res_bottleneck_block",
                    depths=list(spec.depths), widths=tv_widths, strides=[2] * 4, bot_muls=[1.0] * 4,
                    group_ws=list(spec.group_ws), se_ratio=spec.se_ratio, num_classes=1000)  # fmt: skip
    sd = layouts.to_layout(_random_variables(tv_model), layout)
    with pytest.raises(ConversionError, match="width rounding"):
        layouts.from_layout(sd, config, layout)
    model, note = layouts.resolve_model(sd, config, layout)
    assert model["widths"] == tv_widths and model["depths"] == list(spec.depths)
    assert str(tv_widths) in note and "variant" in note
    assert count(model)["params"] == tv_params
    validate_model(model)
    layouts.from_layout(sd, model, layout)


def test_other_differences_are_not_turned_into_variants(y200mf):
    _, tv = y200mf
    other = zoo.get_config("regnety_400mf")  # different depths: the config is kept and the conversion fails
    assert layouts.resolve_model(tv, other, "torchvision") == (other.model.to_dict(), "")
    with pytest.raises(ConversionError, match=r"keys missing \('trunk_output\.block2\.block2-1\."):
        layouts.from_torchvision(tv, other)


# ---------------------------------------------------------------- errors name the key


@pytest.fixture(scope="module")
def tiny_sd():
    return layouts.to_pycls(_random_variables(_tiny()))


def test_missing_key_is_named(tiny_sd):
    sd = dict(tiny_sd)
    del sd["s2.b2.f.b_bn.running_var"]
    with pytest.raises(ConversionError, match=r"1 keys missing \('s2\.b2\.f\.b_bn\.running_var'\)"):
        layouts.from_pycls(sd, _tiny())


def test_extra_key_is_named(tiny_sd):
    with pytest.raises(ConversionError, match=r"1 keys the model does not use \('s3\.b1\.f\.a\.weight'\)"):
        layouts.from_pycls({**tiny_sd, "s3.b1.f.a.weight": np.zeros((16, 16, 1, 1), np.float32)}, _tiny())


def test_wrong_shape_is_named(tiny_sd):
    sd = {**tiny_sd, "s1.b1.f.a.weight": np.zeros((8, 4, 1, 1), np.float32)}
    with pytest.raises(
        ConversionError, match=r"'s1\.b1\.f\.a\.weight' has shape \(8, 4, 1, 1\), the model needs \(8, 8, 1, 1\)"
    ):
        layouts.from_pycls(sd, _tiny())


def test_wrong_model_for_the_file(tiny_sd):
    with pytest.raises(ConversionError, match=r"'s1\.b1\.f\.se\.f_ex\.0\.weight'"):
        layouts.from_pycls(tiny_sd, _tiny(se_ratio=0.0))  # X config, Y weights: the SE keys are unused
    with pytest.raises(ConversionError, match=r"'head\.fc\.weight' has shape \(10, 16\), the model needs \(1000, 16\)"):
        layouts.from_pycls(tiny_sd, _tiny(num_classes=1000))


def test_wrong_layout_says_which_one(tiny_sd):
    tv = {_pycls_to_torchvision(k): v for k, v in tiny_sd.items()}
    with pytest.raises(ConversionError, match="looks like a torchvision state dict: use --from=torchvision"):
        layouts.from_pycls(tv, _tiny())
    with pytest.raises(ConversionError, match="looks like a pycls state dict: use --from=pycls"):
        layouts.from_timm(tiny_sd, _tiny())
    with pytest.raises(ConversionError, match="use --from=pycls"):
        layouts.resolve_model(tiny_sd, None, "torchvision")


def test_layouts_without_the_architecture():
    with pytest.raises(ConversionError, match="simple_stem_in \\+ res_bottleneck_block"):
        layouts.from_torchvision({}, zoo.get_config("resnet50"))
    with pytest.raises(ConversionError, match="need --config"):
        layouts.resolve_model({}, None, "pycls")
    with pytest.raises(ConversionError, match="unknown layout"):
        layouts.to_layout({}, "keras")


# ---------------------------------------------------------------- files


def test_read_npz_and_safetensors(tmp_path, tiny_sd):
    np.savez(tmp_path / "w.npz", **tiny_sd)
    formats.write_safetensors(str(tmp_path / "w.safetensors"), {f"module.{k}": v for k, v in tiny_sd.items()})
    for name in ("w.npz", "w.safetensors"):
        sd = formats.read_state_dict(str(tmp_path / name))
        assert sd.keys() == tiny_sd.keys()  # DistributedDataParallel's 'module.' prefix is stripped
        for k in sd:
            np.testing.assert_array_equal(sd[k], tiny_sd[k])


def test_bad_files(tmp_path):
    with pytest.raises(formats.FormatError, match="does not exist"):
        formats.read_state_dict(str(tmp_path / "nope.pth"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(formats.FormatError, match="numpy .npz"):
        formats.read_state_dict(str(tmp_path / "bad.npz"))
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(formats.FormatError, match="not a safetensors file or is truncated"):
        formats.read_state_dict(str(tmp_path / "bad.safetensors"))
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(formats.FormatError, match="has no state dict"):
        formats.read_state_dict(str(tmp_path / "empty.npz"))


def test_bad_torch_files(tmp_path, tiny_sd):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: reading .pth/.pyth files is not tested")
    (tmp_path / "garbage.pyth").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(formats.FormatError, match="could not read .*garbage.pyth as a PyTorch checkpoint"):
        formats.read_state_dict(str(tmp_path / "garbage.pyth"))
    torch.save({"epoch": 3, "cfg": "MODEL: {}"}, tmp_path / "no_model.pyth")
    with pytest.raises(formats.FormatError, match="no state dict: expected a 'model_state' \\(pycls\\)"):
        formats.read_state_dict(str(tmp_path / "no_model.pyth"))
    torch.save(
        {"model": {k: torch.from_numpy(v) for k, v in tiny_sd.items()}, "args": re.compile("x")},
        tmp_path / "pickled.pth",
    )
    with pytest.raises(formats.FormatError, match="--unsafe_pickle"):
        formats.read_state_dict(str(tmp_path / "pickled.pth"))
    sd = formats.read_state_dict(str(tmp_path / "pickled.pth"), unsafe_pickle=True)  # DeiT-style {'model': ...}
    assert sd.keys() == tiny_sd.keys()
    torch.save({"model_state": {"a.weight": torch.zeros(2, dtype=torch.bfloat16)}}, tmp_path / "bf16.pyth")
    assert formats.read_state_dict(str(tmp_path / "bf16.pyth"))["a.weight"].dtype == np.float32
