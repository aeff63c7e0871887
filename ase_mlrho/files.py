"""Files written atomically: a reader never sees half a file.

Every file the package writes (model files, fields, SPARC inputs, reports) goes through
:func:`atomic_write`: the content fills a temporary file in the target directory, which is renamed over
the target only when complete, so an interrupted run leaves the old file or none, never a torn one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "file_sha256", "jsonable"]


def atomic_write(path, write_fn, binary: bool = False) -> Path:
    """Write ``path`` atomically: ``write_fn(fileobj)`` fills a temporary file in the same
    directory, which is renamed over ``path`` only when it is complete. ``.gz`` paths are gzipped.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw:
            if path.suffix == ".gz":
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                    _call_writer(gz, write_fn, binary)
            else:
                _call_writer(raw, write_fn, binary)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _call_writer(fileobj, write_fn, binary):
    if binary:
        write_fn(fileobj)
    else:
        text = io.TextIOWrapper(fileobj, encoding="ascii", newline="\n", write_through=True)
        write_fn(text)
        text.flush()
        text.detach()


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def jsonable(obj):
    """``obj`` with numpy scalars and arrays, tuples and paths turned into what ``json`` writes (recursively)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj
