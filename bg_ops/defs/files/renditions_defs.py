"""Renditions wiring (F6): the per-tenant thumbnail backfill job and its daily schedule."""

from datetime import UTC, datetime

import dagster as dg

from bg_ops.defs.files.renditions import backfill_renditions
from bg_ops.defs.files.run_metadata import cloud_paths_metadata
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.defs.tenants.defs import TENANT_PARTITIONS_NAME, tenant_partitions
from bg_ops.defs.tenants.logic import UnknownTenant, active_tenants, get_tenant, switched_off_services
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.storage import CloudStorageResource

THUMBNAILS_JOB_NAME = "approval_thumbnails_job"
THUMBNAILS_OP_NAME = "make_approval_thumbnails"
SERVICE = "renditions"


def _now() -> datetime:
    return datetime.now(UTC)


class ApprovalThumbnailsConfig(dg.Config):
    limit: int | None = None  # thumbnails to make in this run at most (None: all that are missing)


@dg.op(
    name=THUMBNAILS_OP_NAME,
    description=(
        "Makes the PNG thumbnails (first page of PDFs, images; at most 320 px) that the tenant's approval "
        "attachments lack and stores each beside the attachment's backup in Approval Backups. Files "
        "already done are skipped; missing or damaged files are counted and reported, never failing the run."
    ),
    tags={"domain": "files"},
    retry_policy=TRANSIENT_RETRY,
)
def make_approval_thumbnails(
    context: dg.OpExecutionContext,
    config: ApprovalThumbnailsConfig,
    database: DatabaseResource,
    storage: CloudStorageResource,
    files: FilesResource,
) -> None:
    with database.session() as session:
        try:
            tenant = get_tenant(session, context.partition_key)
        except UnknownTenant as exc:
            raise dg.Failure(str(exc), allow_retries=False) from None
        if not tenant.service_enabled(SERVICE, switched_off_services(session)):
            context.log.info(f"{SERVICE} is switched off for {tenant.slug}: skipped")
            context.add_output_metadata({"tenant": tenant.slug, "switched_off": True})
            return
        report = backfill_renditions(session, storage, files.path, tenant, now=_now(), limit=config.limit)
    for warning in report.warnings:
        context.log.warning(warning)
    context.log.info(
        f"thumbnails: {report.created} made, {report.already_done} already done, {report.missing} missing, "
        f"{report.failed} damaged, {report.unsupported} without thumbnails, {report.deferred} left for later"
    )
    context.add_output_metadata({"tenant": tenant.slug, **report.as_metadata(),
                                 **cloud_paths_metadata(report.cloud_paths)})


@dg.job(
    name=THUMBNAILS_JOB_NAME,
    partitions_def=tenant_partitions,
    description=(
        "Thumbnail backfill for one tenant: makes the approval-attachment thumbnails that are missing "
        "or out of date. Idempotent, safe to run at any time (daily by approval_thumbnails_schedule)."
    ),
    tags={"domain": "files", "dagster/max_runtime": "3600"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)
def approval_thumbnails_job():
    make_approval_thumbnails()


@dg.schedule(
    name="approval_thumbnails_schedule",
    job=approval_thumbnails_job,
    cron_schedule="40 2 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Daily at 02:40 UTC: one approval_thumbnails_job run per active tenant partition with "
        "renditions switched on."
    ),
    tags={"domain": "files"},
    owners=["team:bg-ops"],
)
def approval_thumbnails_schedule(context: dg.ScheduleEvaluationContext, database: DatabaseResource):
    day = context.scheduled_execution_time.astimezone(UTC).date().isoformat()
    partitions = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    with database.session() as session:
        globally_off = switched_off_services(session)
        slugs = [t.slug for t in active_tenants(session)
                 if t.slug in partitions and t.service_enabled(SERVICE, globally_off)]
    if not slugs:
        return dg.SkipReason("no active tenant partition has renditions switched on")
    return [
        dg.RunRequest(run_key=f"thumbnails|{slug}|{day}", partition_key=slug, tags={"bg_ops/tenant": slug})
        for slug in slugs
    ]
