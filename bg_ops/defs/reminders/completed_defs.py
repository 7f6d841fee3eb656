"""Approval completed (R3) wiring: a sensor on completed approvals and the job it launches.

``approval_completed_sensor`` keeps a cursor on (completed_at, id) of the approvals table and
requests, for each approval completed since, one run of ``approval_completed_job`` in the
approval's tenant partition (run config names the approval; run key
``approval-completed|<id>|<completed_at>``). It only reads completions at least 30 seconds old,
so a transaction that committed a little late is not skipped; on its very first tick it starts
a day back rather than announcing every approval ever completed.
"""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from bg_ops.defs.email.enqueue import EnqueueError, MailSettings
from bg_ops.defs.email.rendering import TemplateError
from bg_ops.defs.reminders.completed import completed_after, notify_approval_completed
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.defs.tenants.defs import TENANT_PARTITIONS_NAME, tenant_partitions
from bg_ops.defs.tenants.logic import get_tenant, switched_off_services
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import MailResource

COMPLETED_JOB_NAME = "approval_completed_job"
NOTIFY_OP_NAME = "notify_approval_completed"
SETTLE_SECONDS = 30
FIRST_LOOKBACK = timedelta(days=1)
BATCH = 200


def _now() -> datetime:
    return datetime.now(UTC)


class ApprovalCompletedConfig(dg.Config):
    approval_id: int  # the approvals.id that completed (in the run's tenant)


@dg.op(
    name=NOTIFY_OP_NAME,
    description=(
        "R3: tells the stakeholders of one completed approval (the project's PM and every approver who "
        "took part, active users of the tenant) that the journey is complete, once per completion."
    ),
    tags={"domain": "reminders", "rule": "approval_completed"},
    retry_policy=TRANSIENT_RETRY,
)
def notify_approval_completed_op(context: dg.OpExecutionContext, config: ApprovalCompletedConfig,
                                 database: DatabaseResource, mail: MailResource, files: FilesResource) -> None:
    settings = MailSettings(mail_from=mail.mail_from, files_root=files.path)
    try:
        with database.session() as session:
            tenant = get_tenant(session, context.partition_key)
            result = notify_approval_completed(session, tenant, config.approval_id, now=_now(),
                                               mail_settings=settings, globally_off=switched_off_services(session))
    except (TemplateError, EnqueueError) as exc:
        raise dg.Failure(f"approval_completed: {exc}", allow_retries=False) from None
    if result.switched_off:
        context.log.info(f"approval_completed is switched off ({result.switched_off}): skipped")
    elif result.found == 0:
        context.log.info(f"approval {config.approval_id} is not a completed approval of this tenant with "
                         "an active stakeholder: nothing to send")
    context.add_output_metadata({"tenant": context.partition_key, "approval_id": config.approval_id,
                                 **result.as_metadata()})


@dg.job(
    name=COMPLETED_JOB_NAME,
    partitions_def=tenant_partitions,
    description=(
        "Approval completed: for one approval (named in the run config) of one tenant, mails the project's "
        "PM and every approver who took part, once per completion. Launched by approval_completed_sensor."
    ),
    tags={"domain": "reminders", "dagster/max_runtime": "600"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)
def approval_completed_job():
    notify_approval_completed_op()


def _read_cursor(raw: str | None, now: datetime) -> tuple[datetime, int]:
    if raw:
        try:
            data = json.loads(raw)
            return datetime.fromisoformat(data["completed_at"]).astimezone(UTC), int(data["id"])
        except (ValueError, KeyError, TypeError):
            pass
    return now - FIRST_LOOKBACK, 0


@dg.sensor(
    name="approval_completed_sensor",
    job=approval_completed_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches for approvals that reached status completed (cursor on completed_at and id) and requests "
        "one approval_completed_job run per completion in the approval's tenant partition (run key "
        "approval-completed|<id>|<completed_at>), which tells the PM and the approvers."
    ),
    tags={"domain": "reminders"},
    owners=["team:bg-ops"],
)
def approval_completed_sensor(context: dg.SensorEvaluationContext, database: DatabaseResource):
    now = _now()
    cursor = _read_cursor(context.cursor, now)
    with database.session() as session:
        found = completed_after(session, cursor, now - timedelta(seconds=SETTLE_SECONDS), limit=BATCH)
    if not found:
        return dg.SkipReason("no approval completed since the last tick")
    known = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    requests, to_add = [], set()
    for c in found:
        if not c.tenant_active:
            continue  # a deactivated tenant is not notified
        if c.tenant_slug not in known:
            to_add.add(c.tenant_slug)
        requests.append(dg.RunRequest(
            run_key=f"approval-completed|{c.approval_id}|{c.completed_at.isoformat()}",
            partition_key=c.tenant_slug,
            run_config={"ops": {NOTIFY_OP_NAME: {"config": {"approval_id": c.approval_id}}}},
            tags={"bg_ops/tenant": c.tenant_slug, "approval_id": str(c.approval_id)},
        ))
    last = found[-1]
    new_cursor = json.dumps({"completed_at": last.completed_at.isoformat(), "id": last.approval_id})
    context.log.info(f"{len(requests)} completed approval(s) to announce")
    return dg.SensorResult(
        run_requests=requests, cursor=new_cursor,
        dynamic_partitions_requests=[tenant_partitions.build_add_request(sorted(to_add))] if to_add else None,
    )
