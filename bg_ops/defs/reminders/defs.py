"""Daily reminders: a job partitioned by day × tenant, one op per rule, and its schedule."""

from datetime import UTC, date, datetime

import dagster as dg

from bg_ops.defs.email.enqueue import EnqueueError, MailSettings
from bg_ops.defs.email.rendering import TemplateError
from bg_ops.defs.reminders.engine import Rule, RuleContext, run_rule, send_digests
from bg_ops.defs.reminders.recurring import generate_recurring_tasks_op
from bg_ops.defs.reminders.rules import ALL_RULES
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.defs.tenants.defs import TENANT_PARTITIONS_NAME, tenant_partitions
from bg_ops.defs.tenants.logic import Tenant, get_tenant, switched_off_services
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import MailResource

REMINDERS_START_DATE = "2025-01-01"
JOB_NAME = "daily_reminders_job"

# The date dimension is the tenant's local day. A daily partition exists once its UTC day is
# over; end_offset=1 adds UTC's today, end_offset=2 also UTC's tomorrow, where tenants east of
# UTC (up to UTC+14) already are while UTC is still today — with 1, the hourly schedule's
# request for such a tenant's day failed as an unknown partition until UTC midnight.
reminder_partitions = dg.MultiPartitionsDefinition(
    {
        "date": dg.DailyPartitionsDefinition(start_date=REMINDERS_START_DATE, end_offset=2),
        "tenant": tenant_partitions,
    }
)

# Talking to the database or SMTP can fail for a moment: retry with backoff and jitter (O2).
# Bad templates or data fail at once (dg.Failure(allow_retries=False)): a retry cannot fix them.


class ReminderRunConfig(dg.Config):
    dry_run: bool = False  # list what each rule would send, enqueue nothing (R17)


def _now() -> datetime:
    return datetime.now(UTC)


@dg.op(
    description="Resolves the run's tenant and tenant-local day from the partition; carries the dry_run switch.",
    tags={"domain": "reminders"},
    retry_policy=TRANSIENT_RETRY,
)
def reminder_day(context: dg.OpExecutionContext, config: ReminderRunConfig, database: DatabaseResource) -> dict:
    keys = context.partition_key.keys_by_dimension
    with database.session() as session:
        tenant = get_tenant(session, keys["tenant"])
    if not tenant.is_active:
        raise dg.Failure(f"tenant {tenant.slug!r} is not active: reminders are not sent for it", allow_retries=False)
    context.add_output_metadata({"tenant": tenant.slug, "day": keys["date"], "dry_run": config.dry_run})
    return {"tenant": tenant.slug, "day": keys["date"], "dry_run": config.dry_run}


def _tenant_and_context(session, run: dict) -> tuple[Tenant, RuleContext]:
    tenant = get_tenant(session, run["tenant"])
    return tenant, RuleContext(tenant=tenant, day=date.fromisoformat(run["day"]), now=_now())


def build_rule_op(rule: Rule) -> dg.OpDefinition:
    @dg.op(
        name=f"remind_{rule.name}",
        description=f"{rule.requirement} {rule.title}. {rule.description}",
        tags={"domain": "reminders", "rule": rule.name},
        ins={"start_after": dg.In(dg.Nothing)},  # optional ordering (task_due waits for recurring tasks)
        out=dg.Out(dg.Nothing),
        retry_policy=TRANSIENT_RETRY,
    )
    def _remind(context: dg.OpExecutionContext, run: dict, database: DatabaseResource, mail: MailResource,
                files: FilesResource) -> None:
        settings = MailSettings(mail_from=mail.mail_from, files_root=files.path)
        try:
            with database.session() as session:
                _tenant, ctx = _tenant_and_context(session, run)
                result = run_rule(session, rule, ctx, mail_settings=settings,
                                  globally_off=switched_off_services(session), dry_run=run["dry_run"])
        except (TemplateError, EnqueueError) as exc:
            raise dg.Failure(f"{rule.name}: {exc}", allow_retries=False) from None
        if result.switched_off:
            context.log.info(f"{rule.name} is switched off ({result.switched_off}): skipped")
        elif run["dry_run"]:
            for item in result.preview:
                context.log.info(f"would remind user for {rule.entity_type} {item['entity_id']} "
                                 f"({'already sent' if item['already_sent'] else 'new'})")
        context.add_output_metadata({"tenant": run["tenant"], "day": run["day"], **result.as_metadata()})

    return _remind


RULE_OPS = [build_rule_op(rule) for rule in ALL_RULES]


@dg.op(
    ins={f"after_{rule.name}": dg.In(dg.Nothing) for rule in ALL_RULES},
    description="For tenants with the daily digest on (R16): one mail per person gathering the day's reminders.",
    tags={"domain": "reminders"},
    retry_policy=TRANSIENT_RETRY,
)
def send_reminder_digests(context: dg.OpExecutionContext, run: dict, database: DatabaseResource,
                          mail: MailResource, files: FilesResource) -> None:
    if run["dry_run"]:
        context.add_output_metadata({"digests": 0, "dry_run": True})
        return
    settings = MailSettings(mail_from=mail.mail_from, files_root=files.path)
    with database.session() as session:
        tenant, ctx = _tenant_and_context(session, run)
        sent = send_digests(session, ctx, mail_settings=settings) if tenant.settings.get("digest") else 0
    context.add_output_metadata({"tenant": run["tenant"], "day": run["day"], "digests": sent})


@dg.job(
    name=JOB_NAME,
    partitions_def=reminder_partitions,
    description=(
        "Daily reminders for one tenant and one tenant-local day: one op per rule (approvals, "
        "tasks, …), each enqueueing at most one mail per reminder and person, timed for 08:00 "
        "local. Catch up missed days with a backfill; nothing is sent twice."
    ),
    tags={"domain": "reminders", "dagster/max_runtime": "1800"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)
def daily_reminders_job():
    run = reminder_day()
    generated = generate_recurring_tasks_op(run)  # R13: today's instances exist before task_due reminds
    done = {
        f"after_{rule.name}": op(run, start_after=generated) if rule.name == "task_due" else op(run)
        for rule, op in zip(ALL_RULES, RULE_OPS, strict=True)
    }
    send_reminder_digests(run=run, **done)


def local_today(tenant_zone, now: datetime) -> str:
    return now.astimezone(tenant_zone).date().isoformat()


@dg.schedule(
    name="daily_reminders_schedule",
    job=daily_reminders_job,
    cron_schedule="5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Hourly: requests today's reminders run for every active tenant whose local day has "
        "begun (the run key makes the first request per tenant and day the only one)."
    ),
    owners=["team:bg-ops"],
    tags={"domain": "reminders"},
)
def daily_reminders_schedule(context: dg.ScheduleEvaluationContext, database: DatabaseResource):
    from bg_ops.defs.tenants.logic import active_tenants

    now = context.scheduled_execution_time.astimezone(UTC) if context.scheduled_execution_time else _now()
    known = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    with database.session() as session:
        tenants = active_tenants(session)
    requests = []
    for tenant in tenants:
        if tenant.slug not in known:
            continue  # tenant_partitions_sensor adds it within a minute
        day = local_today(tenant.zone, now)
        requests.append(dg.RunRequest(
            run_key=f"reminders|{day}|{tenant.slug}",
            partition_key=dg.MultiPartitionKey({"date": day, "tenant": tenant.slug}),
            tags={"bg_ops/tenant": tenant.slug},
        ))
    return requests or dg.SkipReason("no active tenant has a partition yet")
