"""Bad images never kill a training run; an undecodable evaluation image is an error naming it, before training.
Grayscale, CMYK, PNG-in-.jpg and 16-bit PNG files decode to the right pixels."""

from __future__ import annotations

import io
import json
import logging
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from regnet_jax import data
from regnet_jax.data import augment
from regnet_jax.train import train_and_evaluate
from tests.helpers_train import tiny_config

SIZE = (20, 24)  # h, w


def _pixels(seed: int) -> np.ndarray:
    """Smooth random RGB content (compresses like a photo, so JPEG round trips stay close)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize(SIZE[::-1], Image.BICUBIC))


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _valid_kinds(rgb: np.ndarray) -> dict[str, tuple[bytes, np.ndarray]]:
    """name -> (file bytes, the RGB pixels a correct decoder gives)."""
    gray = rgb.mean(-1).round().astype(np.uint8)
    return {
        "rgb.jpg": (_encode(Image.fromarray(rgb), "JPEG", quality=95), rgb),
        "grayscale.jpg": (_encode(Image.fromarray(gray), "JPEG", quality=95), np.repeat(gray[..., None], 3, -1)),
        "cmyk.jpg": (_encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95), rgb),
        "png_named.jpg": (_encode(Image.fromarray(rgb), "PNG"), rgb),
        "sixteen_bit.png": (tf.io.encode_png(rgb.astype(np.uint16) * 257).numpy(), rgb),
        "rgba.png": (_encode(Image.fromarray(np.dstack([rgb, np.full(SIZE, 128, np.uint8)])), "PNG"), rgb),
    }


def _bad_kinds(rgb: np.ndarray) -> dict[str, bytes]:
    jpeg = _encode(Image.fromarray(rgb), "JPEG", quality=95)
    return {
        "random_bytes.jpg": np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "truncated.jpg": jpeg[: jpeg.index(b"\xff\xda") + 20],  # header and the start of the scan, no pixel rows
        "empty.jpg": b"",
    }


def test_every_valid_kind_decodes_to_its_pixels():
    for name, (encoded, expected) in _valid_kinds(_pixels(0)).items():
        got = augment.decode(tf.constant(encoded)).numpy()
        assert got.shape == (*SIZE, 3) and got.dtype == np.uint8, name
        tolerance = 0 if name.endswith(".png") or name == "png_named.jpg" else 6  # JPEG round trip (4:2:0 chroma)
        assert np.abs(got.astype(int) - expected).mean() <= tolerance, name


def _write_folder(root: pathlib.Path, split: str, per_class: int, extra: dict[str, bytes]) -> list[str]:
    """ROOT/SPLIT/c0, c1 with valid images of every kind, plus ``extra`` files in c0; returns the extra paths."""
    for c in range(2):
        d = root / split / f"c{c}"
        d.mkdir(parents=True)
        kinds = list(_valid_kinds(_pixels(c)).values())
        for i in range(per_class):
            (d / f"{i:03d}.{'png' if i % 6 == 4 else 'jpg'}").write_bytes(kinds[i % len(kinds)][0])
    for name, content in extra.items():
        (root / split / "c0" / name).write_bytes(content)
    return sorted(str(root / split / "c0" / name) for name in extra)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[pathlib.Path, list[str], list[str]]:
    """64 training images of which 2 are undecodable; a clean and a broken evaluation split."""
    root = tmp_path_factory.mktemp("folder")
    bad = _bad_kinds(_pixels(1))
    bad_train = _write_folder(root, "train", 31, {k: bad[k] for k in ("random_bytes.jpg", "truncated.jpg")})
    _write_folder(root, "val", 5, {})
    bad_eval = _write_folder(root, "broken_val", 5, {"empty.jpg": bad["empty.jpg"]})
    return root, bad_train, bad_eval


def _config(root: pathlib.Path, **overrides):
    """The trainer tests' tiny run (its 10-class head: the same compiled steps) on the folder's 2 classes."""
    return tiny_config(**{"dataset.name": "folder", "dataset.data_dir": str(root), "dataset.eval_split": "val",
                          "dataset.num_train_examples": 0, "dataset.num_eval_examples": 0, **overrides})  # fmt: skip


def test_training_skips_undecodable_images_logs_each_once_and_fills_the_batches(folder, caplog):
    root, bad_train, _ = folder
    train = data.TrainInput(_config(root, **{"dataset.max_bad_image_fraction": 0.05}))
    assert train.steps_per_epoch == 2
    with caplog.at_level(logging.WARNING):
        for epoch in range(2):
            batches = list(train.epoch(epoch))
            assert [len(b["label"]) for b in batches] == [32, 32] and set(batches[0]) == {
                "image",
                "label",
                "lighting",
            }  # uint8 + shifts
            assert sorted(train.skipped) == bad_train
            assert all(np.isfinite(b["image"]).all() for b in batches)
    logged = [r.getMessage() for r in caplog.records if "cannot be read or decoded" in r.getMessage()]
    assert sorted(logged) == [
        f"skipped an image that cannot be read or decoded: {p}" for p in bad_train
    ]  # once, not per epoch


def test_more_bad_images_than_allowed_stop_with_a_clear_error(folder):
    root, bad_train, _ = folder
    train = data.TrainInput(_config(root, **{"dataset.max_bad_image_fraction": 0.02}))  # 1.28 of 64 images
    with pytest.raises(
        data.BadImagesError,
        match=r"2 of the 64 training images .* epoch 0 cannot be read or decoded \(e\.g\. .*"
        r"(random_bytes|truncated)\.jpg\), more than config\.dataset\.max_bad_image_fraction=0\.02",
    ):
        list(train.epoch(0))


def test_an_undecodable_eval_image_is_named(folder):
    root, _, bad_eval = folder
    assert data.EvalInput(_config(root)).undecodable_images() == []
    broken = data.EvalInput(_config(root, **{"dataset.eval_split": "broken_val"}))
    assert broken.undecodable_images() == bad_eval
    with pytest.raises(data.BadImagesError, match=r"1 evaluation image\(s\) cannot be read or decoded: .*empty\.jpg"):
        list(broken.batches())  # evaluate's path: the decode error is turned into the named one


def test_trainer_counts_skipped_images_and_checks_the_eval_split_first(folder, tmp_path):
    root, _, _ = folder
    with pytest.raises(data.BadImagesError, match=r"empty\.jpg"):
        train_and_evaluate(_config(root, **{"dataset.eval_split": "broken_val"}), str(tmp_path / "refused"))
    assert not (tmp_path / "refused" / "checkpoints").exists() or not any(
        (tmp_path / "refused" / "checkpoints").iterdir()
    )
    summary = train_and_evaluate(_config(root, **{"dataset.max_bad_image_fraction": 0.05}), str(tmp_path / "run"))
    assert summary["skipped_images"] == {"total": 4, "per_epoch": {"0": 2, "1": 2}}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_images"]["total"] == 4
