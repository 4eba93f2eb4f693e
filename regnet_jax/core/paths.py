"""One path layer for every file the tools read or write: local paths and URLs (``gs://bucket/...``) alike.

Built on ``etils.epath`` (which orbax and TFDS use too), so a workdir, a weights directory, a sweep or a report can
live on Cloud Storage wherever a local directory works. ``gs://`` goes through gcsfs (``EPATH_USE_TF=false``, set
here unless the environment sets it): the same client the emulator tests exercise, for this package, orbax's
metadata and TFDS's. Orbax's arrays go through tensorstore's own GCS driver; tf.data's reads of TFDS record files
through TensorFlow's (see docs/training.md, "TPU pod").

* ``write_bytes/text/json`` replace a file whole: locally through a temporary file renamed over it; on object storage
  an object appears only when its upload completes, so it is written directly (a rename there is a copy).
* ``append_bytes/text`` append all or nothing locally (a short write is truncated away); object storage has no
  appends, so there the object is rewritten (buffer and call it rarely: ``training.records.JsonlLog`` does).
* A full disk, a quota, a read-only or forbidden location, a file where a directory is needed, a missing bucket raise
  ``StorageError`` naming the path and, on local disks, the free space.
* Cloud Storage that cannot be reached (no network, a name that does not resolve, no credentials) is found by the
  first operation on a bucket, from one request without retries (``check_reachable``), and raises ``StorageError``
  naming the bucket, what failed and what to check, at once rather than after a minute of gcsfs's retries.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.util
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("EPATH_USE_TF", "false")
# gcsfs's experimental zonal/hierarchical-bucket support probes the bucket type through another API before operations,
# again after each failed probe (e.g. without that API's permission); plain objects are all this package needs.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402
from etils import epath  # noqa: E402

from regnet_jax.core.errors import ConfigError  # noqa: E402

# Several processes (hosts, the launcher and its trainers) read what the others write: never answer from a stale
# listing of a bucket prefix.
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)

Path = epath.Path
PathLike = str | os.PathLike


def _without_traceback(record: logging.LogRecord) -> bool:
    """gcsfs logs the traceback of a request that ran out of retries; the error it raises then is reported (one line)."""
    record.exc_info = record.exc_text = None
    return True


logging.getLogger("gcsfs").addFilter(_without_traceback)

_FULL = (errno.ENOSPC, errno.EDQUOT)
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL_TEXT = ("No space left on device", "Disk quota exceeded")  # tensorstore reports OS errors as text
_UNWRITABLE_TEXT = ("Read-only file system", "Permission denied", "PERMISSION_DENIED")


class StorageError(ConfigError):
    """A location cannot be written (full, read-only, forbidden, no such bucket); the message names it and the fix."""


def is_url(path: PathLike) -> bool:
    """Whether ``path`` is a URL (``gs://...``), not a local path."""
    return "://" in os.fspath(path)


@functools.cache
def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def resolve(path: PathLike) -> Path:
    """``path`` as an epath.Path: a URL as given, a local path made absolute (``~`` expanded).

    Raises StorageError for a ``gs://`` path when gcsfs, the client for it, is not installed.
    """
    text = os.fspath(path)
    if not is_url(text):
        return Path(os.path.abspath(os.path.expanduser(text)))
    use_tf = os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0")
    if text.startswith("gs://") and not use_tf and not _has_module("gcsfs"):
        raise StorageError(
            f"{text}: gs:// paths need the gcsfs package: pip install gcsfs (or pip install -e '.[gcs]')"
        )
    return Path(text)


def join(path: PathLike, *parts: str) -> Path:
    return resolve(path).joinpath(*parts)


def _reached(path: PathLike) -> Path:
    """``resolve(path)``, after checking that its bucket can be reached (``check_reachable``: once per bucket)."""
    p = resolve(path)
    check_reachable(p)
    return p


def exists(path: PathLike) -> bool:
    return _reached(path).exists()


def isdir(path: PathLike) -> bool:
    return _reached(path).is_dir()


def isfile(path: PathLike) -> bool:
    p = _reached(path)
    return p.exists() and not p.is_dir()


def listdir(path: PathLike) -> list[str]:
    """The names in a directory (on object storage: under a prefix), sorted."""
    return sorted(child.name for child in _reached(path).iterdir())


def makedirs(path: PathLike) -> None:
    """Create a local directory and its parents; on object storage (no directories there) only check that its bucket
    can be reached."""
    p = _reached(path)
    if is_url(p):
        return
    with writing(p):
        p.mkdir(parents=True, exist_ok=True)


REACH_TIMEOUT_S = 20  # the one request of check_reachable
_REACHED: set[tuple[str, str]] = set()  # (bucket, endpoint) answered once: not checked again


def check_reachable(path: PathLike) -> None:
    """For a ``gs://`` path: one request to Cloud Storage (list at most one object under it), without gcsfs's retries.
    No network, a name that does not resolve, no answer, missing or refused credentials: a one-line ``StorageError``
    naming the bucket, what failed and what to check, within seconds, where gcsfs would retry for a minute and end in
    a traceback. Once per bucket and process; nothing for local paths (or TensorFlow's client, ``EPATH_USE_TF``). Any
    other answer (a missing bucket, a server error) is left to the operation that follows."""
    text = os.fspath(path)
    if not text.startswith("gs://") or os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0"):
        return
    resolve(text)  # gcsfs installed
    bucket, _, prefix = text[len("gs://") :].partition("/")
    key = (bucket, os.environ.get("STORAGE_EMULATOR_HOST", ""))
    if key in _REACHED or not bucket:
        return
    import fsspec.asyn
    from etils.epath import backend

    fs = backend.fsspec_backend.fs(text)  # the client every path operation uses (its credentials found once)
    request = getattr(type(fs)._request, "__wrapped__", None)  # gcsfs's request without its retries
    if request is None:
        return
    try:
        fsspec.asyn.sync(
            fs.loop, request, fs, "GET", "b/{}/o", bucket, prefix=prefix, maxResults=1, timeout=REACH_TIMEOUT_S
        )
    except Exception as e:  # noqa: BLE001 - classified below; anything else is left to the next operation
        err = _unreachable(text, bucket, fs, e)
        if err is not None:
            raise err from None
        return
    _REACHED.add(key)


def _unreachable(path: str, bucket: str, fs: Any, exc: BaseException) -> StorageError | None:
    """The StorageError for a request to Cloud Storage that failed before any answer, or for want of credentials."""
    import asyncio

    endpoint = (
        getattr(fs, "_location", "") or os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    )
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    network = f"the network connection{f' and STORAGE_EMULATOR_HOST={emulator}' if emulator else ''}"
    credentials = (
        "the credentials: `gcloud auth application-default login` (or GOOGLE_APPLICATION_CREDENTIALS=KEY.json)"
    )
    what = check = None
    for e in _chain(exc):
        name, text = type(e).__name__, " ".join(str(e).split())[:200]
        if name == "ClientConnectorDNSError" or "Name or service not known" in text or "nodename nor servname" in text:
            what, check = f"{endpoint} cannot be found (DNS: {text})", network
        elif name in ("ClientConnectorError", "ServerDisconnectedError", "ClientOSError") or isinstance(
            e, ConnectionError
        ):
            what, check = f"cannot connect to {endpoint} ({text})", f"{network} (a proxy or firewall?)"
        elif isinstance(e, (asyncio.TimeoutError, TimeoutError)) or name == "FSTimeoutError":
            what, check = f"no answer from {endpoint} within {REACH_TIMEOUT_S} s", network
        elif type(e).__module__.startswith("google.auth"):
            what, check = f"no usable credentials ({name}: {text})", credentials
        elif getattr(e, "code", None) == 401:
            anonymous = getattr(getattr(fs, "credentials", None), "method", "") == "anon"
            what = (
                "no credentials were found (anonymous access was refused)"
                if anonymous
                else f"the credentials were refused ({text})"
            )
            check = credentials
        elif getattr(e, "code", None) == 403 or text.startswith("Forbidden"):
            what, check = (
                f"permission denied ({text})",
                f"the bucket name, and that {credentials[len('the credentials: ') :]} gives an account that may use it",
            )
        if what:
            break
    if what is None:
        return None
    return StorageError(f"cannot reach Cloud Storage for {path} (bucket {bucket}): {what}. Check {check}, then rerun")


def read_bytes(path: PathLike) -> bytes:
    return _reached(path).read_bytes()


def read_text(path: PathLike) -> str:
    return _reached(path).read_text()


def read_json(path: PathLike) -> Any:
    return json.loads(read_text(path))


def write_bytes(path: PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole: a reader (or a crash) sees the old file or the new one, never a part."""
    p = _reached(path)
    with writing(p):
        if is_url(p):
            with p.open("wb") as f:
                f.write(data)
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


def append_bytes(path: PathLike, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if absent) all or nothing; on object storage, rewrite the object."""
    p = _reached(path)
    if is_url(p):
        write_bytes(p, (p.read_bytes() if p.exists() else b"") + data)
        return
    with writing(p):
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(p))
            except OSError:
                os.ftruncate(fd, size)  # never leave half a record behind
                raise
        finally:
            os.close(fd)


def append_text(path: PathLike, text: str) -> None:
    append_bytes(path, text.encode())


def remove(path: PathLike) -> None:
    """Remove a file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        _reached(path).unlink()


def rename(src: PathLike, dst: PathLike) -> None:
    """Rename a file or directory (on object storage: copy then delete, object by object)."""
    _reached(src).rename(resolve(dst))


def _existing(path: PathLike) -> str:
    p = os.fspath(resolve(path))
    while not os.path.exists(p):
        p = os.path.dirname(p)
    return p


def free_bytes(path: PathLike) -> int | None:
    """Free bytes on the local file system holding ``path`` (or its nearest existing parent); None for URLs."""
    return None if is_url(path) else shutil.disk_usage(_existing(path)).free


def check_writable(path: PathLike, needed: int = 0) -> None:
    """Raise StorageError now if a local ``path`` (or its nearest existing parent) cannot be written or has less than
    ``needed`` bytes free, rather than in the middle of writing it. Nothing is checked for URLs."""
    if is_url(path):
        return
    if not os.access(_existing(path), os.W_OK):  # also false on a read-only file system, even for root
        raise _unwritable(path, "a read-only file system, or no write permission")
    if free_bytes(path) < needed:
        raise _no_space(path, needed)


def tree_bytes(path: PathLike) -> int:
    """The disk space the files under a local directory take (0 for URLs and missing directories)."""
    if is_url(path):
        return 0
    total = 0
    for root, _, files in os.walk(resolve(path)):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_blocks * 512  # allocated, not apparent, size
    return total


def human_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _no_space(path: PathLike, needed: int) -> StorageError:
    free = free_bytes(path)
    space = f"{human_bytes(free)} free" if free is not None else "the storage is full or over quota"
    if needed:
        space += f", about {human_bytes(needed)} needed"
    return StorageError(f"no space left to write {path} ({space}): free some space or use another location, then rerun")


def not_a_directory(path: PathLike) -> StorageError:
    """The StorageError for a local ``path`` that is, or lies under, a file where a directory is needed."""
    file = _existing(path)
    where = (
        f"{path} is a file"
        if os.path.abspath(file) == os.fspath(resolve(path))
        else f"{path} lies under {file}, which is a file"
    )
    return StorageError(f"{where}, not a directory: give a directory (or move the file away), then rerun")


def _unwritable(path: PathLike, why: str) -> StorageError:
    return StorageError(f"{path} is not writable ({why}): fix its permissions or use another location, then rerun")


def storage_error(path: PathLike, exc: BaseException, needed: int = 0) -> StorageError | None:
    """The StorageError for ``exc`` (or an exception it wraps) raised while writing ``path``: full (naming the free
    and the ``needed`` space where known), unwritable, a file where a directory is needed (or the reverse), or no
    such bucket; None for any other error."""
    for e in _chain(exc):
        code, text = getattr(e, "errno", None), str(e)
        if (
            isinstance(e, (FileExistsError, NotADirectoryError))
            and not is_url(path)
            and os.path.isfile(_existing(path))
        ):
            return not_a_directory(path)
        if isinstance(e, IsADirectoryError) and not is_url(path):
            return StorageError(f"{path} is a directory, not a file: give a file name, then rerun")
        if code in _FULL or any(t in text for t in _FULL_TEXT):
            return _no_space(path, needed)
        if code in _UNWRITABLE or getattr(e, "code", None) in (401, 403) or any(t in text for t in _UNWRITABLE_TEXT):
            return _unwritable(path, text.splitlines()[0][:200] if text else type(e).__name__)
        if is_url(path) and isinstance(e, FileNotFoundError):
            return StorageError(
                f"cannot write {path}: its bucket does not exist or is not accessible with these credentials"
            )
    if is_url(path) and os.fspath(path).startswith("gs://"):  # Cloud Storage unreachable after gcsfs's retries
        return _unreachable(os.fspath(path), os.fspath(path)[len("gs://") :].partition("/")[0], None, exc)
    return None


@contextlib.contextmanager
def writing(path: PathLike) -> Iterator[None]:
    """Turn a full disk or an unwritable location met inside the block into a StorageError naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        err = storage_error(path, e)
        if err is None:
            raise
        raise err from e
