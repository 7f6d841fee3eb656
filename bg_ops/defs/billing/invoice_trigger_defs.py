"""Invoice trigger (B1) wiring: a sensor on billable projects and the job it launches.

``billable_project_sensor`` keeps a cursor on (billable_at, id) of the projects table and
requests, for each project that became billable since, one run of ``billing_task_job`` in the
project's tenant partition (run config names the project and its billable_at; run key
``billable|<project id>|<billable_at>``). It only reads events at least 30 seconds old, so a
transaction that committed a little late is not skipped; on its very first tick it starts a day
back rather than billing every project ever made billable. The run creates the billing task and
mails finance exactly once per event (see ``invoice_trigger``), whatever retries happen.
"""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from bg_ops.defs.billing.invoice_trigger import SERVICE, billable_after, create_billing_task
from bg_ops.defs.email.enqueue import EnqueueError, MailSettings
from bg_ops.defs.email.rendering import TemplateError
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.defs.tenants.defs import TENANT_PARTITIONS_NAME, tenant_partitions
from bg_ops.defs.tenants.logic import get_tenant, switched_off_services
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import MailResource

BILLING_JOB_NAME = "billing_task_job"
BILLING_OP_NAME = "create_billing_task"
SETTLE_SECONDS = 30
FIRST_LOOKBACK = timedelta(days=1)
BATCH = 200


def _now() -> datetime:
    return datetime.now(UTC)


class BillingTaskConfig(dg.Config):
    project_id: int  # the projects.id that became billable (in the run's tenant)
    billable_at: str  # the event: projects.billable_at as ISO-8601, as the sensor saw it


@dg.op(
    name=BILLING_OP_NAME,
    description=(
        "B1: creates the billing task (kind billing, 'Invoice: <project>', due in 3 local days, assigned to "
        "the tenant's first active finance user) for one billable event of a project, exactly once, and "
        f"mails the tenant's finance users (its admins when it has none) once. Switch: {SERVICE}."
    ),
    tags={"domain": "billing"},
    retry_policy=TRANSIENT_RETRY,
)
def create_billing_task_op(context: dg.OpExecutionContext, config: BillingTaskConfig, database: DatabaseResource,
                           mail: MailResource, files: FilesResource) -> None:
    settings = MailSettings(mail_from=mail.mail_from, files_root=files.path)
    try:
        billable_at = datetime.fromisoformat(config.billable_at)
    except ValueError:
        raise dg.Failure(f"billable_at {config.billable_at!r} is not an ISO-8601 timestamp: "
                         "give it as the sensor does, e.g. 2026-11-23T09:00:00+00:00", allow_retries=False) from None
    if billable_at.tzinfo is None:
        billable_at = billable_at.replace(tzinfo=UTC)
    try:
        with database.session() as session:
            tenant = get_tenant(session, context.partition_key)
            result = create_billing_task(session, tenant, config.project_id, billable_at, now=_now(),
                                         mail_settings=settings, globally_off=switched_off_services(session))
    except (TemplateError, EnqueueError) as exc:
        raise dg.Failure(f"billing_task_created: {exc}", allow_retries=False) from None
    if result.skipped:
        context.log.info(f"project {config.project_id}: no billing task: {result.skipped}")
    elif result.created:
        context.log.info(f"project {config.project_id}: billing task {result.task_id} created"
                         + ("" if result.assignee_id is not None else " unassigned (no active finance user)"))
    else:
        context.log.info(f"project {config.project_id}: billing task {result.task_id} already existed")
    context.add_output_metadata({"tenant": context.partition_key, **result.as_metadata()})


@dg.job(
    name=BILLING_JOB_NAME,
    partitions_def=tenant_partitions,
    description=(
        "Invoice trigger: for one project of one tenant that became billable (named in the run config), "
        "creates one billing task for finance and mails them, once per billable event. Launched by "
        "billable_project_sensor; safe to re-run."
    ),
    tags={"domain": "billing", "dagster/max_runtime": "600"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)
def billing_task_job():
    create_billing_task_op()


def _read_cursor(raw: str | None, now: datetime) -> tuple[datetime, int]:
    if raw:
        try:
            data = json.loads(raw)
            return datetime.fromisoformat(data["billable_at"]).astimezone(UTC), int(data["id"])
        except (ValueError, KeyError, TypeError):
            pass
    return now - FIRST_LOOKBACK, 0


@dg.sensor(
    name="billable_project_sensor",
    job=billing_task_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches for projects that became billable (cursor on billable_at and id) and requests one "
        "billing_task_job run per billable event in the project's tenant partition (run key "
        "billable|<project id>|<billable_at>), which creates the billing task and tells finance."
    ),
    tags={"domain": "billing"},
    owners=["team:bg-ops"],
)
def billable_project_sensor(context: dg.SensorEvaluationContext, database: DatabaseResource):
    now = _now()
    cursor = _read_cursor(context.cursor, now)
    with database.session() as session:
        found = billable_after(session, cursor, now - timedelta(seconds=SETTLE_SECONDS), limit=BATCH)
    if not found:
        return dg.SkipReason("no project became billable since the last tick")
    known = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    requests, to_add = [], set()
    for event in found:
        if not event.tenant_active:
            continue  # a deactivated tenant gets no billing tasks
        if event.tenant_slug not in known:
            to_add.add(event.tenant_slug)
        at = event.billable_at.isoformat()
        requests.append(dg.RunRequest(
            run_key=f"billable|{event.project_id}|{at}",
            partition_key=event.tenant_slug,
            run_config={"ops": {BILLING_OP_NAME: {"config": {"project_id": event.project_id, "billable_at": at}}}},
            tags={"bg_ops/tenant": event.tenant_slug, "project_id": str(event.project_id)},
        ))
    last = found[-1]
    new_cursor = json.dumps({"billable_at": last.billable_at.isoformat(), "id": last.project_id})
    context.log.info(f"{len(requests)} project(s) became billable")
    return dg.SensorResult(
        run_requests=requests, cursor=new_cursor,
        dynamic_partitions_requests=[tenant_partitions.build_add_request(sorted(to_add))] if to_add else None,
    )
