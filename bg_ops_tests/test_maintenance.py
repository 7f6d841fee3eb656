"""Weekly cleanup (O4), database backups with rotation and restore test (O5), summary refresh (O6).

Retention runs against real SQLite and PostgreSQL databases filled with plain SQL (INSERT …
SELECT over a generated series, so 200,000 rows of each kind load in seconds); Dagster's
history pruning runs on ``dg.instance_for_test`` with real runs; backups go through the real
storage backends (local folder, and the Dropbox test server) and pg_dump/pg_restore.
"""

from __future__ import annotations

import gzip
import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from bg_ops.db.own_schema import email_queue as q
from bg_ops.db.types import UTCDateTime
from bg_ops.defs.maintenance import dagster_history, db_backup, retention
from bg_ops.defs.maintenance.cron import CronError, parse_cron
from bg_ops.resources.storage import LocalStorageResource

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=100)  # past the 90-day retention
RECENT = NOW - timedelta(days=10)
STALE = NOW - timedelta(days=2)  # a lease that ended two days ago: past the 24 hours
ANCIENT = NOW - timedelta(days=500)  # past the reminder log's 400 days
FOLDER = "/_system/db_backups"


# -- filling a database fast ---------------------------------------------------------------------


def _fill(conn: sa.Connection, table: str, n: int, **columns: str) -> None:
    """Insert ``n`` rows with one INSERT … SELECT over a generated series (``n`` is 1..n in the
    expressions; ``:old`` ``:recent`` ``:stale`` ``:ancient`` are timestamps)."""
    if n <= 0:
        return
    sql = (f"WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {int(n)}) "
           f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns.values())} FROM seq")
    stamps = {"old": OLD, "recent": RECENT, "stale": STALE, "ancient": ANCIENT}
    used = [sa.bindparam(k, v, type_=UTCDateTime()) for k, v in stamps.items() if f":{k}" in sql]
    conn.execute(sa.text(sql).bindparams(*used))


def seed_retention_data(engine: sa.Engine, n: int) -> dict[str, int]:
    """Rows of every kind the cleanup decides on; returns how many of each were inserted."""
    pg = engine.dialect.name == "postgresql"
    addrs = "CAST('[\"someone@example.com\"]' AS jsonb)" if pg else "'[\"someone@example.com\"]'"
    empty = "CAST('{}' AS jsonb)" if pg else "'{}'"
    false, true = ("false", "true") if pg else ("0", "1")
    tenth = n // 10
    sizes = {"sent-old": n, "canceled-old": tenth, "failed-old": n, "sent-recent": tenth, "sending-leased": 5,
             "pending-due": 30, "uploaded-old": n, "up-failed-old": tenth, "up-canceled-old": tenth,
             "uploaded-recent": tenth, "notification-old": n, "notification-recent": tenth,
             "rejected-old": n, "rejected-recent": tenth, "valid-old": tenth, "reminder-ancient": tenth,
             "reminder-old": tenth}
    mail = dict(company_id="1 + n % 2", to_addrs=addrs, body_text="'hello'", created_at=":old", updated_at=":old")
    with engine.begin() as conn:
        _fill(conn, "email_queue", sizes["sent-old"], **mail, subject="'sent-old'", status="'sent'", sent_at=":old")
        _fill(conn, "email_queue", sizes["canceled-old"], **mail, subject="'canceled-old'", status="'canceled'",
              canceled_at=":old")
        _fill(conn, "email_queue", sizes["failed-old"], **mail, subject="'failed-old'", status="'failed'",
              failed_at=":old", locked_until=":stale", locked_by="'dead-worker'")
        _fill(conn, "email_queue", sizes["sent-recent"], **mail, subject="'sent-recent'", status="'sent'",
              sent_at=":recent")
        _fill(conn, "email_queue", sizes["sending-leased"], **mail, subject="'sending-leased'", status="'sending'",
              locked_until=":stale", locked_by="'slow-worker'")
        _fill(conn, "email_queue", sizes["pending-due"], **mail, subject="'pending-due'", status="'pending'")
        upload = dict(company_id="1 + n % 2", source_path="'f/' || n", created_at=":old", updated_at=":old")
        # Two uploads to each cloud path: the later one is the file in the cloud now.
        _fill(conn, "upload_queue", sizes["uploaded-old"], **{**upload, "company_id": "1 + ((n + 1) / 2) % 2"},
              kind="'uploaded-old'", status="'uploaded'",
              dest_path="'/t/old-' || ((n + 1) / 2)", cloud_path="'/t/old-' || ((n + 1) / 2)", uploaded_at=":old",
              size_bytes="10")
        _fill(conn, "upload_queue", sizes["up-failed-old"], **upload, kind="'up-failed-old'",
              status="'failed'", dest_path="'/t/failed-' || n")
        _fill(conn, "upload_queue", sizes["up-canceled-old"], **upload, kind="'up-canceled-old'",
              status="'canceled'", dest_path="'/t/canceled-' || n")
        _fill(conn, "upload_queue", sizes["uploaded-recent"], **upload, kind="'uploaded-recent'",
              status="'uploaded'", dest_path="'/t/recent-' || n", cloud_path="'/t/recent-' || n",
              uploaded_at=":recent", size_bytes="10")
        note = dict(company_id="1 + n % 2", user_id="n", title="'a reminder'")
        _fill(conn, "notifications", sizes["notification-old"], **note, kind="'notification-old'", created_at=":old")
        _fill(conn, "notifications", sizes["notification-recent"], **note, kind="'notification-recent'",
              created_at=":recent")
        pay = dict(payload=empty, processed_at=":old")
        _fill(conn, "payment_events", sizes["rejected-old"], **pay, provider="'rejected-old'",
              event_id="'rejected:old-' || n", received_at=":old", signature_valid=false, error="'rejected: bad'")
        _fill(conn, "payment_events", sizes["rejected-recent"], **pay, provider="'rejected-recent'",
              event_id="'rejected:recent-' || n", received_at=":recent", signature_valid=false)
        _fill(conn, "payment_events", sizes["valid-old"], **pay, provider="'valid-old'", event_id="'evt_' || n",
              received_at=":old", signature_valid=true)
        log = dict(company_id="1", entity_id="n", recipient_id="1", period="'2025-01-01'", run_date="'2025-01-01'")
        _fill(conn, "reminder_log", sizes["reminder-ancient"], **log, rule="'reminder-ancient'", created_at=":ancient")
        _fill(conn, "reminder_log", sizes["reminder-old"], **log, rule="'reminder-old'", created_at=":old")
    return sizes


def census(engine: sa.Engine) -> dict[str, int]:
    """Rows left of each kind (the marker column of each table)."""
    out: dict[str, int] = {}
    with engine.connect() as conn:
        for table, marker in (("email_queue", "subject"), ("upload_queue", "kind"), ("notifications", "kind"),
                              ("payment_events", "provider"), ("reminder_log", "rule")):
            out.update({k: int(v) for k, v in conn.execute(
                sa.text(f"SELECT {marker}, count(*) FROM {table} GROUP BY {marker}"))})
    return out


def expected_after(sizes: dict[str, int]) -> dict[str, int]:
    left = dict(sizes)
    for gone in ("sent-old", "canceled-old", "notification-old", "rejected-old", "reminder-ancient"):
        left[gone] = 0
    left["uploaded-old"] = sizes["uploaded-old"] - sizes["uploaded-old"] // 2  # the latest of each pair stays
    return {k: v for k, v in left.items() if v}


def _side_engine(url: str) -> sa.Engine:
    """A second client that gives up quickly if it has to wait for a lock."""
    if url.startswith("postgresql"):
        return sa.create_engine(url, poolclass=sa.pool.NullPool,
                                connect_args={"options": "-c lock_timeout=2000 -c statement_timeout=20000"})
    return sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"timeout": 2})


# -- retention of bg_ops tables ----------------------------------------------------------------------------


def test_every_bg_ops_table_has_a_retention_rule_or_a_reason_to_keep_it():
    assert retention.unaccounted_tables() == []


def _cleanup_round_trip(db_engine, db_url, n: int, batch: int):
    from bg_ops.defs.email.delivery import DeliveryPolicy, claim_batch

    sizes = seed_retention_data(db_engine, n)
    assert census(db_engine) == {k: v for k, v in sizes.items() if v}
    policy = retention.RetentionPolicy(batch_size=batch)

    dry = retention.run_cleanup(db_engine, now=NOW, policy=policy, dry_run=True)
    assert census(db_engine) == {k: v for k, v in sizes.items() if v}  # a dry run changes nothing

    with db_engine.connect() as conn:
        # Due: the pending mail, and the mail whose sender's lease ran out (reclaimed).
        due_ids = set(conn.execute(sa.select(q.c.id).where(q.c.subject.in_(("pending-due", "sending-leased"))))
                      .scalars())
    claims: list[tuple[int, set[int]]] = []
    side = _side_engine(db_url)

    def claim_between_batches(result, rows):
        # A delivery worker claiming due mail while the cleanup is halfway through the mail.
        if result.rule == "sent or canceled mail" and result.batches == 2:
            claimed = claim_batch(side, now=NOW, worker_id="worker-during-cleanup",
                                  policy=DeliveryPolicy(batch_size=100))
            claims.append((result.rows, {r.id for r in claimed}))

    report = retention.run_cleanup(db_engine, now=NOW, policy=policy, on_batch=claim_between_batches)
    side.dispose()

    assert census(db_engine) == expected_after(sizes)
    rules = {r.rule: r for r in report.results}
    expected_rows = {
        "sent or canceled mail": sizes["sent-old"] + sizes["canceled-old"],
        "stale mail leases": sizes["failed-old"],
        "superseded uploads": sizes["uploaded-old"] // 2,
        "stale upload leases": 0,
        "old in-app notifications": sizes["notification-old"],
        "old reminder log": sizes["reminder-ancient"],
        "rejected payment attempts": sizes["rejected-old"],
    }
    assert {name: r.rows for name, r in rules.items()} == expected_rows
    assert {name: r.rows for name, r in {x.rule: x for x in dry.results}.items()} == expected_rows
    for name, r in rules.items():  # batches of at most `batch` rows, as many as it takes
        assert r.batches == math.ceil(expected_rows[name] / batch), name
        assert r.largest_batch <= batch, name
    # The claim went through between two batches, with the mail cleanup far from done.
    assert len(claims) == 1
    done_when_claimed, claimed = claims[0]
    assert done_when_claimed == 2 * batch < expected_rows["sent or canceled mail"]
    assert claimed == due_ids

    with db_engine.connect() as conn:
        leases = dict(conn.execute(sa.select(q.c.subject, sa.func.count()).where(q.c.locked_by.is_not(None))
                                   .group_by(q.c.subject)).all())
        kept_uploads = conn.execute(sa.text(
            "SELECT count(*), count(DISTINCT cloud_path) FROM upload_queue WHERE kind = 'uploaded-old'")).one()
    # Stale leases on failed mail cleared; mail being sent (here: just claimed) keeps its lease.
    assert leases == {"sending-leased": 5, "pending-due": 30}
    # One row left per cloud path: the later upload of each pair.
    assert kept_uploads[0] == kept_uploads[1] == sizes["uploaded-old"] // 2

    again = retention.run_cleanup(db_engine, now=NOW, policy=policy)
    assert again.deleted == 0 and again.cleared == 0
    return report


def test_cleanup_deletes_exactly_what_is_past_retention_in_bounded_batches(db_engine, db_url):
    _cleanup_round_trip(db_engine, db_url, n=2_000, batch=300)


@pytest.mark.slow
def test_cleanup_of_200000_old_rows_of_each_kind(db_engine, db_url):
    report = _cleanup_round_trip(db_engine, db_url, n=200_000, batch=5_000)
    assert report.deleted == 200_000 + 20_000 + 100_000 + 200_000 + 20_000 + 200_000


def test_failed_mail_is_kept_whatever_its_age_and_goes_once_resolved(db_engine):
    from bg_ops.defs.email import admin

    seed_retention_data(db_engine, 20)
    policy = retention.RetentionPolicy(batch_size=7)
    retention.run_cleanup(db_engine, now=NOW + timedelta(days=3650), policy=policy)
    left = census(db_engine)
    assert left["failed-old"] == 20 and left["up-failed-old"] == 2 and left["up-canceled-old"] == 2
    # An operator cancels the failed mail: resolved, it goes once past the retention.
    with db_engine.begin() as conn:
        ids = conn.execute(sa.select(q.c.id).where(q.c.subject == "failed-old")).scalars().all()
        assert sorted(admin.cancel(conn, now=NOW, ids=ids)) == sorted(ids)
    retention.run_cleanup(db_engine, now=NOW + timedelta(days=89), policy=policy)
    assert census(db_engine)["failed-old"] == 20
    retention.run_cleanup(db_engine, now=NOW + timedelta(days=91), policy=policy)
    assert "failed-old" not in census(db_engine)


def test_retention_ages_come_from_settings(tmp_path):
    from bg_ops.settings import ConfigError, load_settings

    s = load_settings({"BG_OPS_RETENTION_DAYS": "30", "BG_OPS_NOTIFICATION_RETENTION_DAYS": "7",
                       "BG_OPS_TEMP_STATE_RETENTION_HOURS": "6"}, cwd=tmp_path)
    policy = retention.RetentionPolicy.from_settings(s, batch_size=10)
    assert (policy.completed_days, policy.notification_days, policy.temp_state_hours, policy.reminder_log_days) == (
        30, 7, 6, 400)
    with pytest.raises(ConfigError) as err:
        load_settings({"BG_OPS_RETENTION_DAYS": "ninety", "BG_OPS_DB_BACKUP_CRON": "30 25 * * *",
                       "BG_OPS_DB_BACKUP_KEEP_DAILY": "0"}, cwd=tmp_path)
    lines = err.value.problems
    assert len(lines) == 3
    assert lines[0].startswith("BG_OPS_RETENTION_DAYS='ninety' is not valid")
    assert any(line.startswith("BG_OPS_DB_BACKUP_CRON='30 25 * * *' is not a cron expression (hour") for line in lines)
    assert any(line.startswith("BG_OPS_DB_BACKUP_KEEP_DAILY='0' is not valid") for line in lines)


# -- Dagster's own history ------------------------------------------------------------------------------------


@dg.op(config_schema={"fail": bool})
def probe(context) -> None:
    if context.op_config["fail"]:
        raise RuntimeError("probe failed on purpose")


@dg.job
def probe_job():
    probe()


@dg.job
def other_probe_job():
    probe()


def _run(instance, job, fail: bool) -> str:
    result = job.execute_in_process(instance=instance, raise_on_error=False,
                                    run_config={"ops": {"probe": {"config": {"fail": fail}}}})
    assert result.success is not fail
    return result.run_id


def test_dagster_history_pruning_removes_exactly_the_old_runs():
    with dg.instance_for_test() as instance:
        old_ok = _run(instance, probe_job, fail=False)
        old_failed_resolved = _run(instance, probe_job, fail=True)
        old_failed_unresolved = _run(instance, other_probe_job, fail=True)
        recent_ok = _run(instance, probe_job, fail=False)  # resolves the probe_job failure
        recent_failed = _run(instance, probe_job, fail=True)
        created = {r.dagster_run.run_id: r.create_timestamp for r in instance.get_run_records()}
        # "now" 90 days after a moment between the old runs and the recent ones.
        boundary = created[old_failed_unresolved] + (created[recent_ok] - created[old_failed_unresolved]) / 2
        now = boundary + timedelta(days=90)
        assert instance.all_logs(old_ok)

        dry = dagster_history.prune_dagster_history(instance, now=now, retention_days=90, temp_state_hours=24,
                                                    dry_run=True)
        assert sorted(dry.runs_deleted) == sorted([old_ok, old_failed_resolved])
        assert len(instance.get_run_records()) == 5

        report = dagster_history.prune_dagster_history(instance, now=now, retention_days=90, temp_state_hours=24)
        assert sorted(report.runs_deleted) == sorted([old_ok, old_failed_resolved])
        assert report.failed_runs_kept == [old_failed_unresolved]
        left = {r.dagster_run.run_id for r in instance.get_run_records()}
        assert left == {old_failed_unresolved, recent_ok, recent_failed}
        assert instance.all_logs(old_ok) == [] and instance.all_logs(old_failed_resolved) == []
        assert instance.all_logs(recent_ok)  # events of kept runs stay


def test_weekly_cleanup_job_reports_per_table_and_keeps_its_own_run(db_engine, db_url, tmp_path, monkeypatch):
    from bg_ops.defs.maintenance.defs import weekly_cleanup_job
    from bg_ops.resources.database import DatabaseResource

    monkeypatch.chdir(tmp_path)
    # Rows old relative to the real clock the job runs with.
    with db_engine.begin() as conn:
        long_ago = datetime.now(UTC) - timedelta(days=120)
        for i in range(7):
            conn.execute(sa.insert(q).values(company_id=1, to_addrs=["a@example.com"], body_text="x", status="sent",
                                             sent_at=long_ago, subject=f"old {i}"))
        conn.execute(sa.insert(q).values(company_id=1, to_addrs=["a@example.com"], body_text="x", status="failed",
                                         failed_at=long_ago, subject="failed"))
    with dg.instance_for_test() as instance:
        result = weekly_cleanup_job.execute_in_process(
            instance=instance, resources={"database": DatabaseResource(url=db_url)},
            run_config={"ops": {"weekly_cleanup": {"config": {"batch_size": 3}}}},
        )
        assert result.success
        output = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
        meta = {k: v.value for k, v in output.event_specific_data.metadata.items()}
        assert meta["deleted/email_queue"] == 7 and meta["batches"] == 3
        assert meta["tables"]["email_queue"] == {"deleted": 7, "cleared": 0, "batches": 3}
        assert meta["dagster_runs_deleted"] == 0
        assert instance.get_run_by_id(result.run_id) is not None
    with db_engine.connect() as conn:
        assert conn.execute(sa.select(q.c.subject)).scalars().all() == ["failed"]


# -- cron ------------------------------------------------------------------------------------------------------


def test_cron_expressions_name_the_right_minutes():
    nightly = parse_cron("30 2 * * *")
    assert nightly.matches(datetime(2026, 3, 1, 2, 30, tzinfo=UTC))
    assert not nightly.matches(datetime(2026, 3, 1, 2, 31, tzinfo=UTC))
    weekdays = parse_cron("*/15 8-18 * * mon-fri")
    assert weekdays.matches(datetime(2026, 11, 23, 8, 45, tzinfo=UTC))  # a Monday
    assert not weekdays.matches(datetime(2026, 11, 22, 8, 45, tzinfo=UTC))  # a Sunday
    either = parse_cron("0 0 1 * 0")  # the 1st, or any Sunday (cron's rule for two day fields)
    assert either.matches(datetime(2026, 11, 1, tzinfo=UTC)) and either.matches(datetime(2026, 11, 22, tzinfo=UTC))
    assert not either.matches(datetime(2026, 11, 23, tzinfo=UTC))
    assert parse_cron("0 4 * * 7").matches(datetime(2026, 11, 22, 4, 0, tzinfo=UTC))  # 7 is Sunday too
    for bad in ("30 2 * *", "61 * * * *", "* * * * 8", "*/0 * * * *", "a b c d e"):
        with pytest.raises(CronError):
            parse_cron(bad)


def test_db_backup_schedule_follows_the_configured_cron(monkeypatch, tmp_path):
    from bg_ops.defs.maintenance.defs import db_backup_schedule

    monkeypatch.chdir(tmp_path)
    at = datetime(2026, 11, 23, 2, 30, tzinfo=UTC)
    request = db_backup_schedule(dg.build_schedule_context(scheduled_execution_time=at))
    assert isinstance(request, dg.RunRequest) and request.run_key == "db_backup|20261123T0230"
    skip = db_backup_schedule(dg.build_schedule_context(scheduled_execution_time=at + timedelta(minutes=1)))
    assert isinstance(skip, dg.SkipReason) and "30 2 * * *" in skip.skip_message
    monkeypatch.setenv("BG_OPS_DB_BACKUP_CRON", "0 4 * * *")
    assert isinstance(db_backup_schedule(dg.build_schedule_context(scheduled_execution_time=at)), dg.SkipReason)
    later = db_backup_schedule(dg.build_schedule_context(scheduled_execution_time=at.replace(hour=4, minute=0)))
    assert isinstance(later, dg.RunRequest)


def test_tenant_summary_is_refreshed_for_every_tenant_on_an_interval():
    from bg_ops.defs.maintenance.defs import tenant_summary_schedule

    with dg.instance_for_test() as instance:
        at = datetime(2026, 11, 23, 9, 15, tzinfo=UTC)
        empty = tenant_summary_schedule(dg.build_schedule_context(instance=instance, scheduled_execution_time=at))
        assert isinstance(empty, dg.SkipReason)
        instance.add_dynamic_partitions("tenants", ["acme", "globex"])
        requests = tenant_summary_schedule(dg.build_schedule_context(instance=instance, scheduled_execution_time=at))
        assert [(r.partition_key, r.run_key, r.tags["bg_ops/tenant"]) for r in requests] == [
            ("acme", "tenant_summary|acme|20261123T0915", "acme"),
            ("globex", "tenant_summary|globex|20261123T0915", "globex"),
        ]


# -- database backup, restore test, rotation ---------------------------------------------------------------------------


def _seed_app_rows(engine: sa.Engine) -> None:
    from bg_ops.db.app_schema import Company, User

    with engine.begin() as conn:
        conn.execute(sa.insert(Company.__table__), [{"name": f"Co {i}", "slug": f"co{i}", "timezone": "UTC",
                                                     "is_active": True, "settings": {}} for i in range(3)])
        conn.execute(sa.insert(User.__table__), [{"company_id": 1 + i % 3, "email": f"u{i}@example.com",
                                                  "full_name": f"User {i}", "role": "pm", "is_active": True}
                                                 for i in range(25)])
    seed_retention_data(engine, 40)


def test_backup_and_restore_round_trip(db_engine, db_url, tmp_path):
    _seed_app_rows(db_engine)
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    with db_engine.connect() as conn:
        source = db_backup.count_rows(conn)
    assert source["email_queue"] > 100 and source["users"] == 25

    report = db_backup.backup_database(db_engine, storage, folder=FOLDER, now=NOW, keep_daily=7, keep_weekly=4)
    suffix = ".dump" if db_engine.dialect.name == "postgresql" else ".sqlite3.gz"
    assert report.cloud_path == f"{FOLDER}/bg_ops-db-20261123T120000Z{suffix}"
    stored = tmp_path / "cloud" / "_system" / "db_backups" / report.dump.name
    assert stored.is_file() and stored.stat().st_size == report.dump.size
    assert storage.get_metadata(report.cloud_path).content_hash == report.dump.content_hash
    manifest = json.loads((stored.parent / f"{report.dump.name}.json").read_text())
    assert manifest["row_counts"] == source
    if suffix == ".dump":
        assert stored.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    else:
        with gzip.open(stored) as f:
            assert f.read(16) == b"SQLite format 3\x00"

    # Rows added after the backup: the restore is compared with the source as it was dumped.
    with db_engine.begin() as conn:
        conn.execute(sa.insert(q).values(company_id=1, to_addrs=["late@example.com"], body_text="x"))
    restored = db_backup.restore_test(db_engine, storage, folder=FOLDER, now=NOW, workdir=tmp_path)
    assert restored.passed and restored.mismatched == []
    assert {t: c["restored"] for t, c in restored.tables.items()} == source
    assert restored.tables["email_queue"]["source_now"] == source["email_queue"] + 1
    if db_engine.dialect.name == "postgresql":
        with db_engine.connect() as conn:
            left = conn.execute(sa.text("SELECT datname FROM pg_database WHERE datname LIKE '%restore_test%'")).all()
        assert left == []  # the scratch database was dropped


def test_restore_test_fails_on_a_damaged_backup_and_without_one(tmp_path, sqlite_url):
    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine

    engine = get_engine(sqlite_url)
    migrate.create_app_schema(engine)
    migrate.upgrade(engine)
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    with pytest.raises(db_backup.BackupError, match="no sqlite backup in /_system/db_backups: run the database backup"):
        db_backup.restore_test(engine, storage, folder=FOLDER, now=NOW)
    seed_retention_data(engine, 10)
    report = db_backup.backup_database(engine, storage, folder=FOLDER, now=NOW, keep_daily=7, keep_weekly=4)
    # A backup whose manifest disagrees with what the file holds fails the comparison.
    manifest = tmp_path / "cloud" / "_system" / "db_backups" / f"{report.dump.name}.json"
    data = json.loads(manifest.read_text())
    data["row_counts"]["notifications"] += 1
    manifest.write_text(json.dumps(data))
    restored = db_backup.restore_test(engine, storage, folder=FOLDER, now=NOW)
    assert not restored.passed and restored.mismatched == ["notifications"]


def test_backup_through_dropbox_and_restore(dropbox_storage, dropbox_fake, tmp_path, sqlite_url):
    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine

    engine = get_engine(sqlite_url)
    migrate.create_app_schema(engine)
    migrate.upgrade(engine)
    _seed_app_rows(engine)
    report = db_backup.backup_database(engine, dropbox_storage, folder=FOLDER, now=NOW, keep_daily=7, keep_weekly=4)
    entry = dropbox_storage.get_metadata(report.cloud_path)
    assert entry is not None and entry.content_hash == report.dump.content_hash
    restored = db_backup.restore_test(engine, dropbox_storage, folder=FOLDER, now=NOW, workdir=tmp_path)
    assert restored.passed and restored.tables["users"]["restored"] == 25


def test_pg_tools_get_the_password_through_the_environment_only():
    argv, env = db_backup.pg_command("postgresql+psycopg2://bg:s3cr%40t-pw@db.internal:6543/agency?sslmode=require",
                                     "pg_dump", "--format=custom")
    assert env["PGPASSWORD"] == "s3cr@t-pw" and env["PGSSLMODE"] == "require"
    assert not any("s3cr" in a for a in argv)
    assert argv[1:] == ["--no-password", "--host=db.internal", "--port=6543", "--username=bg", "--format=custom",
                        "--dbname=agency"]
    assert Path(argv[0]).name == "pg_dump"


def test_rotation_over_60_days_keeps_7_daily_and_4_weekly(tmp_path, sqlite_url):
    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine

    engine = get_engine(sqlite_url)
    migrate.upgrade(engine)
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    start = datetime(2026, 1, 5, 2, 30, tzinfo=UTC)  # a Monday
    counts = []
    for day in range(60):
        now = start + timedelta(days=day)
        db_backup.backup_database(engine, storage, folder=FOLDER, now=now, keep_daily=7, keep_weekly=4)
        if day == 57:  # a second, manual backup that afternoon: the later one is that day's backup
            db_backup.backup_database(engine, storage, folder=FOLDER, now=now.replace(hour=14), keep_daily=7,
                                      keep_weekly=4)
        counts.append(len(db_backup.list_backups(storage, FOLDER)))
    last = start + timedelta(days=59)
    assert last.date() == date(2026, 3, 5)  # a Thursday
    kept = {b.taken_at for b in db_backup.list_backups(storage, FOLDER)}
    daily = {datetime(2026, 2, 27 + i, 2, 30, tzinfo=UTC) for i in range(2)} | {
        datetime(2026, 3, d, 2, 30, tzinfo=UTC) for d in range(1, 6)}
    daily = (daily - {datetime(2026, 3, 3, 2, 30, tzinfo=UTC)}) | {datetime(2026, 3, 3, 14, 30, tzinfo=UTC)}
    # Weekly: the last backup of each of the 4 latest ISO weeks: this Thursday (also a daily), and
    # Sundays 1 March (also a daily), 22 February and 15 February.
    weekly = {datetime(2026, 3, 5, 2, 30, tzinfo=UTC), datetime(2026, 3, 1, 2, 30, tzinfo=UTC),
              datetime(2026, 2, 22, 2, 30, tzinfo=UTC), datetime(2026, 2, 15, 2, 30, tzinfo=UTC)}
    assert len(daily) == 7 and kept == daily | weekly and len(kept) == 9
    assert max(counts) <= 7 + 4
    # Every kept backup has its manifest; no manifest is left of a deleted one.
    files = sorted(p.name for p in (tmp_path / "cloud" / "_system" / "db_backups").iterdir())
    assert len(files) == 2 * len(kept) and all((f[:-5] in files) for f in files if f.endswith(".json"))


def test_rotation_never_touches_other_files_and_plans_by_day_and_week(tmp_path):
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    storage.upload(notes, f"{FOLDER}/README.txt")
    daily, weekly, doomed = db_backup.plan_rotation(
        [datetime(2026, 3, d, 2, 30, tzinfo=UTC) for d in range(1, 20)], keep_daily=2, keep_weekly=1)
    assert daily == {datetime(2026, 3, 19, 2, 30, tzinfo=UTC), datetime(2026, 3, 18, 2, 30, tzinfo=UTC)}
    assert weekly == {datetime(2026, 3, 19, 2, 30, tzinfo=UTC)}
    assert len(doomed) == 17
    report = db_backup.rotate_backups(storage, folder=FOLDER, keep_daily=1, keep_weekly=0)
    assert report.deleted == [] and storage.get_metadata(f"{FOLDER}/README.txt") is not None


# -- CLI --------------------------------------------------------------------------------------------------------------


def test_cli_cleanup_backup_and_restore_test(db_engine, db_url, tmp_path, monkeypatch, capsys):
    from bg_ops.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BG_OPS_DATABASE_URL", db_url)
    monkeypatch.setenv("BG_OPS_STORAGE_DIR", str(tmp_path / "cloud"))
    with db_engine.begin() as conn:
        for i in range(4):
            conn.execute(sa.insert(q).values(company_id=1, to_addrs=["a@example.com"], body_text="x", status="sent",
                                             sent_at=datetime.now(UTC) - timedelta(days=200), subject=f"old {i}"))

    def run(*args):
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("maintenance", "cleanup", "--dry-run", "--json")
    dry = json.loads(out)
    assert code == 0 and dry["dry_run"] is True and dry["tables"]["email_queue"]["deleted"] == 4
    code, out, _ = run("maintenance", "cleanup", "--batch-size", "3", "--json")
    done = json.loads(out)
    assert code == 0 and done["deleted"] == 4 and done["tables"]["email_queue"]["batches"] == 2
    code, out, _ = run("maintenance", "cleanup")
    assert code == 0 and "deleted 0 row(s)" in out

    code, out, _ = run("db", "backup", "--json")
    backup = json.loads(out)
    assert code == 0 and backup["cloud_path"].startswith(FOLDER + "/bg_ops-db-") and backup["kept"] == [backup["backup"]]
    code, out, _ = run("db", "restore-test", "--json")
    restored = json.loads(out)
    assert code == 0 and restored["passed"] is True and restored["backup"] == backup["backup"]
    code, out, err = run("db", "restore-test")
    assert code == 0 and "every row count equal" in out

    monkeypatch.setenv("BG_OPS_DB_BACKUP_KEEP_DAILY", "3")
    code, out, _ = run("config", "show", "--json")
    shown = json.loads(out)
    assert shown["db_backup"] == {"cron": "30 2 * * *", "keep_daily": 3, "keep_weekly": 4, "folder": FOLDER}
    assert shown["retention"]["days"] == 90


@pytest.mark.postgres
def test_restore_test_without_createdb_says_what_to_grant(pg_url, tmp_path):
    import uuid

    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine

    engine = get_engine(pg_url)
    migrate.upgrade(engine)
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    db_backup.backup_database(engine, storage, folder=FOLDER, now=NOW, keep_daily=7, keep_weekly=4)
    role = f"bg_limited_{uuid.uuid4().hex[:8]}"
    admin = engine.execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-limited'"))
        conn.execute(sa.text(f"GRANT pg_read_all_data TO {role}"))
    limited = sa.create_engine(sa.engine.make_url(pg_url).set(username=role, password="pw-limited"),
                               poolclass=sa.pool.NullPool)
    try:
        with pytest.raises(db_backup.BackupError, match=r"cannot create the scratch database \S+_restore_test_"
                                                        r"20261123120000 .*CREATEDB"):
            db_backup.restore_test(limited, storage, folder=FOLDER, now=NOW, workdir=tmp_path)
    finally:
        limited.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP ROLE {role}"))
