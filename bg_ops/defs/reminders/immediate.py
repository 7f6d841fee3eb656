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

from sqlalchemy.orm import Session

from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.reminders.engine import Due, deliver_reminders
from bg_ops.defs.tenants.logic import Tenant, switched_off_by


@dataclass(frozen=True)
class Notice:
    """What kind of notification: its rule (template ``reminder_<rule>``, switch ``reminders.<rule>``
    unless ``template_name`` / ``service_name`` name others, as billing and PTO notices do)."""

    rule: str
    title: str
    entity_type: str
    priority: str = "normal"
    kind: str = "internal"
    template_name: str | None = None
    service_name: str | None = None

    @property
    def template(self) -> str:
        return self.template_name or f"reminder_{self.rule}"

    @property
    def service(self) -> str:
        return self.service_name or f"reminders.{self.rule}"


@dataclass
class NoticeResult:
    found: int = 0
    enqueued: int = 0
    already_sent: int = 0
    switched_off: str | None = None

    def as_metadata(self) -> dict:
        return {"found": self.found, "enqueued": self.enqueued, "already_sent": self.already_sent,
                "switched_off": self.switched_off or "no"}


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
    result.enqueued, _digested, result.already_sent = deliver_reminders(
        session, tenant=tenant, rule=notice.rule, template=notice.template, title=notice.title,
        entity_type=notice.entity_type, priority=notice.priority, kind=notice.kind, keyed=keyed,
        run_date=now.astimezone(tenant.zone).date().isoformat(), now=now, mail_settings=mail_settings,
        send_at=lambda _due: now, digest=False,
    )
    return result
