"""Train and eval preprocessing in TensorFlow, as pycls does it (pycls/datasets/imagenet.py: ImageNet._prepare_im, pycls/datasets/transforms.py; docs/fidelity.md#augmentation), on encoded or decoded images.

Every random choice is a stateless op seeded by ``seed`` (a [2] int tensor derived from (config.seed, epoch, example
position)), so augmentation is reproducible whatever the number of processes, threads or restarts.
Images are either encoded bytes (JPEG: decoded fused with the crop, with libjpeg's accurate integer IDCT as pycls's
``cv2.imread``; PNG/GIF/BMP: decoded, then cropped) or uint8 HxWxC arrays (C = 1 or 3). Output: HxWx3, normalised,
RGB or BGR, float32 or bfloat16; or, for normalisation on the accelerator (``config.dataset.normalize_on='device'``),
``train_pixels``: the augmented uint8 image and its lighting shift, which ``normalize`` turns into the same output.

Cost (one core, a 224 px image): the flip is a ``tf.cond`` + ``tf.reverse`` (a ``tf.where`` over a negative-stride
slice cost ~1.1 ms per image), and lighting + normalisation are one multiply-add with the per-channel constants tiled
to a whole row (TF broadcasts a [3] vector over the innermost axis ~4x slower); docs/performance.md#input-pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

# fb.resnet.torch PCA lighting constants, RGB (pycls/datasets/imagenet.py: _EIG_VALS, _EIG_VECS).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
CROP_TRIES = 10


def image_shape(image: tf.Tensor) -> tf.Tensor:
    """(height, width) of an encoded or decoded image, without decoding JPEG pixels."""
    if image.dtype != tf.string:
        return tf.shape(image)[:2]
    return tf.cond(
        tf.io.is_jpeg(image),
        lambda: tf.image.extract_jpeg_shape(image)[:2],
        lambda: tf.shape(tf.io.decode_image(image, channels=3, expand_animations=False))[:2],
    )


# libjpeg's JDCT_ISLOW, what pycls's cv2.imread (and PIL) decode with: a whole image decodes bit-identical to theirs.
# TF's default, INTEGER_FAST (JDCT_IFAST), differs from it by ~1 level on average (up to 16-36) on ~70% of values.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def decode_crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """The ``window`` = (y, x, h, w) of an image as uint8 HxWx3; JPEG decoding only decodes the window."""
    y, x, h, w = tf.unstack(window)
    if image.dtype != tf.string:
        crop = image[y : y + h, x : x + w]
        return tf.image.grayscale_to_rgb(crop) if crop.shape[-1] == 1 else crop
    return tf.cond(
        tf.io.is_jpeg(image),
        lambda: tf.image.decode_and_crop_jpeg(image, window, channels=3, dct_method=JPEG_DCT_METHOD),
        lambda: tf.io.decode_image(image, channels=3, expand_animations=False)[y : y + h, x : x + w],
    )


def decode(image: tf.Tensor) -> tf.Tensor:
    """The whole image as uint8 HxWx3 (what evaluation decodes)."""
    return decode_crop(image, tf.concat([[0, 0], image_shape(image)], 0))


def inception_crop_window(hw: tf.Tensor, seed: tf.Tensor, min_area: float, aspect_ratio: Sequence[float]) -> tf.Tensor:
    """pycls ``random_sized_crop``: up to 10 tries of area U(min_area, 1) and aspect U(lo, hi), w/h swapped with p=0.5;
    the first try that fits wins, else a centred square of the shorter side. Returns (y, x, h, w) int32."""
    h, w = tf.cast(hw[0], tf.float32), tf.cast(hw[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 5)
    area = tf.random.stateless_uniform([CROP_TRIES], seeds[0], min_area, 1.0) * h * w
    ratio = tf.random.stateless_uniform([CROP_TRIES], seeds[1], aspect_ratio[0], aspect_ratio[1])
    w_crop = tf.round(tf.sqrt(area * ratio))
    h_crop = tf.round(tf.sqrt(area / ratio))
    swap = tf.random.stateless_uniform([CROP_TRIES], seeds[2]) < 0.5
    w_crop, h_crop = tf.where(swap, h_crop, w_crop), tf.where(swap, w_crop, h_crop)
    fits = (h_crop <= h) & (w_crop <= w) & (h_crop >= 1) & (w_crop >= 1)
    first = tf.argmax(tf.cast(fits, tf.int32))  # index of the first fitting try (0 if none; checked below)
    hc, wc = tf.gather(h_crop, first), tf.gather(w_crop, first)
    # Offsets as np.random.randint(0, h - h_crop): uniform over [0, h - h_crop - 1], 0 when the crop is full-size.
    u = tf.random.stateless_uniform([2], seeds[3])
    y = tf.floor(u[0] * tf.maximum(h - hc, 1.0))
    x = tf.floor(u[1] * tf.maximum(w - wc, 1.0))
    side = tf.minimum(h, w)
    fallback = tf.stack([tf.math.ceil((h - side) / 2), tf.math.ceil((w - side) / 2), side, side])
    window = tf.where(tf.reduce_any(fits), tf.stack([y, x, hc, wc]), fallback)
    return tf.cast(window, tf.int32)


def _resize(image: tf.Tensor, size: tf.Tensor | Sequence[int]) -> tf.Tensor:
    # Bilinear with half-pixel centres and no antialiasing, as cv2.INTER_LINEAR.
    return tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=False)


def _affine(image: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """``image * scale + offset`` for an HxWx3 ``image`` and [3] ``scale``, ``offset``, on an Hx(W*3) view with the
    constants tiled to a whole row (TF's broadcast of a [3] vector over the innermost axis runs ~4x slower)."""
    shape = tf.shape(image)
    rows = tf.reshape(image, [shape[0], shape[1] * 3])
    return tf.reshape(rows * tf.tile(scale, [shape[1]]) + tf.tile(offset, [shape[1]]), shape)


def normalize(image: tf.Tensor, shift: tf.Tensor | None, cfg) -> tf.Tensor:
    """0..255 RGB pixels (uint8 or float) -> (x / 255 + shift - mean) / std (``shift``: the [3] lighting shift, on [0, 1]
    pixels), reversed to BGR for ``cfg.channel_order='bgr'``, as ``cfg.output_dtype``; one multiply-add pass:
    x * 1 / (255 std) + (shift - mean) / std."""
    mean, std = tf.constant(cfg.mean, tf.float32), tf.constant(cfg.std, tf.float32)
    offset = -mean if shift is None else shift - mean
    image = _affine(tf.cast(image, tf.float32), 1.0 / (255.0 * std), offset / std)
    if cfg.channel_order == "bgr":
        image = tf.reverse(image, [-1])  # not image[..., ::-1]: a negative-stride slice is a slow generic path
    return tf.cast(image, tf.dtypes.as_dtype(cfg.output_dtype))


def lighting_shift(seed: tf.Tensor, std: float) -> tf.Tensor:
    """AlexNet-style PCA lighting: the RGB shift eigvec @ (alpha * eigval), alpha ~ N(0, std), on [0, 1] pixels."""
    alpha = tf.random.stateless_normal([3], seed) * std
    return tf.linalg.matvec(tf.constant(PCA_EIGVEC, tf.float32), alpha * tf.constant(PCA_EIGVAL, tf.float32))


def lighting(image: tf.Tensor, seed: tf.Tensor, std: float) -> tf.Tensor:
    """PCA lighting on a [0, 1] RGB image: ``lighting_shift`` added to every pixel."""
    return image + lighting_shift(seed, std)


def train_pixels(
    image: tf.Tensor, seed: tf.Tensor, cfg, resolution: int, uint8: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """Inception crop, resize and flip (``cfg`` = config.dataset): (the RxRx3 RGB pixels on 0..255, float32 or, with
    ``uint8``, rounded to uint8; the [3] lighting shift, zero without lighting). ``normalize`` of the pair is the
    network's input; the random draws are ``train_preprocess``'s."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    window = inception_crop_window(image_shape(image), seeds[0], cfg.min_area, tuple(cfg.aspect_ratio))
    out = _resize(decode_crop(image, window), [resolution, resolution])
    if uint8:
        out = tf.cast(tf.round(out), tf.uint8)  # bilinear weights sum to 1: already within [0, 255]
    if cfg.flip:
        # tf.cond + tf.reverse: a tf.where would build the reversed copy of every image, with a slow negative-stride slice.
        flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
        out = tf.cond(flip, lambda: tf.reverse(out, [1]), lambda: out)
    shift = lighting_shift(seeds[2], cfg.pca_std) if cfg.pca_std > 0 else tf.zeros([3])
    return out, shift


def train_preprocess(image: tf.Tensor, seed: tf.Tensor, cfg, resolution: int) -> tf.Tensor:
    """Inception crop, resize, flip, PCA lighting, normalise (``cfg`` = config.dataset)."""
    return normalize(*train_pixels(image, seed, cfg, resolution), cfg)


def eval_size(resolution: int, crop_fraction: float) -> int:
    """The shorter side before the centre crop: 256 for 224 px at pycls's 224/256 (TEST.IM_SIZE 256)."""
    return round(resolution / crop_fraction)


def eval_preprocess(image: tf.Tensor, cfg, resolution: int) -> tf.Tensor:
    """pycls test transform: resize the shorter side to ``eval_size`` (long side floor(long/short*size)), centre-crop."""
    full = decode(image)
    hw = tf.shape(full)[:2]
    size = eval_size(resolution, cfg.eval_crop_fraction)
    h, w = tf.cast(hw[0], tf.float64), tf.cast(hw[1], tf.float64)
    new_h = tf.where(h <= w, tf.constant(size, tf.float64), tf.floor(h / w * size))
    new_w = tf.where(h <= w, tf.floor(w / h * size), tf.constant(size, tf.float64))
    new_hw = tf.cast(tf.stack([new_h, new_w]), tf.int32)
    out = _resize(full, new_hw)
    y = (new_hw[0] - resolution + 1) // 2  # ceil((size - crop) / 2)
    x = (new_hw[1] - resolution + 1) // 2
    out = out[y : y + resolution, x : x + resolution]
    return normalize(tf.ensure_shape(out, [resolution, resolution, 3]), None, cfg)


def plain_preprocess(image: tf.Tensor, cfg, resolution: int) -> tf.Tensor:
    """Already at ``resolution`` (synthetic data): only normalise."""
    return normalize(tf.ensure_shape(image, [resolution, resolution, 3]), None, cfg)
