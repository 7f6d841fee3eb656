"""Files the platform hands us by relative path must stay inside the files root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


class UnsafePath(ValueError):
    """A path outside the files root (absolute, ``..``, or a symlink leading out)."""


class MissingFile(FileNotFoundError):
    pass


def resolve_under_root(root: str | Path, relative: str) -> Path:
    """The real file for ``relative`` under ``root``; refuse anything that escapes it."""
    if not isinstance(relative, str) or not relative.strip():
        raise UnsafePath(f"path {relative!r} is empty: give a path relative to the files root")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or relative.startswith("~") or any(part == ".." for part in pure.parts):
        raise UnsafePath(
            f"path {relative!r} is outside the files root: give a path relative to it, without '..'"
        )
    root_real = Path(os.path.realpath(root))
    candidate = root_real.joinpath(*pure.parts)
    real = Path(os.path.realpath(candidate))
    if real != root_real and root_real not in real.parents:
        raise UnsafePath(f"path {relative!r} leads outside the files root (through a symlink): refused")
    if not real.exists():
        raise MissingFile(f"file {relative!r} does not exist under the files root")
    if not real.is_file():
        raise MissingFile(f"path {relative!r} is not a file")
    return real
