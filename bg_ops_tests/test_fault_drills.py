"""Fault drills on a real PostgreSQL server (issue 7): the database restarted in the middle of
an email drain and of a backup run, the SMTP server down for a while, Dropbox answering 503
for a minute. After each, every mail and file is delivered exactly once or still queued,
and what failed says why.

The drills have their own PostgreSQL server (restarting the session's shared one would hit
other tests). Time is the test's clock; the only real waits are the SMTP server's delay that
keeps a batch in flight, PostgreSQL's own restart, and the op retry delay (about 10 s) in the
one drill run through Dagster.

What the design allows (bg_ops/defs/email/delivery.py, uploads.py): outcomes are recorded
per batch, so a batch that was sent but whose outcome could not be written stays
``sending``/``uploading`` until its lease ends and is then sent once more — at most one
batch twice, never lost. The email drain claims the next batch and writes the last one's
outcome while a batch is sent: when the database goes away, up to two batches may be sent
and not recorded (sent twice), and the batch claimed ahead waits for its lease unless it can
be given back. For backups the second upload overwrites the same path with the
same bytes.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from bg_ops.db import migrate
from bg_ops.db.app_schema import Company
from bg_ops.db.engine import dispose_engines, get_engine, session_scope
from bg_ops.db.own_schema import backup_manifest as manifest
from bg_ops.db.own_schema import email_queue as q
from bg_ops.db.own_schema import upload_queue as u
from bg_ops.defs.email.delivery import DeliveryPolicy, deliver_due
from bg_ops.defs.email.enqueue import Email, MailSettings, enqueue_many
from bg_ops.defs.files.backup import scan_and_queue
from bg_ops.defs.files.uploads import UploadPolicy, drain_uploads
from bg_ops.defs.tenants.logic import get_tenant
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import SmtpMailResource
from bg_ops.util.content_hash import content_hash_file
from bg_ops_tests.support.postgres_server import serve_postgres

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
MAIL_FROM = "bg_ops <no-reply@bg-ops.example>"
REFUSED = ("connection refused", "could not connect", "server closed the connection", "terminating connection")


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def pg():
    """A server of the drills' own: restarting it must not disturb the other tests."""
    yield from serve_postgres()


@pytest.fixture
def app(pg):
    """An application database with bg_ops's tables and two tenants, on the drill server."""
    name = pg.create_database()
    url = pg.url(name)
    engine = get_engine(url)
    migrate.create_app_schema(engine)
    migrate.upgrade(engine)
    with session_scope(engine) as s:
        s.add_all([Company(id=1, name="Acme Creative", slug="acme"), Company(id=2, name="Nordlicht", slug="nordlicht")])
    yield url, engine
    dispose_engines()
    if not pg.is_running():  # a drill that failed half-way must not take the next one down
        pg.resume()
    pg.drop_database(name)


@pytest.fixture
def settings(tmp_path) -> MailSettings:
    (tmp_path / "files").mkdir()
    return MailSettings(mail_from=MAIL_FROM, files_root=tmp_path / "files")


def smtp_resource(server) -> SmtpMailResource:
    return SmtpMailResource(host=server.host, port=server.port, security="none", timeout_seconds=10, mail_from=MAIL_FROM)


def queue_mail(engine, settings, n: int, *, now: datetime = T0) -> None:
    with session_scope(engine) as s:
        enqueue_many(s, [Email(company_id=1 + i % 2, to=[f"u{i}@tenant{1 + i % 2}.example"], subject=f"m{i}",
                               text="t", idempotency_key=f"drill-{i}") for i in range(n)],
                     now=now - timedelta(minutes=1), settings=settings)


def email_rows(engine):
    with engine.connect() as conn:
        return conn.execute(sa.select(q.c.id, q.c.company_id, q.c.status, q.c.message_id, q.c.attempts,
                                      q.c.last_error, q.c.next_attempt_at).order_by(q.c.id)).all()


def email_statuses(engine) -> dict[str, int]:
    return dict(Counter(r.status for r in email_rows(engine)))


def received(server) -> Counter:
    return Counter(m.message["Message-ID"] for m in server.messages)


def is_db_down(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sa.exc.OperationalError) and any(word in text for word in REFUSED)


def finish_after_outage(engine, mail, settings, smtp_server, n: int, batch: int) -> set[str]:
    """After a drain stopped by a database outage: every row is sent, claimed or pending, the
    claimed ones at most three batches (up to two sent but not recorded — the one on the wire
    and the one whose outcome was being written — and one claimed ahead, never sent). A drain
    before the lease ends sends the pending ones once; one after it, the claimed ones. Nothing
    is lost, and only mail sent but not recorded arrives twice. Returns those Message-IDs."""
    rows = email_rows(engine)
    statuses = Counter(r.status for r in rows)
    assert set(statuses) <= {"sent", "sending", "pending"} and statuses["sending"] <= 3 * batch, statuses
    delivered = set(received(smtp_server))
    sent = {r.message_id for r in rows if r.status == "sent"}
    held = {r.message_id for r in rows if r.status == "sending"}
    assert sent <= delivered <= sent | held and len(delivered - sent) <= 2 * batch
    policy = DeliveryPolicy(batch_size=batch, lease_seconds=300)
    early = deliver_due(engine, mail, clock=Clock(T0 + timedelta(seconds=60)), settings=settings, policy=policy)
    assert early.sent == statuses["pending"] and set(received(smtp_server).values()) == {1}
    late = deliver_due(engine, mail, clock=Clock(T0 + timedelta(seconds=301)), settings=settings, policy=policy)
    assert late.sent == len(held)
    counts = received(smtp_server)
    assert len(counts) == n and max(counts.values()) <= 2  # nothing lost, nothing more than twice
    twice = {mid for mid, c in counts.items() if c == 2}
    assert twice == delivered - sent
    assert email_statuses(engine) == {"sent": n}
    return twice


# -- PostgreSQL restarted in the middle of an email drain --------------------------------------


def test_postgres_restart_between_batches_recovers_or_fails_clearly_and_loses_nothing(app, pg, settings, smtp_server):
    url, engine = app
    queue_mail(engine, settings, 300)
    mail = smtp_resource(smtp_server)
    restarts = []

    def restart_after_third(batch):
        if not restarts and len(smtp_server.messages) >= 60:
            restarts.append(len(smtp_server.messages))
            pg.restart()  # every open database connection is now dead

    policy = DeliveryPolicy(batch_size=20)
    try:
        report = deliver_due(engine, mail, clock=Clock(T0), settings=settings, policy=policy,
                             rng=random.Random(1), on_batch=restart_after_third)
    except sa.exc.OperationalError as exc:
        # The drain that met the restart stops with the reason; the next drains do the rest.
        assert is_db_down(exc), exc
        finish_after_outage(engine, mail, settings, smtp_server, 300, 20)
        assert restarts == [60]
        return
    # Or it reconnected and carried on.
    assert report.sent == 300
    assert restarts == [60] and (report.retried, report.failed, report.stopped_because) == (0, 0, "nothing due")
    counts = received(smtp_server)
    assert len(counts) == 300 and set(counts.values()) == {1}
    rows = email_rows(engine)
    assert {r.status for r in rows} == {"sent"} and set(counts) == {r.message_id for r in rows}
    assert Counter(r.company_id for r in rows) == {1: 150, 2: 150}


def test_postgres_down_between_batches_fails_the_drain_clearly_and_a_later_drain_finishes(app, pg, settings, smtp_server):
    url, engine = app
    queue_mail(engine, settings, 300)
    mail = smtp_resource(smtp_server)

    def go_down_after_third(batch):
        if len(smtp_server.messages) == 60:
            pg.halt()

    with pytest.raises(sa.exc.OperationalError) as failed:
        deliver_due(engine, mail, clock=Clock(T0), settings=settings, policy=DeliveryPolicy(batch_size=20),
                    on_batch=go_down_after_third)
    assert is_db_down(failed.value), failed.value  # the reason: the database connection went away
    pg.resume()
    # Two batches were recorded before the halt; the third's outcome was being written, the
    # fourth was on the wire or claimed ahead (the pipelined drain).
    assert email_statuses(engine)["sent"] >= 40
    finish_after_outage(engine, mail, settings, smtp_server, 300, 20)


@pytest.mark.slow
def test_postgres_down_while_a_batch_is_out_sends_at_most_two_batches_twice(app, pg, settings, smtp_server):
    url, engine = app
    queue_mail(engine, settings, 200)
    mail = smtp_resource(smtp_server)
    # Batch 1 (50 mails) goes normally; in batch 2 the relay holds the 70th mail for 3 s: the
    # database goes down while that batch is on the wire.
    smtp_server.delay_next(69, 0)
    smtp_server.delay_next(1, 3.0)

    def take_database_down():
        if smtp_server.wait_until(lambda s: len(s.messages) >= 69, timeout=30):
            pg.halt()

    saboteur = threading.Thread(target=take_database_down)
    saboteur.start()
    try:
        with pytest.raises(sa.exc.OperationalError) as failed:
            deliver_due(engine, mail, clock=Clock(T0), settings=settings,
                        policy=DeliveryPolicy(batch_size=50, lease_seconds=300))
    finally:
        saboteur.join(timeout=60)
    assert is_db_down(failed.value), failed.value
    pg.resume()

    # Batch 2 reached the server (its first 19 mails at least) but its outcome was never
    # written; batch 3, claimed ahead, went out while batch 2's outcome was failing to be
    # written. Those arrive twice after the lease, nothing else does, nothing is lost.
    assert email_statuses(engine)["sent"] == 50
    twice = finish_after_outage(engine, mail, settings, smtp_server, 200, 50)
    assert 19 <= len(twice) <= 100


@pytest.mark.slow
def test_a_delivery_run_that_meets_postgres_down_says_why_and_its_op_retry_delivers(app, pg, settings, smtp_server):
    """The op's retry policy (bg_ops/defs/retries.py) is what carries a run over a database
    restart: the first attempt fails naming the cause, the retry after the restart delivers."""
    from bg_ops.defs.email.defs import send_due_emails_job

    url, engine = app
    queue_mail(engine, settings, 30, now=datetime.now(UTC))
    resources = {"database": DatabaseResource(url=url), "mail": smtp_resource(smtp_server),
                 "files": FilesResource(root=str(settings.files_root))}
    run_id = str(uuid.uuid4())
    with dg.instance_for_test() as instance:

        def back_once_the_step_waits_for_its_retry(entry) -> None:
            # Called by the instance as it records each event of the run, in the run's own thread:
            # the database comes back the moment the failed step is set to retry.
            event = entry.dagster_event
            if event is not None and event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY and not pg.is_running():
                pg.resume()

        instance.add_event_listener(run_id, back_once_the_step_waits_for_its_retry)
        pg.halt()
        try:
            result = send_due_emails_job.execute_in_process(instance=instance, resources=resources, run_id=run_id,
                                                            raise_on_error=False)
        finally:
            if not pg.is_running():
                pg.resume()
        assert result.success
        retries = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        why = retries[0].dagster_event.event_specific_data.error
        text = "\n".join(f"{e.cls_name}: {e.message}" for e in _chain(why))
        assert "OperationalError" in text and f"port {pg.port}" in text, text
        assert any(word in text.lower() for word in REFUSED), text
    counts = received(smtp_server)
    assert len(counts) == 30 and set(counts.values()) == {1}
    assert email_statuses(engine) == {"sent": 30}


def _chain(error):
    while error is not None:
        yield error
        error = error.cause


# -- the SMTP server down for a while -----------------------------------------------------------


def test_smtp_server_down_then_back_backs_off_on_the_rows_then_delivers_each_mail_once(app, settings, smtp_server):
    url, engine = app
    queue_mail(engine, settings, 40)
    down = smtp_resource(smtp_server)
    smtp_server.stop()
    clock = Clock(T0)
    policy = DeliveryPolicy(batch_size=20, backoff_base_seconds=60, max_attempts=5)

    first = deliver_due(engine, down, clock=clock, settings=settings, policy=policy, rng=random.Random(7))
    assert (first.sent, first.retried, first.failed) == (0, 40, 0)
    rows = email_rows(engine)
    assert {r.status for r in rows} == {"pending"} and {r.attempts for r in rows} == {1}
    assert all("connect" in r.last_error and "refused" in r.last_error.lower() for r in rows), rows[0].last_error
    assert all(T0 + timedelta(seconds=30) <= r.next_attempt_at <= T0 + timedelta(seconds=60) for r in rows)

    # Nothing is due before its backoff ends.
    clock.advance(29)
    assert deliver_due(engine, down, clock=clock, settings=settings, policy=policy).claimed == 0

    # Still down on the next try: the backoff doubles.
    clock.now = max(r.next_attempt_at for r in rows) + timedelta(seconds=1)
    second = deliver_due(engine, down, clock=clock, settings=settings, policy=policy, rng=random.Random(8))
    assert second.retried == 40
    rows = email_rows(engine)
    assert {r.attempts for r in rows} == {2}
    assert all(clock.now + timedelta(seconds=60) <= r.next_attempt_at <= clock.now + timedelta(seconds=120) for r in rows)

    smtp_server.start()  # back (the fake takes a fresh port: the resource follows it)
    back = smtp_resource(smtp_server)
    clock.now = max(r.next_attempt_at for r in rows) + timedelta(seconds=1)
    third = deliver_due(engine, back, clock=clock, settings=settings, policy=policy)
    assert (third.sent, third.retried, third.failed) == (40, 0, 0)
    counts = received(smtp_server)
    assert len(counts) == 40 and set(counts.values()) == {1}
    rows = email_rows(engine)
    assert {(r.status, r.attempts, r.last_error) for r in rows} == {("sent", 3, None)}


# -- backups: PostgreSQL restarted mid-run, Dropbox answering 503 --------------------------------


def make_files(root: Path, slug: str, n: int) -> dict[str, Path]:
    out = {}
    for i in range(n):
        path = root / slug / "projects" / f"p{i % 3}" / f"file{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(random.Random(f"{slug}{i}").randbytes(2000 + 37 * i))
        out[f"/bg_ops/{slug}/Project Backups/p{i % 3}/file{i:02d}.bin"] = path
    return out


def upload_rows(engine):
    with engine.connect() as conn:
        return conn.execute(sa.select(u.c.id, u.c.company_id, u.c.source_path, u.c.dest_path, u.c.status,
                                      u.c.attempts, u.c.last_error, u.c.next_attempt_at).order_by(u.c.id)).all()


def upload_statuses(engine) -> dict[str, int]:
    return dict(Counter(r.status for r in upload_rows(engine)))


def uploads_per_path(fake) -> Counter:
    """Successful single-request uploads per cloud path, read from the server's request log."""
    return Counter(r.arg["path"].lower() for r in fake.requests if r.endpoint == "files/upload" and r.status == 200)


def assert_cloud_matches(fake, expected: dict[str, Path]) -> None:
    stored = {path: f for path, f in fake.files.items() if path.startswith("/bg_ops/")}
    assert set(stored) == {p.lower() for p in expected}
    for cloud_path, local in expected.items():
        assert fake.file(cloud_path).content_hash == content_hash_file(local), cloud_path


def backup(engine, files_root: Path, slug: str, now: datetime, **kw):
    with session_scope(engine) as s:
        return scan_and_queue(s, get_tenant(s, slug), files_root, now=now, **kw)


@pytest.mark.slow
def test_postgres_restart_in_the_middle_of_a_backup_scan_queues_nothing_and_the_rerun_queues_all(
        app, pg, settings, dropbox_fake, dropbox_storage):
    from bg_ops.defs.files.uploads_defs import nightly_backup_job

    url, engine = app
    files = make_files(settings.files_root, "acme", 12)
    make_files(settings.files_root, "nordlicht", 3)
    hashed = []

    def hash_then_restart(path: str) -> str:
        hashed.append(path)
        if len(hashed) == 6:
            pg.restart()  # the scan's transaction dies with its connection
        return content_hash_file(path)

    with pytest.raises(sa.exc.OperationalError) as failed:
        backup(engine, settings.files_root, "acme", T0, hash_file=hash_then_restart, chunk=4)
    assert any(word in str(failed.value).lower() for word in REFUSED), failed.value
    # One chunk had been written in the scan's transaction: it went with it. No half manifest.
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(u)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(manifest)).scalar_one() == 0

    # The next nightly run (through Dagster, the database back) queues everything, once.
    resources = {"database": DatabaseResource(url=url), "storage": dropbox_storage,
                 "files": FilesResource(root=str(settings.files_root))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", ["acme", "nordlicht"])
        assert nightly_backup_job.execute_in_process(instance=instance, resources=resources, partition_key="acme").success
    rows = upload_rows(engine)
    assert len(rows) == 12 and {r.company_id for r in rows} == {1}  # nordlicht's files untouched
    assert {r.dest_path.lower() for r in rows} == {p.removeprefix("/bg_ops").lower() for p in files}

    report = drain_uploads(engine, dropbox_storage, clock=Clock(T0), files_root=settings.files_root,
                           policy=UploadPolicy(batch_size=5))
    assert report.uploaded == 12 and upload_statuses(engine) == {"uploaded": 12}
    assert_cloud_matches(dropbox_fake, files)
    assert set(uploads_per_path(dropbox_fake).values()) == {1}


def test_postgres_down_between_and_during_upload_batches_reuploads_at_most_one_batch(
        app, pg, settings, dropbox_fake, make_dropbox_storage):
    url, engine = app
    files = make_files(settings.files_root, "acme", 20)
    backup(engine, settings.files_root, "acme", T0)
    storage = make_dropbox_storage(max_rate_limit_retries=0)
    policy = UploadPolicy(batch_size=5, lease_seconds=900)
    clock = Clock(T0)

    # 1. Down between batches: the drain stops with the reason after two recorded batches.
    def down_after_second(batch):
        if upload_statuses(engine).get("uploaded") == 10:
            pg.halt()

    with pytest.raises(sa.exc.OperationalError) as failed:
        drain_uploads(engine, storage, clock=clock, files_root=settings.files_root, policy=policy,
                      on_batch=down_after_second)
    assert any(word in str(failed.value).lower() for word in REFUSED), failed.value
    pg.resume()
    assert upload_statuses(engine) == {"uploaded": 10, "queued": 10}

    # 2. Down while a batch is out: the first upload of the next batch meets a 503, and while
    # the resource waits to retry it the database goes away; the batch uploads, its outcome
    # cannot be written.
    dropbox_fake.fail_next(1, status=503, endpoint="files/upload")

    def sleep_and_go_down(seconds: float) -> None:
        clock.advance(seconds)
        pg.halt()

    storage.set_sleep(sleep_and_go_down)
    with pytest.raises(sa.exc.OperationalError) as failed:
        drain_uploads(engine, storage, clock=clock, files_root=settings.files_root, policy=policy)
    assert any(word in str(failed.value).lower() for word in REFUSED), failed.value
    pg.resume()
    storage.set_sleep(clock.advance)
    rows = upload_rows(engine)
    assert Counter(r.status for r in rows) == {"uploaded": 10, "uploading": 5, "queued": 5}
    in_flight = {r.dest_path.lower() for r in rows if r.status == "uploading"}

    # Before the lease ends the in-flight rows wait; after it they are uploaded again (same
    # path, same bytes: still one file each in the cloud).
    drain_uploads(engine, storage, clock=clock, files_root=settings.files_root, policy=policy)
    assert upload_statuses(engine) == {"uploaded": 15, "uploading": 5}
    clock.advance(901)
    drain_uploads(engine, storage, clock=clock, files_root=settings.files_root, policy=policy)
    assert upload_statuses(engine) == {"uploaded": 20}
    assert_cloud_matches(dropbox_fake, files)
    per_path = uploads_per_path(dropbox_fake)
    assert len(per_path) == 20 and max(per_path.values()) == 2
    assert {p.removeprefix("/bg_ops") for p, n in per_path.items() if n == 2} == in_flight


def test_dropbox_answering_503_for_a_minute_then_every_file_lands_once(app, settings, dropbox_fake, make_dropbox_storage):
    url, engine = app
    files = make_files(settings.files_root, "acme", 8)
    backup(engine, settings.files_root, "acme", T0)
    clock = Clock(T0)
    storage = make_dropbox_storage(max_rate_limit_retries=0)
    storage.set_sleep(clock.advance)  # the resource's own retry waits move the drill's clock
    policy = UploadPolicy(batch_size=10, backoff_base_seconds=10, backoff_max_seconds=600)
    rng = random.Random(5)
    outage_end = T0 + timedelta(minutes=1)

    dropbox_fake.fail_next(100_000, status=503)  # every request (sign-in too), until the minute is over
    drains = 0
    while clock.now < outage_end:
        report = drain_uploads(engine, storage, clock=clock, files_root=settings.files_root, policy=policy, rng=rng)
        drains += report.claimed > 0
        assert report.uploaded == 0
        rows = upload_rows(engine)
        assert {r.status for r in rows} == {"failed"}
        clock.now = max(clock.now, min(r.next_attempt_at for r in rows))
    assert drains >= 2  # the queue kept trying during the outage, with backoff
    assert not dropbox_fake.files  # nothing half-written
    rows = upload_rows(engine)
    assert all("503" in r.last_error and "after 3 attempts" in r.last_error for r in rows), rows[0].last_error
    assert all(r.attempts >= 2 for r in rows)

    assert dropbox_fake.clear_failures() > 0  # the minute is over (503s were still queued): it answers again
    clock.now = max(r.next_attempt_at for r in rows) + timedelta(seconds=1)
    report = drain_uploads(engine, storage, clock=clock, files_root=settings.files_root, policy=policy, rng=rng)
    assert report.uploaded == 8 and upload_statuses(engine) == {"uploaded": 8}
    assert_cloud_matches(dropbox_fake, files)
    assert set(uploads_per_path(dropbox_fake).values()) == {1}
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(u.c.last_error.is_not(None))).scalar_one() == 0
