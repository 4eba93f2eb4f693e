"""End to end: a pycls-style .pyth written here -> `python -m regnet_jax.convert` -> `python -m regnet_jax.predict`."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from regnet_jax.config import IMAGENET_MEAN, IMAGENET_STD, validate_model
from regnet_jax.models import create_model
from regnet_jax.weights import files as weight_files
from regnet_jax.weights import layouts

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (optional extra 'torch'): .pyth conversion through the CLI is not tested"
)
pytestmark = pytest.mark.timeout(300)

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = dict(type="anynet", stem_type="simple_stem_in", stem_w=8, block_type="res_bottleneck_block", depths=[1, 2],
             widths=[8, 16], strides=[2, 2], bot_muls=[1.0, 1.0], group_ws=[8, 8], se_ratio=0.25, num_classes=1000)  # fmt: skip
COLOR = (200, 30, 90)  # RGB; not grey, so that the channel order changes the prediction


def _cli(*args, timeout=180):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )


def _random_variables(model):
    """Random weights of He-like scale, random BN statistics, and a head whose logits spread over a few units."""
    rng = np.random.default_rng(1)

    def draw(path, s):
        name, shape = path[-1].key, s.shape
        if name == "var" or name == "scale":
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if name in ("mean", "bias"):
            return rng.normal(0, 0.2, shape).astype(np.float32)
        fan = np.prod(shape[:-2]) * shape[-1] if len(shape) == 4 else shape[0] / (9 if path[1].key == "head" else 1)
        return rng.normal(0, np.sqrt(2 / fan), shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, layouts.variable_shapes(model))


def _expected_probs(variables, order):
    """The network's probabilities for the constant COLOR image, normalised by hand (no resize can change it)."""
    x = (np.asarray(COLOR, np.float32) / 255 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(
        IMAGENET_STD, np.float32
    )
    x = np.broadcast_to(x[::-1] if order == "bgr" else x, (1, 32, 32, 3))
    return np.asarray(jax.nn.softmax(create_model(MODEL).apply(variables, x, train=False)[0]))


def test_pyth_converts_through_the_cli_and_predicts(tmp_path):
    from PIL import Image

    variables = _random_variables(MODEL)
    model_state = {k: torch.from_numpy(np.array(v)) for k, v in layouts.to_pycls(variables).items()}
    model_state.update(
        {
            k.replace("running_mean", "num_batches_tracked"): torch.tensor(5)
            for k in list(model_state)
            if k.endswith("running_mean")
        }
    )
    torch.save({"epoch": 99, "model_state": model_state, "optimizer_state": {"state": {}, "param_groups": []},
                "cfg": "MODEL:\n  TYPE: anynet\n"}, tmp_path / "model.pyth")  # fmt: skip
    (tmp_path / "tiny.py").write_text(
        "from regnet_jax.config import base_config\n\n\n"
        f"def get_config():\n    return base_config({MODEL!r}, batch_size=8)\n"
    )
    out = tmp_path / "weights"
    args = [
        "regnet_jax.convert",
        "--from=pycls",
        f"--checkpoint={tmp_path / 'model.pyth'}",
        f"--config={tmp_path / 'tiny.py'}",
        f"--output={out}",
    ]
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BGR" in r.stdout

    loaded, meta = weight_files.load_weights(str(out))
    assert meta["input"]["channel_order"] == "bgr" and meta["model"] == validate_model(MODEL)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(a, b)

    Image.new("RGB", (56, 40), COLOR).save(tmp_path / "flat.png")
    r = _cli("regnet_jax.predict", f"--checkpoint={out}", "--resolution=32", "--json", str(tmp_path / "flat.png"))
    assert r.returncode == 0, r.stderr[-3000:]
    (result,) = json.loads(r.stdout)
    want = _expected_probs(variables, "bgr")
    assert not np.allclose(
        want, _expected_probs(variables, "rgb"), rtol=1e-2, atol=0
    )  # the test can tell the orders apart
    top = np.argsort(-want)[:5]
    assert [c["label"] for c in result["top"]] == top.tolist()
    np.testing.assert_allclose([c["prob"] for c in result["top"]], want[top], rtol=1e-4, atol=1e-6)
    names = (REPO / "regnet_jax" / "assets" / "imagenet_classes.tsv").read_text().splitlines()
    assert [c["name"] for c in result["top"]] == [names[i].split("\t")[1] for i in top]

    # Converting again into the same directory is refused and leaves it untouched.
    before = (out / "meta.json").read_text()
    r = _cli(*args)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (out / "meta.json").read_text() == before


def test_cli_reports_bad_input_in_one_line(tmp_path):
    (tmp_path / "broken.pyth").write_bytes(b"PK\x03\x04 truncated")
    r = _cli(
        "regnet_jax.convert",
        "--from=torchvision",
        f"--checkpoint={tmp_path / 'broken.pyth'}",
        f"--output={tmp_path / 'w'}",
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: could not read" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists()
