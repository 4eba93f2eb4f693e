"""File formats of weights: safetensors (read and write, numpy only), and state dicts in .npz, .safetensors and
PyTorch (.pth/.pyth/.pt) files (read).

The safetensors reader/writer is a small numpy implementation of the published format (a little-endian u64 header
length, a JSON header of dtype/shape/byte offsets, then the raw little-endian bytes), so nothing beyond numpy is needed
to write or read these files. Only reading PyTorch files needs PyTorch (``pip install 'regnet_jax[torch]'``).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from regnet_jax.core import paths
from regnet_jax.core.errors import UserError

_MAX_HEADER = 100 * 1024 * 1024


class FormatError(UserError):
    """A file cannot be read as the format its name says, or data cannot be stored in a format (the message names
    the file and what to do)."""


class SafetensorsError(FormatError):
    """A safetensors file is malformed, or an array cannot be stored in one."""


def _dtypes() -> dict[str, np.dtype]:
    import ml_dtypes  # ships with jax; numpy has no bfloat16

    names = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
             "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}  # fmt: skip
    return {k: np.dtype(v) for k, v in names.items()}


def write_safetensors(
    path: paths.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
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
        raise SafetensorsError(
            f"{path} is not a safetensors file or is truncated (header length {n}, file size {len(blob)})"
        )
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
            raise SafetensorsError(
                f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) has byte range [{start}, {end}) that does not fit (truncated file?)"
            )
        tensors[name] = np.frombuffer(data[start:end], dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    return tensors, dict(metadata)


# ---------------------------------------------------------------- state dicts


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; numpy has no bfloat16, so widen those
        t = value.detach().cpu()
        return (t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy()
    return np.asarray(value)


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
    """The state dict inside a checkpoint: pycls ``model_state``, ``state_dict``, ``model`` (DeiT), or the dict itself."""
    if not isinstance(obj, Mapping):
        raise FormatError(f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    for key in ("model_state", "state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    if not obj or not all(isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items()):
        raise FormatError(
            f"{path} has no state dict: expected a 'model_state' (pycls), 'state_dict' or 'model' entry, or a dict of tensors; found keys {list(obj)[:8]}"
        )
    return obj


def _strip_module_prefix(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """State dicts saved from DistributedDataParallel prefix every key with 'module.'."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _torch_load(path: str, unsafe_pickle: bool) -> Any:
    try:
        import torch
    except ImportError as e:
        raise FormatError(
            f"reading {path} needs PyTorch (pip install 'regnet_jax[torch]'); without it, save the state dict as .npz "
            "(numpy.savez) or .safetensors and convert that"
        ) from e
    try:
        return torch.load(io.BytesIO(paths.read_bytes(path)), map_location="cpu", weights_only=not unsafe_pickle)
    except Exception as e:  # torch raises many types for truncated, foreign or pickle-unsafe files
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        hint = ""
        if not unsafe_pickle and "weights_only" in str(e):
            hint = " The file pickles Python objects besides tensors; if you trust its origin, add --unsafe_pickle."
        raise FormatError(f"could not read {path} as a PyTorch checkpoint ({type(e).__name__}: {msg}).{hint}") from e


def read_state_dict(path: str, unsafe_pickle: bool = False) -> dict[str, np.ndarray]:
    """The state dict in a ``.pth``/``.pyth``/``.pt`` (torch), ``.safetensors`` or ``.npz`` file, as numpy arrays.

    torch checkpoints are loaded with ``weights_only=True`` unless ``unsafe_pickle`` (only for files you trust).
    """
    if not paths.isfile(path):
        raise FormatError(f"checkpoint file {path} does not exist")
    if path.endswith(".npz"):
        try:
            with np.load(io.BytesIO(paths.read_bytes(path)), allow_pickle=False) as f:
                obj = {k: f[k] for k in f.files}
        except Exception as e:
            raise FormatError(f"could not read {path} as a numpy .npz archive ({type(e).__name__}: {e})") from e
    elif path.endswith(".safetensors"):
        obj, _ = read_safetensors(path)
    else:
        obj = _torch_load(path, unsafe_pickle)
    state_dict = _unwrap(obj, path)
    return _strip_module_prefix({k: _as_numpy(v) for k, v in state_dict.items()})
