"""The reminder engine: run one rule for one tenant on one (tenant-local) day.

A rule is a set-based query that returns who is due what (``Due`` rows: the entity, the
recipient, the template context). The engine checks every reminder first (the recipient's
address, that the context holds every variable the template names, the subject rendered),
then, in one transaction:

1. inserts one ``reminder_log`` row per (rule, entity, recipient, period) with ON CONFLICT DO
   NOTHING: only rows inserted now are new, so a reminder goes out at most once whatever
   runs, retries, backfills or concurrent runs happen (R14);
2. queues a mail for each new reminder, timed for the send hour (default 08:00) in the
   recipient's zone (falling back to the tenant's) on the run day — or, for tenants with the
   daily digest on (R16), leaves it for ``send_digests`` to gather into one mail per person;
3. writes an in-app notification row per new reminder.

On PostgreSQL the three are one statement per chunk (``_write_pg``). A template or address
error in a reminder not sent before raises ``EnqueueError`` before anything is written, so a
retry of the rule starts clean.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.bulk import (
    binary_copy,
    binary_fields,
    binary_int4,
    binary_int8,
    binary_jsonb,
    binary_text,
    binary_timestamptz,
    copy_from,
    insert_rows,
)
from bg_ops.db.own_schema import notifications, reminder_log
from bg_ops.defs.email.deferred import DeferredCheck
from bg_ops.defs.email.enqueue import Email, EnqueueError, MailSettings, enqueue_many
from bg_ops.defs.email.message import AddressError, message_id_domain, parse_addresses
from bg_ops.defs.email.rendering import TemplateError
from bg_ops.defs.tenants.logic import Tenant, switched_off_by

DEFAULT_SEND_HOUR = 8  # in inboxes before 09:00 local (R10, seed 003)
DELIVER_CHUNK = 2000  # reminders checked, logged, mailed and notified per round (memory, B8)


def zone_of(name: str | None, fallback: ZoneInfo) -> ZoneInfo:
    try:
        return ZoneInfo(name) if name else fallback
    except (ZoneInfoNotFoundError, ValueError):
        return fallback


@dataclass(frozen=True)
class RuleContext:
    """What a rule's query needs: the tenant, its local run day, and ``now``."""

    tenant: Tenant
    day: date
    now: datetime

    @property
    def zone(self) -> ZoneInfo:
        return self.tenant.zone

    def day_start(self, offset_days: int = 0) -> datetime:
        """The UTC instant the tenant-local day ``day + offset_days`` begins (DST-correct)."""
        local = datetime.combine(self.day + timedelta(days=offset_days), time.min, tzinfo=self.zone)
        return local.astimezone(ZoneInfo("UTC"))

    def setting(self, key: str, default: int) -> int:
        """A per-tenant threshold from ``companies.settings`` (``reminders.<key>``)."""
        value = self.tenant.settings.get(f"reminders.{key}", default)
        valid = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return value if valid else default


@dataclass(slots=True)
class Due:
    """One reminder for one person (a rule makes thousands: slots, not frozen, are quick to make)."""

    entity_id: int
    recipient_id: int
    email: str
    name: str
    timezone: str | None
    context: dict
    period: str | None = None  # defaults to the run day (a daily reminder)


@dataclass(frozen=True)
class Rule:
    name: str
    requirement: str
    title: str
    entity_type: str
    find: Callable[[Session, RuleContext], Iterable[Due]]
    priority: str = "normal"
    kind: str = "internal"
    description: str = ""

    @property
    def template(self) -> str:
        return f"reminder_{self.name}"

    @property
    def service(self) -> str:
        return f"reminders.{self.name}"


@dataclass
class RuleResult:
    rule: str
    found: int = 0
    enqueued: int = 0
    digested: int = 0
    already_sent: int = 0
    switched_off: str | None = None
    preview: list[dict] = field(default_factory=list)

    def as_metadata(self) -> dict:
        return {
            "found": self.found, "enqueued": self.enqueued, "digested": self.digested,
            "already_sent": self.already_sent, "switched_off": self.switched_off or "no",
        }


def send_times(ctx: RuleContext) -> Callable[[str | None], datetime]:
    """When a reminder of this run goes out, as a function of the recipient's zone: the send
    hour (default 08:00) on the run day there, falling back to the tenant's zone."""
    hour = min(max(ctx.setting("send_hour", DEFAULT_SEND_HOUR), 0), 23)
    day, zone = ctx.day, ctx.zone
    return lambda recipient_zone: _send_instant(day, hour, recipient_zone, zone)


@lru_cache(maxsize=4096)
def _send_instant(day: date, hour: int, recipient_zone: str | None, fallback: ZoneInfo) -> datetime:
    """``hour`` o'clock on ``day`` in the recipient's zone, in UTC (thousands of reminders share a few)."""
    zone = zone_of(recipient_zone, fallback)
    return datetime.combine(day, time(hour=hour), tzinfo=zone).astimezone(ZoneInfo("UTC"))


# One reminder per (rule, entity, recipient, period) and tenant: the unique key of reminder_log (R14).
LOG_KEY = ("company_id", "rule", "entity_id", "recipient_id", "period")


@lru_cache(maxsize=None)
def _pg_log_update(column: str):
    """``UPDATE reminder_log SET <column> = v.l_value FROM unnest(:l_ids, :l_values) AS v …``,
    built once per column."""
    from sqlalchemy.dialects.postgresql import ARRAY

    rows = sa.func.unnest(
        sa.bindparam("l_ids", type_=ARRAY(sa.BigInteger)),
        sa.bindparam("l_values", type_=ARRAY(reminder_log.c[column].type)),
    ).table_valued("l_id", "l_value").render_derived(name="v")
    return sa.update(reminder_log).where(reminder_log.c.id == rows.c.l_id).values({column: rows.c.l_value})


def _update_log(session: Session, column: str, values: dict[int, object]) -> None:
    """Set ``reminder_log.<column>`` to ``values[id]`` for every id in ``values``.

    On PostgreSQL this is one statement whatever the number of rows: an executemany UPDATE is
    one round trip per row with psycopg2 (B3: 0.8 s of a 4,400-reminder run). SQLite runs in
    the process, where executemany is cheap."""
    if not values:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_pg_log_update(column), {"l_ids": list(values), "l_values": list(values.values())})
    else:
        session.execute(
            sa.update(reminder_log).where(reminder_log.c.id == sa.bindparam("l_id"))
            .values({column: sa.bindparam("l_value")}),
            [{"l_id": log_id, "l_value": value} for log_id, value in values.items()],
        )


def run_rule(
    session: Session,
    rule: Rule,
    ctx: RuleContext,
    *,
    mail_settings: MailSettings,
    globally_off: frozenset[str] = frozenset(),
    dry_run: bool = False,
) -> RuleResult:
    result = RuleResult(rule=rule.name)
    off = switched_off_by(rule.service, ctx.tenant.settings, globally_off)
    if off:
        result.switched_off = off
        return result
    dues = list(rule.find(session, ctx))
    if not dues:
        return result
    day = ctx.day.isoformat()
    keyed = {}
    for due in dues:  # one reminder per person, even when they hold two roles (PM and approver)
        keyed.setdefault((due.entity_id, due.recipient_id, due.period or day), due)
    result.found = len(keyed)
    send_at = send_times(ctx)
    if dry_run:
        sent = set(
            session.execute(
                sa.select(reminder_log.c.entity_id, reminder_log.c.recipient_id, reminder_log.c.period).where(
                    reminder_log.c.company_id == ctx.tenant.id, reminder_log.c.rule == rule.name,
                    reminder_log.c.period.in_({k[2] for k in keyed}),
                )
            ).all()
        )
        for (entity_id, recipient_id, period), due in keyed.items():
            result.preview.append({
                "rule": rule.name, "entity_id": entity_id, "recipient": due.email, "name": due.name,
                "what": due.context.get("headline") or rule.title,
                "period": period, "already_sent": (entity_id, recipient_id, period) in sent,
                "send_at": send_at(due.timezone).isoformat(),
            })
        result.already_sent = sum(1 for p in result.preview if p["already_sent"])
        return result

    delivered = deliver_reminders(
        session, tenant=ctx.tenant, rule=rule.name, template=rule.template, title=rule.title,
        entity_type=rule.entity_type, priority=rule.priority, kind=rule.kind, keyed=keyed, run_date=day,
        now=ctx.now, mail_settings=mail_settings, send_at=lambda due: send_at(due.timezone),
        digest=bool(ctx.tenant.settings.get("digest")),
    )
    result.enqueued, result.digested, result.already_sent = delivered
    return result


def deliver_reminders(
    session: Session,
    *,
    tenant: Tenant,
    rule: str,
    template: str,
    title: str,
    entity_type: str,
    priority: str,
    kind: str,
    keyed: dict[tuple[int, int, str], Due],
    run_date: str,
    now: datetime,
    mail_settings: MailSettings,
    send_at: Callable[[Due], datetime],
    digest: bool,
) -> tuple[int, int, int]:
    """Log, mail and notify the reminders not sent before; return (enqueued, digested, already sent).

    ``keyed`` maps (entity, recipient, period) to its ``Due``. Every reminder is checked first
    (its address, that its context holds every variable the template names, its subject
    rendered; the first one rendered whole), so a bad one raises ``EnqueueError`` before
    anything is written — unless it was sent before, when it no longer matters. The
    ``reminder_log`` insert with ON CONFLICT DO NOTHING then decides which are new (R14); only
    those are mailed — now, bodies rendered at delivery (``email/deferred.py``), or for the
    digest — and get an in-app notification. Runs in the caller's transaction.

    The reminders go through in chunks of ``DELIVER_CHUNK`` so memory stays flat however many
    are due (B8)."""
    check = DeferredCheck(template, (tenant.name, tenant.slug))
    items = list(keyed.items())
    enqueued = digested = already_sent = 0
    for start in range(0, len(items), DELIVER_CHUNK):
        chunk = _checked(session, tenant=tenant, rule=rule, check=check, send_at=send_at,
                         items=items[start:start + DELIVER_CHUNK])
        already_sent += len(items[start:start + DELIVER_CHUNK]) - len(chunk)
        if not chunk:
            continue
        write = _write_pg if session.get_bind().dialect.name == "postgresql" else _write_generic
        logged, mailed = write(session, tenant=tenant, rule=rule, template=template, title=title,
                               entity_type=entity_type, priority=priority, kind=kind, chunk=chunk,
                               run_date=run_date, now=now, mail_settings=mail_settings, digest=digest)
        already_sent += len(chunk) - logged
        if digest:
            digested += logged
        else:
            enqueued += mailed
    return enqueued, digested, already_sent


class _Checked(NamedTuple):
    """One reminder checked and ready to write: its mail is what ``enqueue_many(...,
    bodies_at_delivery=True)`` would queue (a named tuple: thousands are made per rule)."""

    entity_id: int
    recipient_id: int
    period: str
    email: str
    context: dict  # the rule's context and recipient_name
    subject: str
    send_after: datetime


def _key(tenant_id: int, rule: str, c: _Checked) -> str:
    """The reminder's idempotency key in the queue (``_REMINDER_KEY`` builds the same in SQL)."""
    return f"reminder:{tenant_id}:{rule}:{c.entity_id}:{c.recipient_id}:{c.period}"


def _checked(session, *, tenant, rule, check, send_at, items) -> list[_Checked]:
    out, refused = [], {}
    def where(entity_id, recipient_id) -> str:
        return f"{rule} reminder about {entity_id} for user {recipient_id} of tenant {tenant.slug}"

    for (entity_id, recipient_id, period), due in items:
        context = {**due.context, "recipient_name": due.name}
        if _address_problem(due.email):  # the address itself stays out of the message (logs)
            refused[(entity_id, recipient_id, period)] = (
                f"{where(entity_id, recipient_id)}: the user's email is not a valid address: fix users.email of "
                f"user {recipient_id}")
            continue
        try:
            subject = check.subject(context)
        except TemplateError as exc:
            refused[(entity_id, recipient_id, period)] = f"{where(entity_id, recipient_id)}: {exc}"
            continue
        out.append(_Checked(entity_id, recipient_id, period, due.email.strip(), context, subject, send_at(due)))
    if refused:  # a reminder sent before is not sent again: its error no longer matters
        logged = {tuple(row) for row in session.execute(
            sa.select(reminder_log.c.entity_id, reminder_log.c.recipient_id, reminder_log.c.period).where(
                reminder_log.c.company_id == tenant.id, reminder_log.c.rule == rule,
                reminder_log.c.entity_id.in_({k[0] for k in refused}))
        )}
        for key, message in refused.items():
            if key not in logged:
                raise EnqueueError(message)
    return out


@lru_cache(maxsize=65536)
def _address_problem(address: str) -> bool:
    """True when a recipient's address is not one; remembered, as users' addresses repeat
    across rules and runs."""
    try:
        parse_addresses([address], "to")
    except AddressError:
        return True
    return False

# PostgreSQL: a chunk is one COPY into a temporary table and one statement that logs the
# reminders (ON CONFLICT DO NOTHING decides which are new), queues their mail under email ids
# taken from the queue's sequence and writes their notifications: about a fifth of the time of
# the same rows written table by table from Python (B3). (The rows as arrays unnested in the
# statement instead of COPY: 20% slower, the server parsing array literals.)
_BATCH = "_reminder_batch"
_BATCH_COLUMNS = ("entity_id bigint, recipient_id integer, period text, email text, subject text, context jsonb, "
                  "send_after timestamptz")
_PREPARE_BATCH = (f"CREATE TEMP TABLE IF NOT EXISTS {_BATCH} ({_BATCH_COLUMNS}) ON COMMIT DELETE ROWS; "
                  f"DELETE FROM {_BATCH}")
# What the writers in Python make from a checked reminder, made by the server from the batch:
# the idempotency key (``_key``), the Message-ID (``message_id_for``: the first 40 hex digits of
# the key's SHA-256 at the sender's domain) and the notification's title and body.
_REMINDER_KEY = "'reminder:' || :cid || ':' || :rule || ':' || b.entity_id || ':' || b.recipient_id || ':' || b.period"
_WRITE_PG = sa.text(f"""
WITH log AS (
    INSERT INTO reminder_log (company_id, rule, entity_id, recipient_id, period, run_date, digest, subject,
                              email_id, created_at, entity_type)
    SELECT :cid, :rule, b.entity_id, b.recipient_id, b.period, :run_date, :digest,
           CASE WHEN :digest THEN b.subject END,
           CASE WHEN :digest THEN NULL
                ELSE nextval(CAST((SELECT pg_get_serial_sequence('email_queue', 'id')) AS regclass)) END,
           :now, :entity_type
    FROM {_BATCH} b
    ON CONFLICT (company_id, rule, entity_id, recipient_id, period) DO NOTHING
    RETURNING entity_id, recipient_id, period, email_id
), mail AS (
    INSERT INTO email_queue (id, company_id, to_addrs, subject, template, context, priority, send_after,
                             idempotency_key, kind, status, attempts, message_id, created_at, updated_at)
    SELECT log.email_id, :cid, jsonb_build_array(b.email), b.subject, :template, b.context, :priority,
           b.send_after, k.key, :kind, 'pending', 0,
           '<' || left(encode(sha256(convert_to(k.key, 'UTF8')), 'hex'), 40) || '@' || :domain || '>', :now, :now
    FROM log JOIN {_BATCH} b USING (entity_id, recipient_id, period), LATERAL (SELECT {_REMINDER_KEY} AS key) k
    WHERE log.email_id IS NOT NULL
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), note AS (
    INSERT INTO notifications (company_id, user_id, kind, entity_type, entity_id, title, body, created_at)
    SELECT :cid, b.recipient_id, :rule, :entity_type, b.entity_id,
           coalesce(nullif(b.context ->> 'headline', ''), :title), b.context ->> 'summary', :now
    FROM log JOIN {_BATCH} b USING (entity_id, recipient_id, period)
)
SELECT (SELECT count(*) FROM log) AS logged, (SELECT count(*) FROM log WHERE email_id IS NOT NULL) AS to_mail,
       (SELECT count(*) FROM mail) AS mailed
""")
# A mail queued under the same idempotency key before (its reminder_log row was lost): the log
# points at that mail, which is not queued twice.
_REPAIR_PG = sa.text(f"""
UPDATE reminder_log l SET email_id = q.id
FROM {_BATCH} b JOIN email_queue q ON q.idempotency_key = {_REMINDER_KEY}
WHERE l.company_id = :cid AND l.rule = :rule AND l.entity_id = b.entity_id AND l.recipient_id = b.recipient_id
  AND l.period = b.period AND l.email_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM email_queue e WHERE e.id = l.email_id)
""")


def _write_pg(session, *, tenant, rule, template, title, entity_type, priority, kind, chunk, run_date, now,
              mail_settings, digest) -> tuple[int, int]:
    """Write one checked chunk on PostgreSQL; return (reminders logged now, mails queued)."""
    conn = session.connection()
    # The table lives as long as the connection and is emptied by each commit; a chunk written
    # earlier in the same transaction is cleared in the same round trip as the table is made.
    # (Created in the transaction, not when connecting, so it works behind PgBouncer's
    # transaction pooling too.)
    conn.exec_driver_sql(_PREPARE_BATCH)
    fields = binary_fields(7)
    records = [
        b"".join((fields, binary_int8(c.entity_id), binary_int4(c.recipient_id), binary_text(c.period),
                  binary_text(c.email), binary_text(c.subject), binary_jsonb(c.context),
                  binary_timestamptz(c.send_after)))
        for c in chunk
    ]
    copy_from(conn, f"COPY {_BATCH} FROM STDIN (FORMAT binary)", binary_copy(records))
    params = {"cid": tenant.id, "rule": rule, "run_date": run_date,
              "digest": digest, "now": now, "entity_type": entity_type, "template": template, "title": title,
              "priority": priority, "kind": kind, "domain": message_id_domain(mail_settings.mail_from)}
    counts = conn.execute(_WRITE_PG, params).one()
    if counts.mailed < counts.to_mail:
        conn.execute(_REPAIR_PG, {"cid": tenant.id, "rule": rule})
    return counts.logged, counts.mailed


def _write_generic(session, *, tenant, rule, template, title, entity_type, priority, kind, chunk, run_date, now,
                   mail_settings, digest) -> tuple[int, int]:
    """Write one checked chunk table by table (SQLite); return (reminders logged now, mails queued)."""
    by_key = {(c.entity_id, c.recipient_id, c.period): c for c in chunk}
    inserted = insert_rows(session, reminder_log, [
        {"company_id": tenant.id, "rule": rule, "entity_id": c.entity_id, "recipient_id": c.recipient_id,
         "period": c.period, "run_date": run_date, "digest": digest, "subject": c.subject if digest else None,
         "created_at": now, "entity_type": entity_type}
        for c in chunk
    ], returning=("id", "entity_id", "recipient_id", "period"), conflict_columns=LOG_KEY)
    new = [(row.id, by_key[(row.entity_id, row.recipient_id, row.period)]) for row in inserted]
    mailed = 0
    if new and not digest:
        emails = [
            Email(company_id=tenant.id, to=[c.email], subject=c.subject, template=template, context=c.context,
                  priority=priority, kind=kind, send_after=c.send_after, idempotency_key=_key(tenant.id, rule, c))
            for _log_id, c in new
        ]
        # Checked above, subject given: bodies rendered at delivery (email/deferred.py).
        queued = enqueue_many(session, emails, now=now, settings=mail_settings, bodies_at_delivery=True)
        _update_log(session, "email_id", {log_id: q.id for (log_id, _), q in zip(new, queued, strict=True)})
        mailed = sum(1 for q in queued if q.created)
    insert_rows(session, notifications, [
        {"company_id": tenant.id, "user_id": c.recipient_id, "kind": rule, "entity_type": entity_type,
         "entity_id": c.entity_id, "title": c.context.get("headline") or title,
         "body": c.context.get("summary"), "created_at": now}
        for _log_id, c in new
    ])
    return len(new), mailed


def send_digests(session: Session, ctx: RuleContext, *, mail_settings: MailSettings) -> int:
    """One mail per person gathering the day's digested reminders (tenants with ``digest``)."""
    from bg_ops.db.app_schema import User

    day = ctx.day.isoformat()
    pending = session.execute(
        sa.select(reminder_log.c.id, reminder_log.c.recipient_id, reminder_log.c.rule, reminder_log.c.subject)
        .where(reminder_log.c.company_id == ctx.tenant.id, reminder_log.c.run_date == day,
               reminder_log.c.digest.is_(True), reminder_log.c.email_id.is_(None))
        .order_by(reminder_log.c.recipient_id, reminder_log.c.id)
    ).all()
    if not pending:
        return 0
    by_person: dict[int, list] = defaultdict(list)
    for row in pending:
        by_person[row.recipient_id].append(row)
    people = {
        u.id: u for u in session.execute(
            sa.select(User.id, User.email, User.full_name, User.timezone).where(
                User.company_id == ctx.tenant.id, User.id.in_(by_person), User.is_active.is_(True))
        )
    }
    emails, log_ids = [], []
    send_at = send_times(ctx)
    for person_id, items in by_person.items():
        user = people.get(person_id)
        if user is None:  # deactivated since: nothing to send
            continue
        emails.append(Email(
            company_id=ctx.tenant.id, to=[user.email], template="reminder_digest",
            context={"recipient_name": user.full_name, "day": day,
                     "items": [{"rule": r.rule, "subject": r.subject} for r in items]},
            send_after=send_at(user.timezone),
            idempotency_key=f"digest:{ctx.tenant.id}:{person_id}:{day}",
        ))
        log_ids.append([r.id for r in items])
    queued = enqueue_many(session, emails, now=ctx.now, settings=mail_settings)
    _update_log(session, "email_id", {
        log_id: q.id for ids, q in zip(log_ids, queued, strict=True) for log_id in ids
    })
    return len(queued)
