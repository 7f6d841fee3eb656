"""Paths the platform hands us stay inside the files root (F1, non-negotiable 3)."""

from __future__ import annotations

import os

import pytest

from bg_ops.util.files import MissingFile, UnsafePath, resolve_under_root


@pytest.fixture
def root(tmp_path):
    files = tmp_path / "files"
    (files / "acme" / "projects").mkdir(parents=True)
    (files / "acme" / "projects" / "brief.pdf").write_bytes(b"%PDF")
    (tmp_path / "files2").mkdir()  # a sibling whose name starts like the root
    (tmp_path / "files2" / "secret.txt").write_text("no")
    (tmp_path / "outside.txt").write_text("no")
    os.symlink(tmp_path / "outside.txt", files / "acme" / "out-link")
    os.symlink(tmp_path / "files2" / "secret.txt", files / "acme" / "sibling-link")
    os.symlink(files / "acme" / "projects" / "brief.pdf", files / "acme" / "in-link")
    return files


def test_a_file_inside_resolves_to_its_real_path(root):
    assert resolve_under_root(root, "acme/projects/brief.pdf") == (root / "acme/projects/brief.pdf").resolve()
    assert resolve_under_root(str(root), "acme\\projects\\brief.pdf").name == "brief.pdf"
    assert resolve_under_root(root, "acme/in-link") == (root / "acme/projects/brief.pdf").resolve()


@pytest.mark.parametrize("path, error, says", [
    ("../outside.txt", UnsafePath, "outside the files root"),
    ("acme/../../outside.txt", UnsafePath, "without '..'"),
    ("/etc/passwd", UnsafePath, "outside the files root"),
    ("~/x", UnsafePath, "outside the files root"),
    ("", UnsafePath, "empty"),
    ("acme/out-link", UnsafePath, "through a symlink"),
    ("acme/sibling-link", UnsafePath, "through a symlink"),
    ("acme/gone.pdf", MissingFile, "does not exist"),
    ("acme/projects/brief.pdf/x", MissingFile, "does not exist"),
    ("acme/projects", MissingFile, "is not a file"),
])
def test_anything_else_is_refused_with_the_reason(root, path, error, says):
    with pytest.raises(error, match=says):
        resolve_under_root(root, path)
