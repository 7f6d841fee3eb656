"""Upload queue and nightly backup wiring."""

import random
import socket
from datetime import UTC, datetime

import dagster as dg

from bg_ops.defs.files.backup import scan_and_queue
from bg_ops.defs.files.layout import ensure_tenant_folders
from bg_ops.defs.files.uploads import UploadPolicy, count_due, drain_uploads
from bg_ops.defs.files.run_metadata import cloud_paths_metadata
from bg_ops.defs.queue_workers import worker_run_request
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.defs.tenants.defs import TENANT_PARTITIONS_NAME, tenant_partitions
from bg_ops.defs.tenants.logic import active_tenants, get_tenant, switched_off_services
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.storage import CloudStorageResource

UPLOAD_JOB = "upload_files_job"
BACKUP_LOCAL_HOUR = 2


def _now() -> datetime:
    return datetime.now(UTC)


class UploadFilesConfig(dg.Config):
    batch_size: int = 5  # files per cycle (seed 000)
    max_batches: int | None = None
    time_budget_seconds: float = 240.0
    max_attempts: int = 200
    daily_attempt_cap: int = 24
    on_conflict: str = "keep_both"


@dg.op(
    description=(
        "Uploads due files to cloud storage: each verified by content hash; 429/5xx retried later "
        "with backoff; refused or vanished sources canceled with the reason."
    ),
    tags={"domain": "files"},
    retry_policy=TRANSIENT_RETRY,
)
def upload_due_files(context: dg.OpExecutionContext, config: UploadFilesConfig, database: DatabaseResource,
                     storage: CloudStorageResource, files: FilesResource) -> dg.Output:
    policy = UploadPolicy(batch_size=config.batch_size, time_budget_seconds=config.time_budget_seconds,
                          max_attempts=config.max_attempts, daily_attempt_cap=config.daily_attempt_cap,
                          on_conflict=config.on_conflict)
    report = drain_uploads(database.engine, storage, clock=_now, files_root=files.path, policy=policy,
                           worker_id=f"{socket.gethostname()}:{context.run_id[:8]}", rng=random.Random(),
                           max_batches=config.max_batches)
    context.log.info(f"uploaded {report.uploaded}, will retry {report.retried}, canceled {report.canceled}, "
                     f"waiting for quota {report.waiting_for_quota}; stopped: {report.stopped_because}")
    return dg.Output(None, metadata={**report.as_metadata(), "storage": storage.describe(),
                                     **cloud_paths_metadata(report.cloud_paths)})


@dg.job(
    name=UPLOAD_JOB,
    description=(
        "Upload queue worker: uploads the files that are due (5 per cycle by default), verified by "
        "content hash. Launched by upload_queue_sensor when work is due; a schedule is the fallback."
    ),
    tags={"bg_ops/singleton": "upload_queue", "domain": "files", "dagster/max_runtime": "3600"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)
def upload_files_job():
    upload_due_files()


def _upload_request(context, database: DatabaseResource, now: datetime):
    def due() -> int:
        with database.engine.connect() as conn:
            return count_due(conn, now)

    return worker_run_request(context, job_name=UPLOAD_JOB, count_due=due, now=now, what="upload")


@dg.sensor(
    name="upload_queue_sensor",
    job=upload_files_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches the upload job when files are due and no upload run is going (one at a time).",
    owners=["team:bg-ops"],
    tags={"domain": "files"},
)
def upload_queue_sensor(context: dg.SensorEvaluationContext, database: DatabaseResource):
    now = _now()
    result = _upload_request(context, database, now)
    if isinstance(result, dg.RunRequest):
        context.update_cursor(now.isoformat())
    return result


@dg.schedule(
    name="upload_queue_schedule",
    job=upload_files_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Fallback for upload_queue_sensor: every five minutes, launches uploads when files are due.",
    owners=["team:bg-ops"],
    tags={"domain": "files"},
)
def upload_queue_schedule(context: dg.ScheduleEvaluationContext, database: DatabaseResource):
    return _upload_request(context, database, context.scheduled_execution_time.astimezone(UTC))


@dg.op(
    description=(
        "Scans the tenant's project files and approval attachments, compares them with the backup "
        "manifest (size, mtime, content hash) and queues uploads of new or changed files only."
    ),
    tags={"domain": "files"},
    retry_policy=TRANSIENT_RETRY,
)
def scan_tenant_files(context: dg.OpExecutionContext, database: DatabaseResource, storage: CloudStorageResource,
                      files: FilesResource) -> dg.Output:
    slug = context.partition_key
    with database.session() as session:
        tenant = get_tenant(session, slug)
        if not tenant.service_enabled("backup", switched_off_services(session)):
            context.log.info(f"backup is switched off for {slug}: skipped")
            return dg.Output(None, metadata={"tenant": slug, "switched_off": True})
        ensure_tenant_folders(storage, slug)
        report = scan_and_queue(session, tenant, files.path, now=_now())
    context.log.info(f"{slug}: scanned {report.scanned}, new {report.new}, changed {report.changed}, "
                     f"queued {report.queued} in {report.seconds}s")
    return dg.Output(None, metadata={"tenant": slug, **report.as_metadata()})


@dg.job(
    name="nightly_backup_job",
    partitions_def=tenant_partitions,
    description=(
        "Nightly backup for one tenant: queues new and changed project files and approval "
        "attachments for upload to 'Project Backups' and 'Approval Backups'. Unchanged files are "
        "not even read."
    ),
    tags={"domain": "files", "dagster/max_runtime": "3600"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)
def nightly_backup_job():
    scan_tenant_files()


@dg.schedule(
    name="nightly_backup_schedule",
    job=nightly_backup_job,
    cron_schedule="15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Hourly: starts the backup of every tenant for whom it is {BACKUP_LOCAL_HOUR:02d}:xx at night locally.",
    owners=["team:bg-ops"],
    tags={"domain": "files"},
)
def nightly_backup_schedule(context: dg.ScheduleEvaluationContext, database: DatabaseResource):
    now = context.scheduled_execution_time.astimezone(UTC)
    known = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    with database.session() as session:
        tenants = active_tenants(session)
    requests = []
    for tenant in tenants:
        local = now.astimezone(tenant.zone)
        if tenant.slug in known and local.hour == BACKUP_LOCAL_HOUR:
            requests.append(dg.RunRequest(run_key=f"backup|{local.date().isoformat()}|{tenant.slug}",
                                          partition_key=tenant.slug, tags={"bg_ops/tenant": tenant.slug}))
    return requests or dg.SkipReason(f"no tenant is at {BACKUP_LOCAL_HOUR:02d}:xx local time")
