"""Core request reminders: submitted and not accepted (R6), ready for approval (R7)."""

from __future__ import annotations

import sqlalchemy as sa

from bg_ops.db.app_schema import CoreRequest, Project
from bg_ops.defs.reminders.engine import Rule, RuleContext
from bg_ops.defs.reminders.rules.common import dues, local_date, not_suspended, recipient, recipient_columns
from bg_ops.defs.reminders.rules.by_role import no_active_user, role_members

DEFAULT_NOT_ACCEPTED_DAYS = 2


def _project_ok(ctx: RuleContext):
    return sa.and_(Project.id == CoreRequest.project_id, Project.company_id == ctx.tenant.id)


def find_core_request_not_accepted(session, ctx: RuleContext):
    """Submitted, not accepted, and the local submission date is N or more days before the run day."""
    n = max(ctx.setting("core_request_not_accepted.days", DEFAULT_NOT_ACCEPTED_DAYS), 0)
    c, p = CoreRequest, Project
    where = (c.company_id == ctx.tenant.id, c.status == "submitted", c.accepted_at.is_(None),
             c.submitted_at < ctx.day_start(-n + 1), not_suspended(ctx, c.project_id))
    base = [c.id.label("entity_id"), c.title, c.submitted_at, p.name.label("project")]
    am, am_ok = recipient(ctx, c.account_manager_id, "account_manager")
    own = (
        sa.select(*base, *recipient_columns(am), sa.literal("account_manager").label("role"))
        .select_from(c).outerjoin(p, _project_ok(ctx)).join(am, am_ok)
        .where(*where)
    )
    # Nobody (active) in charge: every account manager of the tenant.
    member, member_ok = role_members(ctx, "account_manager", "am_pool")
    pool = (
        sa.select(*base, *recipient_columns(member), sa.literal("unassigned").label("role"))
        .select_from(c).outerjoin(p, _project_ok(ctx)).join(member, member_ok)
        .where(*where, no_active_user(ctx, c.account_manager_id))
    )
    rows = session.execute(sa.union_all(own, pool).order_by("entity_id", "recipient_id")).all()

    def context(r):
        submitted = local_date(ctx, r.submitted_at)
        waited = (ctx.day - submitted).days
        return {"core_request_id": r.entity_id, "title": r.title, "project": r.project or "",
                "submitted_on": submitted.isoformat(), "days_waiting": waited, "role": r.role,
                "headline": f"Core request not accepted: {r.title}",
                "summary": f"submitted {submitted.isoformat()}, waiting {waited} day(s)"}

    return dues(rows, ctx, context)


core_request_not_accepted = Rule(
    name="core_request_not_accepted", requirement="R6", title="Core request not accepted",
    entity_type="core_request", find=find_core_request_not_accepted,
    description=("Core requests submitted N or more days ago (default 2, setting "
                 "reminders.core_request_not_accepted.days) and not accepted: their account manager, or "
                 "every account manager when none is assigned, daily."),
)


def find_core_request_ready(session, ctx: RuleContext):
    c, p = CoreRequest, Project
    approver, approver_ok = role_members(ctx, "approver", "approver")
    rows = session.execute(
        sa.select(c.id.label("entity_id"), c.title, c.updated_at, p.name.label("project"),
                  *recipient_columns(approver))
        .select_from(c).outerjoin(p, _project_ok(ctx)).join(approver, approver_ok)
        .where(c.company_id == ctx.tenant.id, c.status == "ready_for_approval", not_suspended(ctx, c.project_id))
        .order_by(c.id, approver.id)
    ).all()

    def context(r):
        since = local_date(ctx, r.updated_at)
        return {"core_request_id": r.entity_id, "title": r.title, "project": r.project or "",
                "ready_since": since.isoformat() if since else "",
                "headline": f"Core request ready for approval: {r.title}",
                "summary": (f"{r.project}: " if r.project else "") + "waiting for an approver"}

    return dues(rows, ctx, context)


core_request_ready = Rule(
    name="core_request_ready", requirement="R7", title="Core request ready for approval",
    entity_type="core_request", find=find_core_request_ready,
    description="Core requests ready for approval: every approver of the tenant, daily.",
)
