"""Dropbox's content hash, used by every storage backend so a local copy and a cloud copy
can be compared byte for byte without downloading.

The hash is SHA-256 over the concatenated SHA-256 digests of the file's 4 MiB blocks
(https://www.dropbox.com/developers/reference/content-hash).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK_SIZE = 4 * 1024 * 1024


class ContentHasher:
    """Incremental hasher with the interface of hashlib objects (``update``/``hexdigest``)."""

    def __init__(self) -> None:
        self._overall = hashlib.sha256()
        self._block = hashlib.sha256()
        self._block_pos = 0

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(BLOCK_SIZE - self._block_pos, len(view))
            self._block.update(view[:take])
            self._block_pos += take
            view = view[take:]
            if self._block_pos == BLOCK_SIZE:
                self._overall.update(self._block.digest())
                self._block = hashlib.sha256()
                self._block_pos = 0

    def hexdigest(self) -> str:
        overall = self._overall.copy()
        if self._block_pos > 0:
            overall.update(self._block.digest())
        return overall.hexdigest()


def content_hash_bytes(data: bytes) -> str:
    hasher = ContentHasher()
    hasher.update(data)
    return hasher.hexdigest()


def content_hash_file(path: str | Path) -> str:
    hasher = ContentHasher()
    with open(path, "rb") as fh:
        while chunk := fh.read(BLOCK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()
