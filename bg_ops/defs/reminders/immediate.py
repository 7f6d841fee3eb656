"""Notifications that go out now (calendar reminders R12, approval completed R3).

The same at-most-once mechanism as the daily engine (R14): one ``reminder_log`` row per
(rule, entity, recipient, period) inserted with ON CONFLICT DO NOTHING, and a mail plus an
in-app notification only for the rows inserted now. Unlike daily reminders, these are due at
once (send_after = now) and never gathered into the daily digest: they are about a moment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.own_schema import notifications, reminder_log
from bg_ops.defs.email.enqueue import Email, MailSettings, enqueue_many
from bg_ops.defs.reminders.engine import Due
from bg_ops.defs.tenants.logic import Tenant, switched_off_by


@dataclass(frozen=True)
class Notice:
    """What kind of notification: its rule (template ``reminder_<rule>``, switch ``reminders.<rule>``)."""

    rule: str
    title: str
    entity_type: str
    priority: str = "normal"
    kind: str = "internal"

    @property
    def template(self) -> str:
        return f"reminder_{self.rule}"

    @property
    def service(self) -> str:
        return f"reminders.{self.rule}"


@dataclass
class NoticeResult:
    found: int = 0
    enqueued: int = 0
    already_sent: int = 0
    switched_off: str | None = None

    def as_metadata(self) -> dict:
        return {"found": self.found, "enqueued": self.enqueued, "already_sent": self.already_sent,
                "switched_off": self.switched_off or "no"}


def _log_insert(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(reminder_log).on_conflict_do_nothing(
        index_elements=["company_id", "rule", "entity_id", "recipient_id", "period"]
    )


def notify_now(
    session: Session, notice: Notice, tenant: Tenant, dues: Iterable[Due], *, now: datetime,
    mail_settings: MailSettings, globally_off: frozenset[str] = frozenset(),
) -> NoticeResult:
    """Enqueue each due notification not sent before, due now; in the caller's transaction.

    Every ``Due`` must carry its ``period`` (what makes a repeat a new notification)."""
    result = NoticeResult()
    off = switched_off_by(notice.service, tenant.settings, globally_off)
    if off:
        result.switched_off = off
        return result
    keyed: dict[tuple[int, int, str], Due] = {}
    for due in dues:
        if not due.period:
            raise ValueError(f"{notice.rule}: a notification sent now needs a period")
        keyed.setdefault((due.entity_id, due.recipient_id, due.period), due)
    result.found = len(keyed)
    if not keyed:
        return result
    run_date = now.astimezone(tenant.zone).date().isoformat()
    inserted = session.execute(
        _log_insert(session).returning(
            reminder_log.c.id, reminder_log.c.entity_id, reminder_log.c.recipient_id, reminder_log.c.period),
        [{"company_id": tenant.id, "rule": notice.rule, "entity_id": e, "recipient_id": r, "period": p,
          "run_date": run_date, "digest": False, "created_at": now} for (e, r, p) in keyed],
    ).all()
    result.already_sent = len(keyed) - len(inserted)
    if not inserted:
        return result
    new = [(row.id, keyed[(row.entity_id, row.recipient_id, row.period)]) for row in inserted]
    queued = enqueue_many(session, [
        Email(company_id=tenant.id, to=[due.email], template=notice.template,
              context={**due.context, "recipient_name": due.name}, priority=notice.priority, kind=notice.kind,
              send_after=now,
              idempotency_key=f"reminder:{tenant.id}:{notice.rule}:{due.entity_id}:{due.recipient_id}:{due.period}")
        for _log_id, due in new
    ], now=now, settings=mail_settings)
    session.execute(
        sa.update(reminder_log).where(reminder_log.c.id == sa.bindparam("l_id")).values(email_id=sa.bindparam("l_email")),
        [{"l_id": log_id, "l_email": q.id} for (log_id, _), q in zip(new, queued, strict=True)],
    )
    session.execute(sa.insert(notifications), [
        {"company_id": tenant.id, "user_id": due.recipient_id, "kind": notice.rule, "entity_type": notice.entity_type,
         "entity_id": due.entity_id, "title": due.context.get("headline") or notice.title,
         "body": due.context.get("summary"), "created_at": now}
        for _log_id, due in new
    ])
    result.enqueued = len(queued)
    return result
