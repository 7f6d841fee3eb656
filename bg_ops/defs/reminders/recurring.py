"""Recurring tasks (R13): task templates with an RFC 5545 RRULE generate task instances.

For every active template of a tenant, the rule is expanded from ``dtstart`` as tenant-local
wall time (a weekly Monday 09:00 stays 09:00 local across DST, see ``recurrence``), and one
task is inserted per occurrence in [now, now + lookahead]: assigned to the template's assignee
(when an active user of the tenant), linked by ``template_id`` and ``occurrence_at``. The
unique (template_id, occurrence_at) key with ON CONFLICT DO NOTHING makes it exactly once per
occurrence, whatever reruns, retries or concurrent runs happen.

``generate_recurring_tasks_op`` runs in the daily reminders job before ``remind_task_due``, so
the day's new instances are reminded in the same run.
"""

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Project, Task, TaskTemplate, User
from bg_ops.defs.reminders.recurrence import RecurrenceError, occurrences
from bg_ops.defs.reminders.rules.common import SUSPENDED
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.defs.tenants.logic import Tenant, get_tenant, switched_off_by, switched_off_services
from bg_ops.resources.database import DatabaseResource

DEFAULT_LOOKAHEAD_DAYS = 7
SERVICE = "recurring_tasks"  # companies.settings / service_switches key


def _task_insert(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(Task.__table__).on_conflict_do_nothing(index_elements=["template_id", "occurrence_at"])


def generate_recurring_tasks(
    session: Session, tenant: Tenant, now: datetime, lookahead_days: int = DEFAULT_LOOKAHEAD_DAYS,
    *, errors: list[str] | None = None,
) -> int:
    """Insert the missing task instances of the tenant's active templates; return how many.
    Templates of a suspended project generate nothing until the client is reinstated.

    A template whose rule cannot be read is skipped (its message appended to ``errors``), so
    one bad row never blocks the other templates.
    """
    start, end = now.astimezone(UTC), now.astimezone(UTC) + timedelta(days=lookahead_days)
    templates = session.execute(
        sa.select(TaskTemplate.id, TaskTemplate.project_id, TaskTemplate.title, TaskTemplate.rrule,
                  TaskTemplate.dtstart, TaskTemplate.assignee_id)
        .where(TaskTemplate.company_id == tenant.id, TaskTemplate.is_active.is_(True),
               # A suspended client's project (O7) gets no new tasks; templates without a project do.
               ~sa.exists().where(Project.id == TaskTemplate.project_id, Project.company_id == tenant.id,
                                  Project.status == SUSPENDED))
        .order_by(TaskTemplate.id)
    ).all()
    if not templates:
        return 0
    assignees = {t.assignee_id for t in templates if t.assignee_id is not None}
    active = set(session.scalars(
        sa.select(User.id).where(User.id.in_(assignees), User.company_id == tenant.id, User.is_active.is_(True))
    )) if assignees else set()

    rows = []
    for t in templates:
        try:
            when = occurrences(t.rrule, t.dtstart, tenant.zone, start, end)
        except RecurrenceError as exc:
            if errors is not None:
                errors.append(f"template {t.id}: {exc}")
            continue
        if not when:
            continue
        # Skip what exists already (also rows another program wrote in another text form).
        existing = set(session.scalars(
            sa.select(Task.occurrence_at).where(Task.template_id == t.id, Task.occurrence_at >= start,
                                                Task.occurrence_at <= end)
        ))
        rows.extend(
            {"company_id": tenant.id, "project_id": t.project_id, "title": t.title,
             "assignee_id": t.assignee_id if t.assignee_id in active else None,
             "due_at": at, "status": "open", "template_id": t.id, "occurrence_at": at, "kind": "work"}
            for at in when if at not in existing
        )
    if not rows:
        return 0
    inserted = session.execute(_task_insert(session).returning(Task.__table__.c.id), rows).all()
    return len(inserted)


def _now() -> datetime:
    return datetime.now(UTC)


@dg.op(
    name="generate_recurring_tasks",
    description=(
        "R13: creates the task instances of the tenant's active recurring task templates (RFC 5545 "
        f"RRULE, expanded in the tenant's zone) due from the run day to {DEFAULT_LOOKAHEAD_DAYS} days "
        "ahead, exactly once per occurrence. Runs before remind_task_due. Switch: recurring_tasks."
    ),
    tags={"domain": "reminders"},
    out=dg.Out(dg.Nothing),
    retry_policy=TRANSIENT_RETRY,
)
def generate_recurring_tasks_op(context: dg.OpExecutionContext, run: dict, database: DatabaseResource) -> None:
    if run.get("dry_run"):
        context.add_output_metadata({"tenant": run["tenant"], "generated": 0, "dry_run": True})
        return
    errors: list[str] = []
    with database.session() as session:
        tenant = get_tenant(session, run["tenant"])
        off = switched_off_by(SERVICE, tenant.settings, switched_off_services(session))
        if off:
            context.log.info(f"recurring tasks are switched off ({off}): skipped")
            context.add_output_metadata({"tenant": tenant.slug, "generated": 0, "switched_off": off})
            return
        # From the start of the run's local day (a backfilled day catches up on its occurrences).
        day_start = datetime.combine(date.fromisoformat(run["day"]), datetime.min.time(), tzinfo=tenant.zone)
        start = min(_now(), day_start.astimezone(UTC))
        generated = generate_recurring_tasks(session, tenant, start, errors=errors)
    for message in errors:
        context.log.warning(f"recurring task template skipped: {message}")
    context.add_output_metadata({"tenant": run["tenant"], "day": run["day"], "generated": generated,
                                 "templates_skipped": len(errors)})
