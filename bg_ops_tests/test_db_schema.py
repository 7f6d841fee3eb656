"""The data layer on SQLite and PostgreSQL: migrations, the DATA_MODEL contract, UTC timestamps."""

from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from bg_ops.db import migrate
from bg_ops.db.app_schema import AppBase, Company, Task
from bg_ops.db.engine import get_engine, session_scope
from bg_ops.db.own_schema import email_queue, own_metadata, upload_queue


def test_upgrade_is_idempotent_and_runs_on_an_empty_database(db_url):
    engine = get_engine(db_url)
    assert sa.inspect(engine).get_table_names() == []
    before, after = migrate.upgrade(engine)
    assert (before, after) == (None, migrate.head_revision())
    tables = set(sa.inspect(engine).get_table_names())
    assert {"email_queue", "upload_queue", migrate.VERSION_TABLE} <= tables
    assert "alembic_version" not in tables  # never collides with the platform's own Alembic
    assert migrate.upgrade(engine) == (after, after)


def test_migrations_match_the_table_definitions(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = get_engine(db_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={"compare_type": True, "version_table": migrate.VERSION_TABLE,
                  "include_name": lambda name, type_, _p: type_ != "table" or name in own_metadata.tables},
        )
        diff = compare_metadata(ctx, own_metadata)
    assert diff == []


def test_built_messages_and_bodies_are_stored_out_of_line_on_postgresql(db_url):
    """0010: base64 bodies barely compress; PostgreSQL must not spend the enqueue trying. 0013: the
    text and HTML bodies out of line too, and rows toasted down to 512 bytes, so the row each
    delivery rewrites twice stays small (test_email_queue checks the heap it leaves)."""
    engine = get_engine(db_url)
    migrate.upgrade(engine)
    if engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL storage setting")
    with engine.connect() as conn:
        storage = dict(conn.execute(sa.text(
            "SELECT attname, attstorage FROM pg_attribute "
            "WHERE attrelid = 'email_queue'::regclass AND attname IN ('raw_message', 'body_html', 'body_text', "
            "'subject')"
        )).all())
        options = conn.execute(sa.text("SELECT reloptions FROM pg_class WHERE oid = 'email_queue'::regclass")).scalar()
    assert storage == {"raw_message": "e", "body_html": "e", "body_text": "e", "subject": "x"}
    assert options == ["toast_tuple_target=512"]


def test_app_schema_is_created_where_missing(db_url):
    engine = get_engine(db_url)
    created = migrate.create_app_schema(engine)
    assert set(created) == set(AppBase.metadata.tables)
    assert migrate.create_app_schema(engine) == []
    indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("tasks")}
    assert "ix_tasks_company_status_due" in indexes


def test_producers_insert_queue_rows_with_plain_sql_naming_only_contract_columns(db_engine):
    with db_engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO email_queue (company_id, to_addrs, subject, body_text) "
            "VALUES (7, '[\"ana@acme.example\"]', 'Hello', 'Body')"
        ))
        conn.execute(sa.text(
            "INSERT INTO email_queue (company_id, to_addrs, cc_addrs, bcc_addrs, reply_to, subject, "
            "body_html, template, context, attachments, priority, send_after, idempotency_key, kind) "
            "VALUES (7, '[\"b@acme.example\"]', NULL, NULL, NULL, NULL, NULL, 'approval_overdue', "
            "'{\"n\": 1}', '[\"acme/a.pdf\"]', 'high', NULL, 'k-1', NULL)"
        ))
        conn.execute(sa.text(
            "INSERT INTO upload_queue (company_id, source_path, dest_path) "
            "VALUES (7, 'acme/projects/p1/a.pdf', '/acme/Project Backups/p1/a.pdf')"
        ))
        rows = conn.execute(sa.select(email_queue).order_by(email_queue.c.id)).mappings().all()
        up = conn.execute(sa.select(upload_queue)).mappings().one()
    assert [r["status"] for r in rows] == ["pending", "pending"]
    assert [r["priority"] for r in rows] == ["normal", "high"]
    assert rows[0]["kind"] == "internal" and rows[1]["kind"] is None  # NULL reads as internal
    assert rows[0]["attempts"] == 0
    assert rows[0]["to_addrs"] == ["ana@acme.example"] and rows[1]["context"] == {"n": 1}
    created = rows[0]["created_at"]
    assert created.tzinfo is not None and abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    assert (up["status"], up["delete_after_upload"], up["attempts"]) == ("queued", False, 0)


def test_idempotency_key_is_unique_when_set(db_engine):
    insert = sa.text("INSERT INTO email_queue (company_id, to_addrs, subject, body_text, idempotency_key) "
                     "VALUES (1, '[\"a@x.example\"]', 's', 'b', :k)")
    with db_engine.begin() as conn:
        conn.execute(insert, {"k": None})
        conn.execute(insert, {"k": None})  # many rows without a key are fine
        conn.execute(insert, {"k": "same"})
    with pytest.raises(sa.exc.IntegrityError):
        with db_engine.begin() as conn:
            conn.execute(insert, {"k": "same"})


def test_bad_priority_or_status_is_refused_by_the_database(db_engine):
    with pytest.raises(sa.exc.IntegrityError):
        with db_engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO email_queue (company_id, to_addrs, subject, body_text, priority) "
                                 "VALUES (1, '[]', 's', 'b', 'urgent')"))


@pytest.mark.parametrize(
    "text",
    ["2026-11-23T09:00:00Z", "2026-11-23 10:00:00+01:00", "2026-11-23 09:00:00", "2026-11-23T04:00:00-05:00"],
)
def test_timestamps_written_as_text_by_other_programs_read_back_as_aware_utc(sqlite_url, text):
    engine = get_engine(sqlite_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO email_queue (company_id, to_addrs, subject, body_text, send_after) "
                             "VALUES (1, '[]', 's', 'b', :t)"), {"t": text})
        value = conn.execute(sa.select(email_queue.c.send_after)).scalar_one()
    assert value == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def test_timestamp_comparisons_hold_across_text_formats_on_sqlite(sqlite_url):
    engine = get_engine(sqlite_url)
    migrate.upgrade(engine)
    texts = {1: "2026-11-23T08:59:59Z", 2: "2026-11-23 10:00:00+01:00", 3: "2026-11-23 09:00:01",
             4: "2026-11-23T03:30:00-05:00", 5: None}
    with engine.begin() as conn:
        for i, t in texts.items():
            conn.execute(sa.text("INSERT INTO email_queue (id, company_id, to_addrs, subject, body_text, send_after) "
                                 "VALUES (:i, 1, '[]', 's', 'b', :t)"), {"i": i, "t": t})
        cutoff = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
        due = conn.execute(sa.select(email_queue.c.id).where(email_queue.c.send_after <= cutoff)
                           .order_by(email_queue.c.id)).scalars().all()
        unset = conn.execute(sa.select(email_queue.c.id).where(email_queue.c.send_after.is_(None))).scalars().all()
    assert due == [1, 2, 4]
    assert unset == [5]


def test_orm_models_round_trip_dates_timestamps_and_json(db_engine):
    due = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    with session_scope(db_engine) as s:
        s.add(Company(id=1, name="Nordlicht", slug="nordlicht", timezone="Europe/Berlin",
                      settings={"digest": True, "reminders.task_due": False}))
        s.flush()
        s.add(Task(company_id=1, title="Ünïcode ✓", due_at=due))
    with session_scope(db_engine) as s:
        company = s.get(Company, 1)
        task = s.scalars(sa.select(Task)).one()
        assert company.settings == {"digest": True, "reminders.task_due": False}
        assert company.is_active is True
        assert task.due_at == due and task.due_at.tzinfo is not None
        assert (task.status, task.kind, task.title) == ("open", "work", "Ünïcode ✓")


def test_naive_datetimes_are_refused(db_engine):
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        with session_scope(db_engine) as s:
            s.add(Company(id=1, name="A", slug="a"))
            s.flush()
            s.add(Task(company_id=1, title="t", due_at=datetime(2026, 1, 1, 9, 0)))
            s.flush()


def test_dates_written_as_text_read_back_as_dates(sqlite_url):
    engine = get_engine(sqlite_url)
    migrate.create_app_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO companies (id, name, slug) VALUES (1, 'A', 'a')"))
        conn.execute(sa.text("INSERT INTO users (company_id, email, full_name, birth_date) "
                             "VALUES (1, 'a@a.example', 'A', '1990-02-28')"))
    from bg_ops.db.app_schema import User

    with session_scope(engine) as s:
        assert s.scalars(sa.select(User.birth_date)).one() == date(1990, 2, 28)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url):
    engine = get_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_no_email_index_but_the_lease_holds_mail_being_sent(db_url):
    """0012: the failed list and the retention cleanup read partial indexes of their own; a
    delivery (pending -> sending -> sent) writes no status index entry but the lease's and the
    retention's, and the drain's look-ups of ``sending`` rows can only use the lease index."""
    engine = get_engine(db_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            found = dict(conn.execute(sa.text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'email_queue'")).all())
        else:
            found = dict(conn.execute(sa.text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'email_queue' "
                "AND sql IS NOT NULL")).all())
    partial = {name: d.split(" WHERE ", 1)[1] for name, d in found.items() if " WHERE " in d}
    whole = {name for name, d in found.items() if " WHERE " not in d}
    assert whole == {"pk_email_queue", "ix_email_queue_idempotency_key", "ix_email_queue_company_id_status"} - (
        {"pk_email_queue"} if engine.dialect.name == "sqlite" else set())  # SQLite's own key is no index row
    assert set(partial) == {"ix_email_queue_claim_order", "ix_email_queue_lease", "ix_email_queue_failed",
                            "ix_email_queue_retention"}
    assert "'failed'" in partial["ix_email_queue_failed"] and "sending" not in partial["ix_email_queue_failed"]
    assert "'sent'" in partial["ix_email_queue_retention"] and "'canceled'" in partial["ix_email_queue_retention"]
    assert "'sending'" in partial["ix_email_queue_lease"]


def test_the_failed_list_and_the_retention_cleanup_read_their_partial_indexes(db_url):
    """Both databases: the planner uses ix_email_queue_failed for the failed list and
    ix_email_queue_retention for the cleanup (SQLite uses a partial index only when the query
    names its condition: the cleanup's does)."""
    from bg_ops.defs.email import admin

    engine = get_engine(db_url)
    migrate.upgrade(engine)
    cutoff = datetime(2026, 9, 1, tzinfo=UTC)
    cleanup = sa.select(email_queue.c.id).where(admin.past_retention(cutoff)).limit(100)
    failed = (sa.select(email_queue.c.id).where(email_queue.c.status == "failed")
              .order_by(email_queue.c.failed_at.desc(), email_queue.c.id.desc()).limit(50))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")  # an empty table: ask whether an index can serve
            explain = "EXPLAIN "
        else:
            explain = "EXPLAIN QUERY PLAN "

        def plan(stmt) -> str:
            compiled = stmt.compile(engine, compile_kwargs={"literal_binds": True})
            return "\n".join(str(row[-1]) for row in conn.exec_driver_sql(explain + str(compiled)))

        cleanup_plan, failed_plan = plan(cleanup), plan(failed)
    assert "ix_email_queue_retention" in cleanup_plan, cleanup_plan
    assert "ix_email_queue_failed" in failed_plan, failed_plan
