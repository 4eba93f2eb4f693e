"""export: one portable file (safetensors or msgpack) with the config beside it; the safetensors format itself."""

import json
import os
import pathlib
import struct
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

from regnet_jax.config import validate_model
from regnet_jax.models import zoo
from regnet_jax.weights import exporting, formats, layouts
from regnet_jax.weights import files as weight_files

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = validate_model(dict(type="anynet", stem_type="simple_stem_in", stem_w=8, block_type="res_bottleneck_block",
                            depths=[1, 1], widths=[8, 16], strides=[2, 2], bot_muls=[1.0, 1.0], group_ws=[8, 8],
                            se_ratio=0.25, num_classes=10))  # fmt: skip
CONVENTIONS = weight_files.input_spec("bgr")


@pytest.fixture(scope="module")
def variables():
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda s: rng.standard_normal(s.shape).astype(np.float32), layouts.variable_shapes(MODEL)
    )


def _assert_same(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def test_safetensors_file_layout_is_the_published_format(tmp_path):
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, -2], np.int64),
               "h": np.array([1.5, -0.25], ml_dtypes.bfloat16)}  # fmt: skip
    path = str(tmp_path / "t.safetensors")
    exporting.write_safetensors(path, tensors, {"note": "hi"})
    blob = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(blob[8 : 8 + n])
    assert header["__metadata__"] == {"note": "hi"}
    assert header["b"]["dtype"] == "F32" and header["b"]["shape"] == [2, 3]
    assert header["a"]["dtype"] == "I64" and header["h"]["dtype"] == "BF16"
    start, end = header["b"]["data_offsets"]
    assert blob[8 + n + start : 8 + n + end] == struct.pack("<6f", *range(6))
    assert blob[8 + n + header["h"]["data_offsets"][0] :][:4] == bytes.fromhex(
        "c03f80be"
    )  # bf16 1.5, -0.25 little-endian
    back, meta = exporting.read_safetensors(path)
    assert meta == {"note": "hi"} and back.keys() == tensors.keys()
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype
        np.testing.assert_array_equal(back[k], tensors[k])


def test_safetensors_interoperates_with_the_reference_library(tmp_path, variables):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed: no cross-check")
    flat = {f"x{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(variables))}
    exporting.write_safetensors(str(tmp_path / "ours.safetensors"), flat)
    for k, v in st.load_file(str(tmp_path / "ours.safetensors")).items():
        np.testing.assert_array_equal(v, flat[k])
    st.save_file(flat, str(tmp_path / "theirs.safetensors"))
    for k, v in exporting.read_safetensors(str(tmp_path / "theirs.safetensors"))[0].items():
        np.testing.assert_array_equal(v, flat[k])


@pytest.mark.parametrize("name", ["w.safetensors", "w.msgpack"])
def test_flax_export_round_trip(tmp_path, variables, name):
    out, sidecar = exporting.export_variables(
        variables, MODEL, CONVENTIONS, str(tmp_path / "sub" / name), source="unit test"
    )
    assert sidecar == str(tmp_path / "sub" / f"{name}.json")
    back, meta = exporting.read_export(out)
    _assert_same(back, variables)
    assert meta["model"] == MODEL and meta["input"] == CONVENTIONS and meta["layout"] == "flax"
    if name.endswith(".safetensors"):
        assert json.loads(exporting.read_safetensors(out)[1]["regnet_jax"]) == meta  # self-describing single file
        assert "params/s1/b1/f/a/kernel" in exporting.read_safetensors(out)[0]


@pytest.mark.parametrize("layout", ["pycls", "torchvision", "timm"])
def test_pytorch_layout_export(tmp_path, variables, layout):
    out, _ = exporting.export_variables(variables, MODEL, CONVENTIONS, str(tmp_path / "w.safetensors"), layout=layout)
    sd, meta = exporting.read_export(out)
    assert meta["layout"] == layout
    _assert_same(layouts.from_layout(sd, meta["model"], layout), variables)


def test_exports_of_one_name_in_both_formats_do_not_collide(tmp_path, variables):
    st, st_json = exporting.export_variables(variables, MODEL, CONVENTIONS, str(tmp_path / "x.safetensors"))
    mp, mp_json = exporting.export_variables(variables, MODEL, CONVENTIONS, str(tmp_path / "x.msgpack"))
    assert st_json != mp_json and all(os.path.exists(p) for p in (st, st_json, mp, mp_json))
    _assert_same(exporting.read_export(st)[0], exporting.read_export(mp)[0])
    os.rename(st_json, tmp_path / "x.json")  # an export written before sidecars were named FILE.json
    assert exporting.read_export(st)[1]["layout"] == "flax"


def test_export_refuses_bad_requests(tmp_path, variables):
    path = str(tmp_path / "w.safetensors")
    exporting.export_variables(variables, MODEL, CONVENTIONS, path)
    before = pathlib.Path(path).read_bytes()
    with pytest.raises(exporting.ExportError, match="already exists"):
        exporting.export_variables(variables, MODEL, CONVENTIONS, path)
    assert pathlib.Path(path).read_bytes() == before
    with pytest.raises(exporting.ExportError, match="msgpack exports hold the Flax variable tree"):
        exporting.export_variables(variables, MODEL, CONVENTIONS, str(tmp_path / "x.msgpack"), layout="timm")
    with pytest.raises(exporting.ExportError, match=r"must end in \.safetensors or \.msgpack"):
        exporting.export_variables(variables, MODEL, CONVENTIONS, str(tmp_path / "x.pt"))
    with pytest.raises(layouts.ConversionError, match="simple_stem_in.*export --layout=pycls or flax"):
        exporting.export_variables(
            {}, zoo.get_config("resnet50").model, CONVENTIONS, str(tmp_path / "r.safetensors"), layout="torchvision"
        )
    pathlib.Path(path).write_bytes(before[: len(before) // 2])
    with pytest.raises(formats.SafetensorsError, match="truncated"):
        exporting.read_export(path)
    os.remove(path + ".json")
    with pytest.raises(exporting.ExportError, match="two files"):
        exporting.read_export(path)


@pytest.mark.timeout(180)
def test_export_cli_from_a_weights_directory(tmp_path, variables):
    wdir = str(tmp_path / "weights")
    weight_files.save_weights(wdir, variables, MODEL, CONVENTIONS, "unit test")
    out = tmp_path / "out" / "tiny.safetensors"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "regnet_jax.export", f"--checkpoint={wdir}", f"--output={out}", "--layout=torchvision"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    sd, meta = exporting.read_export(str(out))
    _assert_same(layouts.from_torchvision(sd, meta["model"]), variables)
    assert meta["input"] == CONVENTIONS and "weights" in meta["source"]
