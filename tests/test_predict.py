"""predict: shipped ImageNet class names, the evaluation transform with the weights' conventions, errors."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from regnet_jax.models import create_model
from regnet_jax.training import prediction
from regnet_jax.weights import files as weight_files
from regnet_jax.weights import layouts

MODEL = dict(type="anynet", stem_type="simple_stem_in", stem_w=8, block_type="res_bottleneck_block", depths=[1],
             widths=[16], strides=[2], bot_muls=[1.0], group_ws=[8], se_ratio=0.0, num_classes=4)  # fmt: skip
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # not ImageNet's, so the test sees that the weights' own are used


def test_imagenet_class_names_ship_with_the_package():
    classes = prediction.imagenet_classes()
    assert len(classes) == 1000
    wnids = [w for w, _ in classes]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000  # label order = sorted WordNet ids
    # Well-known labels of ImageNet-1k.
    assert classes[0] == ("n01440764", "tench")
    assert classes[207] == ("n02099601", "golden retriever")
    assert classes[281] == ("n02123045", "tabby")
    assert classes[409] == ("n02708093", "analog clock")
    assert classes[999] == ("n15075141", "toilet tissue")
    assert prediction.class_names(1000)[207] == "golden retriever"
    assert prediction.class_names(3) == ["class 0", "class 1", "class 2"]


def test_class_order_matches_tfds_imagenet2012():
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed")
    path = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", "labels.txt")
    if not os.path.isfile(path):
        pytest.skip(f"this tensorflow-datasets has no {path}")
    with open(path) as f:
        assert [w for w, _ in prediction.imagenet_classes()] == f.read().split()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    shapes = layouts.variable_shapes(MODEL)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, s: (
            rng.uniform(0.5, 1.5, s.shape) if p[-1].key in ("var", "scale") else rng.normal(0, 0.5, s.shape)
        ).astype(np.float32),
        shapes,
    )
    out = str(tmp_path_factory.mktemp("predict") / "weights")
    weight_files.save_weights(out, variables, MODEL, weight_files.input_spec("rgb", MEAN, STD), "test")
    return out, variables


def _flat_png(path, color, size=(50, 30)):
    from PIL import Image

    Image.new("RGB", size, color).save(path)
    return str(path)


def test_predict_uses_the_weights_conventions(weights_dir, tmp_path):
    out, variables = weights_dir
    colors = [(10, 200, 120), (250, 40, 0), (0, 0, 255)]
    images = [_flat_png(tmp_path / f"{i}.png", c) for i, c in enumerate(colors)]
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\n")
    results = prediction.predict(out, images, k=3, resolution=16, labels_file=str(labels), batch_size=2)
    assert [r["image"] for r in results] == images
    model = create_model(MODEL)
    for r, c in zip(results, colors):
        x = (np.asarray(c, np.float32) / 255 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
        probs = np.asarray(jax.nn.softmax(model.apply(variables, np.broadcast_to(x, (1, 16, 16, 3)), train=False)[0]))
        order = np.argsort(-probs)[:3]
        assert [t["label"] for t in r["top"]] == order.tolist()
        assert [t["name"] for t in r["top"]] == [["cat", "dog", "bird", "fish"][i] for i in order]
        np.testing.assert_allclose([t["prob"] for t in r["top"]], probs[order], rtol=1e-4, atol=1e-6)
    text = prediction.format_results(results[:1])
    assert text.splitlines()[0] == images[0] and text.splitlines()[1].startswith("  1. ")


def test_converted_weights_record_the_configs_resolution_and_predict_uses_it(weights_dir, tmp_path, monkeypatch):
    from regnet_jax.config import base_config

    _, variables = weights_dir
    np.savez(tmp_path / "sd.npz", **layouts.to_layout(variables, "pycls"))
    config = base_config(MODEL)
    config.resolution, config.dataset.eval_crop_fraction = 24, 1.0
    layouts.convert_file("pycls", str(tmp_path / "sd.npz"), config, str(tmp_path / "w"))
    assert {"resolution": 24, "crop_fraction": 1.0}.items() <= weight_files.read_meta(str(tmp_path / "w"))[
        "input"
    ].items()
    seen, real = [], prediction.preprocess
    monkeypatch.setattr(
        prediction, "preprocess", lambda path, conv, res, crop: seen.append((res, crop)) or real(path, conv, res, crop)
    )
    image = _flat_png(tmp_path / "x.png", (1, 2, 3))
    prediction.predict(str(tmp_path / "w"), [image])
    prediction.predict(str(tmp_path / "w"), [image], resolution=32)  # the flags override the model's
    shutil.copytree(tmp_path / "w", tmp_path / "old")  # weights written before the size was recorded
    meta = json.loads((tmp_path / "old" / "meta.json").read_text())
    del meta["input"]["resolution"], meta["input"]["crop_fraction"]
    (tmp_path / "old" / "meta.json").write_text(json.dumps(meta))
    prediction.predict(str(tmp_path / "old"), [image])  # ImageNet's 224 px / 0.875
    assert seen == [(24, 1.0), (32, 1.0), (224, 0.875)]


def test_predict_errors(weights_dir, tmp_path):
    out, _ = weights_dir
    image = _flat_png(tmp_path / "ok.png", (1, 2, 3))
    with pytest.raises(prediction.PredictError, match="1 of the images do not exist: .*missing.jpg"):
        prediction.predict(out, [image, str(tmp_path / "missing.jpg")])
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(prediction.PredictError, match="cannot decode .*notes.jpg"):
        prediction.predict(out, [str(tmp_path / "notes.jpg")], resolution=16)
    (tmp_path / "two.txt").write_text("a\nb\n")
    with pytest.raises(prediction.PredictError, match="has 2 names but the model has 4 classes"):
        prediction.predict(out, [image], labels_file=str(tmp_path / "two.txt"))
    with pytest.raises(prediction.PredictError, match="one or more image files"):
        prediction.predict(out, [])
    with pytest.raises(weight_files.WeightsError, match="not a regnet_jax weights directory"):
        weight_files.read_meta(str(tmp_path))
