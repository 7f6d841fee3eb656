"""Cloud storage: Dropbox in production, a local folder as the embedded default.

Both backends speak the same contract so jobs never know which one they have:

- paths are Dropbox-style, relative to the backend's configured root: ``/acme/Approvals/a.pdf``
  (leading slash, ``/`` separators, no trailing slash, compared case-insensitively);
- every file carries Dropbox's content hash (``bg_ops.util.content_hash``), so an upload counts
  only when the stored hash equals the local one: ``upload`` reads the local file once, hashes
  the bytes it sends, and returns the stored entry only when its hash equals that hash (a
  mismatch raises ``StorageTransientError``), so callers never hash the file themselves;
- ``upload`` in ``add`` mode treats an existing file with the same content as done, and one
  with different content as a conflict (or renames to ``name (2).ext`` when asked);
  ``overwrite`` replaces it;
- listing is recursive and paged by the backend, returned as one iterator.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import PrivateAttr

from bg_ops.util.content_hash import ContentHasher, content_hash_file

WriteMode = Literal["add", "overwrite"]


class StorageError(Exception):
    """Base of every storage failure; ``transient`` says whether a retry may succeed."""

    transient = False


class StorageBadPath(StorageError):
    pass


class StorageNotFound(StorageError):
    pass


class StorageConflict(StorageError):
    pass


class StorageAuthError(StorageError):
    pass


class StorageTransientError(StorageError):
    transient = True


class StorageRateLimited(StorageTransientError):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class CloudEntry:
    path: str  # relative to the backend's root, as displayed ("/acme/Approvals/a.pdf")
    is_folder: bool
    size: int | None = None
    content_hash: str | None = None
    server_modified: datetime | None = None
    rev: str | None = None


def normalize_cloud_path(path: str) -> str:
    """Validate and normalise a cloud path: ``/a/b.pdf``; ``""`` or ``/`` is the root (``""``)."""
    if not isinstance(path, str):
        raise StorageBadPath(f"cloud path must be text, got {type(path).__name__}")
    if path in ("", "/"):
        return ""
    if not path.startswith("/"):
        raise StorageBadPath(f"cloud path {path!r} must start with '/'")
    if path.endswith("/"):
        path = path.rstrip("/")
    parts = path.split("/")[1:]
    for part in parts:
        if part in ("", ".", ".."):
            raise StorageBadPath(f"cloud path {path!r} has an empty, '.' or '..' component")
        if part != part.strip() or any(ord(c) < 32 for c in part) or "\\" in part:
            raise StorageBadPath(
                f"cloud path {path!r} has a component with surrounding spaces, control "
                "characters or a backslash"
            )
    return "/" + "/".join(parts)


def join_cloud_path(*parts: str) -> str:
    joined = "/" + "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    return normalize_cloud_path(joined)


def autorename_candidates(path: str) -> Iterator[str]:
    """``/a/b.pdf`` -> ``/a/b (2).pdf``, ``/a/b (3).pdf`` … (Dropbox's autorename scheme)."""
    folder, name = posixpath.split(path)
    stem, ext = posixpath.splitext(name)
    n = 2
    while True:
        yield posixpath.join(folder, f"{stem} ({n}){ext}")
        n += 1


class CloudStorageResource(dg.ConfigurableResource):
    """Where bg_ops keeps archives and backups. Subclasses choose the backend."""

    def describe(self) -> str:
        raise NotImplementedError

    def upload(
        self,
        local_path: str | Path,
        cloud_path: str,
        *,
        mode: WriteMode = "add",
        autorename: bool = False,
    ) -> CloudEntry:
        """Store ``local_path`` at ``cloud_path``; the returned entry's ``content_hash`` is that
        of the bytes read from ``local_path`` (verified against what the backend stored)."""
        raise NotImplementedError

    def download(self, cloud_path: str, local_path: str | Path) -> CloudEntry:
        raise NotImplementedError

    def get_metadata(self, cloud_path: str) -> CloudEntry | None:
        """The entry at ``cloud_path``, or ``None`` when nothing is there."""
        raise NotImplementedError

    def list_folder(self, cloud_path: str, *, recursive: bool = True) -> Iterator[CloudEntry]:
        raise NotImplementedError

    def create_folder(self, cloud_path: str) -> CloudEntry:
        """Create a folder (and its parents); an existing folder is not an error."""
        raise NotImplementedError

    def delete(self, cloud_path: str) -> None:
        raise NotImplementedError

    def check_connection(self) -> str:
        """Raise a ``StorageError`` when the backend cannot be used; return a short description."""
        raise NotImplementedError


class LocalStorageResource(CloudStorageResource):
    """Embedded default: mirrors the cloud layout into a local folder (``BG_OPS_STORAGE_DIR``).

    Lookups are case-insensitive like Dropbox's; a file keeps the case it was first stored with.
    """

    storage_dir: str

    _hash_cache: dict = PrivateAttr(default_factory=dict)

    def describe(self) -> str:
        return f"local folder {self.storage_dir}"

    # -- path mapping -------------------------------------------------------------------
    @property
    def _root(self) -> Path:
        return Path(self.storage_dir)

    def _resolve(self, cloud_path: str) -> Path | None:
        """The existing local path for ``cloud_path``, matched case-insensitively, or None."""
        norm = normalize_cloud_path(cloud_path)
        current = self._root
        if not current.exists():
            return None
        if not norm:
            return current
        for part in norm.split("/")[1:]:
            candidate = current / part
            if candidate.exists():
                current = candidate
                continue
            if not current.is_dir():
                return None
            folded = part.lower()  # Dropbox lowercases; casefold() would merge "ß" and "ss"
            match = None
            with os.scandir(current) as it:
                for entry in it:
                    if entry.name.lower() == folded:
                        match = Path(entry.path)
                        break
            if match is None:
                return None
            current = match
        return current

    def _target(self, cloud_path: str) -> Path:
        """Where a new file at ``cloud_path`` goes: existing folders keep their case."""
        norm = normalize_cloud_path(cloud_path)
        if not norm:
            raise StorageBadPath("cannot write a file at the storage root")
        parent, name = posixpath.split(norm)
        parent_local = self._resolve(parent) if parent != "/" else self._root
        if parent_local is None:
            self.create_folder(parent)
            parent_local = self._resolve(parent) if parent != "/" else self._root
        if parent_local is not None and parent_local.exists() and not parent_local.is_dir():
            raise StorageConflict(f"{parent} is a file, not a folder")
        return Path(parent_local) / name

    def _cloud_path_of(self, local: Path) -> str:
        rel = local.relative_to(self._root).as_posix()
        return "" if rel == "." else "/" + rel

    def _entry(self, local: Path) -> CloudEntry:
        st = local.stat()
        if local.is_dir():
            return CloudEntry(path=self._cloud_path_of(local), is_folder=True)
        key = (str(local), st.st_size, st.st_mtime_ns)
        digest = self._hash_cache.get(key)
        if digest is None:
            digest = content_hash_file(local)
            self._hash_cache[key] = digest
        return CloudEntry(
            path=self._cloud_path_of(local),
            is_folder=False,
            size=st.st_size,
            content_hash=digest,
            server_modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
            rev=f"{st.st_mtime_ns:x}",
        )

    # -- operations -----------------------------------------------------------------------
    def upload(self, local_path, cloud_path, *, mode="add", autorename=False) -> CloudEntry:
        norm = normalize_cloud_path(cloud_path)
        if not norm:
            raise StorageBadPath("cannot write a file at the storage root")
        source = Path(local_path)
        if not source.is_file():
            raise StorageNotFound(f"local file {source} does not exist")
        existing = self._resolve(norm)
        if existing is not None and not existing.is_dir():
            if self._entry(existing).content_hash == content_hash_file(source):
                return self._entry(existing)  # same content: nothing to do, same revision
        if existing is not None and (mode == "add" or existing.is_dir()):
            if not autorename:
                what = "a folder" if existing.is_dir() else "a file with different content"
                raise StorageConflict(f"{norm} already exists as {what}")
            for candidate in autorename_candidates(norm):
                if self._resolve(candidate) is None:
                    norm, existing = candidate, None
                    break
        target = existing if existing is not None else self._target(norm)
        # Write to a temporary file beside the target, then rename: a reader never sees half.
        # The hash is taken of the bytes copied, so the stored file's hash needs no second read.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=".part")
        hasher = ContentHasher()
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while block := src.read(1024 * 1024):
                    hasher.update(block)
                    out.write(block)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        st = target.stat()
        self._hash_cache[(str(target), st.st_size, st.st_mtime_ns)] = hasher.hexdigest()
        return self._entry(target)

    def download(self, cloud_path, local_path) -> CloudEntry:
        found = self._resolve(cloud_path)
        if found is None or found.is_dir():
            raise StorageNotFound(f"no file at {normalize_cloud_path(cloud_path) or '/'}")
        dest = Path(local_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, open(found, "rb") as src:
                shutil.copyfileobj(src, out, 1024 * 1024)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self._entry(found)

    def get_metadata(self, cloud_path) -> CloudEntry | None:
        found = self._resolve(cloud_path)
        return None if found is None else self._entry(found)

    def list_folder(self, cloud_path, *, recursive=True) -> Iterator[CloudEntry]:
        found = self._resolve(cloud_path)
        if found is None or not found.is_dir():
            raise StorageNotFound(f"no folder at {normalize_cloud_path(cloud_path) or '/'}")
        stack = [found]
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                if entry.name.startswith(".upload-") and entry.name.endswith(".part"):
                    continue
                path = Path(entry.path)
                yield self._entry(path)
                if recursive and entry.is_dir(follow_symlinks=False):
                    stack.append(path)

    def create_folder(self, cloud_path) -> CloudEntry:
        norm = normalize_cloud_path(cloud_path)
        current = self._root
        current.mkdir(parents=True, exist_ok=True)
        for part in (norm.split("/")[1:] if norm else []):
            found = self._resolve(self._cloud_path_of(current) + "/" + part)
            if found is None:
                found = current / part
                found.mkdir(exist_ok=True)
            elif not found.is_dir():
                raise StorageConflict(f"{self._cloud_path_of(found)} is a file, not a folder")
            current = found
        return self._entry(current)

    def delete(self, cloud_path) -> None:
        if not normalize_cloud_path(cloud_path):
            raise StorageBadPath("refusing to delete the storage root")
        found = self._resolve(cloud_path)
        if found is None:
            raise StorageNotFound(f"nothing at {normalize_cloud_path(cloud_path)}")
        if found.is_dir():
            shutil.rmtree(found)
        else:
            found.unlink()

    def check_connection(self) -> str:
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self._root, prefix=".probe-", delete=True)
            probe.close()
        except OSError as exc:
            raise StorageError(f"cannot write to {self._root}: {exc.strerror or exc}") from exc
        return self.describe()
