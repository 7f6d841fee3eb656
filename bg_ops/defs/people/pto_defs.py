"""PTO accruals (B3) and tenure promotions (B4) wiring: the monthly ledger asset and its schedule.

``pto_accrual`` is partitioned by month × tenant (keys ``<YYYY-MM-01>|<tenant slug>``): one
materialization credits one tenant's month and announces that month's tier promotions, each
exactly once (see ``pto``). ``pto_accrual_schedule`` runs hourly and, for each active tenant whose
local date is the 1st, requests that month's partition (run key ``pto|<month>|<tenant>``: the first
request is the only one). Missed or past months are filled with a backfill, from the UI (asset
``pto_accrual`` → Materialize → choose partitions) or the CLI, re-running a month changes nothing:

    dagster asset materialize -m bg_ops.definitions --select pto_accrual --partition "2025-06-01|acme"
    dagster job backfill -m bg_ops.definitions -j pto_accrual_job --partitions "2025-05-01|acme,2025-06-01|acme"
"""

from datetime import UTC, date, datetime

import dagster as dg

from bg_ops.defs.email.enqueue import EnqueueError, MailSettings
from bg_ops.defs.email.rendering import TemplateError
from bg_ops.defs.people.pto import PROMOTION_SERVICE, SERVICE, MonthNotStarted, accrue_pto
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.defs.tenants.defs import TENANT_PARTITIONS_NAME, tenant_partitions
from bg_ops.defs.tenants.logic import get_tenant, switched_off_services
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import MailResource

PTO_START_DATE = "2025-01-01"

# end_offset=1: the current (UTC) month is a partition from its first day. A tenant east of UTC
# reaches its 1st a few hours earlier; the schedule requests it once UTC's month has begun too
# (still the 1st there), and the asset refuses a month that has not begun in the tenant's zone.
month_partitions = dg.MonthlyPartitionsDefinition(start_date=PTO_START_DATE, end_offset=1)
pto_partitions = dg.MultiPartitionsDefinition({"month": month_partitions, "tenant": tenant_partitions})


def _now() -> datetime:
    return datetime.now(UTC)


class PtoAccrualConfig(dg.Config):
    # False for a historical backfill whose promotions were announced by other means: the
    # ledger is written, no promotion mail goes out.
    notify_promotions: bool = True


@dg.asset(
    name="pto_accrual",
    partitions_def=pto_partitions,
    group_name="people",
    owners=["team:bg-ops"],
    tags={"domain": "people"},
    kinds={"sql"},
    retry_policy=TRANSIENT_RETRY,
    description=(
        "The PTO ledger of one tenant and month (B3): every active employee (any role but client) hired on "
        "or before the month's 1st is credited the monthly hours of their tenure tier (pto_tiers, full "
        "service years at the 1st), one ledger row each; hired later in the month: from next month. "
        "Employees whose tier changed since last month get a promotion mail and HR is told (B4). "
        f"Re-running or backfilling a month changes nothing. Switches: {SERVICE}, {PROMOTION_SERVICE}."
    ),
)
def pto_accrual(context: dg.AssetExecutionContext, config: PtoAccrualConfig, database: DatabaseResource,
                mail: MailResource, files: FilesResource) -> dg.MaterializeResult:
    keys = pto_partitions.get_partition_key_from_str(context.partition_key).keys_by_dimension
    month_start = date.fromisoformat(keys["month"])
    settings = MailSettings(mail_from=mail.mail_from, files_root=files.path)
    try:
        with database.session() as session:
            tenant = get_tenant(session, keys["tenant"])
            result = accrue_pto(session, tenant, month_start, now=_now(), mail_settings=settings,
                                globally_off=switched_off_services(session),
                                notify_promotions=config.notify_promotions)
    except MonthNotStarted as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None
    except (TemplateError, EnqueueError) as exc:
        raise dg.Failure(f"pto_promotion: {exc}", allow_retries=False) from None
    if result.switched_off:
        context.log.info(f"PTO accrual is switched off ({result.switched_off}): nothing credited")
    else:
        context.log.info(f"{result.month}: {result.credited} employee(s) credited, {result.already_credited} "
                         f"already credited, {len(result.promotions)} promotion(s)")
    return dg.MaterializeResult(metadata={
        "tenant": tenant.slug,
        "month": result.month,
        "employees_credited": dg.MetadataValue.int(result.credited),
        "hours_credited": dg.MetadataValue.float(float(result.hours_credited)),
        "already_credited": dg.MetadataValue.int(result.already_credited),
        "employees_in_ledger": dg.MetadataValue.int(result.ledger_employees),
        "hours_total": dg.MetadataValue.float(float(result.ledger_hours)),
        "hours_by_tier": dg.MetadataValue.json(result.ledger_hours_by_tier),
        "hired_after_the_1st": dg.MetadataValue.int(result.not_yet_eligible),
        "without_tier": dg.MetadataValue.int(result.without_tier),
        "promotions": dg.MetadataValue.int(len(result.promotions)),
        "promoted": dg.MetadataValue.json([
            {"user_id": p.user_id, "from": p.previous_tier, "to": p.tier, "service_years": p.service_years}
            for p in result.promotions
        ]),
        "promotion_mails_enqueued": dg.MetadataValue.int(result.promotion_mails_enqueued),
        "switched_off": result.switched_off or "no",
    })


pto_accrual_job = dg.define_asset_job(
    name="pto_accrual_job",
    selection=[pto_accrual],
    description=(
        "PTO accrual for one tenant and month (partition <YYYY-MM-01>|<tenant>): credits the month's ledger "
        "and announces tier promotions, once. Requested by pto_accrual_schedule on each tenant's 1st; "
        "backfill past months from the UI or `dagster job backfill`."
    ),
    tags={"domain": "people", "dagster/max_runtime": "1800"},
    config={"execution": {"config": {"in_process": {}}}},
    owners=["team:bg-ops"],
)


def month_to_request(tenant_zone, now: datetime) -> str | None:
    """The month partition key to request now for a tenant: its month's key on its local 1st,
    once that month is a partition (UTC's month has begun too); otherwise None."""
    local = now.astimezone(tenant_zone).date()
    if local.day != 1:
        return None
    if local > now.astimezone(UTC).date().replace(day=1):
        return None  # east of UTC, before UTC's month begins: requested at a later tick of the 1st
    return local.isoformat()


@dg.schedule(
    name="pto_accrual_schedule",
    job=pto_accrual_job,
    cron_schedule="10 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Hourly: for each active tenant whose local date is the 1st, requests that month's PTO accrual "
        "(partition <YYYY-MM-01>|<tenant>); the run key makes the first request per tenant and month the only "
        "one. Months missed while the daemon was down are filled with a backfill."
    ),
    owners=["team:bg-ops"],
    tags={"domain": "people"},
)
def pto_accrual_schedule(context: dg.ScheduleEvaluationContext, database: DatabaseResource):
    from bg_ops.defs.tenants.logic import active_tenants

    now = context.scheduled_execution_time.astimezone(UTC) if context.scheduled_execution_time else _now()
    known = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    with database.session() as session:
        tenants = active_tenants(session)
    requests = []
    for tenant in tenants:
        if tenant.slug not in known:
            continue  # tenant_partitions_sensor adds it within a minute
        month = month_to_request(tenant.zone, now)
        if month is None:
            continue
        requests.append(dg.RunRequest(
            run_key=f"pto|{month}|{tenant.slug}",
            partition_key=dg.MultiPartitionKey({"month": month, "tenant": tenant.slug}),
            tags={"bg_ops/tenant": tenant.slug},
        ))
    return requests or dg.SkipReason("no active tenant is on the 1st of its month")
