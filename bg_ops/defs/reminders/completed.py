"""Approval journey completed (R3), plain logic over a session.

``completed_after`` lists approvals completed after a (completed_at, id) cursor, across
tenants, for ``approval_completed_sensor``; ``notify_approval_completed`` tells the
stakeholders of one approval (the project's PM and every approver who took part, active users
of the tenant) once per completion: reminder_log rule ``approval_completed``, period = the
completion time, so a re-run or a second request sends nothing, and an approval completed
again later (after being reopened) is announced again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Approval, ApprovalStep, Company, Project, User
from bg_ops.db.types import parse_utc, utc_normalized
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.reminders.engine import Due
from bg_ops.defs.reminders.immediate import Notice, NoticeResult, notify_now
from bg_ops.defs.tenants.logic import Tenant

COMPLETED_NOTICE = Notice(rule="approval_completed", title="Approval completed", entity_type="approval",
                          kind="customer")
TOOK_PART = ("approved", "rejected")


@dataclass(frozen=True)
class Completed:
    approval_id: int
    company_id: int
    tenant_slug: str
    tenant_active: bool
    completed_at: datetime  # UTC

    @property
    def cursor(self) -> tuple[datetime, int]:
        return (self.completed_at, self.approval_id)


def completed_after(
    session: Session, cursor: tuple[datetime, int], until: datetime, limit: int = 200,
) -> list[Completed]:
    """Completed approvals with (completed_at, id) > ``cursor`` and completed_at <= ``until``, oldest first."""
    after_at, after_id = cursor
    rows = session.execute(
        sa.select(Approval.id, Approval.company_id, Approval.completed_at, Company.slug, Company.is_active)
        .join(Company, Company.id == Approval.company_id)
        # >= then an exact filter below: SQLite compares timestamps to the millisecond only.
        .where(Approval.status == "completed", Approval.completed_at.is_not(None),
               Approval.completed_at >= after_at, Approval.completed_at <= until)
        .order_by(utc_normalized(Approval.completed_at), Approval.id)
        .limit(limit + 50)
    ).all()
    found = sorted(
        (Completed(approval_id=r.id, company_id=r.company_id, tenant_slug=r.slug, tenant_active=bool(r.is_active),
                   completed_at=parse_utc(r.completed_at)) for r in rows),
        key=lambda c: c.cursor,
    )
    return [c for c in found if c.cursor > (parse_utc(after_at), after_id)][:limit]


def approval_completed_dues(session: Session, tenant: Tenant, approval_id: int) -> list[Due]:
    """The stakeholders of a completed approval of this tenant: PM first, then each approver once."""
    approval = session.execute(
        sa.select(Approval.id, Approval.title, Approval.completed_at, Project.name.label("project"),
                  Project.pm_id)
        .join(Project, sa.and_(Project.id == Approval.project_id, Project.company_id == tenant.id))
        .where(Approval.id == approval_id, Approval.company_id == tenant.id, Approval.status == "completed",
               Approval.completed_at.is_not(None))
    ).one_or_none()
    if approval is None:
        return []
    steps = session.execute(
        sa.select(ApprovalStep.stage, ApprovalStep.status, ApprovalStep.responded_at, ApprovalStep.approver_id,
                  User.full_name)
        .join(User, sa.and_(User.id == ApprovalStep.approver_id, User.company_id == tenant.id))
        .where(ApprovalStep.approval_id == approval_id)
        .order_by(ApprovalStep.stage, ApprovalStep.id)
    ).all()
    took_part = [s for s in steps if s.status in TOOK_PART or s.responded_at is not None]
    wanted: dict[int, str] = {}
    if approval.pm_id is not None:
        wanted[approval.pm_id] = "pm"
    for s in took_part:
        wanted.setdefault(s.approver_id, "approver")
    people = {
        u.id: u for u in session.execute(
            sa.select(User.id, User.email, User.full_name, User.timezone)
            .where(User.id.in_(wanted), User.company_id == tenant.id, User.is_active.is_(True))
        )
    }
    completed_at = parse_utc(approval.completed_at)
    completed_on = completed_at.astimezone(tenant.zone).strftime("%Y-%m-%d %H:%M")
    summary_steps = [
        {"stage": s.stage, "approver": s.full_name, "status": s.status,
         "responded_on": s.responded_at.astimezone(tenant.zone).date().isoformat() if s.responded_at else ""}
        for s in took_part
    ]
    return [
        Due(entity_id=approval.id, recipient_id=uid, email=people[uid].email, name=people[uid].full_name,
            timezone=people[uid].timezone, period=completed_at.isoformat(),
            context={"approval_id": approval.id, "title": approval.title, "project": approval.project,
                     "completed_on": completed_on, "steps": summary_steps, "role": role,
                     "headline": f"Approval completed: {approval.title}",
                     "summary": f"{approval.project}: completed {completed_on}"})
        for uid, role in wanted.items() if uid in people
    ]


def notify_approval_completed(
    session: Session, tenant: Tenant, approval_id: int, *, now: datetime, mail_settings: MailSettings,
    globally_off: frozenset[str] = frozenset(),
) -> NoticeResult:
    dues = approval_completed_dues(session, tenant, approval_id)
    return notify_now(session, COMPLETED_NOTICE, tenant, dues, now=now, mail_settings=mail_settings,
                      globally_off=globally_off)
