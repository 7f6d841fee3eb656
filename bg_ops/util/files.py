"""Files the platform hands us by relative path must stay inside the files root."""

from __future__ import annotations

import os
import stat
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
    if pure.is_absolute() or relative.startswith("~") or ".." in pure.parts:
        raise UnsafePath(
            f"path {relative!r} is outside the files root: give a path relative to it, without '..'"
        )
    root_real = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root_real, *pure.parts))
    # Inside the root: the root itself, or below it (a symlink may not lead out).
    if real != root_real and not real.startswith(root_real.rstrip(os.sep) + os.sep):
        raise UnsafePath(f"path {relative!r} leads outside the files root (through a symlink): refused")
    try:
        mode = os.stat(real).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise MissingFile(f"file {relative!r} does not exist under the files root") from None
    if not stat.S_ISREG(mode):
        raise MissingFile(f"path {relative!r} is not a file")
    return Path(real)
