"""Translation reminders: deadline approaching or passed (R5)."""

from __future__ import annotations

import sqlalchemy as sa

from bg_ops.db.app_schema import Project, Translation
from bg_ops.defs.reminders.engine import Rule, RuleContext
from bg_ops.defs.reminders.rules.common import dues, local_date, not_suspended, recipient, recipient_columns
from bg_ops.defs.reminders.rules.by_role import no_active_user, role_members

DEFAULT_DUE_SOON_DAYS = 3


def _rows(session, ctx: RuleContext, n: int):
    t, p = Translation, Project
    where = (t.company_id == ctx.tenant.id, t.status == "open", t.due_at < ctx.day_start(n + 1),
             not_suspended(ctx, t.project_id))
    base = [t.id.label("entity_id"), t.language, t.due_at, p.name.label("project")]
    project_ok = sa.and_(p.id == t.project_id, p.company_id == ctx.tenant.id)
    # The assignee when it is an active user of the tenant ...
    assignee, assignee_ok = recipient(ctx, t.assignee_id, "assignee")
    assigned = (
        sa.select(*base, *recipient_columns(assignee), sa.literal("assignee").label("role"))
        .select_from(t).outerjoin(p, project_ok).join(assignee, assignee_ok)
        .where(*where)
    )
    # ... otherwise (unassigned, or the assignee has left) every active translator.
    translator, translator_ok = role_members(ctx, "translator", "translator")
    pool = (
        sa.select(*base, *recipient_columns(translator), sa.literal("translator").label("role"))
        .select_from(t).outerjoin(p, project_ok).join(translator, translator_ok)
        .where(*where, no_active_user(ctx, t.assignee_id))
    )
    return session.execute(sa.union_all(assigned, pool).order_by("entity_id", "recipient_id")).all()


def find_translation_due(session, ctx: RuleContext):
    """Open translations whose local due date is at most D+N (due soon: D..D+N; overdue: before D)."""
    n = max(ctx.setting("translation_due.days", DEFAULT_DUE_SOON_DAYS), 0)

    def context(r):
        due = local_date(ctx, r.due_at)
        overdue = due < ctx.day
        days = (ctx.day - due).days if overdue else (due - ctx.day).days
        when = f"{days} day(s) overdue" if overdue else ("due today" if days == 0 else f"due in {days} day(s)")
        what = f"{r.language} translation" + (f" for {r.project}" if r.project else "")
        return {"translation_id": r.entity_id, "language": r.language, "project": r.project or "",
                "due_on": due.isoformat(), "overdue": overdue, "days": days, "when": when, "role": r.role,
                "headline": f"Translation {when}: {what}", "summary": f"due {due.isoformat()}"}

    return dues(_rows(session, ctx, n), ctx, context)


translation_due = Rule(
    name="translation_due", requirement="R5", title="Translation due", entity_type="translation",
    find=find_translation_due,
    description=("Open translations due within N days (default 3, setting reminders.translation_due.days) or "
                 "overdue: the assignee, or every translator when nobody active is assigned, daily."),
)
