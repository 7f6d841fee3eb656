"""Enqueue email: one short transaction, everything validated and built before it commits.

Any part of bg_ops (or the platform, through this function) calls ``enqueue`` or
``enqueue_many``. Addresses, the template and its variables and the attachments are checked
first: an error raises ``EnqueueError`` naming the thing and the fix, and nothing is queued.
The message is rendered and built here, once, and stored as bytes, so delivery only sends.
The same idempotency key never queues twice: the call returns the existing message.
Bulk calls on PostgreSQL COPY their rows, each prepared while the server stores the ones
before it (``_copy_many``); singles are one INSERT.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Company
from bg_ops.db.bulk import (
    BINARY_NULL,
    binary_bytea,
    binary_copy,
    binary_fields,
    binary_int4,
    binary_int8,
    binary_jsonb,
    binary_text,
    binary_timestamptz,
    copy_from,
)
from bg_ops.db.own_schema import EMAIL_KINDS, EMAIL_PRIORITIES, email_queue
from bg_ops.defs.email.message import (
    AddressError,
    Attachment,
    build_message,
    message_id_for,
    parse_addresses,
)
from bg_ops.defs.email.rendering import TemplateError, render
from bg_ops.util.files import MissingFile, UnsafePath, resolve_under_root

# Mail that belongs to no tenant (operator alerts) carries company_id 0.
SYSTEM_COMPANY_ID = 0
SYSTEM_NAME = "bg_ops"
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024


class EnqueueError(ValueError):
    """Why a message was refused; nothing was queued."""


@dataclass
class Email:
    company_id: int
    to: Sequence[str]
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    template: str | None = None
    context: Mapping | None = None
    cc: Sequence[str] = ()
    bcc: Sequence[str] = ()
    reply_to: str | None = None
    attachments: Sequence[str] = ()  # paths relative to the files root
    priority: str = "normal"
    send_after: datetime | None = None
    idempotency_key: str | None = None
    kind: str = "internal"  # 'customer' mail goes first at equal priority


@dataclass(frozen=True)
class MailSettings:
    """What building a message needs from the configuration."""

    mail_from: str
    files_root: Path


@dataclass(frozen=True)
class Enqueued:
    id: int
    created: bool  # False: the idempotency key was already queued


@dataclass
class _Prepared:
    row: dict
    key: str | None
    message_id: str = field(default="")


def company_names(session: Session, company_ids: set[int]) -> dict[int, tuple[str, str]]:
    """{id: (name, slug)} for the tenants named; company 0 is bg_ops itself."""
    wanted = {c for c in company_ids if c != SYSTEM_COMPANY_ID}
    found: dict[int, tuple[str, str]] = {SYSTEM_COMPANY_ID: (SYSTEM_NAME, "")}
    if wanted:
        # One tenant (every single enqueue) is a plain equality, which SQLAlchemy caches
        # whole; IN renders its list again on every call (about 0.15 ms).
        condition = Company.id == next(iter(wanted)) if len(wanted) == 1 else Company.id.in_(wanted)
        rows = session.execute(sa.select(Company.id, Company.name, Company.slug).where(condition))
        found.update({r.id: (r.name, r.slug) for r in rows})
    return found


def load_attachments(files_root: Path, paths: Sequence[str] | None) -> list[Attachment]:
    """Read attachments safely from under the files root; raise a clear error otherwise."""
    out = []
    for rel in paths or ():
        path = resolve_under_root(files_root, rel)
        if path.stat().st_size > MAX_ATTACHMENT_BYTES:
            raise MissingFile(
                f"attachment {rel!r} is larger than {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MiB: "
                "link to it instead of attaching it"
            )
        out.append(Attachment(filename=path.name, content=path.read_bytes()))
    return out


def prepare(email: Email, *, company: tuple[str, str], settings: MailSettings, now: datetime,
            bodies_at_delivery: bool = False, deferred_checks: dict | None = None) -> _Prepared:
    """Validate, render and build one message; raise ``EnqueueError``.

    ``bodies_at_delivery``: check the message and render only its subject, leaving the
    bodies to the delivery job (``deferred.DeferredCheck``); ``deferred_checks`` keeps one
    check per template and tenant for the whole call."""
    where = f"message to tenant {email.company_id}"
    try:
        to = parse_addresses(email.to, "to")
        cc = parse_addresses(email.cc, "cc")
        bcc = parse_addresses(email.bcc, "bcc")
        reply_to = parse_addresses([email.reply_to], "reply_to")[0] if email.reply_to else None
    except AddressError as exc:
        raise EnqueueError(f"{where}: {exc}") from None
    if not to and not cc and not bcc:
        raise EnqueueError(f"{where}: no recipients: give at least one address in to, cc or bcc")
    if email.priority not in EMAIL_PRIORITIES:
        raise EnqueueError(f"{where}: priority {email.priority!r} is not one of {', '.join(EMAIL_PRIORITIES)}")
    if email.kind not in EMAIL_KINDS:
        raise EnqueueError(f"{where}: kind {email.kind!r} is not one of {', '.join(EMAIL_KINDS)}")
    if email.send_after is not None and email.send_after.tzinfo is None:
        raise EnqueueError(f"{where}: send_after {email.send_after!r} has no time zone: pass an aware datetime")

    subject, text, html = email.subject, email.text, email.html
    if bodies_at_delivery:
        if not subject:  # given: the caller checked the message (the daily reminder run)
            from bg_ops.defs.email.deferred import DeferredCheck

            checks = {} if deferred_checks is None else deferred_checks
            check = checks.get((email.template, company))
            if check is None:
                check = checks[(email.template, company)] = DeferredCheck(email.template, company)
            try:
                subject = check.subject(email.context or {})
            except TemplateError as exc:
                raise EnqueueError(f"{where}: {exc}") from None
    elif email.template:
        try:
            rendered = render(email.template, email.context or {}, company_name=company[0], company_slug=company[1])
        except TemplateError as exc:
            raise EnqueueError(f"{where}: {exc}") from None
        subject = subject or rendered.subject
        text = text if text is not None else rendered.text
        html = html if html is not None else rendered.html
    elif text is None and html is None:
        raise EnqueueError(f"{where}: no body: give text and/or html, or a template with its context")
    if not subject or not subject.strip():
        raise EnqueueError(f"{where}: no subject: give one, or use a template that has one")
    try:
        attachments = load_attachments(settings.files_root, email.attachments)
    except (UnsafePath, MissingFile) as exc:
        raise EnqueueError(f"{where}: attachment refused: {exc}") from None

    message_id = message_id_for(email.idempotency_key, settings.mail_from)
    raw = None if bodies_at_delivery else build_message(
        mail_from=settings.mail_from, to=to, cc=cc, reply_to=reply_to, subject=subject,
        text=text, html=html, message_id=message_id, attachments=attachments,
    )
    row = {
        "company_id": email.company_id,
        "to_addrs": [a.strip() for a in email.to],
        "cc_addrs": [a.strip() for a in email.cc] or None,
        "bcc_addrs": [a.strip() for a in email.bcc] or None,
        "reply_to": email.reply_to,
        "subject": subject,
        "body_text": text,
        "body_html": html,
        "template": email.template,
        "context": dict(email.context) if email.context else None,
        "attachments": list(email.attachments) or None,
        "priority": email.priority,
        "send_after": email.send_after,
        "idempotency_key": email.idempotency_key,
        "kind": email.kind,
        "status": "pending",
        "attempts": 0,
        "message_id": message_id,
        "raw_message": raw,
        "created_at": now,
        "updated_at": now,
    }
    return _Prepared(row=row, key=email.idempotency_key, message_id=message_id)


_INSERTS: dict[str, sa.Insert] = {}


def _insert(session: Session):
    """``INSERT … ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, message_id``, built
    once per dialect (building it and its cache key costs more than running it)."""
    dialect = session.get_bind().dialect.name
    statement = _INSERTS.get(dialect)
    if statement is None:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        statement = _INSERTS[dialect] = (
            insert(email_queue)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(email_queue.c.id, email_queue.c.message_id)
        )
    return statement


# Bulk enqueue on PostgreSQL: from this many rows, COPY instead of a multi-row INSERT (about
# 3x faster for ~4 KB rows: no parameters to parse per row). Straight into the queue, not
# through bg_ops.db.bulk's staging table and INSERT … SELECT: one write per row instead of
# two, about 35% faster for these rows; in COPY's binary format, which the server stores
# without parsing (0.38 -> 0.22-0.28 s for 10,000 rows, B2, 2026-12-02).
COPY_MIN_ROWS = 50
# Columns NULL in most rows, and the ones with the same value in every row of a call.
_RARE_COLUMNS = ("cc_addrs", "bcc_addrs", "reply_to", "template", "context", "attachments", "send_after")
_RARE_ENCODERS = (binary_jsonb, binary_jsonb, binary_text, binary_text, binary_jsonb, binary_jsonb,
                  binary_timestamptz)
_CALL_COLUMNS = ("status", "attempts", "created_at", "updated_at")
_COPY_COLUMNS = (
    "id", "company_id", "to_addrs", "subject", "body_text", "body_html", "priority", "kind",
    "idempotency_key", "message_id", "raw_message", *_RARE_COLUMNS, *_CALL_COLUMNS,
)
_FIELD_COUNT = binary_fields(len(_COPY_COLUMNS))
_ALL_RARE_NULL = BINARY_NULL * len(_RARE_COLUMNS)
_COPY_SQL = f"COPY email_queue ({', '.join(_COPY_COLUMNS)}) FROM STDIN (FORMAT binary)"


def _copy_record(row_id: int, row: dict, call_values: dict) -> bytes:
    """One row of ``prepare`` in COPY's binary format, in ``_COPY_COLUMNS``' order: the rare
    columns encoded only when one is set, the call's own (status, times) once per call
    (``call_values``)."""
    rare = [row[c] for c in _RARE_COLUMNS]
    same = (row["status"], row["attempts"], row["created_at"], row["updated_at"])
    tail = call_values.get(same)
    if tail is None:
        tail = call_values[same] = (binary_text(same[0]) + binary_int4(same[1]) + binary_timestamptz(same[2])
                                    + binary_timestamptz(same[3]))
    return b"".join((
        _FIELD_COUNT, binary_int8(row_id), binary_int4(row["company_id"]), binary_jsonb(row["to_addrs"]),
        binary_text(row["subject"]), binary_text(row["body_text"]), binary_text(row["body_html"]),
        binary_text(row["priority"]), binary_text(row["kind"]), binary_text(row["idempotency_key"]),
        binary_text(row["message_id"]), binary_bytea(row["raw_message"]),
        _ALL_RARE_NULL if rare.count(None) == len(rare) else b"".join(
            [encode(value) for encode, value in zip(_RARE_ENCODERS, rare)]),
        tail,
    ))


def _queued_ids(session: Session, keys: Iterable[str]) -> dict[str, int]:
    """{key: id} of the messages already queued under these keys (on PostgreSQL one array
    parameter, however many keys)."""
    keys = list(keys)
    if not keys:
        return {}
    if session.get_bind().dialect.name == "postgresql":
        condition = email_queue.c.idempotency_key == sa.any_(sa.bindparam("keys", keys, type_=ARRAY(sa.String())))
    else:
        condition = email_queue.c.idempotency_key.in_(keys)
    return dict(session.execute(sa.select(email_queue.c.idempotency_key, email_queue.c.id).where(condition)).all())


def _copy_many(session: Session, emails: Sequence[Email], prepare_one) -> list[Enqueued] | None:
    """PostgreSQL, many messages: COPY the new ones into the queue, each prepared while the
    server stores the rows before it (``copy_from`` streams them), and return one ``Enqueued``
    per message.

    Keys already queued are looked up first and skipped, a key repeated in the call maps to
    its first message; ids come from the table's sequence. Every message is checked in order,
    written or not: the first ``EnqueueError`` aborts the COPY (undone to its savepoint) and is
    raised, so nothing is queued. A key queued by another transaction after the look-up makes
    the COPY fail on the unique index: it is undone and ``None`` is returned, so the caller
    falls back to ``INSERT … ON CONFLICT DO NOTHING``.
    """
    first_of_key: dict[str, int] = {}
    candidates = []
    for index, email in enumerate(emails):
        key = email.idempotency_key
        if key:
            if key in first_of_key:
                continue
            first_of_key[key] = index
        candidates.append(index)
    existing = _queued_ids(session, list(first_of_key))
    new = [i for i in candidates if emails[i].idempotency_key not in existing] if existing else candidates
    ids = session.execute(
        sa.text("SELECT nextval(pg_get_serial_sequence('email_queue', 'id')) FROM generate_series(1, :n)"),
        {"n": len(new)},
    ).scalars().all() if new else []
    id_of = dict(zip(new, ids))

    def records():
        # Every message is checked in the order given (the first bad one is the error raised,
        # as on every other path); only the new ones become rows.
        call_values: dict = {}
        for index, email in enumerate(emails):
            prepared = prepare_one(email)
            row_id = id_of.get(index)
            if row_id is not None:
                yield _copy_record(row_id, prepared.row, call_values)

    import psycopg2.errors

    try:
        with session.begin_nested():
            copy_from(session.connection(), _COPY_SQL, binary_copy(records()))
    except sa.exc.DBAPIError as exc:
        if isinstance(exc.orig, psycopg2.errors.UniqueViolation):
            return None
        raise
    except psycopg2.errors.UniqueViolation:
        return None
    out = []
    for index, email in enumerate(emails):
        row_id = id_of.get(index)
        if row_id is not None:
            out.append(Enqueued(id=row_id, created=True))
        else:
            key = email.idempotency_key
            out.append(Enqueued(id=existing.get(key) or id_of[first_of_key[key]], created=False))
    return out


def enqueue(session: Session, email: Email, *, now: datetime, settings: MailSettings) -> Enqueued:
    return enqueue_many(session, [email], now=now, settings=settings)[0]


def enqueue_many(
    session: Session, emails: Sequence[Email], *, now: datetime, settings: MailSettings,
    bodies_at_delivery: bool = False,
) -> list[Enqueued]:
    """Queue many messages in one transaction (the caller's). All or nothing: one invalid
    message raises ``EnqueueError`` before anything is written.

    ``bodies_at_delivery`` (templated mail without attachments, the daily reminder run):
    every message is checked and its subject rendered now, its bodies rendered and built by
    the delivery job — see ``bg_ops.defs.email.deferred``."""
    if not emails:
        return []
    companies = company_names(session, {e.company_id for e in emails})
    unknown = sorted({e.company_id for e in emails} - set(companies))
    if unknown:
        raise EnqueueError(
            f"unknown tenant company_id {unknown[0]}: no company has that id; check the company_id "
            "of the message"
        )
    deferred_checks: dict = {}

    def prepare_one(email: Email) -> _Prepared:
        return prepare(email, company=companies[email.company_id], settings=settings, now=now,
                       bodies_at_delivery=bodies_at_delivery, deferred_checks=deferred_checks)

    if len(emails) >= COPY_MIN_ROWS and session.get_bind().dialect.name == "postgresql":
        copied = _copy_many(session, emails, prepare_one)
        if copied is not None:
            return copied
    return insert_prepared(session, [prepare_one(e) for e in emails])


def insert_prepared(session: Session, prepared: Sequence[_Prepared]) -> list[Enqueued]:
    """Write checked rows into the queue (in the caller's transaction); one ``Enqueued`` per
    row, in order. A key already queued, or repeated in ``prepared``, returns the first
    message with that key."""
    # Keys already queued, and repeats inside this call, map to the first message with the key.
    # The insert skips keys already queued (ON CONFLICT DO NOTHING); only the keys it
    # skipped are looked up afterwards, so the usual call (new keys) is one statement.
    to_insert, seen = [], set()
    for p in prepared:
        if p.key and p.key in seen:
            continue
        if p.key:
            seen.add(p.key)
        to_insert.append(p.row)
    inserted: dict[str, int] = {}
    if to_insert:
        result = session.execute(_insert(session), to_insert if len(to_insert) > 1 else to_insert[0])
        inserted = {r.message_id: r.id for r in result}
    # Keys the insert skipped: queued before, by an earlier call or another transaction.
    existing = _queued_ids(session, {p.key for p in prepared if p.key and p.message_id not in inserted})

    out, first_for_key = [], {}
    for p in prepared:
        if p.message_id in inserted and (not p.key or p.key not in first_for_key):
            out.append(Enqueued(id=inserted[p.message_id], created=True))
            if p.key:
                first_for_key[p.key] = inserted[p.message_id]
        else:
            out.append(Enqueued(id=first_for_key.get(p.key) or existing[p.key], created=False))
    return out
