"""Export trained or converted weights as one portable file, with the config beside it.

    python -m regnet_jax.export --checkpoint=DIR --output=regnety_400mf.safetensors [--layout=flax|pycls|torchvision|timm] [--ema]
    python -m regnet_jax.export --checkpoint=DIR --output=regnety_400mf.msgpack

``--checkpoint`` is a weights directory (``python -m regnet_jax.convert``) or a training workdir (its newest good
checkpoint). Two files are written (neither may exist already):

* ``FILE.safetensors``: the tensors, named ``params/s1/b1/f/a/kernel`` (``--layout=flax``, Flax shapes) or by the
  PyTorch state-dict keys of pycls, torchvision or timm (PyTorch shapes: load it with ``safetensors.torch.load_file``
  into a torchvision/timm model). ``FILE.msgpack`` (Flax layout only): ``flax.serialization.msgpack_serialize`` of
  ``{'params', 'batch_stats'}``.
* ``FILE.json`` beside it (e.g. ``regnety_400mf.safetensors.json``): ``{"format", "layout", "model", "input",
  "source"}``: the ``config.model`` to build and the input conventions (channel order, mean, std, resolution, crop
  fraction). A safetensors file also carries the same JSON in its metadata.

The safetensors reader/writer here is a small numpy implementation of the published format (a little-endian u64
header length, a JSON header of dtype/shape/byte offsets, then the raw little-endian bytes), so nothing beyond
numpy is needed to write or read these files.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from regnet_jax import paths

FORMAT = "regnet_jax.export/1"
EXPORT_LAYOUTS = ("flax", "pycls", "torchvision", "timm")
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file is malformed, or an array cannot be stored in one."""


class ExportError(ValueError):
    """Bad export arguments or an unreadable export (the message says which and what to do)."""


def _dtypes() -> dict[str, np.dtype]:
    import ml_dtypes  # ships with jax; numpy has no bfloat16

    names = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
             "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}  # fmt: skip
    return {k: np.dtype(v) for k, v in names.items()}


def write_safetensors(path: paths.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> array) and string ``metadata`` to a .safetensors file (atomically)."""
    codes = {v: k for k, v in _dtypes().items()}
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if a.dtype not in codes:
            raise SafetensorsError(f"{name!r} has dtype {a.dtype}, which safetensors cannot store")
        data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # the byte buffer starts 8-byte aligned
    paths.write_bytes(path, b"".join([struct.pack("<Q", len(raw)), raw, *blobs]))


def read_safetensors(path: paths.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of a .safetensors file; SafetensorsError names what is wrong with a bad file."""
    blob = paths.read_bytes(path)
    if len(blob) < 8:
        raise SafetensorsError(f"{path} is too short to be a safetensors file ({len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > min(_MAX_HEADER, len(blob) - 8):
        raise SafetensorsError(f"{path} is not a safetensors file or is truncated (header length {n}, file size {len(blob)})")
    try:
        header = json.loads(blob[8 : 8 + n])
    except ValueError as e:
        raise SafetensorsError(f"{path} has an unreadable safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path} has a safetensors header that is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data, dtypes, tensors = memoryview(blob)[8 + n :], _dtypes(), {}
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = dtypes[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError(f"{path}: tensor {name!r} has a bad header entry {info!r}") from e
        if not 0 <= start <= end <= len(data) or end - start != int(np.prod(shape)) * dtype.itemsize:
            raise SafetensorsError(f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) has byte range [{start}, {end}) that does not fit (truncated file?)")
        tensors[name] = np.frombuffer(data[start:end], dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    return tensors, dict(metadata)


def _flax_flat(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from flax import traverse_util

    tree = {c: variables.get(c, {}) for c in ("params", "batch_stats")}
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _flax_tree(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    from flax import traverse_util

    tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    return {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}


def _sidecar(output: paths.PathLike) -> paths.Path:
    """FILE.safetensors.json / FILE.msgpack.json: distinct for the two formats of one name."""
    output = paths.resolve(output)
    return output.parent / (output.name + ".json")


def _existing_sidecar(path: paths.PathLike) -> paths.Path:
    """The sidecar of an export; exports written before the current naming have NAME.json."""
    legacy = paths.resolve(path).with_suffix(".json")
    return legacy if not paths.isfile(_sidecar(path)) and paths.isfile(legacy) else _sidecar(path)


def export_variables(
    variables: Mapping[str, Any],
    model: Mapping[str, Any],
    conventions: Mapping[str, Any],
    output: str,
    *,
    layout: str = "flax",
    source: str = "",
) -> tuple[str, str]:
    """Write ``variables`` to ``output`` (.safetensors or .msgpack) and the config to its .json; returns both paths."""
    from regnet_jax import convert

    output = paths.resolve(output)
    ext = output.suffix
    if ext not in (".safetensors", ".msgpack"):
        raise ExportError(f"--output must end in .safetensors or .msgpack, got {output}")
    if layout not in EXPORT_LAYOUTS:
        raise ExportError(f"layout {layout!r} is unknown: use one of {EXPORT_LAYOUTS}")
    if ext == ".msgpack" and layout != "flax":
        raise ExportError("msgpack exports hold the Flax variable tree: use --layout=flax, or a .safetensors output for PyTorch layouts")
    if layout != "flax":
        convert.check_layout_fits(model, layout)
    sidecar = _sidecar(output)
    for path in (output, sidecar):
        if path.exists():
            raise ExportError(f"{path} already exists: choose another --output (nothing is overwritten)")
    meta = {"format": FORMAT, "layout": layout, "model": dict(model), "input": dict(conventions), "source": source}
    if ext == ".msgpack":
        from flax import serialization

        paths.write_bytes(output, serialization.msgpack_serialize(_flax_tree(_flax_flat(variables))))
    else:
        tensors = _flax_flat(variables) if layout == "flax" else convert.to_layout(variables, layout)
        write_safetensors(output, tensors, {"regnet_jax": json.dumps(meta)})
    paths.write_json(sidecar, meta)
    return str(output), str(sidecar)


def read_export(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(weights, meta)`` of an export: Flax ``{'params', 'batch_stats'}`` for layout 'flax', else the state dict."""
    sidecar = _existing_sidecar(path)
    if not paths.isfile(path) or not paths.isfile(sidecar):
        raise ExportError(f"an export is two files, {path} and {sidecar}; at least one is missing")
    meta = paths.read_json(sidecar)
    if meta.get("format") != FORMAT:
        raise ExportError(f"{sidecar} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if str(path).endswith(".msgpack"):
        from flax import serialization

        tree = serialization.msgpack_restore(paths.read_bytes(path))
        return {c: tree.get(c, {}) for c in ("params", "batch_stats")}, meta
    tensors, _ = read_safetensors(path)
    return (_flax_tree(tensors) if meta["layout"] == "flax" else tensors), meta


def main(argv: list[str]) -> None:
    from absl import flags

    from regnet_jax.checkpoint import load_pretrained

    del argv
    FLAGS = flags.FLAGS
    if not FLAGS.checkpoint or not FLAGS.output:
        raise ExportError("--checkpoint and --output are both required")
    t = time.perf_counter()
    pre = load_pretrained(FLAGS.checkpoint, ema=FLAGS.ema)
    out, sidecar = export_variables(pre.variables, pre.model, pre.input, FLAGS.output, layout=FLAGS.layout, source=pre.source)
    size = paths.resolve(out).stat().length / 2**20
    print(f"exported {pre.source} ({FLAGS.layout} layout, {size:.1f} MiB) in {time.perf_counter() - t:.1f} s -> {out} + {sidecar}")
    sys.stdout.flush()


if __name__ == "__main__":
    from absl import flags

    from regnet_jax.cli import run
    from regnet_jax.convert import ConversionError
    from regnet_jax.weights import WeightsError

    flags.DEFINE_string("checkpoint", None, "A weights directory or a training workdir.")
    flags.DEFINE_string("output", None, "File to write: NAME.safetensors or NAME.msgpack (its config, NAME.safetensors.json or NAME.msgpack.json, beside it).")
    flags.DEFINE_enum("layout", "flax", list(EXPORT_LAYOUTS), "Tensor names and shapes: Flax, or a PyTorch state dict of pycls/torchvision/timm.")
    flags.DEFINE_bool("ema", False, "Export the EMA weights of a training workdir.")
    run(main, user_errors=(ExportError, SafetensorsError, WeightsError, ConversionError))
