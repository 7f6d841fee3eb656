"""Operating the email queue: figures, the failed list, retry, cancel, cleanup, alerts.

Plain functions over a connection/session and ``now``, shared by the ``bg-ops emails``
commands, the dashboard asset and the delivery job. Operator reports (``show``, ``failed``)
return full addresses; nothing here logs them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Company
from bg_ops.db.own_schema import EMAIL_STATUSES
from bg_ops.db.own_schema import email_queue as q
from bg_ops.db.types import utc_normalized
from bg_ops.defs.email.delivery import DUE_AT, due_condition
from bg_ops.defs.email.enqueue import SYSTEM_COMPANY_ID, Email, MailSettings, enqueue

ALERT_TEMPLATE = "admin_failed_mail"
RETENTION_DAYS = 90


def _tenant_filter(stmt, company_id: int | None):
    return stmt.where(q.c.company_id == company_id) if company_id is not None else stmt


def stats(conn: sa.Connection, *, now: datetime, company_id: int | None = None) -> dict:
    """Counts per status (every status present, 0 when none) and the dashboard's figures."""
    counts = dict.fromkeys(EMAIL_STATUSES, 0)
    rows = conn.execute(_tenant_filter(sa.select(q.c.status, sa.func.count()).group_by(q.c.status), company_id))
    counts.update({status: int(n) for status, n in rows})
    due = conn.execute(
        _tenant_filter(
            sa.select(sa.func.count(), sa.func.min(utc_normalized(DUE_AT))).where(due_condition(now)), company_id
        )
    ).one()
    oldest_due_age = None
    if due[0]:
        oldest = conn.execute(
            _tenant_filter(
                sa.select(DUE_AT).where(due_condition(now)).order_by(utc_normalized(DUE_AT)).limit(1), company_id
            )
        ).scalar_one()
        oldest_due_age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else None
    hour_ago = now - timedelta(hours=1)
    recent = conn.execute(
        _tenant_filter(
            sa.select(
                sa.func.count().filter(q.c.sent_at >= hour_ago),
                sa.func.count().filter(q.c.failed_at >= hour_ago),
            ),
            company_id,
        )
    ).one()
    sent_1h, failed_1h = int(recent[0]), int(recent[1])
    finished = sent_1h + failed_1h
    return {
        **counts,
        "queued": sum(counts.values()),
        "due_now": int(due[0]),
        "oldest_due_age_seconds": oldest_due_age,
        "sent_last_hour": sent_1h,
        "failed_last_hour": failed_1h,
        "error_rate_last_hour": (failed_1h / finished) if finished else 0.0,
    }


@dataclass
class FailedMessage:
    id: int
    company_id: int
    to_addrs: list
    subject: str | None
    attempts: int
    last_error: str | None
    failed_at: datetime | None


def failed(conn: sa.Connection, *, limit: int = 50, company_id: int | None = None) -> list[FailedMessage]:
    rows = conn.execute(
        _tenant_filter(
            sa.select(q.c.id, q.c.company_id, q.c.to_addrs, q.c.subject, q.c.attempts, q.c.last_error, q.c.failed_at)
            .where(q.c.status == "failed")
            .order_by(q.c.failed_at.desc(), q.c.id.desc())
            .limit(limit),
            company_id,
        )
    )
    return [FailedMessage(**r._mapping) for r in rows]


def retry(conn: sa.Connection, *, now: datetime, ids: list[int] | None = None, all_failed: bool = False,
          company_id: int | None = None) -> list[int]:
    """Put failed (or canceled) messages back in the queue, due now, with fresh attempts."""
    if not ids and not all_failed:
        raise ValueError("say which messages: give --id ID (repeatable) or --all-failed")
    stmt = sa.update(q).values(
        status="pending", attempts=0, next_attempt_at=now, last_error=None, failed_at=None,
        canceled_at=None, alerted_at=None, locked_until=None, locked_by=None, updated_at=now,
    )
    if ids:
        stmt = stmt.where(q.c.id.in_(ids), q.c.status.in_(("failed", "canceled")))
    else:
        stmt = stmt.where(q.c.status == "failed")
    stmt = _tenant_filter(stmt, company_id)
    return [r.id for r in conn.execute(stmt.returning(q.c.id))]


def cancel(conn: sa.Connection, *, now: datetime, ids: list[int]) -> list[int]:
    """Cancel messages not yet sent (pending or failed); one being sent right now is left alone."""
    stmt = (
        sa.update(q)
        .where(q.c.id.in_(ids), q.c.status.in_(("pending", "failed")))
        .values(status="canceled", canceled_at=now, updated_at=now, next_attempt_at=None)
        .returning(q.c.id)
    )
    return [r.id for r in conn.execute(stmt)]


def past_retention(cutoff: datetime):
    """Mail past the retention (E12): sent or canceled before ``cutoff``. Failed mail stays until
    resolved (retried or canceled). Shared with the weekly cleanup (bg_ops.defs.maintenance)."""
    # The leading ``status IN`` is the condition of ix_email_queue_retention as written there:
    # SQLite uses a partial index only for a query that names its condition.
    return sa.and_(
        q.c.status.in_(("sent", "canceled")),
        sa.or_(
            sa.and_(q.c.status == "sent", q.c.sent_at < cutoff),
            sa.and_(q.c.status == "canceled", q.c.canceled_at < cutoff),
        ),
    )


def cleanup(conn: sa.Connection, *, now: datetime, older_than_days: int = RETENTION_DAYS,
            batch_size: int = 5000) -> int:
    """Delete sent (and canceled) mail older than the retention; failed mail stays until resolved."""
    cutoff = now - timedelta(days=older_than_days)
    total = 0
    while True:
        ids = conn.execute(sa.select(q.c.id).where(past_retention(cutoff)).limit(batch_size)).scalars().all()
        if not ids:
            return total
        total += conn.execute(sa.delete(q).where(q.c.id.in_(ids))).rowcount
        if len(ids) < batch_size:
            return total


def show(conn: sa.Connection, message_id: int) -> dict | None:
    row = conn.execute(sa.select(q).where(q.c.id == message_id)).mappings().one_or_none()
    if row is None:
        return None
    data = dict(row)
    raw = data.pop("raw_message")
    data["prebuilt_bytes"] = len(raw) if raw is not None else None
    if data["body_text"] is None and data["body_html"] is None and data["template"]:
        # Bodies rendered at delivery (reminders, plain-SQL rows): show what will be sent.
        from types import SimpleNamespace

        from bg_ops.defs.email.deferred import bodies_of
        from bg_ops.defs.email.enqueue import company_names
        from bg_ops.defs.email.rendering import TemplateError

        company = company_names(Session(bind=conn), {data["company_id"]}).get(data["company_id"])
        try:
            if company is None:
                raise TemplateError(f"unknown tenant company_id {data['company_id']}")
            data["body_text"], data["body_html"] = bodies_of(SimpleNamespace(**row), company)
            data["bodies"] = f"rendered at delivery from template {data['template']!r} (preview)"
        except TemplateError as exc:
            data["bodies"] = f"will fail at delivery: {exc}"
    return data


def alert_failed(session: Session, *, now: datetime, settings: MailSettings, admin_emails: list[str],
                 limit: int = 200) -> int | None:
    """Queue one admin mail listing every message that failed for good and was not yet
    reported; return its id (None when there is nothing to report or nobody to tell)."""
    rows = session.execute(
        sa.select(q.c.id, q.c.company_id, q.c.attempts, q.c.last_error)
        .where(q.c.status == "failed", q.c.alerted_at.is_(None))
        .order_by(q.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # two workers alerting at once report disjoint rows
    ).all()
    if not rows:
        return None
    # An alert that itself failed is marked, not alerted about again (no alert loops).
    loops = [r.id for r in rows if r.company_id == SYSTEM_COMPANY_ID]
    rows = [r for r in rows if r.company_id != SYSTEM_COMPANY_ID]
    alert_id = None
    if rows and admin_emails:
        slugs = dict(session.execute(sa.select(Company.id, Company.slug).where(
            Company.id.in_({r.company_id for r in rows}))).all())
        messages = [
            {"id": r.id, "tenant": slugs.get(r.company_id, f"company {r.company_id}"),
             "attempts": r.attempts, "error": r.last_error or "unknown error"}
            for r in rows
        ]
        # The time is part of the key: a message retried and failed again is a new failure.
        listed = ",".join(str(r.id) for r in rows) + "@" + now.isoformat()
        key = "admin-failed-mail:" + hashlib.sha256(listed.encode()).hexdigest()[:32]
        alert_id = enqueue(
            session,
            Email(company_id=SYSTEM_COMPANY_ID, to=list(admin_emails), template=ALERT_TEMPLATE,
                  context={"messages": messages}, priority="high", idempotency_key=key),
            now=now, settings=settings,
        ).id
    marked = loops + ([r.id for r in rows] if alert_id is not None else [])
    if marked:
        session.execute(sa.update(q).where(q.c.id.in_(marked)).values(alerted_at=now, updated_at=now))
    return alert_id
