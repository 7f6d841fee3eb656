"""Design queue digest: one mail per designer per day listing every queued item (R8)."""

from __future__ import annotations

import sqlalchemy as sa

from bg_ops.db.app_schema import DesignQueueItem, Project
from bg_ops.defs.reminders.engine import Rule, RuleContext
from bg_ops.defs.reminders.rules.common import dues, local_date, not_suspended, recipient_columns
from bg_ops.defs.reminders.rules.by_role import role_members


def find_design_queue(session, ctx: RuleContext):
    """Items queued (by the end of the run day) and still waiting; one ``Due`` per active designer,
    keyed on the tenant (``entity_id`` = company id) so each designer gets one digest a day."""
    d, p = DesignQueueItem, Project
    items = session.execute(
        sa.select(d.id, d.title, d.queued_at, p.name.label("project"))
        .select_from(d).outerjoin(p, sa.and_(p.id == d.project_id, p.company_id == ctx.tenant.id))
        .where(d.company_id == ctx.tenant.id, d.status == "queued", d.queued_at < ctx.day_start(1),
               not_suspended(ctx, d.project_id))
        .order_by(d.queued_at, d.id)
    ).all()
    if not items:
        return []
    designer, designer_ok = role_members(ctx, "designer", "designer")
    designers = session.execute(
        sa.select(sa.literal(ctx.tenant.id).label("entity_id"), *recipient_columns(designer))
        .where(designer_ok)
        .order_by(designer.id)
    ).all()

    listed = []
    for item in items:
        queued_on = local_date(ctx, item.queued_at)
        listed.append({"id": item.id, "title": item.title, "project": item.project or "",
                       "queued_on": queued_on.isoformat(), "days_waiting": max((ctx.day - queued_on).days, 0)})
    oldest = max(i["days_waiting"] for i in listed)

    def context(_r):
        return {"items": listed, "count": len(listed), "oldest_days": oldest,
                "headline": f"Design queue: {len(listed)} item(s) waiting",
                "summary": ", ".join(i["title"] for i in listed[:5]) + (" …" if len(listed) > 5 else "")}

    return dues(designers, ctx, context)


design_queue = Rule(
    name="design_queue", requirement="R8", title="Design queue", entity_type="design_queue",
    find=find_design_queue,
    description="Items waiting in the design queue: one digest per designer listing them all, daily.",
)
