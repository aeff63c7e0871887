"""Files written atomically: a reader never sees half a file.

Every file the package writes (model files, fields, SPARC inputs, reports) goes through
:func:`atomic_write`: the content fills a temporary file in the target directory, which is renamed over
the target only when complete, so an interrupted run leaves the old file or none, never a torn one.
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


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
