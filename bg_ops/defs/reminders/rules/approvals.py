"""Approval reminders: overdue (R1) and stalled at a stage (R2)."""

from __future__ import annotations

import sqlalchemy as sa

from bg_ops.db.app_schema import Approval, ApprovalStep, Project
from bg_ops.db.types import UTCDateTime
from bg_ops.defs.reminders.engine import Rule, RuleContext
from bg_ops.defs.reminders.rules.common import alias_of, dues, local_date, not_suspended, recipient, recipient_columns

DEFAULT_STALLED_DAYS = 3


def _overdue_rows(session, ctx: RuleContext):
    a, p = Approval, Project
    where = (a.company_id == ctx.tenant.id, a.status == "in_review", a.due_at < ctx.day_start(0),
             not_suspended(ctx, a.project_id))
    base = [a.id.label("entity_id"), a.title, a.due_at, p.name.label("project")]
    approver, approver_ok = recipient(ctx, ApprovalStep.approver_id)
    approvers = (
        sa.select(*base, *recipient_columns(approver), sa.literal("approver").label("role"))
        .join(p, sa.and_(p.id == a.project_id, p.company_id == ctx.tenant.id))
        .join(ApprovalStep, sa.and_(ApprovalStep.approval_id == a.id, ApprovalStep.stage == a.current_stage,
                                    ApprovalStep.status == "pending"))
        .join(approver, approver_ok)
        .where(*where)
    )
    pm, pm_ok = recipient(ctx, p.pm_id, "pm")
    pms = (
        sa.select(*base, *recipient_columns(pm), sa.literal("pm").label("role"))
        .join(p, sa.and_(p.id == a.project_id, p.company_id == ctx.tenant.id))
        .join(pm, pm_ok)
        .where(*where)
    )
    # A PM who is also the stage's approver hears once, as the approver (the first row of a key counts).
    return session.execute(sa.union_all(approvers, pms).order_by("entity_id", "recipient_id", "role")).all()


def find_approval_overdue(session, ctx: RuleContext):
    def context(r):
        due = local_date(ctx, r.due_at)
        days = (ctx.day - due).days
        return {"approval_id": r.entity_id, "title": r.title, "project": r.project, "due_on": due.isoformat(),
                "days_overdue": days, "role": r.role,
                "headline": f"Approval overdue: {r.title}", "summary": f"{r.project}: due {due.isoformat()}, {days} day(s) ago"}

    return dues(_overdue_rows(session, ctx), ctx, context)


approval_overdue = Rule(
    name="approval_overdue", requirement="R1", title="Approval overdue", entity_type="approval",
    find=find_approval_overdue, kind="customer",
    description="Approvals in review past their due date: the approvers of the current stage and the project's PM, daily.",
)


def find_approval_stalled(session, ctx: RuleContext):
    days = ctx.setting("approval_stalled.days", DEFAULT_STALLED_DAYS)
    a, p = Approval, Project
    earlier = alias_of(ApprovalStep, "earlier")
    # A stage is pending since the previous stage answered, or since the approval started.
    pending_since = sa.func.coalesce(
        sa.select(sa.func.max(earlier.responded_at))
        .where(earlier.approval_id == a.id, earlier.stage < a.current_stage)
        .scalar_subquery(),
        a.created_at,
    )
    # "Pending longer than N days": its local start date is N or more days before the run day.
    # Filtered by the database, not here: most approvals in review are not stalled (B3).
    cutoff = ctx.day_start(-days + 1)
    approver, approver_ok = recipient(ctx, ApprovalStep.approver_id)
    stalled = session.execute(
        sa.select(a.id.label("entity_id"), a.title, a.current_stage, p.name.label("project"),
                  pending_since.label("pending_since"), *recipient_columns(approver))
        .join(p, sa.and_(p.id == a.project_id, p.company_id == ctx.tenant.id))
        .join(ApprovalStep, sa.and_(ApprovalStep.approval_id == a.id, ApprovalStep.stage == a.current_stage,
                                    ApprovalStep.status == "pending"))
        .join(approver, approver_ok)
        .where(a.company_id == ctx.tenant.id, a.status == "in_review", not_suspended(ctx, a.project_id),
               sa.type_coerce(pending_since, UTCDateTime()) < cutoff)
        .order_by(a.id, approver.id)
    ).all()

    def context(r):
        since = local_date(ctx, _as_utc(r.pending_since))
        waited = (ctx.day - since).days
        return {"approval_id": r.entity_id, "title": r.title, "project": r.project, "stage": r.current_stage,
                "pending_since": since.isoformat(), "days_waiting": waited,
                "headline": f"Waiting for you: {r.title}", "summary": f"stage {r.current_stage} pending for {waited} day(s)"}

    return dues(stalled, ctx, context)


def _as_utc(value):
    """The COALESCE of two timestamps comes back raw on SQLite: parse it the same way."""
    from bg_ops.db.types import parse_utc

    return parse_utc(value)


approval_stalled = Rule(
    name="approval_stalled", requirement="R2", title="Approval stalled", entity_type="approval",
    find=find_approval_stalled, kind="customer",
    description="A stage pending longer than N days (default 3, setting reminders.approval_stalled.days): its approvers, daily.",
)
