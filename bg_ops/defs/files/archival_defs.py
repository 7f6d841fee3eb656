"""Archival wiring (F5): the sensor that sees documents change and the job that archives them.

``document_archival_sensor`` requests, per tick and tenant, one ``archive_document_job`` run in
the tenant's partition for all the tenant's new document versions (run key
``archive|<tenant>|<n>|<digest of the version set>``, see ``plan_archival_runs`` for why not
one run per document); the run renders each PDF and uploads it to the tenant's Approvals,
Cores, Invoices or Estimates folder. One archive per version is kept by the ``archives``
table's unique key, whatever runs overlap. On its very first tick the sensor looks one day
back rather than archiving every document ever completed: older documents are archived by
launching the job by hand (run config ``doc_type`` and ``doc_id``).
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
from bg_ops.defs.files.run_metadata import cloud_paths_metadata
from bg_ops.defs.retries import TRANSIENT_RETRY
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


class _RetryLater(ArchiveError):
    """Some documents of the run failed for a reason a retry may cure (storage, verification)."""

    transient = True


class ArchiveTarget(dg.Config):
    doc_type: str  # approval, core_request, invoice or estimate
    doc_id: int  # its id in the run's tenant
    version_key: str = ""  # the version the sensor saw (informational: the current one is archived)


class ArchiveDocumentConfig(dg.Config):
    documents: list[ArchiveTarget] = []  # what the sensor hands over: the tenant's new versions
    doc_type: str = ""  # or one document by hand: doc_type and doc_id
    doc_id: int = 0
    version_key: str = ""

    def targets(self) -> list[ArchiveTarget]:
        if self.documents and self.doc_type:
            raise dg.Failure("give either documents or doc_type/doc_id in the run config, not both",
                             allow_retries=False)
        if self.documents:
            return list(self.documents)
        if not self.doc_type:
            raise dg.Failure("nothing to archive: set doc_type and doc_id (or documents) in the run config",
                             allow_retries=False)
        return [ArchiveTarget(doc_type=self.doc_type, doc_id=self.doc_id, version_key=self.version_key)]


def _archive_one(context: dg.OpExecutionContext, target: ArchiveTarget, database: DatabaseResource,
                 storage: CloudStorageResource, files: FilesResource) -> dict:
    """Archive one document in its own transaction; its result as metadata."""
    with database.session() as session:
        tenant = get_tenant(session, context.partition_key)
        if not tenant.service_enabled(service_name(target.doc_type), switched_off_services(session)):
            context.log.info(f"{service_name(target.doc_type)} is switched off for {tenant.slug}: skipped")
            return {"status": "switched_off", "doc_type": target.doc_type, "doc_id": target.doc_id}
        result = archive_document(session, storage, tenant, target.doc_type, target.doc_id, now=_now(),
                                  files_root=files.path)
    if result.status == "archived":
        context.log.info(f"archived {target.doc_type} #{target.doc_id} as version {result.version}: {result.cloud_path}")
    elif result.status == "already_archived":
        context.log.info(f"{target.doc_type} #{target.doc_id} version {result.version} was already archived")
    else:
        context.log.warning(f"{target.doc_type} #{target.doc_id} not archived: {result.reason}")
    if target.version_key and result.version_key and target.version_key != result.version_key:
        context.log.info(f"{target.doc_type} #{target.doc_id} changed since the sensor saw it: "
                         "its current version was archived")
    return result.as_metadata()


@dg.op(
    name=ARCHIVE_OP_NAME,
    description=(
        "Archives the current version of each document named in the run config, all of the run's "
        "tenant: renders its PDF (the approval journey, or the core request / invoice / estimate "
        "record), uploads it as a new file (never overwriting an earlier version), checks the stored "
        "content hash and records the version. A version already archived is a no-op; one document "
        "failing does not stop the others (the op fails at the end, and a retry redoes only what is "
        "missing)."
    ),
    tags={"domain": "files"},
    retry_policy=TRANSIENT_RETRY,
)
def archive_document_op(
    context: dg.OpExecutionContext,
    config: ArchiveDocumentConfig,
    database: DatabaseResource,
    storage: CloudStorageResource,
    files: FilesResource,
) -> None:
    targets = config.targets()
    results: list[dict] = []
    transient: list[str] = []
    permanent: list[str] = []
    for target in targets:
        what = f"{target.doc_type} #{target.doc_id}"
        if target.doc_type not in DOC_TYPES:
            permanent.append(f"doc_type {target.doc_type!r} is not archived: use one of {', '.join(DOC_TYPES)}")
            results.append({"status": "refused", "doc_type": target.doc_type, "doc_id": target.doc_id})
            continue
        try:
            results.append(_archive_one(context, target, database, storage, files))
        except (FontNotFound, UnknownTenant) as exc:
            raise dg.Failure(str(exc), allow_retries=False) from None  # nothing else can succeed either
        except (StorageError, ArchiveError) as exc:
            (transient if exc.transient else permanent).append(f"archive {what}: {exc}")
            results.append({"status": "failed", "doc_type": target.doc_type, "doc_id": target.doc_id,
                            "reason": str(exc)[:300]})
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    metadata: dict = {"tenant": context.partition_key, "documents": len(targets), **{f"n_{k}": v for k, v in counts.items()}}
    if len(results) == 1:  # one document: its figures as they are
        metadata.update(results[0])
        if results[0].get("cloud_path"):
            metadata["cloud_path"] = dg.MetadataValue.path(results[0]["cloud_path"])
    else:
        metadata["results"] = dg.MetadataValue.json(results)
        metadata.update(cloud_paths_metadata([r["cloud_path"] for r in results if r.get("cloud_path")]))
    context.add_output_metadata(metadata)
    if transient:  # the retry policy runs the op again; what is archived already is a no-op then
        raise _RetryLater("; ".join(transient + permanent))
    if permanent:
        raise dg.Failure("; ".join(permanent), allow_retries=False)


@dg.job(
    name=ARCHIVE_JOB_NAME,
    partitions_def=tenant_partitions,
    description=(
        "Archives document versions of one tenant as PDFs in its cloud folders: approvals to Approvals, "
        "core requests to Cores, invoices to Invoices, estimates to Estimates. Launched by "
        "document_archival_sensor with the tenant's new versions (run config: documents); by hand, run "
        "config doc_type and doc_id archive one document. Safe to re-run."
    ),
    tags={"domain": "files", "dagster/max_runtime": "900"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)
def archive_document_job():
    archive_document_op()


@dg.sensor(
    name="document_archival_sensor",
    job=archive_document_job,
    # 15 s: a completion waits 7.5 s on average for its tick; with one run per tenant and tick
    # that costs at most 4 archive runs a minute per busy tenant.
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches for completed approvals, approved core requests, sent or paid invoices and sent or "
        "accepted estimates, and requests per tenant one archive_document_job run for its new document "
        "versions in the tenant's partition (run key archive|<tenant>|<count>|<digest of the versions>). "
        "Tenants with archival switched off are passed over. The cursor keeps, per document type, the "
        "last change time seen."
    ),
    tags={"domain": "files"},
    owners=["team:bg-ops"],
)
def document_archival_sensor(context: dg.SensorEvaluationContext, database: DatabaseResource):
    now = _now()
    cursor = ArchivalCursor.from_json(context.cursor, start=now - FIRST_LOOKBACK)
    existing = context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME)
    with database.session() as session:
        plan = plan_archival_runs(session, cursor, existing_partitions=existing,
                                  globally_off=switched_off_services(session), limit=BATCH, now=now)
    requests = [
        dg.RunRequest(
            run_key=run.run_key,
            partition_key=run.partition_key,
            run_config={"ops": {ARCHIVE_OP_NAME: {"config": {"documents": [
                {"doc_type": d.doc_type, "doc_id": d.doc_id, "version_key": d.version_key} for d in run.docs]}}}},
            tags={"bg_ops/tenant": run.partition_key, "bg_ops/doc_type": ",".join(run.doc_types)},
        )
        for run in plan.runs
    ]
    skipped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in plan.skipped.items() if n)
    if requests:
        versions = sum(len(run.docs) for run in plan.runs)
        context.log.info(f"{versions} document version(s) to archive in {len(requests)} run(s)"
                         + (f"; passed over: {skipped}" if skipped else ""))
    return dg.SensorResult(
        run_requests=requests,
        cursor=plan.cursor.to_json(),
        dynamic_partitions_requests=(
            [tenant_partitions.build_add_request(plan.partitions_to_add)] if plan.partitions_to_add else None),
        skip_reason=None if requests else f"no new document version to archive{f' (passed over: {skipped})' if skipped else ''}",
    )
