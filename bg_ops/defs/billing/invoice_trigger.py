"""Invoice trigger (B1), plain logic over a session.

When the platform marks a project billable (``status = 'billable'``, ``billable_at`` set), finance
gets one billing task (``tasks.kind = 'billing'``, "Invoice: <project>", linked to the project,
due at 17:00 tenant-local three days after it is created) assigned to the tenant's first active
finance user by id, and every active finance user of the tenant gets a mail. With no active
finance user the task stays unassigned and the tenant's active admins get the mail instead.

Exactly once per billable event: the task is created in the same transaction as a
``billing_triggers`` row keyed (company_id, project_id, billable_at) and inserted with ON
CONFLICT DO NOTHING, so a sensor that re-evaluates, a retried or repeated run, or two runs at once
create one task. The mails go through ``notify_now`` (reminder_log rule ``billing_task_created``,
entity = project, period = billable_at): once per person and event. A project made billable again
later (a new ``billable_at``) is a new event with a new task.

``billable_after`` lists billable events after a (billable_at, id) cursor across tenants, for
``billable_project_sensor``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Company, Project, Task, User
from bg_ops.db.own_schema import billing_triggers
from bg_ops.db.types import parse_utc, utc_normalized
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.reminders.engine import Due
from bg_ops.defs.reminders.immediate import Notice, NoticeResult, notify_now
from bg_ops.defs.tenants.logic import Tenant, switched_off_by

SERVICE = "billing.invoice_trigger"  # companies.settings / service_switches key
BILLABLE_STATUS = "billable"
DUE_IN_DAYS = 3
DUE_HOUR = 17  # end of the local working day
FINANCE_ROLE = "finance"
ADMIN_ROLE = "admin"

BILLING_NOTICE = Notice(rule="billing_task_created", title="Billing task created", entity_type="project",
                        template_name="billing_task_created", service_name=SERVICE)


@dataclass(frozen=True)
class BillableEvent:
    project_id: int
    company_id: int
    tenant_slug: str
    tenant_active: bool
    billable_at: datetime  # UTC

    @property
    def cursor(self) -> tuple[datetime, int]:
        return (self.billable_at, self.project_id)


def billable_after(
    session: Session, cursor: tuple[datetime, int], until: datetime, limit: int = 200,
) -> list[BillableEvent]:
    """Billable projects with (billable_at, id) > ``cursor`` and billable_at <= ``until``, oldest first."""
    after_at, after_id = cursor
    rows = session.execute(
        sa.select(Project.id, Project.company_id, Project.billable_at, Company.slug, Company.is_active)
        .join(Company, Company.id == Project.company_id)
        # >= then an exact filter below: SQLite compares timestamps to the millisecond only.
        .where(Project.status == BILLABLE_STATUS, Project.billable_at.is_not(None),
               Project.billable_at >= after_at, Project.billable_at <= until)
        .order_by(utc_normalized(Project.billable_at), Project.id)
        .limit(limit + 50)
    ).all()
    found = sorted(
        (BillableEvent(project_id=r.id, company_id=r.company_id, tenant_slug=r.slug,
                       tenant_active=bool(r.is_active), billable_at=parse_utc(r.billable_at)) for r in rows),
        key=lambda e: e.cursor,
    )
    return [e for e in found if e.cursor > (parse_utc(after_at), after_id)][:limit]


@dataclass
class BillingTaskResult:
    project_id: int
    billable_at: datetime
    task_id: int | None = None
    created: bool = False
    assignee_id: int | None = None
    skipped: str | None = None  # why no task exists for the event (switched off, not billable …)
    notice: NoticeResult = field(default_factory=NoticeResult)

    def as_metadata(self) -> dict:
        return {"project_id": self.project_id, "billable_at": self.billable_at.isoformat(),
                "task_id": self.task_id if self.task_id is not None else "none",
                "task_created": self.created, "assigned": self.assignee_id is not None,
                "skipped": self.skipped or "no", "mails_enqueued": self.notice.enqueued,
                "mails_already_sent": self.notice.already_sent}


def _trigger_insert(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(billing_triggers).on_conflict_do_nothing(
        index_elements=["company_id", "project_id", "billable_at"]
    )


def _active_by_role(session: Session, tenant: Tenant, role: str) -> list:
    return session.execute(
        sa.select(User.id, User.email, User.full_name, User.timezone)
        .where(User.company_id == tenant.id, User.role == role, User.is_active.is_(True))
        .order_by(User.id)
    ).all()


def due_at_for(tenant: Tenant, now: datetime) -> datetime:
    """17:00 tenant-local, ``DUE_IN_DAYS`` local days after ``now`` (DST-correct), in UTC."""
    local_day = now.astimezone(tenant.zone).date() + timedelta(days=DUE_IN_DAYS)
    return datetime.combine(local_day, time(hour=DUE_HOUR), tzinfo=tenant.zone).astimezone(UTC)


def _existing_trigger(session: Session, tenant: Tenant, project_id: int, billable_at: datetime):
    # Equality through the normalised comparison: rows match whatever text form SQLite holds.
    return session.execute(
        sa.select(billing_triggers.c.task_id, billing_triggers.c.assignee_id)
        .where(billing_triggers.c.company_id == tenant.id, billing_triggers.c.project_id == project_id,
               billing_triggers.c.billable_at == billable_at)
    ).first()


def create_billing_task(
    session: Session, tenant: Tenant, project_id: int, billable_at: datetime, *, now: datetime,
    mail_settings: MailSettings, globally_off: frozenset[str] = frozenset(),
) -> BillingTaskResult:
    """Create the billing task of one billable event of this tenant's project (once) and tell
    finance (once per person); in the caller's transaction."""
    billable_at = parse_utc(billable_at)
    result = BillingTaskResult(project_id=project_id, billable_at=billable_at)
    off = switched_off_by(SERVICE, tenant.settings, globally_off)
    if off:
        result.skipped = f"switched off ({off})"
        return result
    project = session.execute(
        sa.select(Project.id, Project.name, Project.client_name, Project.status, Project.billable_at)
        .where(Project.id == project_id, Project.company_id == tenant.id)
    ).one_or_none()
    if project is None:
        result.skipped = "no such project in this tenant"
        return result

    existing = _existing_trigger(session, tenant, project_id, billable_at)
    if existing is None:
        current = parse_utc(project.billable_at) if project.billable_at is not None else None
        if project.status != BILLABLE_STATUS or current != billable_at:
            result.skipped = (f"the project is no longer billable since {billable_at.isoformat()} "
                              f"(status {project.status}, billable_at {current.isoformat() if current else 'none'})")
            return result
        finance = _active_by_role(session, tenant, FINANCE_ROLE)
        assignee_id = finance[0].id if finance else None
        trigger_id = session.execute(
            _trigger_insert(session).returning(billing_triggers.c.id),
            {"company_id": tenant.id, "project_id": project_id, "billable_at": billable_at,
             "assignee_id": assignee_id, "created_at": now},
        ).scalar_one_or_none()
        if trigger_id is not None:
            task_id = session.execute(
                sa.insert(Task.__table__).returning(Task.__table__.c.id),
                {"company_id": tenant.id, "project_id": project_id, "title": task_title(project.name),
                 "assignee_id": assignee_id, "due_at": due_at_for(tenant, now), "status": "open",
                 "kind": "billing"},
            ).scalar_one()
            session.execute(sa.update(billing_triggers).where(billing_triggers.c.id == trigger_id)
                            .values(task_id=task_id))
            result.created = True
            result.task_id, result.assignee_id = task_id, assignee_id
        else:  # a concurrent run created it a moment ago
            existing = _existing_trigger(session, tenant, project_id, billable_at)
    if existing is not None:
        result.task_id, result.assignee_id = existing.task_id, existing.assignee_id

    # Notify even when the task existed: notify_now sends only what was not sent before.
    task = session.execute(sa.select(Task.title, Task.due_at).where(Task.id == result.task_id)).one_or_none()
    if task is None:
        return result
    result.notice = notify_now(
        session, BILLING_NOTICE, tenant,
        billing_dues(session, tenant, project, billable_at, task, result.assignee_id),
        now=now, mail_settings=mail_settings, globally_off=globally_off,
    )
    return result


def task_title(project_name: str) -> str:
    return f"Invoice: {project_name}"


def billing_dues(session: Session, tenant: Tenant, project, billable_at: datetime, task,
                 assignee_id: int | None) -> list[Due]:
    """Every active finance user of the tenant; its active admins when it has none."""
    recipients, role = _active_by_role(session, tenant, FINANCE_ROLE), FINANCE_ROLE
    if not recipients:
        recipients, role = _active_by_role(session, tenant, ADMIN_ROLE), ADMIN_ROLE
    assignee = None
    if assignee_id is not None:
        assignee = session.execute(sa.select(User.full_name).where(User.id == assignee_id)).scalar_one_or_none()
    billable_on = billable_at.astimezone(tenant.zone).date().isoformat()
    due_on = parse_utc(task.due_at).astimezone(tenant.zone).strftime("%Y-%m-%d %H:%M") if task.due_at else ""
    context = {"project_id": project.id, "project": project.name, "client": project.client_name or "",
               "billable_on": billable_on, "task_title": task.title, "due_on": due_on,
               "assignee_name": assignee or "", "role": role,
               "headline": task.title,
               "summary": f"{project.name} became billable on {billable_on}; invoice due {due_on}"}
    return [
        Due(entity_id=project.id, recipient_id=r.id, email=r.email, name=r.full_name, timezone=r.timezone,
            period=billable_at.isoformat(), context={**context, "assignee_is_you": r.id == assignee_id})
        for r in recipients
    ]
