"""Task reminders: due soon or overdue (R4)."""

from __future__ import annotations

import sqlalchemy as sa

from bg_ops.db.app_schema import Project, Task
from bg_ops.defs.reminders.engine import Rule, RuleContext
from bg_ops.defs.reminders.rules.common import dues, local_date, not_suspended, recipient, recipient_columns

DEFAULT_DUE_SOON_DAYS = 2


def find_task_due(session, ctx: RuleContext):
    """Local due date at most D+N (due soon: D..D+N; overdue: before D), open tasks, the assignee."""
    n = ctx.setting("task_due.days", DEFAULT_DUE_SOON_DAYS)
    assignee, ok = recipient(ctx, Task.assignee_id)
    rows = session.execute(
        sa.select(Task.id.label("entity_id"), Task.title, Task.due_at, Project.name.label("project"),
                  *recipient_columns(assignee))
        .join(assignee, ok)
        .outerjoin(Project, sa.and_(Project.id == Task.project_id, Project.company_id == ctx.tenant.id))
        .where(Task.company_id == ctx.tenant.id, Task.status.in_(("open", "in_progress")),
               Task.due_at.is_not(None), Task.due_at < ctx.day_start(n + 1),
               not_suspended(ctx, Task.project_id))
        .order_by(Task.id)
    ).all()

    def context(r):
        due = local_date(ctx, r.due_at)
        overdue = due < ctx.day
        days = (ctx.day - due).days if overdue else (due - ctx.day).days
        when = f"{days} day(s) overdue" if overdue else ("due today" if days == 0 else f"due in {days} day(s)")
        return {"task_id": r.entity_id, "title": r.title, "project": r.project or "", "due_on": due.isoformat(),
                "overdue": overdue, "days": days, "when": when,
                "headline": f"Task {when}: {r.title}", "summary": f"due {due.isoformat()}"}

    return dues(rows, ctx, context)


task_due = Rule(
    name="task_due", requirement="R4", title="Task due", entity_type="task", find=find_task_due,
    description="Open tasks due within N days (default 2, setting reminders.task_due.days) or overdue: the assignee, daily.",
)
