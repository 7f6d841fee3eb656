"""Calendar reminders (R12) wiring: a per-tenant job and the sensor that launches it.

``calendar_reminder_sensor`` ticks every minute. Its cursor is the end of the last window it
looked at; each tick looks at the window (cursor, now] (at most the last 5 minutes after an
outage: reminders for meetings long started are not worth sending) and requests one run of
``calendar_reminders_job`` per tenant with an event occurrence whose reminder time falls in
that window, run key ``calendar|<tenant>|<window start>``. The run queues those reminders at
once, at most once per (event, person, occurrence), then deletes the tenant's one-off events
that ended over a day ago. Tenants with nothing due get no run; a tenant with only expired
events to clean gets one cleanup run a day.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from bg_ops.defs.email.enqueue import EnqueueError, MailSettings
from bg_ops.defs.email.rendering import TemplateError
from bg_ops.defs.reminders.calendar import (
    DEFAULT_WINDOW_MINUTES,
    cleanup_expired_events,
    due_occurrences,
    has_expired_events,
    send_calendar_reminders,
)
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.defs.tenants.defs import TENANT_PARTITIONS_NAME, tenant_partitions
from bg_ops.defs.tenants.logic import active_tenants, get_tenant, switched_off_services
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import MailResource

CALENDAR_JOB_NAME = "calendar_reminders_job"
SEND_OP_NAME = "send_calendar_reminders"


def _now() -> datetime:
    return datetime.now(UTC)


class CalendarWindowConfig(dg.Config):
    """The reminder-time window (window_start, window_end], ISO-8601 instants. Empty (a run
    launched by hand, or a cleanup run): the last 5 minutes up to the run's start."""

    window_start: str = ""
    window_end: str = ""


def _window(config: CalendarWindowConfig, now: datetime) -> tuple[datetime, datetime]:
    end = datetime.fromisoformat(config.window_end) if config.window_end else now
    start = (datetime.fromisoformat(config.window_start) if config.window_start
             else end - timedelta(minutes=DEFAULT_WINDOW_MINUTES))
    if start.tzinfo is None or end.tzinfo is None:
        raise dg.Failure("window_start and window_end need a UTC offset (e.g. 2026-11-23T09:00:00+00:00)",
                         allow_retries=False)
    if start >= end:
        raise dg.Failure(f"empty window: window_start {start.isoformat()} is not before window_end {end.isoformat()}",
                         allow_retries=False)
    return start.astimezone(UTC), end.astimezone(UTC)


@dg.op(
    name=SEND_OP_NAME,
    description=(
        "R12: queues a reminder, due at once, to the organizer and attendees of every event occurrence "
        "(one-off or recurring) of the run's tenant whose reminder time (start minus remind_minutes_before) "
        "falls in the configured window; at most once per event, person and occurrence."
    ),
    tags={"domain": "reminders", "rule": "calendar_event"},
    out=dg.Out(dg.Nothing),
    retry_policy=TRANSIENT_RETRY,
)
def send_calendar_reminders_op(context: dg.OpExecutionContext, config: CalendarWindowConfig,
                               database: DatabaseResource, mail: MailResource, files: FilesResource) -> None:
    now = _now()
    start, end = _window(config, now)
    settings = MailSettings(mail_from=mail.mail_from, files_root=files.path)
    errors: list[str] = []
    try:
        with database.session() as session:
            tenant = get_tenant(session, context.partition_key)
            result = send_calendar_reminders(
                session, tenant, end, window_minutes=(end - start).total_seconds() / 60, mail_settings=settings,
                globally_off=switched_off_services(session), sent_at=now, errors=errors)
    except (TemplateError, EnqueueError) as exc:
        raise dg.Failure(f"calendar reminders: {exc}", allow_retries=False) from None
    for message in errors:
        context.log.warning(f"calendar event skipped: {message}")
    if result.switched_off:
        context.log.info(f"calendar reminders are switched off ({result.switched_off}): skipped")
    context.add_output_metadata({"tenant": context.partition_key, "window_start": start.isoformat(),
                                 "window_end": end.isoformat(), "events_skipped": len(errors),
                                 **result.as_metadata()})


@dg.op(
    name="cleanup_expired_calendar_events",
    description="R12: deletes the tenant's one-off calendar events that ended more than a day ago, and their attendees.",
    tags={"domain": "reminders"},
    ins={"after_reminders": dg.In(dg.Nothing)},
    retry_policy=TRANSIENT_RETRY,
)
def cleanup_expired_calendar_events_op(context: dg.OpExecutionContext, database: DatabaseResource) -> None:
    with database.session() as session:
        tenant = get_tenant(session, context.partition_key)
        deleted = cleanup_expired_events(session, tenant, _now())
    context.add_output_metadata({"tenant": context.partition_key, "deleted_events": deleted})


@dg.job(
    name=CALENDAR_JOB_NAME,
    partitions_def=tenant_partitions,
    description=(
        "Calendar reminders for one tenant: mails the organizer and attendees of every event occurrence "
        "(recurring events included) whose reminder time falls in the window named in the run config, "
        "at once and at most once per occurrence, then deletes one-off events that ended over a day ago. "
        "Launched by calendar_reminder_sensor."
    ),
    tags={"domain": "reminders", "dagster/max_runtime": "900"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)
def calendar_reminders_job():
    cleanup_expired_calendar_events_op(after_reminders=send_calendar_reminders_op())


@dg.sensor(
    name="calendar_reminder_sensor",
    job=calendar_reminders_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every minute: for each active tenant with a calendar event occurrence whose reminder time fell "
        "since the last tick (at most 5 minutes back), requests a calendar_reminders_job run for that "
        "tenant and window (run key calendar|<tenant>|<window start>); once a day, a cleanup run for "
        "tenants with expired one-off events. Tenants with nothing due get no run."
    ),
    tags={"domain": "reminders"},
    owners=["team:bg-ops"],
)
def calendar_reminder_sensor(context: dg.SensorEvaluationContext, database: DatabaseResource):
    now = _now().replace(microsecond=0)
    start = now - timedelta(minutes=DEFAULT_WINDOW_MINUTES)
    if context.cursor:
        try:
            previous = datetime.fromisoformat(context.cursor).astimezone(UTC)
        except ValueError:
            previous = None
        if previous is not None and start <= previous < now:
            start = previous
        elif previous is not None and previous >= now:
            return dg.SkipReason(f"window up to {previous.isoformat()} already looked at")
    known = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    requests, to_add, skipped = [], [], []
    with database.session() as session:
        for tenant in active_tenants(session):
            errors: list[str] = []
            due = due_occurrences(session, tenant, start, now, errors=errors)
            skipped.extend(errors)
            config = None
            if due:
                config = {"window_start": start.isoformat(), "window_end": now.isoformat()}
                run_key = f"calendar|{tenant.slug}|{start.isoformat()}"
            elif has_expired_events(session, tenant, now):
                config = {}
                run_key = f"calendar-cleanup|{tenant.slug}|{now.astimezone(tenant.zone).date().isoformat()}"
            if config is None:
                continue
            if tenant.slug not in known:
                to_add.append(tenant.slug)
            requests.append(dg.RunRequest(
                run_key=run_key, partition_key=tenant.slug,
                run_config={"ops": {SEND_OP_NAME: {"config": config}}},
                tags={"bg_ops/tenant": tenant.slug, "calendar/occurrences": str(len(due))},
            ))
    for message in skipped:
        context.log.warning(f"calendar event skipped: {message}")
    cursor = now.isoformat()
    if not requests:
        return dg.SensorResult(skip_reason=f"no calendar reminder due in ({start.isoformat()}, {now.isoformat()}]",
                               cursor=cursor)
    return dg.SensorResult(
        run_requests=requests, cursor=cursor,
        dynamic_partitions_requests=[tenant_partitions.build_add_request(to_add)] if to_add else None,
    )
