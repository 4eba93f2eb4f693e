"""Prepared (decoded) data: ``python -m regnet_jax.prepare`` and ``config.dataset.prepared_dir`` (data.prepared).

Round trips from a folder of JPEGs and from quickstart; the trainer reads prepared data in the source's order and
positions, and trains and resumes on it; the crops of pre-resized images have the statistics of the JPEG path's;
bad, partial and foreign directories are one-line errors; an interrupted build resumes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from regnet_jax import data
from regnet_jax.config import ConfigError, diff
from regnet_jax.core import paths
from regnet_jax.data import augment, build_prepared, prepared
from regnet_jax.train import train_and_evaluate
from regnet_jax.weights.pretrained import load_pretrained
from tests.helpers_train import REPO, cli_env, tiny_config

RES = 64
SHORT = build_prepared.default_short_side(tiny_config(resolution=RES))  # 74 = ceil(1.15 x 64)


def _photo_tiles() -> list[np.ndarray]:
    """8 photo crops of 375x500 (scikit-learn's china.jpg and flower.jpg, shipped in its wheel)."""
    from sklearn.datasets import load_sample_images

    return [
        im[y : y + 375, x : x + 500]
        for im in load_sample_images().images
        for y, x in ((0, 0), (52, 140), (20, 70), (40, 10))
    ]


def _jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ROOT/train/{c0,c1}/ 3 + 3 photos (one portrait), ROOT/val/{c0,c1}/ 1 + 1."""
    root = tmp_path_factory.mktemp("folder")
    tiles = _photo_tiles()
    tiles[1] = np.ascontiguousarray(tiles[1].transpose(1, 0, 2))  # 500x375: the shorter side is the width
    for i, tile in enumerate(tiles):
        split, c = ("train", i % 2) if i < 6 else ("val", i % 2)
        (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
        (root / split / f"c{c}" / f"{i:02d}.jpg").write_bytes(_jpeg(tile))
    return root


def _folder_config(root, **overrides):
    return tiny_config(**{"resolution": RES, "batch_size": 2, "eval_batch_size": 2, "dataset.name": "folder", "dataset.data_dir": str(root),
                          "dataset.eval_split": "val", "dataset.num_train_examples": 0, "dataset.num_eval_examples": 0, **overrides})  # fmt: skip


@pytest.fixture(scope="module")
def folder_prepared(folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prep") / "folder_74")
    index = build_prepared.build(_folder_config(folder), out, SHORT, ["train", "val"], images_per_shard=4)
    return out, index


@pytest.fixture(scope="module")
def quickstart_prepared(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prep") / "quickstart")
    build_prepared.build(tiny_config(), out, 37, ["train", "test"])
    return out


def _records(out: str, split: str) -> list[tuple[int, np.ndarray]]:
    from array_record.python.array_record_module import ArrayRecordReader

    index = prepared.read_index(out)
    recs = []
    for s in index["splits"][split]["shards"]:
        reader = ArrayRecordReader(os.path.join(out, s["file"]))
        recs += [prepared.decode_record(r) for r in reader.read_all()]
        reader.close()
    return recs


def test_folder_round_trip(folder, folder_prepared):
    out, index = folder_prepared
    assert index == prepared.read_index(out)
    assert (index["format"], index["version"], index["short_side"], index["encoding"]) == (
        prepared.FORMAT,
        1,
        SHORT,
        "raw",
    )
    assert index["source"] == {"name": "folder", "data_dir": str(folder)} and index["class_names"] == ["c0", "c1"]
    train = index["splits"]["train"]
    assert (train["num_examples"], train["skipped"], [s["num_examples"] for s in train["shards"]]) == (6, [], [4, 2])
    files, labels, _ = data.sources.list_folder(str(folder), "train")
    records = _records(out, "train")
    assert [label for label, _ in records] == labels.tolist()
    for path, (_, pixels) in zip(files, records):
        source = augment.decode(tf.io.read_file(path)).numpy()  # decoded as the JPEG path decodes
        h, w = source.shape[:2]
        expected_hw = (SHORT, round(w * SHORT / h)) if h <= w else (round(h * SHORT / w), SHORT)
        assert pixels.shape == (*expected_hw, 3) and pixels.dtype == np.uint8
        expected = tf.image.resize(source.astype(np.float32), expected_hw, method="bilinear", antialias=False).numpy()
        assert np.abs(pixels.astype(float) - expected).max() <= 1  # decoding + resizing the source, within 1 level
    assert prepared.read_index(out)["splits"]["val"]["num_examples"] == 2
    assert index["bytes"] == sum(
        os.path.getsize(os.path.join(out, s["file"])) for e in index["splits"].values() for s in e["shards"]
    )


def test_prepared_folder_is_read_in_the_jpeg_paths_order_and_positions(folder, folder_prepared):
    jpeg, prep = _folder_config(folder), _folder_config(folder, **{"dataset.prepared_dir": folder_prepared[0]})
    a, b = data.TrainInput(jpeg), data.TrainInput(prep)
    assert (a.steps_per_epoch, a.num_examples) == (b.steps_per_epoch, b.num_examples) == (3, 6)
    full = list(b.epoch(1))
    assert [x["label"].tolist() for x in a.epoch(1)] == [x["label"].tolist() for x in full]
    resumed = list(b.epoch(1, 1))  # mid-epoch: the same images in the same positions, the same augmentation
    for x, y in zip(full[1:], resumed):
        np.testing.assert_array_equal(x["image"], y["image"])
    ev = list(data.EvalInput(prep).batches())
    assert ev[0]["image"].shape == (2, RES, RES, 3) and ev[0]["label"].tolist() == [0, 1]


def test_quickstart_round_trip_and_identical_batches(quickstart_prepared):
    """Digits are 32 px, below short_side 37: stored as they are, so every batch is the source's, bit for bit."""
    index = prepared.read_index(quickstart_prepared)
    assert {k: v["num_examples"] for k, v in index["splits"].items()} == {"train": 128, "test": 50}
    x_train, y_train, _, _ = data.quickstart_arrays()
    records = _records(quickstart_prepared, "train")
    np.testing.assert_array_equal(np.stack([p for _, p in records]), x_train[:128])
    assert [label for label, _ in records] == y_train[:128].tolist()
    source, prep = tiny_config(), tiny_config(**{"dataset.prepared_dir": quickstart_prepared})
    for x, y in zip(data.TrainInput(source).epoch(1, 1), data.TrainInput(prep).epoch(1, 1)):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    for x, y in zip(data.EvalInput(source).batches(), data.EvalInput(prep).batches()):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])


def test_training_on_prepared_data_resumes_exactly(quickstart_prepared, tmp_path):
    config = tiny_config(num_epochs=1, checkpoint_every_steps=2, **{"dataset.prepared_dir": quickstart_prepared})
    full = train_and_evaluate(config, str(tmp_path / "full"))
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", resumed)
    os.remove(resumed / "summary.json")
    shutil.rmtree(resumed / "checkpoints" / "4")  # as if killed after step 2 of 4, mid-epoch
    again = train_and_evaluate(config, str(resumed))
    assert again["steps"] == full["steps"] == 4
    a, b = load_pretrained(str(tmp_path / "full")).variables, load_pretrained(str(resumed)).variables
    for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert again["final"]["loss"] == pytest.approx(full["final"]["loss"], rel=1e-5)


def test_switching_to_prepared_data_is_a_reported_change():
    old = json.loads(tiny_config().to_json())
    del old["dataset"]["prepared_dir"]  # a run started before the field existed: it read the dataset itself
    assert diff.diff(old, json.loads(tiny_config().to_json())) == []
    (change,) = diff.diff(old, json.loads(tiny_config(**{"dataset.prepared_dir": "/p"}).to_json()))
    assert (change.path, change.old, change.new, change.harmless) == ("dataset.prepared_dir", "", "/p", False)


def _crops(images, res: int, seeds: int) -> np.ndarray:
    cfg = tiny_config(
        **{"dataset.mean": (0.0, 0.0, 0.0), "dataset.std": (1.0, 1.0, 1.0), "dataset.min_area": 0.08}
    ).dataset
    fn = tf.function(lambda image, seed: augment.train_preprocess(image, seed, cfg, res))
    return np.stack(
        [fn(image, tf.constant([k, s], tf.int64)).numpy() for k, image in enumerate(images) for s in range(seeds)]
    )


@pytest.mark.parametrize("res", [224, 64])
def test_crops_of_prepared_images_have_the_jpeg_paths_statistics(res):
    """The same crops (same seeds) of the 8 photos from their JPEGs and from their prepared copies (1.15 x res).

    Per-channel mean over all crops: equal within 0.01 (2.5 grey levels; measured <= 0.003: the windows cover the
    same regions up to rounding). Per-channel std within a crop: the prepared path resamples twice (to short_side,
    then the crop to res), which lowers local contrast a little and never raises it: measured -1 to -2 % at 224 px,
    -3 to -5 % at 64 px (-4 to -6 % at 32 px) over 48 crops per photo; allowed -7 % .. +0.5 %."""
    jpegs = [_jpeg(t) for t in _photo_tiles()]
    short = build_prepared.default_short_side(tiny_config(resolution=res))
    pre = [build_prepared.resize_shorter(augment.decode(tf.constant(j)), short) for j in jpegs]
    a, b = _crops([tf.constant(j) for j in jpegs], res, 12), _crops(pre, res, 12)
    np.testing.assert_allclose(b.mean((0, 1, 2)), a.mean((0, 1, 2)), atol=0.01)
    ratio = b.std((1, 2)).mean(0) / a.std((1, 2)).mean(0)
    assert np.all((ratio > 0.93) & (ratio < 1.005)), ratio


def _windows(hw, n: int) -> np.ndarray:
    seeds = tf.stack([tf.zeros([n], tf.int64), tf.range(n, dtype=tf.int64)], 1)
    fn = tf.function(
        lambda s: tf.map_fn(
            lambda x: augment.inception_crop_window(tf.constant(hw), x, 0.08, (3 / 4, 4 / 3)),
            s,
            fn_output_signature=tf.int32,
        )
    )
    return fn(seeds).numpy()


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    x = np.sort(np.concatenate([a, b]))
    return float(
        np.abs(
            np.searchsorted(np.sort(a), x, "right") / len(a) - np.searchsorted(np.sort(b), x, "right") / len(b)
        ).max()
    )


@pytest.mark.parametrize("prepared_hw", [(258, 344), (37, 49)])  # 500x375 prepared for 224 px and for 32 px
def test_crop_windows_of_prepared_images_have_the_jpeg_paths_scales_and_aspects(prepared_hw):
    """Crop area fraction and aspect ratio over 1,000 crops (the pipeline's seeds): the windows are drawn in relative
    terms, so only integer rounding on the smaller grid differs; it grows as the image shrinks (at 37 px a crop of 8 %
    area is ~10 px wide). Measured KS distance 0.004 / 0.006 (258 px) and 0.026 / 0.035 (37 px); allowed 0.05, mean
    area fraction within 0.01 (of 0.44), centre-square fallbacks within 1 %."""
    stats = []
    for hw in ((375, 500), prepared_hw):
        w = _windows(hw, 1000)
        fallback = (w[:, 2] == w[:, 3]) & (w[:, 2] == min(hw))
        stats.append((w[:, 2] * w[:, 3] / (hw[0] * hw[1]), np.log(w[:, 3] / w[:, 2]), fallback))
    (s0, a0, f0), (s1, a1, f1) = stats
    assert _ks(s0, s1) < 0.05 and _ks(a0, a1) < 0.05
    assert abs(s0.mean() - s1.mean()) < 0.01 and abs(f0.mean() - f1.mean()) < 0.01


def test_bad_images_are_skipped_and_counted_in_training_splits_and_refused_in_evaluation_splits(tmp_path):
    root = tmp_path / "data"
    tile = _photo_tiles()[0][:60, :80]
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                (root / split / c / f"{i}.jpg").write_bytes(_jpeg(tile))
    (root / "train" / "a" / "1.jpg").write_bytes(_jpeg(tile)[:300])  # truncated in its scan data
    (root / "train" / "b" / "2.jpg").write_bytes(b"not an image")
    config = _folder_config(root, **{"dataset.max_bad_image_fraction": 0.5})
    index = build_prepared.build(config, str(tmp_path / "p"), 40, ["train"], images_per_shard=2)
    train = index["splits"]["train"]
    assert train["skipped"] == [str(root / "train" / "a" / "1.jpg"), str(root / "train" / "b" / "2.jpg")]
    assert (train["num_examples"], train["source_examples"]) == (4, 6)
    assert [label for label, _ in _records(str(tmp_path / "p"), "train")] == [0, 0, 1, 1]
    (root / "val" / "b" / "0.jpg").write_bytes(b"")
    with pytest.raises(
        data.BadImagesError, match=r"^1 evaluation image\(s\) cannot be read or decoded: .*val/b/0\.jpg"
    ):
        build_prepared.build(config, str(tmp_path / "p"), 40, ["train", "val"], images_per_shard=2)
    with pytest.raises(
        data.BadImagesError,
        match=r"^1 of the 6 images of split 'train' cannot be read or decoded \(e\.g\. .*train/a/1\.jpg\), more than config",
    ):
        build_prepared.build(_folder_config(root), str(tmp_path / "strict"), 40, ["train"], images_per_shard=2)


class _Killed(Exception):
    """Stands for the build process dying (a KeyboardInterrupt would stop pytest itself)."""


def _timeless(index: dict) -> dict:
    out = {k: v for k, v in index.items() if k not in ("created", "build_seconds")}
    out["splits"] = {k: {f: v for f, v in e.items() if f != "seconds"} for k, e in index["splits"].items()}
    return out


def test_an_interrupted_build_is_unusable_and_a_rerun_finishes_it(folder, folder_prepared, tmp_path, monkeypatch):
    config, out = _folder_config(folder), str(tmp_path / "p")
    finish, calls = build_prepared._ShardWriter.finish, []

    def crash_on_the_second_shard(self):
        calls.append(self.final.name)
        if self.final.name == "train-00001-of-00002.array_record" and len(calls) == 2:
            raise _Killed
        return finish(self)

    monkeypatch.setattr(build_prepared._ShardWriter, "finish", crash_on_the_second_shard)
    with pytest.raises(_Killed):
        build_prepared.build(config, out, SHORT, ["train", "val"], images_per_shard=4)
    assert sorted(os.listdir(out)) == [
        "build.json",
        "train-00000-of-00002.array_record",
        "train-00000-of-00002.array_record.json",
    ]
    with pytest.raises(data.DatasetNotReadyError, match="its build is unfinished"):
        data.TrainInput(_folder_config(folder, **{"dataset.prepared_dir": out}))
    calls.clear()
    index = build_prepared.build(config, out, SHORT, ["train", "val"], images_per_shard=4)
    assert calls == ["train-00001-of-00002.array_record", "val-00000-of-00001.array_record"]  # the first shard was kept
    assert _timeless(index) == _timeless(folder_prepared[1])
    for split in ("train", "val"):
        for (la, pa), (lb, pb) in zip(_records(out, split), _records(folder_prepared[0], split)):
            assert la == lb and np.array_equal(pa, pb)
    calls.clear()
    assert (
        build_prepared.build(config, out, SHORT, ["train", "val"], images_per_shard=4) == index and calls == []
    )  # done


def test_bad_directories_are_one_line_errors(folder, folder_prepared, quickstart_prepared, tmp_path):
    def reading(prepared_dir, **overrides):
        return data.TrainInput(_folder_config(folder, **{"dataset.prepared_dir": str(prepared_dir), **overrides}))

    with pytest.raises(
        data.DatasetNotReadyError,
        match=r"prepared_dir=.*/nowhere does not exist: build it with python -m regnet_jax.prepare",
    ):
        reading(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(data.DatasetNotReadyError, match=r"other is not a prepared dataset \(no index.json\)"):
        reading(tmp_path / "other")
    with pytest.raises(ConfigError, match=r"was prepared from dataset 'quickstart' but config.dataset.name='folder'"):
        reading(quickstart_prepared)
    with pytest.raises(
        data.DatasetNotReadyError, match=r"has the split\(s\) \['train', 'val'\], not 'test': add it with"
    ):
        reading(folder_prepared[0], **{"dataset.train_split": "test"})
    damaged = tmp_path / "damaged"
    shutil.copytree(folder_prepared[0], damaged)
    os.remove(damaged / "train-00001-of-00002.array_record")
    with pytest.raises(
        data.DatasetNotReadyError, match=r"shard train-00001-of-00002.array_record is missing or has the wrong size"
    ):
        list(reading(damaged).epoch(0))
    config = _folder_config(folder)
    with pytest.raises(
        ConfigError, match=r"other is not empty and holds no prepared dataset: give a new or empty directory"
    ):
        build_prepared.build(config, str(tmp_path / "other"), SHORT, ["train"])
    with pytest.raises(
        ConfigError,
        match=r"holds a prepared dataset of name=folder .*\(short side 74, raw\), built with other settings \(short_side differs\)",
    ):
        build_prepared.build(config, folder_prepared[0], 50, ["train"], images_per_shard=4)
    with pytest.raises(paths.StorageError, match=r"x.txt/p lies under .*x.txt, which is a file, not a directory"):
        build_prepared.build(config, str(tmp_path / "other" / "x.txt" / "p"), SHORT, ["train"])
    # The command: one line, exit status 2.
    cfg = tmp_path / "config.py"
    cfg.write_text("from tests.helpers_train import tiny_config\n\ndef get_config():\n    return tiny_config()\n")
    proc = subprocess.run([sys.executable, "-m", "regnet_jax.prepare", f"--config={cfg}", f"--out={tmp_path / 'other'}"],
                          check=False, cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --out=") and proc.stderr.count("error:") == 1
