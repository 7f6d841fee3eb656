"""Dropbox-only behaviour of ``DropboxStorageResource``: upload sessions, rate limits, token
refresh, server errors, integrity checks. The real SDK talks to the loopback fake; waits go
through a recording sleep, so nothing here really sleeps."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bg_ops.resources.dropbox_storage import DropboxStorageResource
from bg_ops.resources.storage import (
    StorageAuthError,
    StorageBadPath,
    StorageConflict,
    StorageError,
    StorageRateLimited,
    StorageTransientError,
)
from bg_ops.util.content_hash import content_hash_file

KiB = 1024
MiB = 1024 * KiB


def reference_content_hash(data: bytes) -> str:
    block = 4 * MiB
    digests = b"".join(
        hashlib.sha256(data[i : i + block]).digest() for i in range(0, len(data), block)
    )
    return hashlib.sha256(digests).hexdigest()


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "approval.pdf"
    path.write_bytes(b"%PDF-1.4 approval for PO 4711")
    return path


@pytest.fixture
def big_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = random.Random(42).randbytes(2 * MiB + 512 * KiB)  # 2.5 MiB
    path = tmp_path / "backup.tar"
    path.write_bytes(data)
    return path, data


@pytest.fixture
def session_storage(dropbox_fake, make_dropbox_storage) -> DropboxStorageResource:
    """Uploads above 1 MiB go through sessions in 256 KiB chunks; the server also refuses
    plain uploads above 1 MiB, so a wrong choice fails loudly."""
    dropbox_fake.max_upload_size = 1 * MiB
    return make_dropbox_storage(single_upload_limit=1 * MiB, chunk_size=256 * KiB)


# -- upload sessions ----------------------------------------------------------------------------
def test_large_file_goes_through_an_upload_session(dropbox_fake, session_storage, big_file):
    path, data = big_file
    entry = session_storage.upload(path, "/backups/Nightly.tar")

    assert entry.path == "/backups/Nightly.tar"
    assert entry.size == len(data)
    assert entry.content_hash == content_hash_file(path) == reference_content_hash(data)
    stored = dropbox_fake.file("/bg_ops/backups/nightly.tar")
    assert stored is not None and stored.data == data
    assert stored.display == "/bg_ops/backups/Nightly.tar"

    assert dropbox_fake.count("files/upload") == 0
    assert dropbox_fake.count("files/upload_session/start") == 1
    # 2.5 MiB in 256 KiB chunks: one with start, eight appends, the last with finish.
    assert dropbox_fake.count("files/upload_session/append_v2") == 8
    assert dropbox_fake.count("files/upload_session/finish") == 1
    content_requests = [r for r in dropbox_fake.requests if r.endpoint.startswith("files/upload")]
    assert all(r.size <= 256 * KiB and r.status == 200 for r in content_requests)
    offsets = [
        r.arg["cursor"]["offset"]
        for r in content_requests
        if r.endpoint != "files/upload_session/start"
    ]
    assert offsets == [i * 256 * KiB for i in range(1, 10)]
    assert dropbox_fake.sessions == {}  # finished sessions are gone


def test_the_server_really_refuses_oversized_plain_uploads(
    dropbox_fake, make_dropbox_storage, big_file
):
    dropbox_fake.max_upload_size = 1 * MiB
    naive = make_dropbox_storage()  # default limit: would send 2.5 MiB in one request
    with pytest.raises(StorageError, match="payload_too_large"):
        naive.upload(big_file[0], "/backups/too-big.tar")
    assert dropbox_fake.file("/bg_ops/backups/too-big.tar") is None


def test_session_resumes_at_the_servers_offset_after_a_lost_answer(
    dropbox_fake, session_storage, big_file, dropbox_sleep
):
    path, data = big_file
    # The first append reaches Dropbox, but its answer is lost (503): the retry sends the
    # same offset again, Dropbox says incorrect_offset, and the upload carries on from there.
    dropbox_fake.fail_next(
        1, status=503, endpoint="files/upload_session/append_v2", after_processing=True
    )
    entry = session_storage.upload(path, "/backups/resumed.tar")

    assert entry.content_hash == reference_content_hash(data)
    assert dropbox_fake.file("/bg_ops/backups/resumed.tar").data == data
    statuses = [r.status for r in dropbox_fake.requests if r.endpoint.endswith("append_v2")]
    assert statuses[:2] == [503, 409]  # lost answer, then incorrect_offset
    assert statuses[2:] == [200] * 7  # no chunk was sent twice after resyncing
    assert dropbox_sleep.calls == [1.0]


def test_lost_finish_answer_is_recognised_as_done(dropbox_fake, session_storage, big_file):
    path, data = big_file
    dropbox_fake.fail_next(
        1, status=500, endpoint="files/upload_session/finish", after_processing=True
    )
    entry = session_storage.upload(path, "/backups/finished.tar")
    assert entry.content_hash == reference_content_hash(data)
    assert dropbox_fake.count("files/upload_session/finish") == 2
    assert len([f for f in dropbox_fake.files.values() if f.data == data]) == 1


def test_large_file_already_there_is_not_sent_again(
    dropbox_fake, session_storage, big_file, tmp_path
):
    path, data = big_file
    first = session_storage.upload(path, "/backups/same.tar")
    starts = dropbox_fake.count("files/upload_session/start")
    again = session_storage.upload(path, "/backups/SAME.tar")
    assert again == first
    assert dropbox_fake.count("files/upload_session/start") == starts

    other = tmp_path / "other.tar"
    other.write_bytes(data[::-1])
    with pytest.raises(StorageConflict):
        session_storage.upload(other, "/backups/same.tar")
    assert dropbox_fake.count("files/upload_session/start") == starts
    renamed = session_storage.upload(other, "/backups/same.tar", autorename=True)
    assert renamed.path == "/backups/same (2).tar"
    replaced = session_storage.upload(other, "/backups/same.tar", mode="overwrite")
    assert replaced.content_hash == reference_content_hash(data[::-1])


# -- rate limits --------------------------------------------------------------------------------
@pytest.mark.parametrize("has_token", [True, False], ids=["storm-on-upload", "storm-on-token"])
def test_a_short_429_storm_is_waited_out_as_told(
    dropbox_fake, dropbox_storage, dropbox_sleep, small_file, has_token
):
    if has_token:
        dropbox_storage.check_connection()
    dropbox_fake.fail_next(3, status=429, retry_after=3)
    started = time.monotonic()
    entry = dropbox_storage.upload(small_file, "/acme/approval.pdf")

    assert time.monotonic() - started < 2  # waited through the recording sleep, not for real
    assert entry.content_hash == content_hash_file(small_file)
    assert dropbox_sleep.calls == [3.0, 3.0, 3.0]
    limited = [r.endpoint for r in dropbox_fake.requests if r.status == 429]
    assert limited == (["files/upload"] * 3 if has_token else ["oauth2/token"] * 3)
    assert dropbox_fake.file("/bg_ops/acme/approval.pdf") is not None


def test_a_long_429_storm_gives_up_with_storage_rate_limited(
    dropbox_fake, dropbox_storage, dropbox_sleep, small_file
):
    dropbox_storage.check_connection()  # holds a token now; the storm hits the upload
    dropbox_fake.fail_next(10, status=429, retry_after=2, endpoint="files/upload")
    with pytest.raises(StorageRateLimited) as caught:
        dropbox_storage.upload(small_file, "/acme/approval.pdf")

    assert caught.value.retry_after == 2
    assert caught.value.transient
    assert dropbox_sleep.calls == [2.0] * 5  # max_rate_limit_retries
    assert dropbox_fake.count("files/upload", status=429) == 6
    assert dropbox_fake.file("/bg_ops/acme/approval.pdf") is None


def test_rate_limit_waits_stop_at_the_time_budget(
    dropbox_fake, make_dropbox_storage, dropbox_sleep
):
    storage = make_dropbox_storage(max_rate_limit_wait_seconds=10)
    dropbox_fake.fail_next(5, status=429, retry_after=6)
    with pytest.raises(StorageRateLimited) as caught:
        storage.get_metadata("/x")
    assert dropbox_sleep.calls == [6.0]  # a second 6 s wait would pass the 10 s budget
    assert caught.value.retry_after == 6


def test_without_retry_after_the_waits_grow(dropbox_fake, dropbox_storage, dropbox_sleep):
    dropbox_fake.fail_next(3, status=429, retry_after=None)
    assert dropbox_storage.get_metadata("/x") is None
    assert dropbox_sleep.calls == [1.0, 2.0, 4.0]


# -- server errors ------------------------------------------------------------------------------
def test_server_errors_are_retried(dropbox_fake, dropbox_storage, dropbox_sleep, small_file):
    dropbox_storage.upload(small_file, "/acme/a.pdf")
    dropbox_fake.fail_next(2, status=500, endpoint="files/get_metadata")
    assert dropbox_storage.get_metadata("/acme/a.pdf").content_hash == content_hash_file(small_file)
    assert dropbox_sleep.calls == [1.0, 2.0]


def test_persistent_server_errors_surface_as_transient(
    dropbox_fake, dropbox_storage, dropbox_sleep
):
    dropbox_storage.check_connection()
    dropbox_fake.fail_next(5, status=503, endpoint="files/get_metadata")
    with pytest.raises(StorageTransientError) as caught:
        dropbox_storage.get_metadata("/acme/a.pdf")
    assert caught.value.transient
    assert "503" in str(caught.value)
    assert dropbox_fake.count("files/get_metadata", status=503) == 3
    assert dropbox_sleep.calls == [1.0, 2.0]


# -- authentication -----------------------------------------------------------------------------
def test_access_token_comes_from_the_refresh_token(dropbox_fake, dropbox_storage):
    dropbox_storage.check_connection()
    first = dropbox_fake.requests[0]
    assert first.endpoint == "oauth2/token"
    assert first.arg["grant_type"] == "refresh_token"
    assert first.arg["refresh_token"] == dropbox_fake.refresh_token
    assert first.arg["client_id"] == dropbox_fake.app_key
    assert len(dropbox_fake.issued_tokens) == 1
    api_calls = dropbox_fake.requests[1:]
    assert api_calls and all(r.token == dropbox_fake.issued_tokens[0] for r in api_calls)


def test_an_expired_token_is_refreshed(dropbox_fake, dropbox_storage, small_file):
    dropbox_storage.upload(small_file, "/acme/a.pdf")
    dropbox_fake.expire_tokens()
    assert dropbox_storage.get_metadata("/acme/a.pdf") is not None

    assert len(dropbox_fake.issued_tokens) == 2
    assert dropbox_fake.count("files/get_metadata", status=401) == 1
    last = dropbox_fake.requests[-1]
    assert last.endpoint == "files/get_metadata" and last.status == 200
    assert last.token == dropbox_fake.issued_tokens[1]


def test_a_bad_refresh_token_is_an_auth_error_without_the_secret(
    dropbox_fake, make_dropbox_storage
):
    storage = make_dropbox_storage(refresh_token="sekrit-refresh-0xC0FFEE")
    with pytest.raises(StorageAuthError) as caught:
        storage.check_connection()
    assert "sekrit" not in str(caught.value)
    assert not caught.value.transient


def test_an_access_token_alone_works(dropbox_fake, make_dropbox_storage, small_file):
    dropbox_fake.add_access_token("static-token-123")
    storage = make_dropbox_storage(refresh_token=None, access_token="static-token-123")
    assert storage.upload(small_file, "/a.pdf").path == "/a.pdf"
    assert dropbox_fake.count("oauth2/token") == 0

    revoked = make_dropbox_storage(refresh_token=None, access_token="revoked-token")
    with pytest.raises(StorageAuthError, match="invalid or revoked"):
        revoked.get_metadata("/a.pdf")


def test_no_credentials_is_an_auth_error(make_dropbox_storage):
    with pytest.raises(StorageAuthError, match="credentials"):
        make_dropbox_storage(refresh_token=None).get_metadata("/a.pdf")
    with pytest.raises(StorageAuthError, match="app_key"):
        make_dropbox_storage(app_key=None).get_metadata("/a.pdf")


def test_secrets_stay_out_of_repr_and_logs(dropbox_fake, dropbox_storage, small_file, caplog):
    text = repr(dropbox_storage) + str(dropbox_storage)
    assert dropbox_fake.refresh_token not in text and dropbox_fake.app_secret not in text
    with caplog.at_level(logging.DEBUG):
        dropbox_storage.upload(small_file, "/a.pdf")
        dropbox_fake.expire_tokens()
        dropbox_storage.get_metadata("/a.pdf")
    logged = caplog.text
    secrets = [dropbox_fake.refresh_token, dropbox_fake.app_secret, *dropbox_fake.issued_tokens]
    assert len(secrets) == 4  # two access tokens: the first, and the one after expiry
    for secret in secrets:
        assert secret not in logged


# -- integrity ----------------------------------------------------------------------------------
def test_a_damaged_upload_is_caught_by_the_content_hash(dropbox_fake, dropbox_storage, small_file):
    dropbox_fake.corrupt_next_upload()
    with pytest.raises(StorageTransientError, match="content hash"):
        dropbox_storage.upload(small_file, "/acme/a.pdf")


def test_a_damaged_download_leaves_no_file(dropbox_fake, dropbox_storage, small_file, tmp_path):
    dropbox_storage.upload(small_file, "/acme/a.pdf")
    stored = dropbox_fake.file("/bg_ops/acme/a.pdf")
    stored.data = stored.data[:-1] + b"X"  # bit rot behind the recorded hash
    out = tmp_path / "dl" / "a.pdf"
    with pytest.raises(StorageTransientError):
        dropbox_storage.download("/acme/a.pdf", out)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no half-written temporary file either


# -- paths and roots ----------------------------------------------------------------------------
def test_paths_are_relative_to_root(dropbox_fake, make_dropbox_storage, small_file):
    nested = make_dropbox_storage(root="/Agency/bg_ops")
    entry = nested.upload(small_file, "/acme/a.pdf")
    assert entry.path == "/acme/a.pdf"
    assert dropbox_fake.file("/agency/bg_ops/acme/a.pdf") is not None
    assert nested.describe() == "Dropbox under /Agency/bg_ops"
    assert [e.path for e in nested.list_folder("")] == ["/acme", "/acme/a.pdf"]

    with pytest.raises(StorageBadPath):  # never a file in the root's place
        nested.upload(small_file, "/")
    assert make_dropbox_storage(root="Agency/bg_ops/").get_metadata("/acme/a.pdf") == entry

    at_top = make_dropbox_storage(root="")
    assert at_top.get_metadata("/agency/BG_OPS/acme/A.pdf").path == "/Agency/bg_ops/acme/a.pdf"
    assert {e.path for e in at_top.list_folder("")} >= {"/Agency", "/Agency/bg_ops/acme/a.pdf"}


def test_the_fake_answers_in_dropbox_shapes_the_sdk_decodes(dropbox_fake, dropbox_storage):
    """Guards the fake itself: its errors decode into the SDK's own error types."""
    from dropbox import exceptions, files

    client = dropbox_storage._client()
    with pytest.raises(exceptions.ApiError) as nf:
        client.files_get_metadata("/bg_ops/missing")
    assert nf.value.error.is_path() and nf.value.error.get_path().is_not_found()

    with pytest.raises(exceptions.ApiError) as bad:
        client.files_get_metadata("/bg_ops//double")
    assert bad.value.error.get_path().is_malformed_path()

    client.files_upload(b"one", "/bg_ops/c.txt")
    with pytest.raises(exceptions.ApiError) as conflict:
        client.files_upload(b"two", "/bg_ops/C.TXT", mode=files.WriteMode.add)
    reason = conflict.value.error.get_path().reason
    assert reason.is_conflict() and reason.get_conflict().is_file()

    started = client.files_upload_session_start(b"abc")
    with pytest.raises(exceptions.ApiError) as offset:
        client.files_upload_session_append_v2(
            b"def", files.UploadSessionCursor(session_id=started.session_id, offset=1)
        )
    assert offset.value.error.is_incorrect_offset()
    assert offset.value.error.get_incorrect_offset().correct_offset == 3


def test_importing_the_module_does_not_import_the_sdk():
    code = (
        "import sys, bg_ops.resources.dropbox_storage as m; "
        "m.DropboxStorageResource(root='/x'); "
        "sys.exit(1 if 'dropbox' in sys.modules else 0)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPBOX_")}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_the_fixtures_refuse_to_load_after_the_sdk():
    code = "import dropbox, bg_ops_tests.fakes.dropbox_fixtures"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
        capture_output=True,
    )
    assert done.returncode != 0
    assert b"must be loaded before anything imports `dropbox`" in done.stderr
