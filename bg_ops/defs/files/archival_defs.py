"""Archival wiring (F5): the sensor that sees documents change and the job that archives one.

``document_archival_sensor`` requests one ``archive_document_job`` run per document version
(run key ``archive|<doc type>|<id>|<version key>``) in the document's tenant partition; the
run renders the PDF and uploads it to the tenant's Approvals, Cores, Invoices or Estimates
folder. On its very first tick the sensor looks one day back rather than archiving every
document ever completed: older documents are archived by launching the job by hand.
"""

from datetime import UTC, datetime

import dagster as dg

from bg_ops.defs.files.archival import (
    DOC_TYPES,
    FIRST_LOOKBACK,
    ArchivalCursor,
    ArchiveError,
    archive_document,
    plan_archival_runs,
    service_name,
)
from bg_ops.defs.files.pdf import FontNotFound
from bg_ops.defs.tenants.defs import TENANT_PARTITIONS_NAME, tenant_partitions
from bg_ops.defs.tenants.logic import UnknownTenant, get_tenant, switched_off_services
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.storage import CloudStorageResource, StorageError

ARCHIVE_JOB_NAME = "archive_document_job"
ARCHIVE_OP_NAME = "archive_document"
BATCH = 200  # new versions per document type per tick


def _now() -> datetime:
    return datetime.now(UTC)


class ArchiveDocumentConfig(dg.Config):
    doc_type: str  # approval, core_request, invoice or estimate
    doc_id: int  # its id in the run's tenant
    version_key: str = ""  # the version the sensor saw (informational: the current one is archived)


@dg.op(
    name=ARCHIVE_OP_NAME,
    description=(
        "Archives the current version of one document of the run's tenant: renders its PDF (the "
        "approval journey, or the core request / invoice / estimate record), uploads it as a new "
        "file (never overwriting an earlier version), checks the stored content hash and records the "
        "version. A version already archived is a no-op."
    ),
    tags={"domain": "files"},
    retry_policy=dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
)
def archive_document_op(
    context: dg.OpExecutionContext,
    config: ArchiveDocumentConfig,
    database: DatabaseResource,
    storage: CloudStorageResource,
    files: FilesResource,
) -> None:
    if config.doc_type not in DOC_TYPES:
        raise dg.Failure(f"doc_type {config.doc_type!r} is not archived: use one of {', '.join(DOC_TYPES)}",
                         allow_retries=False)
    try:
        with database.session() as session:
            tenant = get_tenant(session, context.partition_key)
            if not tenant.service_enabled(service_name(config.doc_type), switched_off_services(session)):
                context.log.info(f"{service_name(config.doc_type)} is switched off for {tenant.slug}: skipped")
                context.add_output_metadata({"tenant": tenant.slug, "status": "switched_off"})
                return
            result = archive_document(session, storage, tenant, config.doc_type, config.doc_id, now=_now(),
                                      files_root=files.path)
    except (FontNotFound, UnknownTenant) as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None
    except (StorageError, ArchiveError) as exc:
        if exc.transient:
            raise
        raise dg.Failure(f"archive {config.doc_type} #{config.doc_id}: {exc}", allow_retries=False) from None
    if result.status == "archived":
        context.log.info(f"archived {config.doc_type} #{config.doc_id} as version {result.version}: {result.cloud_path}")
    elif result.status == "already_archived":
        context.log.info(f"{config.doc_type} #{config.doc_id} version {result.version} was already archived")
    else:
        context.log.warning(f"{config.doc_type} #{config.doc_id} not archived: {result.reason}")
    if config.version_key and result.version_key and config.version_key != result.version_key:
        context.log.info("the document changed since the sensor saw it: its current version was archived")
    metadata = {"tenant": tenant.slug, **result.as_metadata()}
    if result.cloud_path:
        metadata["cloud_path"] = dg.MetadataValue.path(result.cloud_path)
    context.add_output_metadata(metadata)


@dg.job(
    name=ARCHIVE_JOB_NAME,
    partitions_def=tenant_partitions,
    description=(
        "Archives one document version (run config: doc_type, doc_id) of one tenant as a PDF in its "
        "cloud folder: approvals to Approvals, core requests to Cores, invoices to Invoices, estimates "
        "to Estimates. Launched by document_archival_sensor; safe to re-run."
    ),
    tags={"domain": "files"},
    executor_def=dg.in_process_executor,
)
def archive_document_job():
    archive_document_op()


@dg.sensor(
    name="document_archival_sensor",
    job=archive_document_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches for completed approvals, approved core requests, sent or paid invoices and sent or "
        "accepted estimates, and requests one archive_document_job run per document version in the "
        "document's tenant partition (run key archive|<type>|<id>|<version>). Tenants with archival "
        "switched off are passed over. The cursor keeps, per document type, the last change time seen."
    ),
    tags={"domain": "files"},
)
def document_archival_sensor(context: dg.SensorEvaluationContext, database: DatabaseResource):
    cursor = ArchivalCursor.from_json(context.cursor, start=_now() - FIRST_LOOKBACK)
    existing = context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME)
    with database.session() as session:
        plan = plan_archival_runs(session, cursor, existing_partitions=existing,
                                  globally_off=switched_off_services(session), limit=BATCH)
    requests = [
        dg.RunRequest(
            run_key=run.run_key,
            partition_key=run.partition_key,
            run_config={"ops": {ARCHIVE_OP_NAME: {"config": {
                "doc_type": run.doc.doc_type, "doc_id": run.doc.doc_id, "version_key": run.doc.version_key}}}},
            tags={"bg_ops/tenant": run.partition_key, "bg_ops/doc_type": run.doc.doc_type},
        )
        for run in plan.runs
    ]
    skipped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in plan.skipped.items() if n)
    if requests:
        context.log.info(f"{len(requests)} document version(s) to archive" + (f"; passed over: {skipped}" if skipped else ""))
    return dg.SensorResult(
        run_requests=requests,
        cursor=plan.cursor.to_json(),
        dynamic_partitions_requests=(
            [tenant_partitions.build_add_request(plan.partitions_to_add)] if plan.partitions_to_add else None),
        skip_reason=None if requests else f"no new document version to archive{f' (passed over: {skipped})' if skipped else ''}",
    )
