"""Tenant partitions: one dynamic partition per active company, keyed by its slug."""


import dagster as dg

from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.defs.tenants.logic import (
    active_tenant_slugs,
    get_tenant,
    partition_changes,
    tenant_summary,
)
from bg_ops.resources.database import DatabaseResource

TENANT_PARTITIONS_NAME = "tenants"
tenant_partitions = dg.DynamicPartitionsDefinition(name=TENANT_PARTITIONS_NAME)


@dg.sensor(
    name="tenant_partitions_sensor",
    description=(
        "Keeps the 'tenants' partitions equal to the active companies: adds a partition for "
        "each new or re-activated company (keyed by slug) and removes deactivated ones. "
        "Tenant-scoped jobs (reminders, billing, PTO, backup, archival) run per partition."
    ),
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    tags={"domain": "tenants"},
    owners=["team:bg-ops"],
)
def tenant_partitions_sensor(context: dg.SensorEvaluationContext, database: DatabaseResource):
    with database.session() as session:
        wanted = active_tenant_slugs(session)
    existing = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    to_add, to_delete = partition_changes(existing, wanted)
    requests = []
    if to_add:
        requests.append(tenant_partitions.build_add_request(to_add))
    if to_delete:
        requests.append(tenant_partitions.build_delete_request(to_delete))
    if not requests:
        return dg.SkipReason(f"{len(existing)} tenant partition(s) already match the companies table")
    context.log.info(f"tenant partitions: +{len(to_add)} -{len(to_delete)}")
    return dg.SensorResult(dynamic_partitions_requests=requests)


@dg.asset(
    name="tenant_summary",
    partitions_def=tenant_partitions,
    retry_policy=TRANSIENT_RETRY,
    group_name="operations",
    owners=["team:bg-ops"],
    tags={"domain": "tenants"},
    kinds={"sql"},
    description=(
        "Per-tenant headline counts (active users and projects, open tasks, approvals in "
        "review, unpaid invoices) read from the platform's tables for that tenant only."
    ),
)
def tenant_summary_asset(context: dg.AssetExecutionContext, database: DatabaseResource) -> dg.MaterializeResult:
    with database.session() as session:
        tenant = get_tenant(session, context.partition_key)
        counts = tenant_summary(session, tenant)
    return dg.MaterializeResult(
        metadata={"tenant": tenant.slug, **{k: dg.MetadataValue.int(v) for k, v in counts.items()}}
    )


tenant_summary_job = dg.define_asset_job(
    name="tenant_summary_job",
    selection=[tenant_summary_asset],
    description="Refreshes the per-tenant summary for one tenant partition.",
    tags={"domain": "tenants", "dagster/max_runtime": "600"},
    config={"execution": {"config": {"in_process": {}}}},
    owners=["team:bg-ops"],
)
