"""Input pipeline: pycls augmentation rules, the (seed, epoch) order and its resumption, host sharding, sources."""

import io
import math

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from regnet_jax import data
from regnet_jax.config import ConfigError
from regnet_jax.data import augment, sources
from tests.helpers_train import tiny_config


def _seed(i):
    return tf.constant([7, i], tf.int64)


@pytest.mark.parametrize("hw", [(480, 640), (333, 200), (64, 64)])
def test_inception_crop_window_follows_pycls_rules(hw):
    h, w = hw
    windows = np.array(
        [augment.inception_crop_window(tf.constant(hw), _seed(i), 0.08, (3 / 4, 4 / 3)).numpy() for i in range(300)]
    )
    y, x, ch, cw = windows.T
    assert (y >= 0).all() and (x >= 0).all() and (y + ch <= h).all() and (x + cw <= w).all()
    area = ch * cw / (h * w)
    # Rounding the sides to integers moves area and aspect slightly off their sampling ranges.
    assert area.min() >= 0.08 * 0.9 and area.max() <= 1.0
    ratio = np.maximum(cw / ch, ch / cw)
    assert ratio.max() <= 4 / 3 * 1.1
    assert 0.3 < np.mean(cw > ch) < 0.7  # w and h swapped with p = 0.5
    assert area.std() > 0.15  # area ~ U(0.08, 1), not a constant
    # Offsets as np.random.randint(0, h - h_crop): never the last position, so y + h_crop < h unless h_crop == h.
    assert ((y + ch < h) | (ch == h)).all() and ((x + cw < w) | (cw == w)).all()


def test_inception_crop_falls_back_to_centre_square():
    """A 1000x20 strip admits no crop of aspect <= 4/3 and area >= 8%: pycls falls back to scale + centre crop."""
    window = augment.inception_crop_window(tf.constant([1000, 20]), _seed(0), 0.08, (3 / 4, 4 / 3)).numpy()
    np.testing.assert_array_equal(window, [490, 0, 20, 20])


def _jpeg(array: np.ndarray, subsampling: int = 2) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, subsampling=subsampling)
    return buf.getvalue()


def test_fused_jpeg_decode_crop_equals_decode_then_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    window = tf.constant([10, 17, 40, 51])
    for subsampling in (0, 2):  # 4:4:4 is exact; 4:2:0 differs only by chroma upsampling at the crop's edge
        encoded = tf.constant(_jpeg(image, subsampling))
        np.testing.assert_array_equal(augment.image_shape(encoded).numpy(), [90, 120])
        full = (
            tf.io.decode_jpeg(encoded, channels=3, dct_method=augment.JPEG_DCT_METHOD).numpy()[10:50, 17:68].astype(int)
        )
        fused = augment.decode_crop(encoded, window).numpy().astype(int)
        if subsampling == 0:
            np.testing.assert_array_equal(fused, full)
        else:
            np.testing.assert_array_equal(fused[:, :-2], full[:, :-2])
            assert np.abs(fused - full).mean() < 1.0
    png = tf.io.encode_png(image)
    np.testing.assert_array_equal(augment.decode_crop(png, window).numpy(), image[10:50, 17:68])


def test_eval_transform_matches_pycls_resize_and_centre_crop():
    """Shorter side to 256 (long side floor(long/short*256)), centre crop 224 at ceil offsets; bilinear without
    antialiasing (cv2.INTER_LINEAR), checked against torch's bilinear interpolation."""
    torch = pytest.importorskip("torch", reason="torch (the optional 'torch' extra) is the independent reference")
    cfg = tiny_config().dataset
    cfg.mean, cfg.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    out = augment.eval_preprocess(tf.constant(image), cfg, 224).numpy()
    new_w = math.floor(451 / 300 * 256)  # 384
    t = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(
        t, size=(256, new_w), mode="bilinear", align_corners=False, antialias=False
    )
    y, x = math.ceil((256 - 224) / 2), math.ceil((new_w - 224) / 2)
    expected = resized[0, :, y : y + 224, x : x + 224].permute(1, 2, 0).numpy() / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_normalisation_channel_order_and_dtype():
    cfg = tiny_config().dataset
    image = tf.constant(np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    rgb = augment.train_preprocess(image, _seed(3), cfg, 16).numpy()
    cfg.channel_order = "bgr"
    bgr = augment.train_preprocess(image, _seed(3), cfg, 16).numpy()
    np.testing.assert_allclose(bgr, rgb[..., ::-1])
    cfg.output_dtype = "bfloat16"
    assert augment.train_preprocess(image, _seed(3), cfg, 16).dtype == tf.bfloat16
    flat = tf.fill([16, 16, 3], tf.constant(255, tf.uint8))
    cfg.output_dtype, cfg.channel_order = "float32", "rgb"
    out = augment.eval_preprocess(flat, cfg, 16).numpy()
    np.testing.assert_allclose(out[0, 0], (1 - np.array(cfg.mean)) / np.array(cfg.std), rtol=1e-6)


def test_lighting_adds_the_pca_offset():
    zero = tf.zeros([2, 2, 3])
    seed = _seed(4)
    out = augment.lighting(zero, seed, 0.1).numpy()
    alpha = tf.random.stateless_normal([3], seed).numpy() * 0.1
    expected = np.array(augment.PCA_EIGVEC) @ (alpha * np.array(augment.PCA_EIGVAL))
    np.testing.assert_allclose(out[1, 1], expected, rtol=1e-5)


def _photo_jpegs(sizes, subsampling, seed=0):
    """Photo-like JPEGs (windows of real photographs, benchmarking.input_pipeline.photo_like)."""
    from regnet_jax.benchmarking.input_pipeline import photo_like

    rng = np.random.default_rng(seed)
    out = []
    for size in sizes:
        buf = io.BytesIO()
        Image.fromarray(photo_like(rng, size)).save(buf, format="JPEG", quality=92, subsampling=subsampling)
        out.append(buf.getvalue())
    return out


def _pil_decode(encoded: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(encoded)) as im:
        return np.asarray(im.convert("RGB"))


def test_jpeg_decoding_is_pycls_decoder_bit_for_bit():
    """Decoded with libjpeg's accurate integer IDCT (JDCT_ISLOW), as pycls's cv2.imread and PIL: the same pixels, 4:2:0
    or 4:4:4 (TF's default INTEGER_FAST differs by about a level on most values)."""
    for subsampling in (0, 2):
        for encoded in _photo_jpegs([(120, 90), (97, 131)], subsampling):
            np.testing.assert_array_equal(augment.decode(tf.constant(encoded)).numpy(), _pil_decode(encoded))
            fast = tf.io.decode_jpeg(encoded, channels=3).numpy()
            assert np.abs(fast.astype(int) - _pil_decode(encoded)).mean() > 0.3  # the default would not be


def _reference_train(encoded, seed, cfg, res):
    """Today's training formulas written out (pycls transforms.py): decode, the crop window, bilinear resize, flip,
    PCA lighting eigvec @ (alpha * eigval), (x / 255 + rgb - mean) / std, channel order; in float64."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    full = _pil_decode(encoded)
    y, x, h, w = augment.inception_crop_window(
        tf.constant(full.shape[:2]), seeds[0], cfg.min_area, tuple(cfg.aspect_ratio)
    ).numpy()
    crop = full[y : y + h, x : x + w].astype(np.float32)
    out = tf.image.resize(crop, [res, res], method="bilinear", antialias=False).numpy().astype(np.float64)
    flipped = bool(tf.random.stateless_uniform([], seeds[1]).numpy() < 0.5)
    if flipped:
        out = out[:, ::-1]
    alpha = tf.random.stateless_normal([3], seeds[2]).numpy().astype(np.float64) * cfg.pca_std
    rgb = np.array(augment.PCA_EIGVEC) @ (alpha * np.array(augment.PCA_EIGVAL))
    out = (out / 255.0 + rgb - np.array(cfg.mean)) / np.array(cfg.std)
    return (out[..., ::-1] if cfg.channel_order == "bgr" else out), flipped


def _reference_eval(encoded, cfg, res):
    full = _pil_decode(encoded).astype(np.float32)
    h, w = full.shape[:2]
    size = augment.eval_size(res, cfg.eval_crop_fraction)
    new_hw = (size, math.floor(w / h * size)) if h <= w else (math.floor(h / w * size), size)
    out = tf.image.resize(full, new_hw, method="bilinear", antialias=False).numpy().astype(np.float64)
    y, x = math.ceil((new_hw[0] - res) / 2), math.ceil((new_hw[1] - res) / 2)
    out = (out[y : y + res, x : x + res] / 255.0 - np.array(cfg.mean)) / np.array(cfg.std)
    return out[..., ::-1] if cfg.channel_order == "bgr" else out


@pytest.mark.parametrize("channel_order", ["rgb", "bgr"])
def test_transforms_equal_the_reference_formulas(channel_order):
    """train_preprocess / eval_preprocess (one tiled multiply-add, tf.cond flip, tf.reverse BGR) = the formulas written
    out, to float32 rounding, on photo-like JPEGs (4:4:4: the fused crop decode is then exact)."""
    cfg = tiny_config().dataset
    cfg.flip, cfg.pca_std, cfg.channel_order, cfg.output_dtype = True, 0.1, channel_order, "float32"
    flips = set()
    for i, encoded in enumerate(_photo_jpegs([(120, 90), (90, 120), (160, 100), (64, 64)] * 2, subsampling=0, seed=3)):
        out = augment.train_preprocess(tf.constant(encoded), _seed(i), cfg, 48).numpy()
        expected, flipped = _reference_train(encoded, _seed(i), cfg, 48)
        flips.add(flipped)
        assert out.dtype == np.float32 and out.shape == (48, 48, 3)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
        for res in (32, 56):
            np.testing.assert_allclose(
                augment.eval_preprocess(tf.constant(encoded), cfg, res).numpy(),
                _reference_eval(encoded, cfg, res),
                rtol=0,
                atol=1e-5,
            )
    assert flips == {True, False}


@pytest.mark.parametrize("channel_order", ["rgb", "bgr"])
def test_device_normalisation_matches_host_normalisation(tmp_path, channel_order):
    """normalize_on='device': uint8 batches and lighting shifts leave the host, device_prefetch normalises them on the
    devices (keeping the batch sharding); the images are the host's to half a uint8 level (the rounding of the resized
    pixels), the labels and order the same."""
    from regnet_jax.benchmarking.input_pipeline import write_jpegs
    from regnet_jax.core import distributed

    write_jpegs(str(tmp_path), 16, (120, 90), num_classes=2)
    config = tiny_config(batch_size=8, **{"dataset.name": "folder", "dataset.data_dir": str(tmp_path), "dataset.eval_split": "validation",
                                          "dataset.num_train_examples": 0, "dataset.num_eval_examples": 0, "dataset.flip": True,
                                          "dataset.pca_std": 0.1, "dataset.channel_order": channel_order})  # fmt: skip
    mesh = distributed.make_mesh()
    raw = next(data.TrainInput(config).epoch(0))
    assert raw["image"].dtype == np.uint8 and raw["lighting"].shape == (8, 3) and np.abs(raw["lighting"]).max() > 0
    with pytest.raises(ValueError, match="without their normalisation"):
        next(data.device_prefetch(iter([raw]), mesh))  # batches separated from their TrainInput.epoch iterator
    device = list(data.device_prefetch(data.TrainInput(config).epoch(0), mesh))
    config.dataset.normalize_on = "host"
    host = list(data.device_prefetch(data.TrainInput(config).epoch(0), mesh))
    assert len(device) == len(host) == 2
    std = np.array(config.dataset.std)[::-1] if channel_order == "bgr" else np.array(config.dataset.std)
    for d, h in zip(device, host):
        assert set(d) == set(h) == {"image", "label"} and d["image"].dtype == h["image"].dtype == np.float32
        assert d["image"].sharding == h["image"].sharding
        np.testing.assert_array_equal(np.asarray(d["label"]), np.asarray(h["label"]))
        levels = np.abs(np.asarray(d["image"], np.float64) - np.asarray(h["image"], np.float64)) * 255 * std
        assert levels.max() <= 0.5 + 1e-3 and 0 < levels.mean() < 0.35
    config.dataset.normalize_on, config.dataset.output_dtype = "device", "bfloat16"
    batch = next(data.device_prefetch(data.TrainInput(config).epoch(0), mesh))
    assert batch["image"].dtype == jax.numpy.bfloat16
    np.testing.assert_allclose(np.asarray(batch["image"], np.float32), np.asarray(host[0]["image"]), atol=0.03)


def _epoch_images(train_input, epoch, start=0):
    return [(b["image"], b["label"]) for b in train_input.epoch(epoch, start)]


@pytest.mark.parametrize("normalize_on", ["device", "host"])
def test_order_depends_on_seed_and_epoch_and_resumes_mid_epoch(normalize_on):
    config = tiny_config(**{"dataset.normalize_on": normalize_on})
    ti = data.TrainInput(config)
    assert ti.steps_per_epoch == 128 // 32
    full = _epoch_images(ti, 1)
    resumed = _epoch_images(ti, 1, start=2)
    assert len(resumed) == len(full) - 2
    for (a, la), (b, lb) in zip(full[2:], resumed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    other_epoch = _epoch_images(ti, 2)
    assert not np.array_equal(full[0][1], other_epoch[0][1])
    again = _epoch_images(data.TrainInput(config), 1)
    np.testing.assert_array_equal(again[0][0], full[0][0])
    labels = np.concatenate([lab for _, lab in full])
    assert len(labels) == 128  # each training example once per epoch (128 = 4 full batches)


def test_processes_read_disjoint_parts_of_the_same_global_batches():
    config = tiny_config()
    single = _epoch_images(data.TrainInput(config, 0, 1), 0)
    parts = [_epoch_images(data.TrainInput(config, p, 2), 0) for p in range(2)]
    for t, (image, label) in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([parts[0][t][0], parts[1][t][0]]), image)
        np.testing.assert_array_equal(np.concatenate([parts[0][t][1], parts[1][t][1]]), label)


@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_input_covers_every_example_once(process_count):
    config = tiny_config(eval_batch_size=24, **{"dataset.num_eval_examples": 37})
    seen_images, seen_labels, batches = [], [], set()
    for p in range(process_count):
        ev = data.EvalInput(config, p, process_count)
        out = list(ev.batches())
        batches.add(len(out))
        assert len(out) == ev.num_batches
        for b in out:
            assert b["image"].shape[0] == 24 // process_count
            keep = b["mask"] > 0
            seen_images.append(b["image"][keep])
            seen_labels.append(b["label"][keep])
    assert len(batches) == 1  # every process runs the same number of steps
    *_, y_test = sources.quickstart_arrays()
    np.testing.assert_array_equal(np.concatenate(seen_labels), y_test[:37])
    assert np.concatenate(seen_images).shape[0] == 37


def test_quickstart_and_synthetic_sources():
    x_train, y_train, x_test, y_test = sources.quickstart_arrays()
    assert x_train.shape == (1438, 32, 32, 3) and x_test.shape == (359, 32, 32, 3) and x_train.dtype == np.uint8
    assert set(y_train) == set(range(10)) and set(y_test) == set(range(10))
    config = tiny_config(**{"dataset.name": "synthetic", "dataset.num_train_examples": 64})
    batches = list(data.TrainInput(config).epoch(0))
    assert len(batches) == 2 and batches[0]["image"].shape == (32, 16, 16, 3)
    again = list(data.TrainInput(config).epoch(0))
    np.testing.assert_array_equal(again[1]["image"], batches[1]["image"])


def _write_folder(root, split, classes, per_class, rng):
    for c in classes:
        d = root / split / c
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(20, 48, 2)
            (d / f"{i}.jpg").write_bytes(_jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    (root / split / "README.txt").write_text("not a class")


def test_folder_dataset(tmp_path):
    rng = np.random.default_rng(5)
    _write_folder(tmp_path, "train", ["cat", "dog", "eel"], 6, rng)
    _write_folder(tmp_path, "val", ["cat", "dog", "eel"], 3, rng)
    config = tiny_config(batch_size=8, eval_batch_size=8, **{"dataset.name": "folder", "dataset.data_dir": str(tmp_path),
                                                            "dataset.eval_split": "validation", "dataset.num_train_examples": 0,
                                                            "dataset.num_eval_examples": 0})  # fmt: skip
    data.check_dataset(config)
    ti = data.TrainInput(config)
    assert ti.num_examples == 18 and ti.steps_per_epoch == 2
    batch = next(iter(ti.epoch(0)))
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.uint8  # normalised on the devices
    config.dataset.normalize_on = "host"
    assert next(data.TrainInput(config).epoch(0))["image"].dtype == np.float32
    labels = np.concatenate([b["label"] for b in data.EvalInput(config).batches()][:2])
    mask = np.concatenate([b["mask"] for b in data.EvalInput(config).batches()][:2])
    np.testing.assert_array_equal(labels[mask > 0], [0, 0, 0, 1, 1, 1, 2, 2, 2])  # class ids from sorted folder names
    config.model.num_classes = 2
    with pytest.raises(ConfigError, match="num_classes=3"):
        data.check_dataset(config)


def test_missing_data_errors_say_where_and_how(tmp_path):
    config = tiny_config(**{"dataset.name": "folder", "dataset.data_dir": str(tmp_path / "nope")})
    with pytest.raises(data.DatasetNotReadyError, match="nope/train"):
        data.check_dataset(config)
    config = tiny_config(**{"dataset.name": "imagenet2012", "dataset.data_dir": str(tmp_path)})
    with pytest.raises(data.DatasetNotReadyError) as e:
        data.check_dataset(config)
    msg = str(e.value)
    assert (
        str(tmp_path / "imagenet2012") in msg and "ILSVRC2012_img_train.tar" in msg and "tfds build imagenet2012" in msg
    )
    config.dataset.name = "mnist"
    with pytest.raises(data.DatasetNotReadyError, match="tfds build mnist"):
        data.check_dataset(config)
    config.dataset.name = "no_such_dataset_xyz"
    with pytest.raises(data.DatasetNotReadyError, match="neither a TFDS dataset"):
        data.check_dataset(config)


def test_pipeline_benchmark_runs(tmp_path):
    from regnet_jax.benchmarking import input_pipeline

    input_pipeline.write_jpegs(str(tmp_path), 12, size=(50, 40))
    for variant in input_pipeline.VARIANTS:  # the trainer's (normalised on the device or the host), and the old one
        out = input_pipeline.measure(str(tmp_path), threads=1, resolution=16, batch=4, batches=3, variant=variant)
        assert (
            out["images_per_s"] > 0
            and out["images_per_s_per_thread"] == out["images_per_s"]
            and out["images_per_cpu_s"] > 0
        )
