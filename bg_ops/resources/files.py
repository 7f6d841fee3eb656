"""The platform's file store: project files and approval attachments under one root folder."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from bg_ops.util.files import resolve_under_root


class FilesResource(dg.ConfigurableResource):
    """``BG_OPS_FILES_ROOT``: every path the platform gives us is relative to it."""

    root: str

    @property
    def path(self) -> Path:
        return Path(self.root)

    def resolve(self, relative: str) -> Path:
        """The real file for a relative path; refuses paths that leave the root."""
        return resolve_under_root(self.root, relative)
