"""Atomic, checksummed files: every artefact is written to a temporary file and renamed into place.

A killed process therefore leaves either the old file or the new one, never half of one, and
readers verify the SHA-256 recorded in a manifest before trusting an array or a checkpoint.
Checkpoints are tensors only and are loaded with `weights_only=True`: reading a file never runs
code from it.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from notbugs import tempfiles


class ArtefactError(RuntimeError):
    """An artefact on disk is missing, corrupt or does not match its manifest."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache  # read once: the code this process runs
def package_digest(*names: str) -> str:
    """SHA-256 (16 hex digits) of these files of the notbugs package: the code a result is computed by."""
    package = Path(__file__).resolve().parent
    return sha256_bytes(b"".join((package / name).read_bytes() for name in names))[:16]


# Write errors that say what to do, by errno (EDQUOT: a cluster's usual limit)
_WRITE_ERRORS = {
    errno.ENOSPC: "disk full while writing {path}; nothing was written, free space and re-run",
    errno.EDQUOT: "disk quota exceeded while writing {path}; nothing was written, free space in your quota and re-run",
    errno.EIO: "input/output error while writing {path} (a failing disk or network file system?); nothing was written",
    errno.EACCES: "cannot write {path}: {reason} (read-only output folder?)",
    errno.EROFS: "cannot write {path}: {reason} (read-only output folder?)",
    errno.EPERM: "cannot write {path}: {reason} (read-only output folder?)",
}


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """`tempfiles.atomic_write`, with a full disk or quota, an I/O error or a read-only folder reported as an
    ArtefactError naming the file."""
    try:
        tempfiles.atomic_write(path, data)
    except OSError as e:
        if e.errno in _WRITE_ERRORS:
            raise ArtefactError(_WRITE_ERRORS[e.errno].format(path=path, reason=e.strerror)) from e
        raise


def write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ArtefactError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtefactError(f"{path} is not valid JSON ({e})") from e


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def save_npy(path: str | Path, array: np.ndarray) -> str:
    """Write one array atomically; returns its SHA-256 for the manifest."""
    data = npy_bytes(np.ascontiguousarray(array))
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_npy(path: str | Path, sha256: str | None = None, rebuild: str = "") -> np.ndarray:
    """Read an array (never a pickle), checking its checksum when one is given."""
    path = Path(path)
    hint = f"; rebuild it with `{rebuild}`" if rebuild else ""
    if not path.exists():
        raise ArtefactError(f"{path} is missing{hint}")
    if sha256 is not None and sha256_file(path) != sha256:
        raise ArtefactError(f"{path} is corrupt (SHA-256 differs from its manifest){hint}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ArtefactError(f"{path} is not a plain array file ({e}){hint}") from e


def save_tensors(path: str | Path, tensors: dict) -> str:
    """Save a (nested) dict of tensors and plain numbers; returns the file's SHA-256."""
    buf = io.BytesIO()
    torch.save(tensors, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_tensors(path: str | Path, sha256: str | None = None, rebuild: str = "") -> dict:
    """Load a checkpoint with weights_only=True: a file holding arbitrary objects is refused."""
    path = Path(path)
    hint = f"; rebuild it with `{rebuild}`" if rebuild else ""
    if not path.exists():
        raise ArtefactError(f"{path} is missing{hint}")
    if sha256 is not None and sha256_file(path) != sha256:
        raise ArtefactError(f"{path} is corrupt (SHA-256 differs from its metadata){hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, planted pickle, ...: all mean "do not trust this file"
        raise ArtefactError(f"{path} cannot be loaded as a tensors-only checkpoint ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}){hint}") from e
