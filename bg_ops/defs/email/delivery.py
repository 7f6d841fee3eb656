"""Deliver due email: claim, send, record. Plain Python over an engine and a clock.

- **Claim** a batch of due messages in priority order (high, normal, low; customer-facing
  before internal at equal priority; earliest due first) in one statement that marks them
  ``sending`` with a lease (``locked_until``). On PostgreSQL the first due rows are read from
  a partial index in that order (``ix_email_queue_claim_order``, pending rows only, one scan
  per priority) and locked ``FOR UPDATE SKIP LOCKED``, so concurrent workers never claim the
  same row and no claim sorts the queue; on SQLite the single ``UPDATE … RETURNING`` runs
  under the database's one write lock, so workers take turns.
- **Send** the batch over one SMTP connection (reused across batches, reconnecting when the
  server drops it). Messages queued through ``enqueue`` are already built; rows the platform
  inserted with plain SQL are built here, and a render or address error fails that message
  for good, never the batch.
- **Record** the batch's outcomes, one statement per kind of outcome: sent; transient errors
  back to ``pending`` with exponential backoff and jitter until ``max_attempts``; permanent
  errors ``failed``. On PostgreSQL the delivery loop runs each statement as its own
  transaction (one round trip each), and the mail sent is recorded by the statement that
  claims the next batch but one (``record_then_claim``): one statement a batch. A worker that
  dies mid-batch leaves its rows ``sending``: when the lease ends they are claimed again,
  never lost. On PostgreSQL that step runs on a thread of its own while a batch is sent
  (``deliver_due``), so a crash can leave two batches sent and unrecorded: sent twice, never
  more.
"""

from __future__ import annotations

import functools
import logging
import random
import socket
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from bg_ops.db.driver import DriverStatement
from bg_ops.db.own_schema import EMAIL_DUE_AT, EMAIL_KIND_KEY
from bg_ops.db.own_schema import email_queue as q
from bg_ops.db.types import UTCDateTime, to_utc, utc_normalized
from bg_ops.defs.email.enqueue import (
    SYSTEM_COMPANY_ID,
    EnqueueError,
    MailSettings,
    company_names,
    load_attachments,
)
from bg_ops.defs.email.message import (
    AddressError,
    build_message,
    date_header,
    envelope_from,
    message_id_for,
    parse_addresses,
)
from bg_ops.defs.email.rendering import TemplateError, render
from bg_ops.resources.mail import MailConnection, MailError, MailResource
from bg_ops.util.files import MissingFile, UnsafePath
from bg_ops.util.backoff import jittered_backoff
from bg_ops.util.drain import claimed_batches, stop_reason
from bg_ops.util.masking import mask_emails_in_text

log = logging.getLogger("bg_ops.email")

Clock = Callable[[], datetime]

PRIORITY_RANK = sa.case((q.c.priority == "high", 0), (q.c.priority == "low", 2), else_=1)
KIND_RANK = sa.case((q.c.kind == "customer", 0), else_=1)
DUE_AT = sa.func.coalesce(q.c.next_attempt_at, q.c.send_after, q.c.created_at)
CLAIM_COLUMNS = (
    q.c.id, q.c.company_id, q.c.to_addrs, q.c.cc_addrs, q.c.bcc_addrs, q.c.reply_to, q.c.subject,
    q.c.body_text, q.c.body_html, q.c.template, q.c.context, q.c.attachments, q.c.priority,
    q.c.kind, q.c.idempotency_key, q.c.message_id, q.c.raw_message, q.c.attempts, q.c.send_after,
    q.c.next_attempt_at, q.c.created_at,
)
# The parts a message is built from, read back only for rows still to be built: a built
# message needs none of them (no bodies sent back and decoded for mail queued through
# ``enqueue``). PostgreSQL only: SQLite 3.40 evaluates ``raw_message IS NULL`` wrongly in
# ``UPDATE … RETURNING``.
_BUILT_FROM = {"reply_to", "subject", "body_text", "body_html", "template", "context", "attachments"}
CLAIM_COLUMNS_PG = tuple(
    sa.case((q.c.raw_message.is_(None), c)).label(c.name) if c.name in _BUILT_FROM else c for c in CLAIM_COLUMNS
)
_PRIORITY = {"high": 0, "normal": 1, "low": 2}


@dataclass(frozen=True)
class DeliveryPolicy:
    batch_size: int = 20
    lease_seconds: int = 300
    max_attempts: int = 5
    backoff_base_seconds: float = 60.0
    backoff_max_seconds: float = 3600.0
    time_budget_seconds: float = 50.0


@dataclass
class DeliveryReport:
    batches: int = 0
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    failed_ids: list[int] = field(default_factory=list)
    stopped_because: str = ""

    def as_metadata(self) -> dict:
        return {
            "batches": self.batches, "claimed": self.claimed, "sent": self.sent,
            "retried": self.retried, "failed": self.failed, "stopped_because": self.stopped_because,
        }


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def due_condition(now: datetime):
    """Pending and due, or stuck in ``sending`` after its lease ended (a dead worker's)."""
    return sa.or_(
        sa.and_(
            q.c.status == "pending",
            sa.or_(q.c.send_after.is_(None), q.c.send_after <= now),
            sa.or_(q.c.next_attempt_at.is_(None), q.c.next_attempt_at <= now),
        ),
        sa.and_(q.c.status == "sending", sa.or_(q.c.locked_until.is_(None), q.c.locked_until < now)),
    )


def count_due(conn: sa.Connection, now: datetime) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(q).where(due_condition(now))).scalar_one())


# The claim's statements take their values as parameters and are built once per process:
# building and hashing them costs more than PostgreSQL spends running them.
_NOW = sa.bindparam("now", type_=UTCDateTime())
_LIMIT = sa.bindparam("limit", type_=sa.Integer())


def _claim(ids, columns=CLAIM_COLUMNS_PG):
    return (
        sa.update(q)
        .where(q.c.id.in_(ids))
        .values(
            status="sending",
            attempts=q.c.attempts + 1,
            locked_until=sa.bindparam("locked_until", type_=UTCDateTime()),
            locked_by=sa.bindparam("worker_id", type_=sa.String()),
            last_attempt_at=_NOW,
            updated_at=_NOW,
        )
        .returning(*columns)
    )


def _candidates(now, limit):
    return (
        sa.select(q.c.id)
        .where(due_condition(now))
        .order_by(PRIORITY_RANK, KIND_RANK, utc_normalized(DUE_AT), q.c.id)
        .limit(limit)
    )


def _pending_due(now):
    return (
        q.c.status == "pending",
        sa.or_(q.c.send_after.is_(None), q.c.send_after <= now),
        sa.or_(q.c.next_attempt_at.is_(None), q.c.next_attempt_at <= now),
    )


def _first_due(now, limit):
    """The first ``limit`` due rows in send order, read from the claim-order index.

    One index scan per priority (each stops after ``limit`` due rows) plus the rows whose
    lease ended (few: at most the batches of dead workers), merged in send order.
    """
    branches = [
        sa.select(q.c.id, sa.literal(rank).label("p"), EMAIL_KIND_KEY.label("k"), EMAIL_DUE_AT.label("due"))
        .where(q.c.priority == priority, *_pending_due(now))
        .order_by(EMAIL_KIND_KEY, EMAIL_DUE_AT, q.c.id)
        .limit(limit)
        for priority, rank in _PRIORITY.items()
    ]
    # Expired leases, and (from plain SQL only) rows in ``sending`` with none, each its own range
    # of ``ix_email_queue_lease``: as one ``IS NULL OR <`` condition the scan read the whole
    # index, every lease still running and every entry delivered mail left behind.
    for lease_ended in (q.c.locked_until < now, q.c.locked_until.is_(None)):
        branches.append(
            sa.select(q.c.id, PRIORITY_RANK.label("p"), EMAIL_KIND_KEY.label("k"), EMAIL_DUE_AT.label("due"))
            .where(q.c.status == "sending", lease_ended)
            .order_by(PRIORITY_RANK, EMAIL_KIND_KEY, EMAIL_DUE_AT, q.c.id)
            .limit(limit)
        )
    merged = sa.union_all(*branches).subquery("due_first")
    return sa.select(merged.c.id).order_by(merged.c.p, merged.c.k, merged.c.due, merged.c.id).limit(limit)


def _next_free(now, priority: str, limit):
    """The first ``limit`` due rows of one priority that no other worker holds, locked."""
    return (
        sa.select(q.c.id)
        .where(q.c.priority == priority, *_pending_due(now))
        .order_by(EMAIL_KIND_KEY, EMAIL_DUE_AT, q.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def _first_claimed(*conditions):
    """The first due rows in send order, locked ``SKIP LOCKED`` and checked due again."""
    return (sa.select(q.c.id).where(q.c.id.in_(_first_due(_NOW, _LIMIT)), due_condition(_NOW), *conditions)
            .with_for_update(skip_locked=True))


@functools.cache
def _claim_statements() -> dict:
    """{"generic": …, "first": …, "<priority>": …}: parameters now, limit, locked_until, worker_id."""
    generic = _candidates(_NOW, _LIMIT).with_for_update(skip_locked=True)
    statements = {
        "generic": _claim(generic.scalar_subquery(), CLAIM_COLUMNS),
        "first": _claim(_first_claimed().scalar_subquery()),
    }
    for priority in _PRIORITY:
        statements[priority] = _claim(_next_free(_NOW, priority, _LIMIT).scalar_subquery())
    return statements


_CLAIM_PARAMETERS = ("now", "limit", "worker_id", "locked_until")


_DRIVER_STATEMENTS: dict[tuple[str, str], dict] = {}


def _driver_statements(dialect: sa.Dialect) -> dict:
    """PostgreSQL: the claim statements and the record of sent mail run on the driver's cursor
    (``bg_ops.db.driver``): they run on the drain's database thread, whose Python the sending
    thread waits for. The claimed rows need no type processing: the JSON arrives decoded, the
    built message as bytes, the times aware (used only to sort the batch)."""
    key = (dialect.name, dialect.driver)
    if key in _DRIVER_STATEMENTS:
        return _DRIVER_STATEMENTS[key]
    statements = _claim_statements()
    out = {name: DriverStatement(statements[name], dialect, _CLAIM_PARAMETERS, prepare=f"bg_ops_email_claim_{name}")
           for name in ("first", *_PRIORITY)}
    sent = _sent(q.c.id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.BigInteger()))))
    out["sent"] = DriverStatement(sent, dialect, ("ids", "now"), prepare="bg_ops_email_sent")
    # The drain's usual step: the last batch's sent mail recorded and the next batch claimed in
    # one statement (one round trip, one transaction, one plan a batch instead of two). The
    # record is a data-modifying CTE: it runs whether or not the claim reads it, on the same
    # snapshot, where the rows it marks are still ``sending``. Those rows must be kept out of
    # the claim: one whose lease ran out while its batch was sent (a slow relay, a long batch)
    # is due again, and PostgreSQL, asked to update a row twice in one statement, keeps one of
    # the updates: the claim's, which would send it again and lose its record, batch after batch.
    sent_ids = sa.bindparam("sent_ids", type_=ARRAY(sa.BigInteger()))
    recorded = _sent(q.c.id == sa.any_(sent_ids)).cte("recorded")
    out["sent_then_first"] = DriverStatement(
        _claim(_first_claimed(q.c.id != sa.all_(sent_ids)).scalar_subquery()).add_cte(recorded), dialect,
        (*_CLAIM_PARAMETERS, "sent_ids"), prepare="bg_ops_email_sent_claim_first")
    _DRIVER_STATEMENTS[key] = out
    return out


def claim_batch(conn_or_engine, *, now: datetime, worker_id: str, policy: DeliveryPolicy,
                sent_ids: list[int] | None = None) -> list:
    """Mark up to ``batch_size`` due messages ``sending`` for this worker; return them in send order.

    ``sent_ids`` (PostgreSQL): messages of this worker's last batch to mark sent (at ``now``) in
    the same statement as the claim, as ``record_outcomes`` would (the drain's usual step).

    The rows claimed are the first ``batch_size`` due rows in send order that no other
    worker holds. On PostgreSQL one statement usually does it: the first due rows are read
    from the claim-order index (no sort of the queue), locked ``SKIP LOCKED``, checked due
    again and marked. When another worker took some of them first, the rest is claimed by
    locking scans of the same index, priority by priority, in the same transaction. On
    SQLite one statement claims in send order under the database's single write lock.
    Takes an engine or a connection (the delivery loop keeps one for the whole run).
    """
    statements = _claim_statements()
    params = {"now": now, "limit": policy.batch_size, "worker_id": worker_id,
              "locked_until": now + timedelta(seconds=policy.lease_seconds)}
    with _transaction(conn_or_engine) as conn:
        if conn.dialect.name != "postgresql":
            rows = conn.execute(statements["generic"], params).all()
        else:
            params["now"], params["locked_until"] = to_utc(now), to_utc(params["locked_until"])
            driver = _driver_statements(conn.dialect)
            if sent_ids:
                rows = driver["sent_then_first"].rows(conn, {**params, "sent_ids": sent_ids})
            else:
                rows = driver["first"].rows(conn, params)
            for priority in _PRIORITY:  # another worker held some of them: take the next free ones
                if len(rows) >= policy.batch_size:
                    break
                rows += driver[priority].rows(conn, {**params, "limit": policy.batch_size - len(rows)})
    return sorted(
        rows,
        key=lambda r: (
            _PRIORITY.get(r.priority, 1),
            0 if r.kind == "customer" else 1,
            r.next_attempt_at or r.send_after or r.created_at,
            r.id,
        ),
    )


@contextmanager
def _transaction(conn_or_engine):
    """A transaction on an engine (checkout, commit) or on a connection the caller keeps."""
    if isinstance(conn_or_engine, sa.Engine):
        with conn_or_engine.begin() as conn:
            yield conn
    else:
        with conn_or_engine.begin():
            yield conn_or_engine


class PermanentBuildError(Exception):
    pass


def _build_row(row, *, settings: MailSettings, companies: dict) -> bytes:
    """Build a message the platform queued with plain SQL (rendering its template now)."""
    try:
        to = parse_addresses(row.to_addrs or [], "to_addrs")
        cc = parse_addresses(row.cc_addrs or [], "cc_addrs")
        reply_to = parse_addresses([row.reply_to], "reply_to")[0] if row.reply_to else None
        subject, text, html = row.subject, row.body_text, row.body_html
        if row.template:
            if row.company_id not in companies:
                raise PermanentBuildError(
                    f"unknown tenant company_id {row.company_id}: no company has that id"
                )
            name, slug = companies[row.company_id]
            rendered = render(row.template, row.context or {}, company_name=name, company_slug=slug)
            subject = subject or rendered.subject
            text = text if text is not None else rendered.text
            html = html if html is not None else rendered.html
        if text is None and html is None:
            raise PermanentBuildError("no body and no template: give body_text, body_html or template")
        if not subject:
            raise PermanentBuildError("no subject: set subject or use a template that has one")
        attachments = load_attachments(settings.files_root, row.attachments or [])
    except (AddressError, TemplateError, UnsafePath, MissingFile, EnqueueError) as exc:
        raise PermanentBuildError(str(exc)) from None
    message_id = row.message_id or message_id_for(row.idempotency_key or f"bg_ops-email-{row.id}", settings.mail_from)
    return build_message(
        mail_from=settings.mail_from, to=to, cc=cc, reply_to=reply_to, subject=subject,
        text=text, html=html, message_id=message_id, attachments=attachments,
    )


def _recipients(row) -> list[str]:
    pairs = parse_addresses((row.to_addrs or []) + (row.cc_addrs or []) + (row.bcc_addrs or []), "recipients")
    return [addr for _, addr in pairs]


@dataclass
class _Outcome:
    id: int
    status: str  # sent | retry | failed
    error: str | None = None
    raw: bytes | None = None  # built during this attempt, kept for the next one
    attempts: int = 0


def send_batch(rows, conn: MailConnection, *, now: datetime, settings: MailSettings, companies: dict) -> list[_Outcome]:
    sender = envelope_from(settings.mail_from)
    date = date_header(now)
    outcomes = []
    for row in rows:
        built = None
        try:
            raw = row.raw_message
            if raw is None:
                built = raw = _build_row(row, settings=settings, companies=companies)
            recipients = _recipients(row)
            if not recipients:
                raise PermanentBuildError("no recipients in to_addrs, cc_addrs or bcc_addrs")
        except (PermanentBuildError, AddressError) as exc:
            outcomes.append(_Outcome(row.id, "failed", mask_emails_in_text(str(exc)), attempts=row.attempts))
            continue
        except (TypeError, ValueError, AttributeError) as exc:
            # A row the platform wrote in a shape no message comes from (to_addrs a number, a
            # context that is not an object …): that row fails for good, the drain goes on.
            outcomes.append(_Outcome(
                row.id, "failed", f"malformed row: {type(exc).__name__}: {mask_emails_in_text(str(exc))}: fix "
                "to_addrs, cc_addrs and bcc_addrs (JSON arrays of addresses) and context (a JSON object)",
                attempts=row.attempts))
            continue
        try:
            conn.send_raw(sender, recipients, date + raw)
        except MailError as exc:
            status = "retry" if exc.transient else "failed"
            outcomes.append(_Outcome(row.id, status, str(exc), raw=built, attempts=row.attempts))
        else:
            outcomes.append(_Outcome(row.id, "sent", attempts=row.attempts))
    return outcomes


_SENDING = q.c.status == "sending"
_DONE = {"locked_until": None, "locked_by": None, "updated_at": _NOW}  # every outcome leaves its lease


def _sent(ids_condition):
    """The update marking the messages of ``ids_condition`` sent (parameter ``now``)."""
    return sa.update(q).where(ids_condition, _SENDING).values(
        status="sent", sent_at=_NOW, last_error=None, next_attempt_at=None, **_DONE)


@functools.cache
def _record_statements() -> dict:
    """{"sent": …, "retry": …, "failed": …}: the outcome updates, built once per process (at
    the default batch of 20, building them cost about as much as PostgreSQL running them)."""
    sending, done = _SENDING, _DONE
    return {
        "sent": _sent(q.c.id.in_(sa.bindparam("ids", expanding=True))),
        "retry": sa.update(q).where(q.c.id == sa.bindparam("o_id"), sending).values(
            status="pending", next_attempt_at=sa.bindparam("o_next", type_=UTCDateTime()),
            last_error=sa.bindparam("o_error"),
            raw_message=sa.func.coalesce(q.c.raw_message, sa.bindparam("o_raw", type_=sa.LargeBinary)), **done),
        "failed": sa.update(q).where(q.c.id == sa.bindparam("o_id"), sending).values(
            status="failed", failed_at=_NOW, last_error=sa.bindparam("o_error"), **done),
    }


def record_outcomes(conn_or_engine, outcomes: list[_Outcome], *, now: datetime, policy: DeliveryPolicy,
                    rng: random.Random) -> DeliveryReport:
    report, sent, retries, failures = _outcome_rows(outcomes, now=now, policy=policy, rng=rng)
    with _transaction(conn_or_engine) as conn:
        _record_sent(conn, sent, now=now)
        _write_unsent(conn, retries, failures, now=now)
    return report


def _record_sent(conn: sa.Connection, ids: list[int], *, now: datetime) -> None:
    """Mark these messages sent (on PostgreSQL the prepared statement on the driver's cursor)."""
    if not ids:
        return
    if conn.dialect.name == "postgresql":
        _driver_statements(conn.dialect)["sent"].rows(conn, {"ids": ids, "now": to_utc(now)})
    else:
        conn.execute(_record_statements()["sent"], {"ids": ids, "now": now})


def _outcome_rows(outcomes: list[_Outcome], *, now: datetime, policy: DeliveryPolicy, rng: random.Random):
    """(the batch's report, ids of the mail sent, retry rows with their backoff, failure rows)."""
    report = DeliveryReport()
    sent = [o.id for o in outcomes if o.status == "sent"]
    retries, failures = [], []
    for o in outcomes:
        if o.status == "retry" and o.attempts < policy.max_attempts:
            retries.append({
                "o_id": o.id, "o_error": o.error, "o_raw": o.raw,
                "o_next": now + timedelta(seconds=jittered_backoff(
                o.attempts, base=policy.backoff_base_seconds, maximum=policy.backoff_max_seconds, rng=rng)),
            })
        elif o.status in ("retry", "failed"):
            error = o.error if o.status == "failed" else f"gave up after {o.attempts} attempts: {o.error}"
            failures.append({"o_id": o.id, "o_error": error})
    report.sent, report.retried, report.failed = len(sent), len(retries), len(failures)
    report.failed_ids = [f["o_id"] for f in failures]
    return report, sent, retries, failures


def _write_unsent(conn: sa.Connection, retries: list[dict], failures: list[dict], *, now: datetime) -> None:
    statements = _record_statements()
    if retries:
        conn.execute(statements["retry"], [{**r, "now": now} for r in retries])
    if failures:
        conn.execute(statements["failed"], [{**f, "now": now} for f in failures])


def record_then_claim(db: sa.Connection, outcomes: list[_Outcome] | None, *, now: datetime,
                      claim: bool, worker_id: str, policy: DeliveryPolicy,
                      rng: random.Random) -> tuple[DeliveryReport | None, list]:
    """One database step of the PostgreSQL drain, on its connection in autocommit: the outcomes
    of the batch just sent (``None``: no batch yet) and, if ``claim``, the next batch. Mail not
    sent (retries, failures) is written first; the mail sent is recorded in the claim's own
    statement (``claim_batch(sent_ids=…)``: one round trip a batch), or alone when nothing more
    is to be claimed. Returns (that batch's report or None, the rows claimed, in send order)."""
    report, sent = None, []
    if outcomes is not None:
        report, sent, retries, failures = _outcome_rows(outcomes, now=now, policy=policy, rng=rng)
        if retries or failures:
            with _transaction(db) as conn:
                _write_unsent(conn, retries, failures, now=now)
    if claim:
        return report, claim_batch(db, now=now, worker_id=worker_id, policy=policy, sent_ids=sent)
    _record_sent(db, sent, now=now)
    return report, []


def deliver_due(
    engine: sa.Engine,
    mail: MailResource,
    *,
    clock: Clock,
    settings: MailSettings,
    policy: DeliveryPolicy = DeliveryPolicy(),
    worker_id: str | None = None,
    rng: random.Random | None = None,
    max_batches: int | None = None,
    on_batch: Callable[[DeliveryReport], None] | None = None,
) -> DeliveryReport:
    """Send what is due until the queue is empty, the time budget is spent or ``max_batches``."""
    worker_id = worker_id or default_worker_id()
    rng = rng or random.Random()
    total = DeliveryReport()
    with mail.connect() as smtp, engine.connect() as db:  # one database connection for the run
        pipelined = db.dialect.name == "postgresql"
        if pipelined:
            # Each claim and record statement is a transaction by itself: one round trip
            # instead of BEGIN, statement, COMMIT (per batch of 20, the round trips were most
            # of the claim's cost on a busy machine). Every statement is atomic: a claim or
            # an outcome is recorded whole or not at all, as before.
            db.execution_options(isolation_level="AUTOCOMMIT")
            # The claim and the record of sent mail are prepared statements (``_driver_statements``),
            # and with this one plan each serves the whole run. Left to choose, PostgreSQL plans the
            # claim anew at every run (1.1 ms, more than running it for a batch of 20): not knowing
            # the batch size, it prices the generic plan dearer, though it is the same plan. The
            # setting concerns prepared statements only and is reset when the run ends.
            # Built messages are mostly ASCII: ``bytea_output = 'escape'`` sends them back as they
            # are instead of in hex, half the bytes for the server to write and the driver to decode.
            _session_setting(db, "SET plan_cache_mode = force_generic_plan; SET bytea_output = 'escape'")
        try:
            if pipelined:
                _drain_pipelined(db, smtp, clock=clock, settings=settings, policy=policy, worker_id=worker_id,
                                 rng=rng, max_batches=max_batches, on_batch=on_batch, total=total)
            else:
                # SQLite's single writer gains nothing from a database thread: claim, send,
                # record, in turn.
                batches = claimed_batches(
                    lambda now: claim_batch(db, now=now, worker_id=worker_id, policy=policy), clock=clock,
                    time_budget_seconds=policy.time_budget_seconds, max_batches=max_batches, report=total,
                )
                with closing(batches):
                    for now, rows in batches:
                        companies = _companies_for(rows, lambda ids: _company_names(db, ids))
                        outcomes = send_batch(rows, smtp, now=now, settings=settings, companies=companies)
                        total.claimed += len(rows)
                        _add_batch(total, record_outcomes(db, outcomes, now=clock(), policy=policy, rng=rng), on_batch)
        finally:
            if pipelined and not db.invalidated:
                with suppress(db.dialect.loaded_dbapi.Error):  # a connection gone bad is discarded anyway
                    _session_setting(db, "RESET plan_cache_mode; RESET bytea_output")
    return total


def _drain_pipelined(db: sa.Connection, smtp: MailConnection, *, clock: Clock, settings: MailSettings,
                     policy: DeliveryPolicy, worker_id: str, rng: random.Random, max_batches: int | None,
                     on_batch, total: DeliveryReport) -> None:
    """The PostgreSQL drain: the database work runs on a thread of its own, one step a batch
    (``record_then_claim``): while a batch is sent, the batch before is recorded and the next one
    claimed, in one statement. At the default batch of 20, claim and record were a quarter of a
    worker's time when they ran in turn with the send (B1), and two statements a batch instead of
    one cost the server and the driver a fifth more a batch.

    What it costs when the database goes away or the worker dies: up to two batches sent but
    not recorded (the one on the wire and the one whose outcome was being written), sent again
    after their lease; never lost, never more than twice. A batch claimed ahead is given back
    when the drain stops on an error (or waits for its lease if the database is gone). The
    time budget and ``max_batches`` are checked before each claim: a batch claimed is always
    sent, so the budget may be passed by the one batch already claimed.
    """
    start = clock()
    claimed = 0

    def why_stop(now: datetime) -> str:
        return stop_reason(start, now, claimed=claimed, time_budget_seconds=policy.time_budget_seconds,
                           max_batches=max_batches)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bg_ops-email-db")

    def step(outcomes, now: datetime, claim: bool) -> Future:
        return executor.submit(record_then_claim, db, outcomes, now=now, claim=claim, worker_id=worker_id,
                               policy=policy, rng=rng)

    pending: Future | None = None  # the step under way: the last batch's record and the next claim
    try:
        now = clock()
        if reason := why_stop(now):
            total.stopped_because = reason
            return
        pending = step(None, now, True)
        _, rows = pending.result()
        pending = None
        outcomes = None  # of the batch sent last, not yet recorded
        reason = "nothing due"
        while rows:
            claimed += 1
            # Ask for the next batch (and record the one before) while this one is sent.
            next_at = clock()
            reason = why_stop(next_at)
            pending = step(outcomes, next_at, not reason)
            companies = _companies_for(rows, lambda ids: executor.submit(_company_names, db, ids).result())
            outcomes = send_batch(rows, smtp, now=now, settings=settings, companies=companies)
            total.claimed += len(rows)
            report, rows = pending.result()
            if report is not None:
                _add_batch(total, report, on_batch)  # should it raise, the rows just claimed are given back
            pending = None
            now = next_at
            if not reason and not rows:  # with a reason, nothing was claimed: rows is empty
                reason = "nothing due"
        if outcomes is not None:  # the last batch sent
            report, _ = step(outcomes, clock(), False).result()
            _add_batch(total, report, on_batch)
        total.stopped_because = reason
    finally:
        if pending is not None:  # stopped on an error: give back a batch claimed ahead
            with suppress(Exception):  # best effort: otherwise its rows wait for their lease
                _, ahead = pending.result()
                if ahead:
                    executor.submit(release_claimed, db, [r.id for r in ahead], worker_id=worker_id).result()
        executor.shutdown(wait=True)


def _session_setting(db: sa.Connection, sql: str) -> None:
    """``SET``/``RESET`` on the drain's connection (in autocommit): on the driver's cursor, so no
    SQLAlchemy transaction is begun around it."""
    with db.connection.driver_connection.cursor() as cursor:
        cursor.execute(sql)


def _companies_for(rows, read: Callable[[set[int]], dict]) -> dict:
    """Company names for the rows built at delivery from a template (``read`` fetches them)."""
    needs_names = {r.company_id for r in rows if r.raw_message is None and r.template}
    return read(needs_names) if needs_names else {}


def _company_names(db: sa.Connection, company_ids: set[int]) -> dict:
    from sqlalchemy.orm import Session

    with Session(bind=db) as session, db.begin():
        return company_names(session, company_ids)


def _add_batch(total: DeliveryReport, batch: DeliveryReport, on_batch) -> None:
    total.batches += 1
    total.sent += batch.sent
    total.retried += batch.retried
    total.failed += batch.failed
    total.failed_ids += batch.failed_ids
    log.info("email batch %d: sent %d, retry %d, failed %d", total.batches, batch.sent, batch.retried, batch.failed)
    if on_batch:
        on_batch(batch)


def release_claimed(conn_or_engine, ids: list[int], *, worker_id: str) -> int:
    """Give back rows this worker claimed but will not send (the drain stopped early): pending
    again at once, the attempt not counted, instead of waiting for the lease to end."""
    with _transaction(conn_or_engine) as conn:
        return conn.execute(
            sa.update(q).where(q.c.id.in_(ids), q.c.status == "sending", q.c.locked_by == worker_id).values(
                status="pending", attempts=q.c.attempts - 1, locked_until=None, locked_by=None,
            )
        ).rowcount


__all__ = [
    "SYSTEM_COMPANY_ID", "DeliveryPolicy", "DeliveryReport", "claim_batch",
    "count_due", "deliver_due", "due_condition", "record_outcomes", "release_claimed", "send_batch",
]
