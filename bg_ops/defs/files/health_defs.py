"""Storage dashboard (F7), quota warnings (F8) and the weekly restore drill (F9)."""

import random
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.files import admin
from bg_ops.defs.files.restore_drill import restore_drill
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import MailResource
from bg_ops.resources.storage import CloudStorageResource

STUCK_AFTER_SECONDS = 30 * 60
FAILURE_RATE_WARN = 0.2
FAILURE_RATE_MIN_VOLUME = 10
RESTORE_DRILL_SAMPLE = 20


def _now() -> datetime:
    return datetime.now(UTC)


# -- upload queue dashboard -------------------------------------------------------------


@dg.asset(
    name="upload_queue_health",
    retry_policy=TRANSIENT_RETRY,
    group_name="files",
    owners=["team:bg-ops"],
    tags={"domain": "files"},
    kinds={"sql"},
    description=(
        "Upload queue dashboard: files per status (queued, uploading, uploaded, failed, canceled), "
        "due now, age of the oldest due file, bytes uploaded (in total and per tenant) and the "
        "failure rate of the last hour. Refreshed every ten minutes; the UI plots each figure."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "upload_queue_not_stuck", asset="upload_queue_health",
            description=(f"Warns when the oldest due upload waited over {STUCK_AFTER_SECONDS // 60} minutes "
                         "or a file is still 'uploading' after its lease ended (a dead worker)."),
        ),
        dg.AssetCheckSpec(
            "upload_failure_rate", asset="upload_queue_health",
            description=(f"Warns when over {FAILURE_RATE_WARN:.0%} of the uploads finished in the last hour "
                         f"failed or were canceled (at least {FAILURE_RATE_MIN_VOLUME} finished)."),
        ),
    ],
)
def upload_queue_health(database: DatabaseResource) -> dg.MaterializeResult:
    return upload_health_result(database, _now())


def upload_health_result(database: DatabaseResource, now: datetime) -> dg.MaterializeResult:
    with database.engine.connect() as conn:
        figures = admin.stats(conn, now=now)
    age = figures["oldest_due_age_seconds"]
    waited_too_long = age is not None and age > STUCK_AFTER_SECONDS
    past_lease = figures["uploading_past_lease"]
    finished = figures["uploaded_last_hour"] + figures["failed_last_hour"]
    rate = float(figures["failure_rate_last_hour"])
    failing = finished >= FAILURE_RATE_MIN_VOLUME and rate > FAILURE_RATE_WARN
    metadata = {
        key: dg.MetadataValue.int(int(figures[key]))
        for key in ("queued", "uploading", "uploaded", "failed", "canceled", "total", "due_now",
                    "uploading_past_lease", "waiting_for_quota", "uploaded_last_hour", "failed_last_hour",
                    "bytes_uploaded")
    }
    metadata["failure_rate_last_hour"] = dg.MetadataValue.float(rate)
    metadata["oldest_due_age_seconds"] = dg.MetadataValue.float(float(age or 0.0))
    for slug, n in figures["bytes_by_tenant"].items():
        metadata[f"bytes_uploaded/{slug}"] = dg.MetadataValue.int(int(n))
    reasons = []
    if waited_too_long:
        reasons.append(f"the oldest due upload has waited {int(age) // 60} minutes")
    if past_lease:
        reasons.append(f"{past_lease} upload(s) still 'uploading' after their lease ended")
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="upload_queue_not_stuck", passed=not reasons, severity=dg.AssetCheckSeverity.WARN,
                description="; ".join(reasons) or "the queue is moving",
                metadata={"oldest_due_age_seconds": float(age or 0.0), "due_now": figures["due_now"],
                          "uploading_past_lease": past_lease},
            ),
            dg.AssetCheckResult(
                check_name="upload_failure_rate", passed=not failing, severity=dg.AssetCheckSeverity.WARN,
                metadata={"failure_rate_last_hour": rate, "finished_last_hour": finished,
                          "failed_last_hour": figures["failed_last_hour"]},
            ),
        ],
    )


# -- storage quota -----------------------------------------------------------------------


@dg.asset(
    name="storage_quota",
    retry_policy=TRANSIENT_RETRY,
    group_name="files",
    owners=["team:bg-ops"],
    tags={"domain": "files"},
    kinds={"sql"},
    description=(
        "Cloud storage used per tenant against companies.storage_quota_bytes. Tenants at 80% of "
        "their quota or more get one mail a day to their active admins; at 100% new uploads wait "
        "in the queue (not failed) and the mail says so."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "storage_quota_not_full", asset="storage_quota",
            description="Warns when a tenant is at or over its storage quota (its new uploads are waiting).",
        ),
    ],
)
def storage_quota(context: dg.AssetExecutionContext, database: DatabaseResource, mail: MailResource,
                  files: FilesResource) -> dg.MaterializeResult:
    return storage_quota_result(database, MailSettings(mail_from=mail.mail_from, files_root=files.path), _now(),
                                log=context.log)


def storage_quota_result(database: DatabaseResource, settings: MailSettings, now: datetime,
                         log=None) -> dg.MaterializeResult:
    with database.session() as session:
        usage = admin.storage_usage(session.connection())
        warnings = admin.send_quota_warnings(session, now=now, settings=settings, usage=usage)
    levels = {t.slug: admin.quota_level(t) for t in usage}
    full = sorted(slug for slug, level in levels.items() if level == 100)
    near = sorted(slug for slug, level in levels.items() if level == 80)
    queued = [w for w in warnings if w.created]
    nobody = [w.tenant for w in warnings if not w.admins]
    if log is not None:
        for w in queued:
            log.info(f"{w.tenant}: {w.level}% storage warning #{w.email_id} queued for {w.admins} admin(s)")
        for slug in nobody:
            log.warning(f"{slug} is near or over its storage quota and has no active admin to tell")
    metadata: dict = {
        "tenants": dg.MetadataValue.int(len(usage)),
        "tenants_at_80_percent": dg.MetadataValue.int(len(near)),
        "tenants_full": dg.MetadataValue.int(len(full)),
        "warnings_queued": dg.MetadataValue.int(len(queued)),
        "bytes_used": dg.MetadataValue.int(sum(t.used_bytes for t in usage)),
        "usage": dg.MetadataValue.json([t.as_dict() for t in usage]),
    }
    for t in usage:
        metadata[f"used_bytes/{t.slug}"] = dg.MetadataValue.int(t.used_bytes)
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="storage_quota_not_full", passed=not full, severity=dg.AssetCheckSeverity.WARN,
                description=(f"at or over quota, new uploads waiting: {', '.join(full)}" if full
                             else "every tenant has room"),
                # Counts as numbers (plotted over time, like the asset's); the slugs as text beside them.
                metadata={"tenants_full": len(full), "tenants_at_80_percent": len(near),
                          "full": ", ".join(full) or "-", "at_80_percent": ", ".join(near) or "-"},
            ),
        ],
    )


storage_health_job = dg.define_asset_job(
    name="storage_health_job",
    selection=[upload_queue_health, storage_quota],
    description=("Refreshes the upload queue dashboard and tenants' storage use, and warns tenant admins "
                 "near or over their storage quota (once a day)."),
    tags={"bg_ops/singleton": "storage_health", "domain": "files", "dagster/max_runtime": "900"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)

storage_health_schedule = dg.ScheduleDefinition(
    name="storage_health_schedule",
    job=storage_health_job,
    cron_schedule="*/10 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Refreshes the storage dashboard, its checks and the quota warnings every ten minutes.",
    owners=["team:bg-ops"],
    tags={"domain": "files"},
)


# -- restore drill -----------------------------------------------------------------------


class RestoreDrillConfig(dg.Config):
    sample_size: int = RESTORE_DRILL_SAMPLE
    seed: int | None = None  # a fixed seed repeats a drill's sample


@dg.op(
    description=(
        "Downloads a random sample of uploaded files (all tenants; only the latest upload to each "
        "cloud path) and compares each content hash with the one recorded at upload. Fails, "
        "naming the files, when one is missing or differs."
    ),
    tags={"domain": "files"},
    retry_policy=TRANSIENT_RETRY,
)
def run_restore_drill(context: dg.OpExecutionContext, config: RestoreDrillConfig, database: DatabaseResource,
                      storage: CloudStorageResource) -> dg.Output:
    rng = random.Random(config.seed)
    with tempfile.TemporaryDirectory(prefix="bg_ops-restore-drill-") as workdir:
        report = restore_drill(database.engine, storage, sample_size=config.sample_size, rng=rng,
                               workdir=Path(workdir))
    metadata = {**report.as_metadata(), "storage": storage.describe()}
    if not report.passed:
        lines = [f"{i.cloud_path} (company {i.company_id}, upload #{i.id}): "
                 + ("content differs from what was uploaded" if i in report.mismatch else i.error or "unreadable")
                 for i in report.bad]
        raise dg.Failure(
            description=(f"restore drill: {len(report.bad)} of {report.sampled} sampled file(s) missing or "
                         f"changed in the cloud: " + "; ".join(lines)),
            metadata={**metadata, "bad_paths": dg.MetadataValue.json(report.bad_paths()),
                      "bad_files": dg.MetadataValue.json([i.as_dict() for i in report.bad])},
            allow_retries=False,
        )
    if report.sampled == 0:
        context.log.info("restore drill: nothing uploaded yet, nothing to check")
    else:
        context.log.info(f"restore drill: {report.sampled} file(s) downloaded, every content hash matches")
    return dg.Output(None, metadata=metadata)


@dg.job(
    name="restore_drill_job",
    description=(
        "Weekly restore drill (F9): downloads a random sample of backed-up files from cloud storage "
        "and verifies their content hashes; fails naming every file missing or changed."
    ),
    tags={"bg_ops/singleton": "restore_drill", "domain": "files", "dagster/max_runtime": "3600"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)
def restore_drill_job():
    run_restore_drill()


restore_drill_schedule = dg.ScheduleDefinition(
    name="restore_drill_schedule",
    job=restore_drill_job,
    cron_schedule="0 4 * * 0",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Sundays 04:00 UTC: runs the restore drill on a random sample of uploaded files.",
    owners=["team:bg-ops"],
    tags={"domain": "files"},
)
