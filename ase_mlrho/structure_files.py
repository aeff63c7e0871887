"""Reading structure files for the commands and the active-learning loop: one clear line for a bad file."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_frames", "read_structure"]


def read_frames(path: str, index: str = ":") -> list:
    """The frames ``index`` selects from a structure file (a list), or ValueError with one clear line."""
    from ase.io import read

    from .quiet import quiet_third_party

    p = Path(path)
    if not p.exists():
        raise ValueError(f"structure file {path} does not exist")
    if p.is_dir():
        raise ValueError(f"{path} is a directory, not a structure file")
    try:
        with quiet_third_party():  # sparc-x-api prints a line per pseudopotential when it reads a .ion
            frames = read(path, index=index)
    except Exception as exc:  # noqa: BLE001 - ase.io raises many types for unreadable files
        raise ValueError(f"cannot read {path} as a structure ({type(exc).__name__}: {exc})") from None
    return frames if isinstance(frames, list) else [frames]


def read_structure(path: str, index: str):
    """One frame of a structure file, or ValueError with one clear line (shared by the SPARC commands)."""
    frames = read_frames(path, index)
    if len(frames) != 1:
        raise ValueError(f"--index {index} selects {len(frames)} frames of {path}; give a single frame")
    return frames[0]
