"""Upload queue and nightly backup: every file once, verified by hash, through failures (F1-F4, F8)."""

import os
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import upload_queue as u
from bg_ops.defs.files.backup import scan_and_queue
from bg_ops.defs.files.uploads import UploadPolicy, UploadRefused, drain_uploads, queue_upload
from bg_ops.defs.tenants.logic import get_tenant
from bg_ops.resources.storage import LocalStorageResource
from bg_ops.util.content_hash import content_hash_file

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture(params=["local", "dropbox"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    return request.getfixturevalue("dropbox_storage")


@pytest.fixture
def demo(db_engine, tmp_path):
    from bg_ops.demo.seed import seed_demo

    files = tmp_path / "files"
    files.mkdir()
    seed_demo(db_engine, files, tenants=2, today=date(2026, 11, 23))
    return db_engine, files


def backup(engine, files, slug, now):
    with session_scope(engine) as s:
        return scan_and_queue(s, get_tenant(s, slug), files, now=now)


def statuses(engine, **where):
    with engine.connect() as c:
        stmt = sa.select(u.c.status, sa.func.count()).group_by(u.c.status)
        for k, v in where.items():
            stmt = stmt.where(u.c[k] == v)
        return dict(c.execute(stmt).all())


def cloud_files(storage, slug):
    return {e.path: e.content_hash for e in storage.list_folder(f"/{slug}") if not e.is_folder}


def test_backup_uploads_each_file_once_then_only_what_changed(demo, storage):
    engine, files = demo
    clock = Clock(T0)
    policy = UploadPolicy(batch_size=50)
    first = backup(engine, files, "acme", clock.now)
    assert first.queued == first.scanned > 10 and first.new == first.queued
    report = drain_uploads(engine, storage, clock=clock, files_root=files, policy=policy)
    assert report.uploaded == first.queued and statuses(engine) == {"uploaded": first.queued}
    cloud = cloud_files(storage, "acme")
    assert sorted(report.cloud_paths) == sorted(cloud)  # what the run's metadata links to
    local = {p.relative_to(files / "acme" / "projects").as_posix(): content_hash_file(p)
             for p in (files / "acme" / "projects").rglob("*") if p.is_file()}
    assert {k.removeprefix("/acme/Project Backups/"): v for k, v in cloud.items() if "/Project Backups/" in k} == local
    assert any("/Approval Backups/" in k for k in cloud)
    assert storage.get_metadata("/nordlicht") is None  # the other tenant's files were not touched

    # Nothing changed: nothing queued, nothing read.
    clock.now += timedelta(days=1)
    again = backup(engine, files, "acme", clock.now)
    assert (again.queued, again.hashed, again.unchanged) == (0, 0, first.scanned)

    # Touch three files (one with new bytes), add two: exactly five are queued... minus the two
    # touched without a change of content, which are remembered and not uploaded.
    project_files = sorted(p for p in (files / "acme" / "projects").rglob("*") if p.is_file())
    for p in project_files[:2]:
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))  # touched, same bytes
    project_files[2].write_bytes(project_files[2].read_bytes() + b"\nrevised")
    (project_files[0].parent / "new-1.txt").write_text("new one ✓")
    (project_files[0].parent / "new-2.txt").write_text("new two")
    clock.now += timedelta(days=1)
    third = backup(engine, files, "acme", clock.now)
    assert (third.new, third.changed, third.touched_same_content, third.queued) == (2, 1, 2, 3)
    report = drain_uploads(engine, storage, clock=clock, files_root=files, policy=policy)
    assert report.uploaded == 3
    cloud = cloud_files(storage, "acme")
    for p in (project_files[2], project_files[0].parent / "new-1.txt", project_files[0].parent / "new-2.txt"):
        rel = p.relative_to(files / "acme" / "projects").as_posix()
        assert cloud[f"/acme/Project Backups/{rel}"] == content_hash_file(p)
    assert not any("(2)" in path for path in cloud)  # backups overwrite: no renamed copies


def test_rate_limits_and_server_errors_succeed_on_a_later_cycle(db_engine, tmp_path, dropbox_fake, make_dropbox_storage):
    storage = make_dropbox_storage(max_rate_limit_retries=0)
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    clock = Clock(T0)
    with session_scope(db_engine) as s:
        for i in range(4):
            (files / "acme" / f"f{i}.bin").write_bytes(os.urandom(1000))
            queue_upload(s, company_id=1, source_path=f"acme/f{i}.bin", dest_path=f"/acme/Cores/f{i}.bin",
                         files_root=files, now=T0)
    dropbox_fake.fail_next(1, status=429, retry_after=1, endpoint="files/upload")
    dropbox_fake.fail_next(3, status=500, endpoint="files/upload")  # outlasts the resource's own retries
    policy = UploadPolicy(batch_size=10, backoff_base_seconds=60)
    first = drain_uploads(db_engine, storage, clock=clock, files_root=files, policy=policy, rng=random.Random(3))
    assert (first.uploaded, first.retried) == (2, 2)
    with db_engine.connect() as c:
        failed = c.execute(sa.select(u.c.status, u.c.last_error, u.c.next_attempt_at).where(u.c.status == "failed")).all()
    assert {("RateLimited" in e) or ("Transient" in e) for _, e, _ in failed} == {True}
    assert all(n > T0 for _, _, n in failed)
    clock.now += timedelta(hours=1)
    second = drain_uploads(db_engine, storage, clock=clock, files_root=files, policy=policy)
    assert second.uploaded == 2 and statuses(db_engine) == {"uploaded": 4}
    for i in range(4):
        assert dropbox_fake.file(f"/bg_ops/acme/Cores/f{i}.bin").content_hash == content_hash_file(files / "acme" / f"f{i}.bin")


def test_a_file_that_keeps_failing_is_canceled_at_the_attempt_limit(db_engine, tmp_path, dropbox_fake, make_dropbox_storage):
    storage = make_dropbox_storage(max_rate_limit_retries=0)
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    (files / "acme" / "stubborn.pdf").write_bytes(b"%PDF-1.4")
    with session_scope(db_engine) as s:
        row_id = queue_upload(s, company_id=1, source_path="acme/stubborn.pdf", dest_path="/acme/Cores/stubborn.pdf",
                              files_root=files, now=T0)
    clock = Clock(T0)
    policy = UploadPolicy(max_attempts=3, daily_attempt_cap=2)
    for _ in range(3):
        dropbox_fake.fail_next(1, status=429, retry_after=1, endpoint="files/upload")
        drain_uploads(db_engine, storage, clock=clock, files_root=files, policy=policy)
        with db_engine.connect() as c:
            row = c.execute(sa.select(u).where(u.c.id == row_id)).one()
        clock.now = max(clock.now, row.next_attempt_at or clock.now) + timedelta(seconds=1)
    assert row.status == "canceled" and row.attempts == 3
    assert row.last_error.startswith("gave up after 3 attempts")


def test_daily_retry_cap_moves_the_next_try_to_tomorrow(db_engine, tmp_path, dropbox_fake, make_dropbox_storage):
    storage = make_dropbox_storage(max_rate_limit_retries=0)
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    (files / "acme" / "a.txt").write_text("a")
    with session_scope(db_engine) as s:
        queue_upload(s, company_id=1, source_path="acme/a.txt", dest_path="/acme/Cores/a.txt", files_root=files, now=T0)
    clock = Clock(T0)
    for _ in range(2):
        dropbox_fake.fail_next(1, status=503, endpoint="files/upload")
        dropbox_fake.fail_next(2, status=503, endpoint="files/upload")
        drain_uploads(db_engine, storage, clock=clock, files_root=files, policy=UploadPolicy(daily_attempt_cap=2,
                                                                                              backoff_base_seconds=1))
        clock.now += timedelta(seconds=5)
    with db_engine.connect() as c:
        row = c.execute(sa.select(u)).one()
    assert row.attempts_today == 2 and row.next_attempt_at >= datetime(2026, 11, 24, tzinfo=UTC)


def test_large_file_goes_through_an_upload_session_and_is_verified(db_engine, tmp_path, dropbox_fake, make_dropbox_storage):
    dropbox_fake.single_upload_limit = 1024 * 1024
    storage = make_dropbox_storage(single_upload_limit=1024 * 1024, chunk_size=256 * 1024)
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    big = files / "acme" / "master.mov"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # "200 MiB" with the limit scaled down
    with session_scope(db_engine) as s:
        queue_upload(s, company_id=1, source_path="acme/master.mov", dest_path="/acme/Project Backups/master.mov",
                     files_root=files, now=T0)
    report = drain_uploads(db_engine, storage, clock=Clock(T0), files_root=files)
    assert report.uploaded == 1
    assert dropbox_fake.count("files/upload_session/start") == 1 and dropbox_fake.count("files/upload_session/append_v2") >= 1
    assert dropbox_fake.file("/bg_ops/acme/Project Backups/master.mov").content_hash == content_hash_file(big)
    with db_engine.connect() as c:
        assert c.execute(sa.select(u.c.content_hash)).scalar_one() == content_hash_file(big)


def test_paths_outside_the_files_root_are_refused(db_engine, tmp_path):
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (files / "acme" / "link.txt").symlink_to(secret)
    (files / "acme" / "ok.txt").write_text("ok")
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    with session_scope(db_engine) as s:
        for bad in ("../../etc/passwd", "/etc/passwd", "acme/link.txt"):
            with pytest.raises(UploadRefused, match="outside the files root|leads outside"):
                queue_upload(s, company_id=1, source_path=bad, dest_path="/acme/Cores/x", files_root=files, now=T0)
    assert statuses(db_engine) == {}
    # The platform may insert rows with plain SQL: those are refused at upload, the batch goes on.
    with db_engine.begin() as c:
        for src in ("../../etc/passwd", "acme/link.txt", "acme/vanished.txt", "acme/ok.txt"):
            c.execute(sa.text("INSERT INTO upload_queue (company_id, source_path, dest_path) VALUES (1, :s, :d)"),
                      {"s": src, "d": f"/acme/Cores/{Path(src).name}"})
    report = drain_uploads(db_engine, storage, clock=Clock(T0), files_root=files)
    assert (report.uploaded, report.canceled) == (1, 3)
    with db_engine.connect() as c:
        errors = dict(c.execute(sa.select(u.c.source_path, u.c.last_error).where(u.c.status == "canceled")).all())
    assert "refused" in errors["../../etc/passwd"] and "refused" in errors["acme/link.txt"]
    assert "vanished" in errors["acme/vanished.txt"]
    assert not (tmp_path / "cloud" / "acme" / "Cores" / "link.txt").exists()


def test_delete_after_upload_removes_the_local_file_only_once_verified(db_engine, tmp_path):
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    (files / "acme" / "tmp.pdf").write_bytes(b"%PDF-1.4 temp")
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    with session_scope(db_engine) as s:
        queue_upload(s, company_id=1, source_path="acme/tmp.pdf", dest_path="/acme/Invoices/tmp.pdf",
                     files_root=files, now=T0, delete_after_upload=True)
    drain_uploads(db_engine, storage, clock=Clock(T0), files_root=files)
    assert not (files / "acme" / "tmp.pdf").exists()
    assert storage.get_metadata("/acme/Invoices/tmp.pdf").size == len(b"%PDF-1.4 temp")


def test_conflicts_keep_both_by_default(db_engine, tmp_path):
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    for content in (b"one", b"one", b"two"):
        (files / "acme" / "doc.txt").write_bytes(content)
        with session_scope(db_engine) as s:
            queue_upload(s, company_id=1, source_path="acme/doc.txt", dest_path="/acme/Cores/doc.txt",
                         files_root=files, now=T0)
        drain_uploads(db_engine, storage, clock=Clock(T0), files_root=files)
    assert sorted(e.path for e in storage.list_folder("/acme/Cores")) == ["/acme/Cores/doc (2).txt", "/acme/Cores/doc.txt"]


def test_a_tenant_over_quota_waits_instead_of_failing(db_engine, tmp_path):
    from bg_ops.db.app_schema import Company

    with session_scope(db_engine) as s:
        s.add_all([Company(id=1, name="Acme", slug="acme", storage_quota_bytes=1000),
                   Company(id=2, name="Other", slug="other")])
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    (files / "acme" / "small.bin").write_bytes(b"x" * 600)
    (files / "acme" / "big.bin").write_bytes(b"x" * 600)
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    with session_scope(db_engine) as s:
        for name in ("small.bin", "big.bin"):
            queue_upload(s, company_id=1, source_path=f"acme/{name}", dest_path=f"/acme/Cores/{name}",
                         files_root=files, now=T0)
    report = drain_uploads(db_engine, storage, clock=Clock(T0), files_root=files)
    assert (report.uploaded, report.waiting_for_quota) == (1, 1)
    with db_engine.connect() as c:
        waiting = c.execute(sa.select(u).where(u.c.source_path == "acme/big.bin")).one()
    assert waiting.status == "queued" and waiting.attempts == 0 and "quota" in waiting.last_error


def test_overwritten_backups_count_once_against_the_quota(db_engine, tmp_path):
    from bg_ops.db.app_schema import Company
    from bg_ops.defs.files.uploads import used_bytes

    with session_scope(db_engine) as s:
        s.add(Company(id=1, name="Acme", slug="acme", storage_quota_bytes=2500))
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    for night in range(3):  # three nightly versions of the same 1000-byte file
        (files / "acme" / "plan.bin").write_bytes(bytes([night]) * 1000)
        with session_scope(db_engine) as s:
            queue_upload(s, company_id=1, source_path="acme/plan.bin", dest_path="/acme/Project Backups/plan.bin",
                         files_root=files, now=T0, on_conflict="overwrite")
        assert drain_uploads(db_engine, storage, clock=Clock(T0), files_root=files).uploaded == 1
    with db_engine.connect() as c:
        assert used_bytes(c) == {1: 1000}


def test_a_duplicate_row_from_the_platform_does_not_break_queueing(db_engine, tmp_path):
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    (files / "acme" / "a.txt").write_text("a")
    with db_engine.begin() as c:
        for _ in range(2):
            c.execute(sa.text("INSERT INTO upload_queue (company_id, source_path, dest_path) "
                              "VALUES (1, 'acme/a.txt', '/acme/Cores/a.txt')"))
    with session_scope(db_engine) as s:
        first = queue_upload(s, company_id=1, source_path="acme/a.txt", dest_path="/acme/Cores/a.txt",
                             files_root=files, now=T0)
    with db_engine.connect() as c:
        assert first == c.execute(sa.select(sa.func.min(u.c.id))).scalar_one()


def test_the_local_file_survives_when_recording_the_upload_fails(db_engine, tmp_path, monkeypatch):
    from bg_ops.defs.files import uploads

    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    (files / "acme" / "keep.pdf").write_bytes(b"%PDF-1.4 keep")
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    with session_scope(db_engine) as s:
        queue_upload(s, company_id=1, source_path="acme/keep.pdf", dest_path="/acme/Cores/keep.pdf",
                     files_root=files, now=T0, delete_after_upload=True)

    def failing_write(conn, rows, now):  # the upload went through; recording it does not
        raise sa.exc.OperationalError("UPDATE", {}, Exception("database went away"))

    monkeypatch.setattr(uploads, "_write_outcomes", failing_write)
    with pytest.raises(sa.exc.OperationalError):
        drain_uploads(db_engine, storage, clock=Clock(T0), files_root=files)
    assert storage.get_metadata("/acme/Cores/keep.pdf") is not None
    assert (files / "acme" / "keep.pdf").exists()
    with db_engine.connect() as c:
        assert c.execute(sa.select(u.c.status)).scalar_one() == "uploading"  # retried when its lease ends


def test_one_batch_records_every_kind_of_outcome_and_spares_rows_taken_elsewhere(db_engine, tmp_path):
    """A batch with an upload, a quota wait, a retry, a cancel and a row an operator canceled
    meanwhile: each row gets its own outcome; the operator's row is left as it was."""
    from bg_ops.db.app_schema import Company
    from bg_ops.defs.files.uploads import claim_uploads, record_outcomes, upload_one

    with session_scope(db_engine) as s:
        s.add(Company(id=1, name="Acme", slug="acme", storage_quota_bytes=1500))
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    for name, size in (("ok.bin", 1000), ("big.bin", 1000), ("gone.bin", 10), ("taken.bin", 10)):
        (files / "acme" / name).write_bytes(os.urandom(size))
    ids = {}
    with session_scope(db_engine) as s:
        for name in ("ok.bin", "big.bin", "gone.bin", "taken.bin"):
            ids[name] = queue_upload(s, company_id=1, source_path=f"acme/{name}", dest_path=f"/acme/Cores/{name}",
                                     files_root=files, now=T0)
    (files / "acme" / "gone.bin").unlink()
    policy = UploadPolicy(batch_size=10, max_attempts=5)
    rows = claim_uploads(db_engine, now=T0, worker_id="w1", policy=policy)
    assert [r.id for r in rows] == list(ids.values())
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    quota = {1: 1500}
    outcomes = [upload_one(r, storage, files_root=files, policy=policy, quota_left=quota) for r in rows]
    assert [o.status for o in outcomes] == ["uploaded", "quota", "canceled", "uploaded"]
    outcomes[3].status, outcomes[3].error = "retry", "pretend the cloud failed"  # taken by the operator below
    with db_engine.begin() as c:
        c.execute(sa.update(u).where(u.c.id == ids["taken.bin"]).values(status="canceled", last_error="by hand"))
    later = T0 + timedelta(seconds=30)
    report = record_outcomes(db_engine, outcomes, now=later, policy=policy, rng=random.Random(1))
    assert (report.uploaded, report.waiting_for_quota, report.retried, report.canceled) == (1, 1, 1, 1)
    assert report.bytes_uploaded == 1000 and report.canceled_ids == [ids["gone.bin"]]
    with db_engine.connect() as c:
        got = {r.id: r for r in c.execute(sa.select(u))}
    ok, big, gone, taken = (got[ids[n]] for n in ("ok.bin", "big.bin", "gone.bin", "taken.bin"))
    assert (ok.status, ok.size_bytes, ok.content_hash, ok.cloud_path, ok.uploaded_at, ok.locked_by) == (
        "uploaded", 1000, content_hash_file(files / "acme" / "ok.bin"), "/acme/Cores/ok.bin", later, None)
    assert ok.cloud_rev and ok.last_error is None and ok.next_attempt_at is None and ok.attempts == 1
    assert (big.status, big.attempts, big.attempts_today, big.content_hash, big.uploaded_at) == ("queued", 0, 0, None, None)
    assert "quota" in big.last_error and big.next_attempt_at == later + timedelta(hours=1)
    assert (gone.status, gone.attempts, gone.content_hash, gone.next_attempt_at) == ("canceled", 1, None, None)
    assert "vanished" in gone.last_error and gone.updated_at == later
    assert (taken.status, taken.last_error, taken.locked_by, taken.updated_at) == ("canceled", "by hand", "w1", T0)
    assert storage.get_metadata("/acme/Cores/taken.bin") is not None  # uploaded; the operator's word stands
