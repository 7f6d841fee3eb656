"""Storage dashboard checks (F7), quota warnings (F8) and the restore drill (F9).

On SQLite and PostgreSQL; the drill runs against the local backend and the real Dropbox SDK
talking to the loopback Dropbox server, with a file changed in the cloud behind our back.
"""

from __future__ import annotations

import itertools

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import Company, User
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import email_queue as q
from bg_ops.db.own_schema import upload_queue as u
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.files.health_defs import (
    restore_drill_job,
    storage_quota,
    storage_quota_result,
    upload_health_result,
    upload_queue_health,
)
from bg_ops.defs.files.restore_drill import restore_drill
from bg_ops.defs.files.uploads import UploadPolicy, drain_uploads, queue_upload
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import OutboxMailResource
from bg_ops.resources.storage import LocalStorageResource

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
MAIL_FROM = "Agency <no-reply@agency.example>"


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def tenants(db_engine):
    with session_scope(db_engine) as s:
        s.add_all([
            Company(id=1, name="Acme Creative", slug="acme", storage_quota_bytes=1000),
            Company(id=2, name="Beta Studio", slug="beta", storage_quota_bytes=1000),
            Company(id=3, name="Gamma", slug="gamma"),  # no quota
        ])
        s.flush()
        s.add_all([
            User(id=1, company_id=1, email="ada@acme.example", full_name="Ada Admin", role="admin"),
            User(id=2, company_id=1, email="bob@acme.example", full_name="Bob Admin", role="admin"),
            User(id=3, company_id=1, email="old@acme.example", full_name="Old Admin", role="admin", is_active=False),
            User(id=4, company_id=1, email="eve@acme.example", full_name="Eve Employee", role="employee"),
            User(id=5, company_id=2, email="bea@beta.example", full_name="Bea Admin", role="admin"),
            User(id=6, company_id=3, email="gus@gamma.example", full_name="Gus Admin", role="admin"),
        ])
    return db_engine


def add_rows(engine, *rows: dict) -> None:
    with engine.begin() as conn:
        for r in rows:  # one by one: rows name different columns; each its own file
            name = f"f{next(_row_names)}"
            base = {"source_path": name, "dest_path": f"/{name}", "created_at": T0, "updated_at": T0}
            conn.execute(sa.insert(u).values(**{**base, **r}))


_row_names = itertools.count()


def checks(result: dg.MaterializeResult) -> dict[str, dg.AssetCheckResult]:
    return {c.check_name: c for c in result.check_results}


def assert_plottable(metadata: dict, text_keys: set[str] = frozenset()) -> None:
    """Every figure is an int or float metadata value (the Dagster UI plots those over time)."""
    for key, value in metadata.items():
        if key in text_keys:
            continue
        normalized = dg.MetadataValue.int(value) if type(value) is int else value
        normalized = dg.MetadataValue.float(value) if type(value) is float else normalized
        assert isinstance(normalized, (dg.IntMetadataValue, dg.FloatMetadataValue)), (key, value)


# -- upload queue dashboard -----------------------------------------------------------------


def test_checks_warn_on_a_stuck_queue_then_pass_once_it_drained(tenants, db_url, tmp_path):
    files = tmp_path / "files"
    (files / "acme").mkdir(parents=True)
    for name in ("a.txt", "b.txt"):
        (files / "acme" / name).write_text(name)
    with session_scope(tenants) as s:
        queue_upload(s, company_id=1, source_path="acme/a.txt", dest_path="/acme/Cores/a.txt", files_root=files, now=T0)
    database = DatabaseResource(url=db_url)

    fresh = checks(upload_health_result(database, T0 + timedelta(minutes=10)))
    assert fresh["upload_queue_not_stuck"].passed

    # A worker died mid-upload: its row is still 'uploading' after the lease.
    add_rows(tenants, {"company_id": 1, "source_path": "acme/b.txt", "dest_path": "/acme/Cores/b.txt",
                       "status": "uploading", "attempts": 1, "locked_until": T0 + timedelta(minutes=15)})
    now = T0 + timedelta(minutes=20)
    result = upload_health_result(database, now)
    stuck = checks(result)["upload_queue_not_stuck"]
    assert not stuck.passed and stuck.severity == dg.AssetCheckSeverity.WARN
    assert "lease" in stuck.description and stuck.metadata["uploading_past_lease"].value == 1
    assert result.metadata["queued"].value == 1 and result.metadata["uploading"].value == 1

    now = T0 + timedelta(minutes=45)  # and the oldest due file has waited 45 minutes
    stuck = checks(upload_health_result(database, now))["upload_queue_not_stuck"]
    assert not stuck.passed and "45 minutes" in stuck.description

    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    report = drain_uploads(tenants, storage, clock=Clock(now), files_root=files)
    assert report.uploaded == 2
    result = upload_health_result(database, now)
    assert all(c.passed for c in result.check_results)
    assert result.metadata["uploaded"].value == 2 and result.metadata["due_now"].value == 0
    assert result.metadata["bytes_uploaded"].value == 10 and result.metadata["bytes_uploaded/acme"].value == 10
    assert_plottable(result.metadata)
    for check in result.check_results:
        assert_plottable(check.metadata)


def test_failure_rate_warns_over_20_percent_of_at_least_10_finished(tenants, db_url):
    database = DatabaseResource(url=db_url)
    now = T0 + timedelta(minutes=30)
    recent = now - timedelta(minutes=10)
    add_rows(tenants, *[{"company_id": 1, "status": "uploaded", "uploaded_at": recent, "updated_at": recent,
                         "size_bytes": 1} for _ in range(6)])
    add_rows(tenants, *[{"company_id": 2, "status": s, "updated_at": recent, "last_error": "boom"}
                        for s in ("failed", "canceled", "canceled")])
    add_rows(tenants, {"company_id": 2, "status": "canceled", "updated_at": now - timedelta(hours=3)})  # too old
    rate = checks(upload_health_result(database, now))["upload_failure_rate"]
    assert rate.passed and rate.metadata["finished_last_hour"].value == 9  # 33% of too few to judge

    add_rows(tenants, *[{"company_id": 1, "status": "uploaded", "uploaded_at": recent, "updated_at": recent}
                        for _ in range(2)])
    result = upload_health_result(database, now)
    rate = checks(result)["upload_failure_rate"]
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.WARN
    assert rate.metadata["failure_rate_last_hour"].value == pytest.approx(3 / 11)
    assert result.metadata["canceled"].value == 3

    add_rows(tenants, *[{"company_id": 1, "status": "uploaded", "uploaded_at": recent, "updated_at": recent}
                        for _ in range(5)])
    assert checks(upload_health_result(database, now))["upload_failure_rate"].passed  # 3 of 16


# -- quota ---------------------------------------------------------------------------------


def quota_mails(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(q).order_by(q.c.id)).all()


def test_quota_at_80_percent_mails_the_tenants_admins_once_a_day(tenants, db_url, tmp_path):
    database = DatabaseResource(url=db_url)
    settings = MailSettings(mail_from=MAIL_FROM, files_root=tmp_path)
    add_rows(tenants,
             {"company_id": 1, "status": "uploaded", "size_bytes": 500, "uploaded_at": T0},
             {"company_id": 1, "status": "uploaded", "size_bytes": 300, "uploaded_at": T0},
             {"company_id": 1, "status": "failed", "size_bytes": 900},  # not stored: not counted
             {"company_id": 2, "status": "uploaded", "size_bytes": 790, "uploaded_at": T0},  # 79%
             {"company_id": 3, "status": "uploaded", "size_bytes": 10**9, "uploaded_at": T0})  # no quota

    first = storage_quota_result(database, settings, T0)
    storage_quota_result(database, settings, T0 + timedelta(minutes=10))  # the next schedule tick
    (mail,) = quota_mails(tenants)
    assert mail.company_id == 1 and sorted(mail.to_addrs) == ["ada@acme.example", "bob@acme.example"]
    assert mail.idempotency_key == "quota-warning:1:2026-11-23:80"
    assert "80%" in mail.subject and "Acme Creative" in mail.subject
    assert "80%" in mail.body_text and "wait" in mail.body_text
    assert first.metadata["tenants_at_80_percent"].value == 1 and first.metadata["warnings_queued"].value == 1
    assert first.metadata["used_bytes/acme"].value == 800 and first.metadata["used_bytes/gamma"].value == 10**9
    assert checks(first)["storage_quota_not_full"].passed

    # The next day: told again, once.
    for minutes in (0, 10):
        storage_quota_result(database, settings, T0 + timedelta(days=1, minutes=minutes))
    assert [m.idempotency_key for m in quota_mails(tenants)] == [
        "quota-warning:1:2026-11-23:80", "quota-warning:1:2026-11-24:80"]

    # Full: new uploads wait, and the admins are told so (once more that day, as 100%).
    add_rows(tenants, {"company_id": 1, "status": "uploaded", "size_bytes": 200, "uploaded_at": T0})
    add_rows(tenants, {"company_id": 1, "status": "queued", "next_attempt_at": T0 + timedelta(hours=3),
                       "last_error": "waiting: the tenant's storage quota is reached (50 bytes needed, 0 left)"})
    result = storage_quota_result(database, settings, T0 + timedelta(days=1, hours=1))
    storage_quota_result(database, settings, T0 + timedelta(days=1, hours=2))
    mails = quota_mails(tenants)
    assert len(mails) == 3 and mails[-1].idempotency_key == "quota-warning:1:2026-11-24:100"
    assert "new uploads are waiting" in mails[-1].subject and "1 file(s) waiting" in mails[-1].body_text
    assert mails[-1].priority == "high"
    full = checks(result)["storage_quota_not_full"]
    assert not full.passed and full.severity == dg.AssetCheckSeverity.WARN and "acme" in full.description
    # Counts are numbers (the UI plots them over time); the slugs are text beside them.
    assert isinstance(full.metadata["tenants_full"], dg.IntMetadataValue) and full.metadata["tenants_full"].value == 1
    assert full.metadata["full"].value == "acme" and full.metadata["tenants_at_80_percent"].value == 0
    assert_plottable(result.metadata, text_keys={"usage"})
    assert {m.company_id for m in mails} == {1}  # beta (79%) and gamma (no quota) untouched


def test_storage_health_assets_materialize_with_their_checks(tenants, db_url, tmp_path):
    add_rows(tenants, {"company_id": 2, "status": "uploaded", "size_bytes": 950, "uploaded_at": T0})
    result = dg.materialize(
        [upload_queue_health, storage_quota],
        resources={
            "database": DatabaseResource(url=db_url),
            "files": FilesResource(root=str(tmp_path)),
            "mail": OutboxMailResource(outbox_dir=str(tmp_path / "outbox"), mail_from=MAIL_FROM),
        },
    )
    assert result.success
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"upload_queue_not_stuck": True, "upload_failure_rate": True,
                           "storage_quota_not_full": True}
    (mail,) = quota_mails(tenants)
    assert mail.company_id == 2 and list(mail.to_addrs) == ["bea@beta.example"]
    assert mail.idempotency_key.startswith("quota-warning:2:") and mail.idempotency_key.endswith(":80")


# -- restore drill ---------------------------------------------------------------------------


@pytest.fixture(params=["local", "dropbox"])
def backend(request, tmp_path):
    if request.param == "local":
        storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))

        def tamper(path: str, data: bytes) -> None:
            (tmp_path / "cloud" / path.lstrip("/")).write_bytes(data)
    else:
        storage = request.getfixturevalue("dropbox_storage")
        fake = request.getfixturevalue("dropbox_fake")

        def tamper(path: str, data: bytes) -> None:
            fake.put_file(f"/bg_ops{path}", data)
    return request.param, storage, tamper


def uploaded_files(engine, files: Path, storage) -> dict[str, int]:
    """Two tenants' files queued and uploaded; a file overwritten by a newer backup too."""
    paths = {}
    with session_scope(engine) as s:
        for slug, cid in (("acme", 1), ("beta", 2)):
            for i in range(3):
                rel = f"{slug}/f{i}.txt"
                (files / rel).parent.mkdir(parents=True, exist_ok=True)
                (files / rel).write_text(f"{slug} file {i}")
                paths[f"/{slug}/Project Backups/f{i}.txt"] = queue_upload(
                    s, company_id=cid, source_path=rel, dest_path=f"/{slug}/Project Backups/f{i}.txt",
                    files_root=files, now=T0, on_conflict="overwrite")
    assert drain_uploads(engine, storage, clock=Clock(T0), files_root=files).uploaded == 6
    # A newer version replaces f0 in the cloud: only its latest upload is expected there.
    (files / "acme" / "f0.txt").write_text("acme file 0, revised")
    with session_scope(engine) as s:
        queue_upload(s, company_id=1, source_path="acme/f0.txt", dest_path="/acme/Project Backups/f0.txt",
                     files_root=files, now=T0, on_conflict="overwrite")
    later = Clock(T0 + timedelta(minutes=5))
    assert drain_uploads(engine, storage, clock=later, files_root=files, policy=UploadPolicy()).uploaded == 1
    return paths


def test_restore_drill_passes_on_good_uploads_and_names_a_file_changed_behind_our_back(tenants, db_url, tmp_path,
                                                                                     backend):
    name, storage, tamper = backend
    files = tmp_path / "files"
    uploaded_files(tenants, files, storage)
    work = tmp_path / "drill"

    good = restore_drill(tenants, storage, sample_size=50, rng=random.Random(1), workdir=work)
    assert good.passed and good.candidates == 6 and len(good.ok) == 6
    assert {i.company_id for i in good.ok} == {1, 2} and list(work.iterdir()) == []
    small = restore_drill(tenants, storage, sample_size=2, rng=random.Random(7), workdir=work)
    assert small.sampled == 2 and small.passed

    tamper("/beta/Project Backups/f2.txt", b"changed behind our back")
    storage.delete("/acme/Project Backups/f1.txt")
    bad = restore_drill(tenants, storage, sample_size=50, rng=random.Random(1), workdir=work)
    assert not bad.passed and len(bad.ok) == 4
    assert [i.cloud_path for i in bad.mismatch] == ["/beta/Project Backups/f2.txt"]
    assert bad.mismatch[0].company_id == 2 and bad.mismatch[0].actual_hash != bad.mismatch[0].expected_hash
    assert [i.cloud_path for i in bad.missing] == ["/acme/Project Backups/f1.txt"]

    # The weekly job fails, naming both files, with the figures as metadata.
    result = restore_drill_job.execute_in_process(
        resources={"database": DatabaseResource(url=db_url), "storage": storage},
        run_config={"ops": {"run_restore_drill": {"config": {"sample_size": 50}}}},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    data = failure.step_failure_data.user_failure_data
    assert "/beta/Project Backups/f2.txt" in data.description and "/acme/Project Backups/f1.txt" in data.description
    meta = data.metadata
    assert meta["sampled"].value == 6 and meta["ok"].value == 4 and meta["bad"].value == 2


def test_restore_drill_job_succeeds_with_metadata(tenants, db_url, tmp_path):
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    uploaded_files(tenants, tmp_path / "files", storage)
    result = restore_drill_job.execute_in_process(
        resources={"database": DatabaseResource(url=db_url), "storage": storage},
    )
    assert result.success
    (output,) = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    meta = output.event_specific_data.metadata
    assert (meta["sampled"].value, meta["ok"].value, meta["bad"].value) == (6, 6, 0)
