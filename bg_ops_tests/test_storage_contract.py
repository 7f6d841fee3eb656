"""The storage contract, proven on both backends: the local folder and Dropbox (the real SDK
talking to the loopback fake in ``bg_ops_tests.fakes.dropbox_server``).

Jobs never know which backend they have, so every rule here must hold on both.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from bg_ops.resources.dropbox_storage import DropboxStorageResource
from bg_ops.resources.storage import (
    CloudStorageResource,
    LocalStorageResource,
    StorageBadPath,
    StorageConflict,
    StorageNotFound,
)
from bg_ops.util.content_hash import content_hash_file

MiB = 1024 * 1024


def reference_content_hash(data: bytes) -> str:
    """Dropbox's published algorithm, written out here with hashlib alone: SHA-256 over the
    concatenated SHA-256 digests of the 4 MiB blocks."""
    block = 4 * MiB
    digests = b"".join(
        hashlib.sha256(data[i : i + block]).digest() for i in range(0, len(data), block)
    )
    return hashlib.sha256(digests).hexdigest()


def test_reference_hash_is_the_documented_algorithm():
    # No blocks at all: the hash of nothing. One short block: SHA-256 of its SHA-256.
    assert reference_content_hash(b"") == hashlib.sha256(b"").hexdigest()
    assert (
        reference_content_hash(b"abc")
        == hashlib.sha256(hashlib.sha256(b"abc").digest()).hexdigest()
    )


@pytest.fixture(params=["local", "dropbox"])
def storage(request, tmp_path: Path) -> CloudStorageResource:
    if request.param == "local":
        return LocalStorageResource(storage_dir=str(tmp_path / "storage"))
    return request.getfixturevalue("dropbox_storage")


@pytest.fixture
def make_file(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    counter = iter(range(10_000))

    def make(data: bytes | str, name: str | None = None) -> Path:
        if isinstance(data, str):
            data = data.encode()
        path = src / (name or f"file-{next(counter)}.bin")
        path.write_bytes(data)
        return path

    return make


def _paths(entries) -> set[tuple[str, bool]]:
    return {(e.path, e.is_folder) for e in entries}


# -- content and hashes -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "size",
    [0, 11, 4 * MiB, 4 * MiB + 1],
    ids=["empty", "small", "one-full-block", "block-plus-one"],
)
def test_round_trip_keeps_bytes_and_dropbox_content_hash(storage, make_file, tmp_path, size):
    data = random.Random(size).randbytes(size)
    src = make_file(data)
    expected = reference_content_hash(data)
    assert content_hash_file(src) == expected

    entry = storage.upload(src, "/acme/Approvals/scan.bin")
    assert entry.path == "/acme/Approvals/scan.bin"
    assert not entry.is_folder
    assert entry.size == size
    assert entry.content_hash == expected
    assert entry.server_modified is not None and entry.server_modified.tzinfo is not None
    assert entry.rev

    out = tmp_path / "out" / "scan.bin"
    got = storage.download("/acme/Approvals/scan.bin", out)
    assert out.read_bytes() == data
    assert got.content_hash == expected
    assert storage.get_metadata("/acme/Approvals/scan.bin").content_hash == expected


def test_every_listed_file_carries_its_content_hash(storage, make_file):
    blobs = {f"/t/f{i}.txt": f"content {i}".encode() for i in range(3)}
    for path, data in blobs.items():
        storage.upload(make_file(data), path)
    files = [e for e in storage.list_folder("/t") if not e.is_folder]
    assert {e.path: e.content_hash for e in files} == {
        p: reference_content_hash(d) for p, d in blobs.items()
    }


# -- case -------------------------------------------------------------------------------------
def test_lookups_ignore_case_and_keep_the_first_case(storage, make_file):
    storage.upload(make_file("report"), "/Acme/Approvals/Report.PDF")

    found = storage.get_metadata("/acme/approvals/report.pdf")
    assert found is not None
    assert found.path == "/Acme/Approvals/Report.PDF"

    # A new file in an existing folder spelled differently lands in that folder, as it is cased.
    entry = storage.upload(make_file("other"), "/ACME/approvals/other.pdf")
    assert entry.path == "/Acme/Approvals/other.pdf"
    assert _paths(storage.list_folder("")) == {
        ("/Acme", True),
        ("/Acme/Approvals", True),
        ("/Acme/Approvals/Report.PDF", False),
        ("/Acme/Approvals/other.pdf", False),
    }
    # A trailing slash is tolerated and normalised away.
    assert storage.get_metadata("/ACME/APPROVALS/REPORT.pdf/").path == "/Acme/Approvals/Report.PDF"


def test_names_beyond_ascii(storage, make_file, tmp_path):
    entry = storage.upload(make_file("Überweisung"), "/Müller GmbH/Überweisung März.pdf")
    assert entry.path == "/Müller GmbH/Überweisung März.pdf"
    found = storage.get_metadata("/müller gmbh/ÜBERWEISUNG MÄRZ.PDF")
    assert found is not None and found.path == entry.path
    out = tmp_path / "ü.pdf"
    storage.download("/MÜLLER GMBH/überweisung märz.pdf", out)
    assert out.read_bytes() == "Überweisung".encode()


# -- write modes ------------------------------------------------------------------------------
def test_add_with_same_content_is_not_a_conflict(storage, make_file):
    first = storage.upload(make_file("same bytes"), "/a/Doc.txt")
    again = storage.upload(make_file("same bytes"), "/A/doc.TXT")
    assert again.path == first.path == "/a/Doc.txt"
    assert again.content_hash == first.content_hash
    assert [e.path for e in storage.list_folder("/a")] == ["/a/Doc.txt"]


def test_add_with_different_content_is_a_conflict(storage, make_file, tmp_path):
    storage.upload(make_file("original"), "/a/doc.txt")
    with pytest.raises(StorageConflict):
        storage.upload(make_file("changed"), "/a/doc.txt")
    out = tmp_path / "check.txt"
    storage.download("/a/doc.txt", out)
    assert out.read_bytes() == b"original"
    assert [e.path for e in storage.list_folder("/a")] == ["/a/doc.txt"]


def test_add_with_autorename_uses_dropbox_numbering(storage, make_file, tmp_path):
    storage.upload(make_file("v1"), "/a/name.ext")
    second = storage.upload(make_file("v2"), "/a/name.ext", autorename=True)
    third = storage.upload(make_file("v3"), "/a/name.ext", autorename=True)
    assert second.path == "/a/name (2).ext"
    assert third.path == "/a/name (3).ext"
    # The same content as the original is still "already there", renaming or not.
    assert storage.upload(make_file("v1"), "/a/name.ext", autorename=True).path == "/a/name.ext"
    contents = {}
    for entry in storage.list_folder("/a"):
        out = tmp_path / "dl" / Path(entry.path).name
        storage.download(entry.path, out)
        contents[entry.path] = out.read_bytes()
    assert contents == {"/a/name.ext": b"v1", "/a/name (2).ext": b"v2", "/a/name (3).ext": b"v3"}


def test_overwrite_replaces_the_content(storage, make_file, tmp_path):
    storage.upload(make_file("old"), "/a/Doc.txt")
    entry = storage.upload(make_file("brand new"), "/a/doc.txt", mode="overwrite")
    assert entry.path == "/a/Doc.txt"
    assert entry.content_hash == reference_content_hash(b"brand new")
    assert storage.get_metadata("/a/doc.txt").content_hash == reference_content_hash(b"brand new")
    out = tmp_path / "o.txt"
    storage.download("/a/DOC.txt", out)
    assert out.read_bytes() == b"brand new"
    assert [e.path for e in storage.list_folder("/a")] == ["/a/Doc.txt"]


def test_a_folder_or_a_file_in_the_way_is_a_conflict(storage, make_file):
    storage.create_folder("/a/sub")
    with pytest.raises(StorageConflict):
        storage.upload(make_file("x"), "/a/sub")
    with pytest.raises(StorageConflict):
        storage.upload(make_file("x"), "/a/sub", mode="overwrite")
    storage.upload(make_file("a file"), "/a/file.txt")
    with pytest.raises(StorageConflict):
        storage.upload(make_file("y"), "/a/file.txt/inside.txt")
    with pytest.raises(StorageConflict):
        storage.create_folder("/a/file.txt")


# -- folders ----------------------------------------------------------------------------------
def test_create_folder_is_idempotent_and_creates_parents(storage):
    made = storage.create_folder("/acme/Archive/2024")
    assert made.is_folder and made.path == "/acme/Archive/2024"
    again = storage.create_folder("/ACME/archive/2024")
    assert again.is_folder and again.path == "/acme/Archive/2024"
    assert storage.get_metadata("/acme/archive").is_folder
    assert _paths(storage.list_folder("")) == {
        ("/acme", True),
        ("/acme/Archive", True),
        ("/acme/Archive/2024", True),
    }


def test_recursive_listing_spans_several_pages(storage, make_file, request):
    expected = set()
    for tenant in ("alpha", "beta", "gamma"):
        expected.add((f"/{tenant}", True))
        expected.add((f"/{tenant}/Approvals", True))
        for i in range(3):
            storage.upload(make_file(f"{tenant}-{i}"), f"/{tenant}/Approvals/{i}.pdf")
            expected.add((f"/{tenant}/Approvals/{i}.pdf", False))
        storage.upload(make_file(f"{tenant}-top"), f"/{tenant}/readme.txt")
        expected.add((f"/{tenant}/readme.txt", False))

    listed = list(storage.list_folder(""))
    assert len(listed) == len(expected) == 18  # one entry each, no duplicates
    assert _paths(listed) == expected

    # A folder's listing holds what is inside it, not the folder itself.
    assert _paths(storage.list_folder("/Beta")) == {
        ("/beta/Approvals", True),
        ("/beta/Approvals/0.pdf", False),
        ("/beta/Approvals/1.pdf", False),
        ("/beta/Approvals/2.pdf", False),
        ("/beta/readme.txt", False),
    }
    assert _paths(storage.list_folder("/beta", recursive=False)) == {
        ("/beta/Approvals", True),
        ("/beta/readme.txt", False),
    }
    if isinstance(storage, DropboxStorageResource):
        fake = request.getfixturevalue("dropbox_fake")
        assert fake.page_size < len(expected)
        assert fake.count("files/list_folder/continue") >= len(expected) // fake.page_size


def test_delete_removes_files_and_whole_folders(storage, make_file):
    storage.upload(make_file("1"), "/a/b/one.txt")
    storage.upload(make_file("2"), "/a/two.txt")
    storage.delete("/A/TWO.txt")
    assert storage.get_metadata("/a/two.txt") is None
    storage.delete("/a/b")
    assert storage.get_metadata("/a/b/one.txt") is None
    assert storage.get_metadata("/a/b") is None
    assert _paths(storage.list_folder("")) == {("/a", True)}


# -- absence and bad paths ----------------------------------------------------------------------
def test_missing_things(storage, make_file, tmp_path):
    assert storage.get_metadata("/nothing/here.pdf") is None
    with pytest.raises(StorageNotFound):
        storage.download("/nothing/here.pdf", tmp_path / "x.pdf")
    assert not (tmp_path / "x.pdf").exists()
    with pytest.raises(StorageNotFound):
        storage.delete("/nothing/here.pdf")
    with pytest.raises(StorageNotFound):
        list(storage.list_folder("/nothing"))
    with pytest.raises(StorageNotFound):
        storage.upload(tmp_path / "no-such-local-file.pdf", "/a/b.pdf")

    storage.upload(make_file("f"), "/a/file.txt")
    storage.create_folder("/a/folder")
    with pytest.raises(StorageNotFound):  # a folder is not a file to download
        storage.download("/a/folder", tmp_path / "y")
    with pytest.raises(StorageNotFound):  # a file is not a folder to list
        list(storage.list_folder("/a/file.txt"))


BAD_PATHS = [
    "no-leading-slash.pdf",
    "/a/../b.pdf",
    "/a//b.pdf",
    "/a/./b.pdf",
    "/ a/b.pdf",
    "/a/b.pdf ",
    "/a\\b.pdf",
    "/a/b\x01.pdf",
]


@pytest.mark.parametrize("bad", BAD_PATHS)
def test_bad_paths_are_refused(storage, make_file, tmp_path, bad):
    src = make_file("x")
    with pytest.raises(StorageBadPath):
        storage.upload(src, bad)
    with pytest.raises(StorageBadPath):
        storage.get_metadata(bad)
    with pytest.raises(StorageBadPath):
        storage.download(bad, tmp_path / "out")
    with pytest.raises(StorageBadPath):
        storage.create_folder(bad)
    with pytest.raises(StorageBadPath):
        storage.delete(bad)
    with pytest.raises(StorageBadPath):
        list(storage.list_folder(bad))
    assert storage.get_metadata("") is None  # nothing was written, not even the root


def test_check_connection_describes_the_backend(storage):
    description = storage.check_connection()
    assert storage.describe() in description


# -- edges where a local folder could drift from Dropbox ---------------------------------------
def test_overwrite_with_identical_content_keeps_the_revision(storage, make_file):
    src = make_file(b"same bytes")
    first = storage.upload(src, "/acme/Invoices/inv-1.pdf")
    again = storage.upload(src, "/acme/Invoices/inv-1.pdf", mode="overwrite")
    assert again.rev == first.rev and again.content_hash == first.content_hash


def test_the_root_can_be_neither_written_nor_deleted(storage, make_file):
    storage.create_folder("/acme")
    with pytest.raises(StorageBadPath):
        storage.upload(make_file(b"x"), "/")
    with pytest.raises(StorageBadPath):
        storage.delete("")
    assert storage.get_metadata("/acme") is not None


def test_autorename_steps_past_a_folder_of_the_same_name(storage, make_file):
    storage.create_folder("/acme/Approvals/report.pdf")
    with pytest.raises(StorageConflict):
        storage.upload(make_file(b"pdf"), "/acme/Approvals/report.pdf")
    entry = storage.upload(make_file(b"pdf"), "/acme/Approvals/report.pdf", autorename=True)
    assert entry.path == "/acme/Approvals/report (2).pdf" and not entry.is_folder


def test_case_folding_is_lowercase_only(storage, make_file):
    # Dropbox lowercases names; it does not casefold, so "Straße" and "STRASSE" are two files.
    storage.upload(make_file(b"one"), "/acme/Straße.txt")
    storage.upload(make_file(b"two"), "/acme/STRASSE.txt")
    assert storage.get_metadata("/ACME/straße.txt").content_hash == content_hash_file(make_file(b"one"))
    assert storage.get_metadata("/acme/strasse.txt").content_hash == content_hash_file(make_file(b"two"))
