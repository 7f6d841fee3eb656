"""The email queue end to end: enqueue, delivery to a real SMTP server, failures, crashes, workers.

Time is passed in (a clock the test moves); workers in other processes use the real clock.
"""

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import Company
from bg_ops.db.engine import get_engine, session_scope
from bg_ops.db.own_schema import email_queue as q
from bg_ops.defs.email import admin
from bg_ops.defs.email.delivery import DeliveryPolicy, deliver_due
from bg_ops.defs.email.enqueue import Email, EnqueueError, MailSettings, enqueue, enqueue_many
from bg_ops.resources.database import DatabaseResource

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
RANK = {"high": 0, "normal": 1, "low": 2}


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def settings(tmp_path) -> MailSettings:
    root = tmp_path / "files"
    (root / "acme").mkdir(parents=True)
    (root / "acme" / "brief.pdf").write_bytes(b"%PDF-1.4 brief")
    return MailSettings(mail_from="Acme via bg_ops <no-reply@bg-ops.example>", files_root=root)


@pytest.fixture
def tenants(db_engine):
    with session_scope(db_engine) as s:
        s.add_all([Company(id=1, name="Acme Creative", slug="acme"), Company(id=2, name="Nordlicht", slug="nordlicht")])
    return db_engine


def rows(engine, *cols):
    with engine.connect() as conn:
        return conn.execute(sa.select(*(cols or (q,))).order_by(q.c.id)).all()


def subjects(server) -> list[str]:
    return [m.message["Subject"] for m in server.messages]


def test_thousand_mails_arrive_once_in_priority_order_never_early(tenants, settings, smtp_server, smtp_mail):
    rng = random.Random(7)
    plan = {}
    emails = []
    for i in range(1000):
        priority = rng.choice(["high", "normal", "low"])
        offset = rng.choice([-30, 0, 0, 10, 90])  # minutes from T0
        plan[f"m{i}"] = (priority, T0 + timedelta(minutes=offset))
        emails.append(Email(company_id=1 + i % 2, to=[f"user{i}@acme.example"], subject=f"m{i}", text="t",
                            html="<p>t</p>", priority=priority, send_after=T0 + timedelta(minutes=offset),
                            idempotency_key=f"k{i}"))
    with session_scope(tenants) as s:
        for chunk in range(0, 1000, 250):
            enqueue_many(s, emails[chunk:chunk + 250], now=T0 - timedelta(hours=1), settings=settings)

    clock = Clock(T0)
    policy = DeliveryPolicy(batch_size=50, time_budget_seconds=3600)
    deliver_due(tenants, smtp_mail, clock=clock, settings=settings, policy=policy)
    first = subjects(smtp_server)
    due_now = {k for k, (_, at) in plan.items() if at <= T0}
    assert set(first) == due_now and len(first) == len(due_now)
    ranks = [RANK[plan[s][0]] for s in first]
    assert ranks == sorted(ranks)  # high, then normal, then low among what was due

    clock.advance(minutes=15)
    deliver_due(tenants, smtp_mail, clock=clock, settings=settings, policy=policy)
    second = subjects(smtp_server)[len(first):]
    assert set(second) == {k for k, (_, at) in plan.items() if T0 < at <= clock.now}

    clock.advance(hours=2)
    deliver_due(tenants, smtp_mail, clock=clock, settings=settings, policy=policy)
    counts = Counter(subjects(smtp_server))
    assert set(counts) == set(plan) and set(counts.values()) == {1}
    for m in smtp_server.messages:
        i = int(m.message["Subject"][1:])
        assert m.rcpt_tos == (f"user{i}@acme.example",)
    assert {r.status for r in rows(tenants, q.c.status)} == {"sent"}


def test_transient_failures_retry_after_backoff_permanent_ones_fail_and_alert_once(
    tenants, settings, smtp_server, smtp_mail
):
    with session_scope(tenants) as s:
        enqueue_many(s, [
            Email(company_id=1, to=["flaky1@acme.example"], subject="flaky-1", text="t", priority="high"),
            Email(company_id=1, to=["flaky2@acme.example"], subject="flaky-2", text="t", priority="high"),
            Email(company_id=1, to=["ok@acme.example"], subject="ok", text="t"),
            Email(company_id=2, to=["bounce@nordlicht.example"], subject="bounce", text="t", priority="low"),
        ], now=T0, settings=settings)
    smtp_server.refuse_recipients({"bounce@nordlicht.example": 550})
    clock = Clock(T0)
    policy = DeliveryPolicy(batch_size=10, backoff_base_seconds=60, max_attempts=5)

    smtp_server.fail_next(2, code=451)  # the two high-priority messages go first
    report = deliver_due(tenants, smtp_mail, clock=clock, settings=settings, policy=policy)
    assert (report.sent, report.retried, report.failed) == (1, 2, 1)
    by_subject = {r.subject: r for r in rows(tenants)}
    assert by_subject["bounce"].status == "failed" and "550" in by_subject["bounce"].last_error
    assert "bounce@" not in by_subject["bounce"].last_error  # no addresses in errors
    flaky_next = by_subject["flaky-1"].next_attempt_at
    assert by_subject["flaky-1"].status == "pending" and "451" in by_subject["flaky-1"].last_error
    assert T0 + timedelta(seconds=30) <= flaky_next <= T0 + timedelta(seconds=60)

    # Not yet due: nothing is tried again before the backoff ends.
    clock.advance(seconds=20)
    assert deliver_due(tenants, smtp_mail, clock=clock, settings=settings, policy=policy).claimed == 0

    clock.advance(minutes=2)
    smtp_server.fail_next(2, code=451)
    deliver_due(tenants, smtp_mail, clock=clock, settings=settings, policy=policy)
    assert {r.attempts for r in rows(tenants) if r.subject.startswith("flaky")} == {2}

    clock.advance(minutes=5)
    deliver_due(tenants, smtp_mail, clock=clock, settings=settings, policy=policy)
    assert Counter(subjects(smtp_server)) == {"ok": 1, "flaky-1": 1, "flaky-2": 1}
    assert {r.subject: (r.status, r.attempts) for r in rows(tenants)} == {
        "flaky-1": ("sent", 3), "flaky-2": ("sent", 3), "ok": ("sent", 1), "bounce": ("failed", 1),
    }

    # One admin alert lists the failed message; a second pass does not alert again.
    with session_scope(tenants) as s:
        alert_id = admin.alert_failed(s, now=clock.now, settings=settings, admin_emails=["ops@bg-ops.example"])
        assert admin.alert_failed(s, now=clock.now, settings=settings, admin_emails=["ops@bg-ops.example"]) is None
    deliver_due(tenants, smtp_mail, clock=clock, settings=settings, policy=policy)
    alerts = [m for m in smtp_server.messages if m.rcpt_tos == ("ops@bg-ops.example",)]
    assert len(alerts) == 1 and alert_id is not None
    body = alerts[0].message.get_body(("plain",)).get_content()
    assert f"#{by_subject['bounce'].id} tenant nordlicht" in body and "550" in body

    # Retrying puts it back; once the server accepts it, it is delivered.
    smtp_server.reset()
    with tenants.begin() as conn:
        assert admin.retry(conn, now=clock.now, all_failed=True) == [by_subject["bounce"].id]
    deliver_due(tenants, smtp_mail, clock=clock, settings=settings, policy=policy)
    assert subjects(smtp_server) == ["bounce"]


def test_transient_failures_give_up_after_max_attempts(tenants, settings, smtp_server, smtp_mail):
    with session_scope(tenants) as s:
        enqueue(s, Email(company_id=1, to=["slow@acme.example"], subject="s", text="t"), now=T0, settings=settings)
    clock = Clock(T0)
    policy = DeliveryPolicy(max_attempts=3, backoff_base_seconds=10)
    for _ in range(3):
        smtp_server.fail_next(1, code=421)
        deliver_due(tenants, smtp_mail, clock=clock, settings=settings, policy=policy)
        clock.advance(hours=1)
    (row,) = rows(tenants)
    assert row.status == "failed" and row.attempts == 3
    assert row.last_error.startswith("gave up after 3 attempts")


@pytest.mark.parametrize(
    "email, complaint",
    [
        (Email(company_id=1, to=["not-an-address"], subject="s", text="t"), "'not-an-address', which is not an email address"),
        (Email(company_id=1, to=["a@acme.example"], template="test_message", context={}), "'note' is undefined"),
        (Email(company_id=1, to=["a@acme.example"], template="no_such_template"), "no_such_template"),
        (Email(company_id=1, to=["a@acme.example"], subject="s", text="t", attachments=["../etc/passwd"]), "outside the files root"),
        (Email(company_id=1, to=["a@acme.example"], subject="s", text="t", attachments=["acme/gone.pdf"]), "does not exist"),
        (Email(company_id=99, to=["a@acme.example"], subject="s", text="t"), "unknown tenant company_id 99"),
        (Email(company_id=1, to=["a@acme.example"], subject="s", text="t", priority="urgent"), "priority 'urgent'"),
        (Email(company_id=1, to=[], subject="s", text="t"), "no recipients"),
        (Email(company_id=1, to=["a@acme.example"], subject="s"), "no body"),
    ],
)
def test_bad_input_is_refused_at_enqueue_and_nothing_is_queued(tenants, settings, email, complaint):
    good = Email(company_id=1, to=["fine@acme.example"], subject="fine", text="t")
    with pytest.raises(EnqueueError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        with session_scope(tenants) as s:
            enqueue_many(s, [good, email], now=T0, settings=settings)
    assert rows(tenants) == []


def test_symlink_leading_out_of_the_files_root_is_refused(tenants, settings, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    (settings.files_root / "acme" / "link.txt").symlink_to(secret)
    with pytest.raises(EnqueueError, match="symlink"):
        with session_scope(tenants) as s:
            enqueue(s, Email(company_id=1, to=["a@acme.example"], subject="s", text="t",
                             attachments=["acme/link.txt"]), now=T0, settings=settings)


def test_idempotency_key_returns_the_existing_message(tenants, settings):
    e = Email(company_id=1, to=["a@acme.example"], subject="s", text="t", idempotency_key="reminder:1:2026-11-23")
    with session_scope(tenants) as s:
        first = enqueue(s, e, now=T0, settings=settings)
        again = enqueue_many(s, [e, e], now=T0, settings=settings)
    assert first.created and [a.id for a in again] == [first.id, first.id] and not any(a.created for a in again)
    assert len(rows(tenants)) == 1


def test_bulk_enqueue_keeps_every_value_and_key_rule(tenants, settings, smtp_server, smtp_mail):
    """A bulk call large enough for COPY on PostgreSQL (the multi-row INSERT on SQLite):
    values that need escaping survive, keys queued before and repeats in the call map to
    the first message, and each new message is sent once with its own bytes."""
    with session_scope(tenants) as s:
        before = enqueue(s, Email(company_id=2, to=["old@nordlicht.example"], subject="old", text="t",
                                  idempotency_key="bulk-7"), now=T0, settings=settings)
    odd = "Tab\there, back\\slash \\N, line\r\nbreak, Überfällig ✓ — “quotes”"
    head = "back\\slash \\N Überfällig ✓"
    emails = [
        Email(company_id=1 + i % 2, to=[f"u{i}@acme.example"], subject=f"bulk {i}: {head}", text=f"{odd}\n#{i}",
              html=f"<p>{odd} #{i}</p>", template=None, context={"n": i, "odd": odd} if i % 4 == 0 else None,
              reply_to=f"pm{i}@acme.example", priority=("high", "normal", "low")[i % 3], idempotency_key=f"bulk-{i}",
              send_after=T0 - timedelta(minutes=i) if i % 5 == 0 else None,
              cc=[f"cc{i}@acme.example"] if i % 6 == 0 else (), bcc=[f"bcc{i}@acme.example"] if i % 6 == 0 else (),
              attachments=["acme/brief.pdf"] if i == 30 else ())
        for i in range(60)
    ]
    emails.append(emails[3])  # the same key twice in one call
    with session_scope(tenants) as s:
        out = enqueue_many(s, emails, now=T0, settings=settings)
    assert out[7].id == before.id and not out[7].created
    assert out[60].id == out[3].id and out[3].created and not out[60].created
    assert sum(o.created for o in out) == 59 and len({o.id for o in out}) == 60
    stored = {r.idempotency_key: r for r in rows(tenants)}
    assert len(stored) == 60 and stored["bulk-7"].subject == "old"
    r12 = stored["bulk-12"]
    assert (r12.company_id, r12.subject, r12.body_text, r12.body_html, r12.priority, r12.reply_to, r12.status) == (
        1, f"bulk 12: {head}", f"{odd}\n#12", f"<p>{odd} #12</p>", "high", "pm12@acme.example", "pending")
    assert r12.to_addrs == ["u12@acme.example"] and r12.send_after is None and r12.attempts == 0
    assert stored["bulk-10"].send_after == T0 - timedelta(minutes=10)
    r30 = stored["bulk-30"]  # every rarely-set column at once
    assert (r30.cc_addrs, r30.bcc_addrs, r30.attachments, r30.context) == (
        ["cc30@acme.example"], ["bcc30@acme.example"], ["acme/brief.pdf"], None)
    assert stored["bulk-12"].context == {"n": 12, "odd": odd} and stored["bulk-13"].cc_addrs is None
    assert r12.created_at == T0 and r12.message_id.startswith("<")
    assert r12.raw_message.startswith(b"From: ") and b"\r\n" in r12.raw_message
    deliver_due(tenants, smtp_mail, clock=Clock(T0), settings=settings, policy=DeliveryPolicy(batch_size=25))
    got = sorted(smtp_server.messages, key=lambda m: int(m.message["Subject"].split(":")[0].split()[-1])
                 if m.message["Subject"].startswith("bulk") else -1)
    assert [sorted(m.rcpt_tos) for m in got] == [["old@nordlicht.example"]] + [
        sorted([f"u{i}@acme.example"] + ([f"cc{i}@acme.example", f"bcc{i}@acme.example"] if i % 6 == 0 else []))
        for i in range(60) if i != 7]
    m12 = next(m for m in got if m.message["Subject"] == f"bulk 12: {head}")
    sent_text = m12.message.get_body(("plain",)).get_content()
    assert sent_text.replace("\r\n", "\n").rstrip("\n") == f"{odd}\n#12".replace("\r\n", "\n")


def test_bulk_copy_falls_back_when_a_key_turns_up_meanwhile(pg_url, settings, monkeypatch):
    """COPY cannot skip a key another transaction queued after the look-up: the COPY is undone
    to its savepoint and the rows go in with INSERT … ON CONFLICT DO NOTHING instead."""
    from bg_ops.db import migrate
    from bg_ops.defs.email import enqueue as enqueue_mod

    engine = get_engine(pg_url)
    migrate.create_app_schema(engine)
    migrate.upgrade(engine)
    with session_scope(engine) as s:
        s.add(Company(id=1, name="Acme Creative", slug="acme"))
    emails = [Email(company_id=1, to=[f"u{i}@acme.example"], subject=f"s{i}", text="t", idempotency_key=f"k{i}")
              for i in range(enqueue_mod.COPY_MIN_ROWS)]
    looked_up = enqueue_mod._queued_ids
    other: list = []
    raced: list = []

    def look_up_then_another_producer_queues_k7(session, keys):
        found = looked_up(session, keys)
        if not raced:  # once: the other producer's own enqueue looks keys up too
            raced.append(True)
            with session_scope(engine) as meanwhile:  # its own transaction, committed now
                other.append(enqueue(meanwhile, emails[7], now=T0, settings=settings))
        return found

    monkeypatch.setattr(enqueue_mod, "_queued_ids", look_up_then_another_producer_queues_k7)
    with session_scope(engine) as s:
        out = enqueue_many(s, emails, now=T0, settings=settings)
        assert s.execute(sa.select(sa.func.count()).select_from(q)).scalar_one() == enqueue_mod.COPY_MIN_ROWS
    assert other[0].created and out[7] == enqueue_mod.Enqueued(id=other[0].id, created=False)
    assert sum(o.created for o in out) == enqueue_mod.COPY_MIN_ROWS - 1
    assert sorted(r.idempotency_key for r in rows(engine)) == sorted(e.idempotency_key for e in emails)


def test_a_bad_message_late_in_a_bulk_copy_queues_nothing(tenants, settings):
    """The rows stream to the server as they are made: a bad message near the end aborts the
    COPY, the error is the message's own, and the transaction goes on with nothing queued."""
    from bg_ops.defs.email import enqueue as enqueue_mod

    n = enqueue_mod.COPY_MIN_ROWS * 40  # more than one chunk of COPY text
    emails = [Email(company_id=1, to=[f"u{i}@acme.example"], subject=f"s{i}", text="t" * 200,
                    idempotency_key=f"late-{i}") for i in range(n)]
    emails[n - 2] = Email(company_id=1, to=["not-an-address"], subject="s", text="t")
    with session_scope(tenants) as s:
        with pytest.raises(EnqueueError, match="'not-an-address', which is not an email address"):
            enqueue_many(s, emails, now=T0, settings=settings)
        assert s.execute(sa.select(sa.func.count()).select_from(q)).scalar_one() == 0
        out = enqueue_many(s, emails[:5], now=T0, settings=settings)  # the transaction is usable
    assert all(o.created for o in out) and len(rows(tenants)) == 5


def test_the_first_bad_message_is_the_error_on_every_path(tenants, settings):
    """A bad message that would be written and a later bad one that would not (its key repeats
    an earlier one): the first in the call is the error, on SQLite as on PostgreSQL's COPY."""
    emails = [Email(company_id=1, to=[f"u{i}@acme.example"], subject=f"s{i}", text="t", idempotency_key=f"o-{i}")
              for i in range(80)]
    emails[2] = Email(company_id=1, to=["first-bad"], subject="s", text="t", idempotency_key="o-2")
    emails[70] = Email(company_id=1, to=["second-bad"], subject="s", text="t", idempotency_key="o-1")
    with session_scope(tenants) as s:
        with pytest.raises(EnqueueError, match="'first-bad'"):
            enqueue_many(s, emails, now=T0, settings=settings)
    assert rows(tenants) == []


def test_messages_are_standard_multipart_with_attachments_and_stable_ids(tenants, settings, smtp_server, smtp_mail):
    e = Email(company_id=1, to=["José Müller <jose@acme.example>"], cc=["cc@acme.example"], bcc=["hidden@acme.example"],
              reply_to="pm@acme.example", template="test_message", context={"note": "Überfällig ✓ <b>bold</b>"},
              attachments=["acme/brief.pdf"], idempotency_key="k-1", kind="customer")
    with session_scope(tenants) as s:
        enqueue(s, e, now=T0, settings=settings)
    deliver_due(tenants, smtp_mail, clock=Clock(T0), settings=settings)
    (m,) = smtp_server.messages
    msg = m.message
    assert set(m.rcpt_tos) == {"jose@acme.example", "cc@acme.example", "hidden@acme.example"}
    assert b"hidden@acme.example" not in m.data
    assert msg["To"] == "José Müller <jose@acme.example>" and msg["Reply-To"] == "pm@acme.example"
    assert msg["Subject"] == "[Acme Creative] Test message: Überfällig ✓ <b>bold</b>"
    assert msg["Date"] is not None and msg["Message-ID"].endswith("@bg-ops.example>")
    assert msg.get_content_type() == "multipart/mixed"
    assert msg.get_body(("plain",)).get_content().count("Überfällig ✓ <b>bold</b>") == 1
    assert "Überfällig ✓ &lt;b&gt;bold&lt;/b&gt;" in msg.get_body(("html",)).get_content()  # autoescaped
    assert [(a.get_filename(), a.get_content()) for a in msg.iter_attachments()] == [("brief.pdf", b"%PDF-1.4 brief")]
    # The Message-ID is derived from the idempotency key: the same key, the same id.
    from bg_ops.defs.email.message import message_id_for

    assert msg["Message-ID"] == message_id_for("k-1", settings.mail_from)


def test_rows_inserted_with_plain_sql_are_built_at_delivery_and_a_bad_one_fails_alone(
    tenants, settings, smtp_server, smtp_mail
):
    with tenants.begin() as conn:
        for to, ctx in [("a@acme.example", '{"note": "one"}'), ("b@acme.example", "{}"), ("c@acme.example", '{"note": "three"}')]:
            conn.execute(sa.text(
                "INSERT INTO email_queue (company_id, to_addrs, template, context, priority) "
                f"VALUES (1, '[\"{to}\"]', 'test_message', '{ctx}', 'normal')"
            ))
        conn.execute(sa.text("INSERT INTO email_queue (company_id, to_addrs, subject, body_text) "
                             "VALUES (2, '[\"not-an-address\"]', 'x', 'y')"))
        conn.execute(sa.text("INSERT INTO email_queue (company_id, to_addrs, subject, body_text, attachments) "
                             "VALUES (2, '[\"d@nordlicht.example\"]', 'x', 'y', '[\"acme/vanished.pdf\"]')"))
    report = deliver_due(tenants, smtp_mail, clock=Clock(datetime.now(UTC)), settings=settings)
    assert (report.sent, report.failed) == (2, 3)
    assert sorted(subjects(smtp_server)) == ["[Acme Creative] Test message: one", "[Acme Creative] Test message: three"]
    errors = {r.to_addrs[0]: r.last_error for r in rows(tenants) if r.status == "failed"}
    assert "'note' is undefined" in errors["b@acme.example"]
    assert "not an email address" in errors["not-an-address"]
    assert "does not exist" in errors["d@nordlicht.example"]


def test_a_row_in_a_shape_no_message_comes_from_fails_alone_with_the_fix(tenants, settings, smtp_server, smtp_mail):
    """to_addrs a JSON number, a context that is a list: each fails for good naming what to fix,
    and the good rows around them are delivered (a poison row never stops the drain)."""
    with tenants.begin() as conn:
        conn.execute(sa.text("INSERT INTO email_queue (company_id, to_addrs, subject, body_text) "
                             "VALUES (1, '[\"a@acme.example\"]', 'first', 'y')"))
        conn.execute(sa.text("INSERT INTO email_queue (company_id, to_addrs, subject, body_text) "
                             "VALUES (1, '5', 'number', 'y')"))
        conn.execute(sa.text("INSERT INTO email_queue (company_id, to_addrs, template, context) "
                             "VALUES (1, '[\"b@acme.example\"]', 'test_message', '[1, 2]')"))
        conn.execute(sa.text("INSERT INTO email_queue (company_id, to_addrs, subject, body_text) "
                             "VALUES (1, '[\"c@acme.example\"]', 'last', 'y')"))
    report = deliver_due(tenants, smtp_mail, clock=Clock(datetime.now(UTC)), settings=settings)
    assert (report.sent, report.failed) == (2, 2)
    assert sorted(subjects(smtp_server)) == ["first", "last"]
    failed = [r for r in rows(tenants) if r.status == "failed"]
    assert len(failed) == 2 and all("malformed row" in r.last_error and "fix to_addrs" in r.last_error
                                    for r in failed)


def test_a_drain_that_stops_early_gives_back_the_batch_it_claimed_ahead(pg_url, settings, smtp_mail, monkeypatch):
    """The pipelined drain claims the next batch while one is sent: when the drain stops on an
    error, that batch goes back to pending at once (attempt not counted), not after its lease."""
    from bg_ops.defs.email import delivery

    engine = _seed(pg_url, settings, 30)
    sends = []
    real_send = delivery.send_batch

    def send_then_fail(rows, *args, **kwargs):
        sends.append([r.id for r in rows])
        if len(sends) == 2:
            raise RuntimeError("the worker stops here")
        return real_send(rows, *args, **kwargs)

    monkeypatch.setattr(delivery, "send_batch", send_then_fail)  # an error no real part makes on cue
    with pytest.raises(RuntimeError, match="the worker stops here"):
        deliver_due(engine, smtp_mail, clock=Clock(datetime.now(UTC)), settings=settings,
                    policy=DeliveryPolicy(batch_size=10))
    with engine.connect() as conn:
        by_status = dict(conn.execute(sa.select(q.c.status, sa.func.count()).group_by(q.c.status)).all())
        third = conn.execute(sa.select(q.c.status, q.c.attempts, q.c.locked_by)
                             .where(q.c.id.notin_(sends[0] + sends[1]))).all()
    # First batch sent, second stuck mid-send until its lease (as a crash would leave it), the
    # third, claimed ahead, back to pending with no attempt counted.
    assert by_status == {"sent": 10, "sending": 10, "pending": 10}
    assert {tuple(r) for r in third} == {("pending", 0, None)}


def test_the_drain_claims_with_one_prepared_plan_and_leaves_the_connection_as_it_found_it(pg_url, settings, smtp_server, smtp_mail):
    """PostgreSQL: the claim and the record of sent mail are prepared statements, the claim run on
    one generic plan for the whole drain (left to choose, PostgreSQL planned it anew every batch);
    a batch's sent mail is recorded in the statement that claims the batch after next, so the
    drain runs one statement a batch; the settings it makes are reset before the connection goes
    back to the pool."""
    engine = _seed(pg_url, settings, 60)
    report = deliver_due(engine, smtp_mail, clock=Clock(datetime.now(UTC)), settings=settings,
                         policy=DeliveryPolicy(batch_size=5))
    assert report.sent == 60 and len(smtp_server.messages) == 60
    with engine.connect() as conn:  # the pool's one connection: the drain's
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one() == "auto"
        assert conn.exec_driver_sql("SHOW bytea_output").scalar_one() == "hex"
        plans = {name.rsplit("_", 1)[0]: (generic, custom) for name, generic, custom in conn.exec_driver_sql(
            "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements")}
    # 13 statements for 12 batches: the first two claims (batch 1, then batch 2 while 1 is sent),
    # ten that record batch n and claim batch n + 2, one that records batch 11 and finds nothing
    # more, and the record of batch 12.
    assert plans["bg_ops_email_claim_first"] == (2, 0)
    assert plans["bg_ops_email_sent_claim_first"] == (11, 0)
    assert plans["bg_ops_email_sent"] == (1, 0)


def test_a_delivered_row_is_rewritten_without_its_bodies_and_every_body_arrives_whole(pg_url, settings, smtp_server,
                                                                                     smtp_mail):
    """PostgreSQL (0013): the bodies live out of line like the built message, so the row a delivery
    rewrites twice (``sending``, then ``sent``: neither update can be HOT) is a few hundred bytes
    instead of ~2 KB; mail queued through the API and rows inserted with plain SQL both arrive whole."""
    engine = _seed(pg_url, settings, 0)
    body = {i: (f"Hello {i}, Ünïcode — " + "the step waits for your decision. " * 40,
                f"<p>Hello <b>{i}</b> — " + "<span>the step waits for your decision.</span> " * 40 + "</p>")
            for i in range(120)}
    with session_scope(engine) as s:
        enqueue_many(s, [Email(company_id=1, to=[f"u{i}@acme.example"], subject=f"m{i}", text=body[i][0],
                               html=body[i][1]) for i in range(100)], now=datetime.now(UTC), settings=settings)
    with engine.begin() as conn:  # the platform's rows: bodies only, built at delivery
        conn.execute(sa.insert(q), [{"company_id": 1, "to_addrs": [f"u{i}@acme.example"], "subject": f"m{i}",
                                     "body_text": body[i][0], "body_html": body[i][1]} for i in range(100, 120)])
    report = deliver_due(engine, smtp_mail, clock=Clock(datetime.now(UTC)), settings=settings,
                         policy=DeliveryPolicy(batch_size=20))
    assert report.sent == 120 and len(smtp_server.messages) == 120
    for m in smtp_server.messages:
        i = int(m.message["Subject"][1:])
        assert m.rcpt_tos == (f"u{i}@acme.example",)
        assert m.message.get_body(("plain",)).get_content().rstrip("\n") == body[i][0]
        assert m.message.get_body(("html",)).get_content().rstrip("\n") == body[i][1]
    with engine.connect() as conn:
        heap = conn.exec_driver_sql("SELECT pg_relation_size('email_queue')").scalar_one()
        assert set(conn.execute(sa.select(q.c.status)).scalars()) == {"sent"}
    # Three versions of each row are in the heap (queued, sending, sent) until vacuumed: ~550
    # bytes a mail in all now; with the bodies in line (before 0013) ~6,000.
    assert heap / 120 < 1500, f"{heap / 120:.0f} heap bytes per queued mail"


def _queued(engine, settings, n, now):
    with session_scope(engine) as s:
        enqueue_many(s, [Email(company_id=1, to=[f"u{i}@acme.example"], subject=f"m{i}", text="t")
                         for i in range(n)], now=now, settings=settings)


def test_a_drain_stops_at_its_batch_limit_or_time_budget_having_sent_every_batch_it_claimed(
        tenants, settings, smtp_server, smtp_mail):
    """Both databases (on PostgreSQL the next batch is claimed while one is sent): the batch limit
    and the time budget are checked before each claim; nothing is claimed that is not sent, so
    what is left is pending with no attempt counted, and every mail sent is recorded."""
    _queued(tenants, settings, 40, T0)
    report = deliver_due(tenants, smtp_mail, clock=Clock(T0), settings=settings,
                         policy=DeliveryPolicy(batch_size=5), max_batches=3)
    assert (report.batches, report.claimed, report.sent, report.stopped_because) == (3, 15, 15, "batch limit reached")
    assert sorted(subjects(smtp_server)) == sorted(f"m{i}" for i in range(15))

    class Ticking(Clock):  # 10 s pass at every look at the clock
        def __call__(self):
            self.advance(seconds=10)
            return self.now

    report = deliver_due(tenants, smtp_mail, clock=Ticking(T0), settings=settings,
                         policy=DeliveryPolicy(batch_size=5, time_budget_seconds=35))
    assert report.stopped_because == "time budget spent"
    assert report.sent == report.claimed == 5 * report.batches and 1 <= report.batches < 5
    sent = 15 + report.sent
    assert len(smtp_server.messages) == sent and len(set(subjects(smtp_server))) == sent
    by_status = Counter((status, attempts) for status, attempts in rows(tenants, q.c.status, q.c.attempts))
    assert by_status == {("sent", 1): sent, ("pending", 0): 40 - sent}


def test_a_batch_whose_lease_ran_out_while_it_was_sent_is_recorded_sent_and_never_sent_more_than_twice(
        tenants, settings, smtp_server, smtp_mail):
    """A slow relay or a long batch: each look at the clock moves it 200 s, so a batch's lease
    (300 s) has ended before its outcome is written. The drain still records every mail sent
    (on PostgreSQL in the statement that claims the batch after next, which must not claim the
    rows it records), sends each one once or, when its lease ended while it was on the wire,
    twice, and ends because nothing is due."""
    class Slow(Clock):
        def __call__(self):
            self.advance(seconds=200)
            return self.now

    _queued(tenants, settings, 8, T0)
    report = deliver_due(tenants, smtp_mail, clock=Slow(T0), settings=settings,
                         policy=DeliveryPolicy(batch_size=2, lease_seconds=300, time_budget_seconds=10**6))
    assert report.stopped_because == "nothing due"
    sends = Counter(subjects(smtp_server))
    assert set(sends) == {f"m{i}" for i in range(8)} and max(sends.values()) <= 2
    assert {status for (status,) in rows(tenants, q.c.status)} == {"sent"}
    assert report.sent == sum(sends.values()) and report.batches <= 8


def test_a_drain_that_breaks_mid_batch_gives_back_the_batch_claimed_ahead(tenants, settings, smtp_server, smtp_mail):
    """An unexpected error in the send loop (a bug, an interrupt) ends the drain: the batches sent
    before it are recorded, the batch on the wire stays ``sending`` until its lease ends (it may
    have gone out), and on PostgreSQL the batch claimed ahead is given back at once."""
    from bg_ops.resources.mail import SmtpMailResource

    class BreaksAtTheSeventhMail(SmtpMailResource):
        def _open(self):
            conn, sends = super()._open(), []
            real = conn.send_raw

            def send_raw(*args):
                sends.append(1)
                if len(sends) == 7:
                    raise RuntimeError("the worker broke")
                real(*args)

            conn.send_raw = send_raw
            return conn

    _queued(tenants, settings, 20, T0)
    mail = BreaksAtTheSeventhMail(**smtp_mail.model_dump())
    with pytest.raises(RuntimeError, match="the worker broke"):
        deliver_due(tenants, mail, clock=Clock(T0), settings=settings, policy=DeliveryPolicy(batch_size=5))
    assert sorted(subjects(smtp_server)) == sorted(f"m{i}" for i in range(6))
    states = Counter((status, attempts) for status, attempts in rows(tenants, q.c.status, q.c.attempts))
    # Batch 1 sent and recorded; batch 2 stays claimed (one mail of it out) until its lease ends;
    # the claim ahead (batch 3, PostgreSQL only) is pending again with its attempt not counted.
    assert states == {("sent", 1): 5, ("sending", 1): 5, ("pending", 0): 10}
    later = deliver_due(tenants, smtp_mail, clock=Clock(T0 + timedelta(minutes=6)), settings=settings,
                        policy=DeliveryPolicy(batch_size=5))
    assert later.sent == 15
    assert Counter(subjects(smtp_server)) == {**{f"m{i}": 1 for i in range(20)}, "m5": 2}  # the one out twice


def test_a_drain_whose_progress_callback_fails_gives_back_the_batch_claimed_ahead(tenants, settings, smtp_server,
                                                                                   smtp_mail):
    """``on_batch`` (the CLI's progress bar, the op's log) raising stops the drain: every mail sent
    is recorded or stays ``sending`` until its lease, and no claimed batch is left unsent."""
    _queued(tenants, settings, 20, T0)

    def fails(report):
        raise RuntimeError("progress display broke")

    with pytest.raises(RuntimeError, match="progress display broke"):
        deliver_due(tenants, smtp_mail, clock=Clock(T0), settings=settings, policy=DeliveryPolicy(batch_size=5),
                    on_batch=fails)
    states = Counter((status, attempts) for status, attempts in rows(tenants, q.c.status, q.c.attempts))
    if tenants.dialect.name == "postgresql":
        # Batch 1's outcome arrives with the claim of batch 3, after batch 2 went out: batch 1
        # sent, batch 2 out and waiting for its lease, batch 3 given back.
        assert len(smtp_server.messages) == 10
        assert states == {("sent", 1): 5, ("sending", 1): 5, ("pending", 0): 10}
    else:  # claimed, sent and recorded in turn
        assert len(smtp_server.messages) == 5
        assert states == {("sent", 1): 5, ("pending", 0): 15}


def test_the_claim_takes_expired_leases_and_sending_rows_without_one_never_a_running_lease(tenants):
    """A dead worker's rows (lease ended) and rows the platform wrote as ``sending`` with no lease
    are claimed again, each through its own range of the lease index; a lease still running is not."""
    from bg_ops.defs.email.delivery import claim_batch

    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    base = {"company_id": 1, "to_addrs": ["a@acme.example"], "subject": "s", "body_text": "t", "locked_by": None}
    with tenants.begin() as conn:
        ids = conn.execute(sa.insert(q).returning(q.c.id, sort_by_parameter_order=True), [
            {**base, "status": "sending", "locked_until": now - timedelta(seconds=1), "locked_by": "dead"},
            {**base, "status": "sending", "locked_until": None},
            {**base, "status": "sending", "locked_until": now + timedelta(minutes=4), "locked_by": "alive"},
            {**base, "status": "pending", "locked_until": None},
        ]).scalars().all()
    claimed = claim_batch(tenants, now=now, worker_id="me", policy=DeliveryPolicy(batch_size=10))
    assert sorted(r.id for r in claimed) == [ids[0], ids[1], ids[3]]
    assert claim_batch(tenants, now=now, worker_id="me", policy=DeliveryPolicy(batch_size=10)) == []
    with tenants.connect() as conn:
        held = dict(conn.execute(sa.select(q.c.id, q.c.locked_by)).all())
    assert held == {ids[0]: "me", ids[1]: "me", ids[2]: "alive", ids[3]: "me"}


def test_cleanup_purges_old_sent_mail_but_keeps_failed(tenants, settings):
    with session_scope(tenants) as s:
        enqueue_many(s, [Email(company_id=1, to=[f"{n}@acme.example"], subject=n, text="t") for n in ("old", "new", "bad")],
                     now=T0, settings=settings)
    long_ago = T0 - timedelta(days=91)
    with tenants.begin() as conn:
        conn.execute(sa.update(q).where(q.c.subject.in_(["old", "new"])).values(status="sent", sent_at=T0))
        conn.execute(sa.update(q).where(q.c.subject == "old").values(sent_at=long_ago))
        conn.execute(sa.update(q).where(q.c.subject == "bad").values(status="failed", failed_at=long_ago))
        assert admin.cleanup(conn, now=T0) == 1
    assert sorted(r.subject for r in rows(tenants)) == ["bad", "new"]


def test_stats_count_every_status_per_tenant(tenants, settings):
    with session_scope(tenants) as s:
        enqueue_many(s, [Email(company_id=1 + i % 2, to=["a@acme.example"], subject=str(i), text="t",
                               send_after=T0 + timedelta(minutes=i)) for i in range(6)], now=T0, settings=settings)
    with tenants.connect() as conn:
        everyone = admin.stats(conn, now=T0 + timedelta(minutes=2, seconds=30))
        acme = admin.stats(conn, now=T0, company_id=1)
    assert {k: everyone[k] for k in ("pending", "sending", "sent", "failed", "canceled")} == {
        "pending": 6, "sending": 0, "sent": 0, "failed": 0, "canceled": 0}
    assert everyone["due_now"] == 3 and everyone["oldest_due_age_seconds"] == 150
    assert acme["pending"] == 3


def test_dashboard_checks_warn_on_a_stuck_queue_and_pass_again(tenants, settings, db_url, smtp_mail):
    from bg_ops.defs.email.defs import email_queue_health

    database = DatabaseResource(url=db_url)
    now = datetime.now(UTC)
    with session_scope(tenants) as s:
        enqueue(s, Email(company_id=1, to=["a@acme.example"], subject="s", text="t",
                         send_after=now - timedelta(minutes=20)), now=now - timedelta(minutes=30), settings=settings)

    def check_states():
        result = dg.materialize([email_queue_health], resources={"database": database})
        return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}, result

    states, result = check_states()
    assert states == {"email_queue_not_stuck": False, "email_failure_rate": True}
    meta = result.asset_materializations_for_node("email_queue_health")[0].metadata
    assert meta["pending"].value == 1 and meta["oldest_due_age_seconds"].value >= 1200
    deliver_due(tenants, smtp_mail, clock=lambda: datetime.now(UTC), settings=settings)
    states, _ = check_states()
    assert states == {"email_queue_not_stuck": True, "email_failure_rate": True}


def test_delivery_job_writes_eml_files_to_the_outbox_and_sensor_launches_only_when_due(tenants, settings, db_url, tmp_path):
    from bg_ops.defs.email.defs import email_delivery_sensor, send_due_emails_job
    from bg_ops.resources.files import FilesResource
    from bg_ops.resources.mail import OutboxMailResource

    database = DatabaseResource(url=db_url)
    outbox = tmp_path / "outbox"
    resources = {"database": database, "files": FilesResource(root=str(settings.files_root)),
                 "mail": OutboxMailResource(outbox_dir=str(outbox), mail_from=settings.mail_from,
                                            admin_emails=["ops@bg-ops.example"])}
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources={"database": database})
        assert isinstance(email_delivery_sensor(ctx), dg.SkipReason)
        with session_scope(tenants) as s:
            enqueue_many(s, [Email(company_id=1, to=["a@acme.example"], subject="one", text="t"),
                             Email(company_id=2, to=["b@nordlicht.example"], subject="two", text="t")],
                         now=datetime.now(UTC) - timedelta(minutes=1), settings=settings)
        request = email_delivery_sensor(dg.build_sensor_context(instance=instance, resources={"database": database}))
        assert isinstance(request, dg.RunRequest)
        result = send_due_emails_job.execute_in_process(instance=instance, resources=resources)
        assert result.success
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == 2 and not list(outbox.glob(".tmp-*"))
    from email import policy
    from email.parser import BytesParser

    parsed = [BytesParser(policy=policy.default).parsebytes(p.read_bytes()) for p in files]
    assert sorted(m["Subject"] for m in parsed) == ["one", "two"]
    assert {r.status for r in rows(tenants)} == {"sent"}


# -- several workers, crashes (PostgreSQL) -------------------------------------------------------


def _worker(url, server, worker_id, batch_size, lease):
    return subprocess.Popen(
        [sys.executable, "-m", "bg_ops_tests.support.email_worker", url, server.host, str(server.port),
         worker_id, str(batch_size), str(lease)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
        start_new_session=True,
    )


def _seed(url, settings, n):
    engine = get_engine(url)
    from bg_ops.db import migrate

    migrate.create_app_schema(engine)
    migrate.upgrade(engine)
    with session_scope(engine) as s:
        s.add(Company(id=1, name="Acme", slug="acme"))
        s.flush()
        for start in range(0, n, 500):
            enqueue_many(s, [Email(company_id=1, to=[f"u{i}@acme.example"], subject=f"m{i}", text="t",
                                   idempotency_key=f"k{i}") for i in range(start, min(n, start + 500))],
                         now=datetime.now(UTC) - timedelta(seconds=5), settings=settings)
    return engine


@pytest.mark.slow
def test_four_worker_processes_drain_5000_mails_each_exactly_once(pg_url, settings, smtp_server):
    engine = _seed(pg_url, settings, 5000)
    workers = [_worker(pg_url, smtp_server, f"w{i}", 20, 300) for i in range(4)]
    reports = []
    for w in workers:
        out, err = w.communicate(timeout=240)
        assert w.returncode == 0, err[-2000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    counts = Counter(m.message["Message-ID"] for m in smtp_server.messages)
    assert len(counts) == 5000 and set(counts.values()) == {1}
    assert sum(r["sent"] for r in reports) == 5000
    assert sum(1 for r in reports if r["sent"] > 0) >= 2  # the work really was shared
    with engine.connect() as conn:
        assert conn.execute(sa.select(q.c.status, sa.func.count()).group_by(q.c.status)).all() == [("sent", 5000)]


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_nothing_and_sends_nothing_more_than_twice(pg_url, settings, smtp_server, smtp_mail):
    engine = _seed(pg_url, settings, 200)
    smtp_server.delay_next(200, 0.02)  # a slow relay: the kill lands in the middle of a batch
    victim = _worker(pg_url, smtp_server, "victim", 50, 300)
    smtp_server.wait_for_messages(60, timeout=60)  # the victim is mid-batch
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    before_crash = Counter(m.message["Message-ID"] for m in smtp_server.messages)
    smtp_server.reset()  # faults off; count deliveries after the crash separately
    with engine.connect() as conn:
        stuck = conn.execute(sa.select(sa.func.count()).where(q.c.status == "sending")).scalar_one()
    # The batch being sent, the one before (its outcome may still have been being written) and
    # the next one, claimed while it was sent (the pipelined drain).
    assert 0 < stuck <= 3 * 50

    # Before the lease ends nobody touches the stuck rows; after it, another worker finishes.
    now = datetime.now(UTC)
    deliver_due(engine, smtp_mail, clock=lambda: now, settings=settings)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(q.c.status == "sending")).scalar_one() == stuck
    later = now + timedelta(seconds=301)
    deliver_due(engine, smtp_mail, clock=lambda: later, settings=settings)
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(q.c.status, sa.func.count()).group_by(q.c.status)).all())
    assert statuses == {"sent": 200}

    total = before_crash + Counter(m.message["Message-ID"] for m in smtp_server.messages)
    assert len(total) == 200  # nothing lost
    twice = [mid for mid, n in total.items() if n == 2]
    assert max(total.values()) <= 2
    # Only mail that reached the server before the kill but was never recorded as sent can
    # arrive twice: the killed batch and the one before it if its outcome was still being
    # written (the batch claimed ahead was never sent: it arrives once).
    assert len(twice) <= 2 * 50
    print(f"killed mid-batch: {stuck} rows reclaimed, {len(twice)} delivered twice")
