"""Maintenance wiring: weekly cleanup (O4), database backup and restore test (O5), and the
interval refresh of the per-tenant summary (O6). The logic lives beside this module.

Retention and backup settings are read when a run or tick starts (``load_settings``), never
at import time. The backup's cron comes from ``BG_OPS_DB_BACKUP_CRON``: Dagster fixes a
schedule's cron when definitions load, so ``db_backup_schedule`` ticks every minute and
requests a run only in the minutes that expression names (skip reason otherwise).
"""

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from bg_ops.defs.maintenance.cron import parse_cron
from bg_ops.defs.maintenance.dagster_history import prune_dagster_history
from bg_ops.defs.maintenance.db_backup import BackupError, backup_database, restore_test
from bg_ops.defs.maintenance.retention import DEFAULT_BATCH_SIZE, RetentionPolicy, run_cleanup
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.defs.tenants import defs as tenant_defs
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.storage import CloudStorageResource
from bg_ops.settings import load_settings

WEEKLY_CLEANUP_CRON = "0 3 * * 0"
RESTORE_TEST_CRON = "0 5 * * 0"
TENANT_SUMMARY_CRON = "*/15 * * * *"
TAGS = {"domain": "maintenance"}
OWNERS = ["team:bg-ops"]
# Run monitoring ends (and the alert sensor reports) a maintenance run still going after this long (O9).
MAX_RUNTIME = {"dagster/max_runtime": "7200"}


def _now() -> datetime:
    return datetime.now(UTC)


# -- weekly cleanup (O4) ----------------------------------------------------------------------


class WeeklyCleanupConfig(dg.Config):
    dry_run: bool = False  # count what would go, change nothing
    batch_size: int = DEFAULT_BATCH_SIZE  # rows per transaction
    prune_dagster_history: bool = True


@dg.op(
    description=(
        "Deletes bg_ops rows past the retention (seed 003 BR-2), in batches of batch_size rows per "
        "transaction: sent and canceled mail and superseded uploads after BG_OPS_RETENTION_DAYS, "
        "notifications and the reminder log after their own ages, rejected payment attempts; clears "
        "leases left on finished rows after BG_OPS_TEMP_STATE_RETENTION_HOURS. Failed mail and failed "
        "or canceled uploads are never deleted. Then prunes Dagster's history the same way: succeeded "
        "and canceled runs (with their events) past the retention, failed runs only once a later run of "
        "the same job and partition succeeded, skipped ticks after the temporary-state age."
    ),
    tags=TAGS,
    retry_policy=TRANSIENT_RETRY,
)
def weekly_cleanup(context: dg.OpExecutionContext, config: WeeklyCleanupConfig,
                   database: DatabaseResource) -> dg.Output:
    settings = load_settings()
    policy = RetentionPolicy.from_settings(settings, batch_size=config.batch_size)
    now = _now()

    def progress(result, rows):
        if result.batches % 20 == 0:
            context.log.info(f"{result.table} ({result.rule}): {result.rows} row(s) in {result.batches} batch(es)")

    report = run_cleanup(database.engine, now=now, policy=policy, dry_run=config.dry_run, on_batch=progress)
    verb = "would delete" if config.dry_run else "deleted"
    for r in report.results:
        context.log.info(f"{r.table}: {verb} {r.rows} ({r.rule}, {r.action}, before {r.cutoff:%Y-%m-%d %H:%M} UTC, "
                         f"{r.batches} batch(es))")
    tables = report.by_table()
    metadata: dict = {
        "dry_run": config.dry_run,
        "deleted": dg.MetadataValue.int(report.deleted),
        "cleared": dg.MetadataValue.int(report.cleared),
        "batches": dg.MetadataValue.int(report.batches),
        "batch_size": dg.MetadataValue.int(report.batch_size),
        "tables": dg.MetadataValue.json(tables),
        "rules": dg.MetadataValue.json([r.as_dict() for r in report.results]),
    }
    for table, figures in tables.items():
        metadata[f"deleted/{table}"] = dg.MetadataValue.int(figures["deleted"])

    if config.prune_dagster_history:
        history = prune_dagster_history(context.instance, now=now, retention_days=settings.retention_days,
                                        temp_state_hours=settings.temp_state_retention_hours,
                                        dry_run=config.dry_run, keep_run_ids=frozenset({context.run_id}))
        context.log.info(f"Dagster history: {verb} {len(history.runs_deleted)} run(s) created before "
                         f"{history.cutoff:%Y-%m-%d} UTC; kept {len(history.failed_runs_kept)} unresolved failed "
                         f"run(s); ticks {history.ticks_purged}")
        metadata.update({
            "dagster_runs_deleted": dg.MetadataValue.int(len(history.runs_deleted)),
            "dagster_failed_runs_kept_unresolved": dg.MetadataValue.int(len(history.failed_runs_kept)),
            "dagster_ticks_purged": dg.MetadataValue.json(history.ticks_purged),
        })
    return dg.Output(None, metadata=metadata)


@dg.job(
    name="weekly_cleanup_job",
    description=(
        "Weekly cleanup (O4): deletes bg_ops rows past the retention in batches (failed rows stay until "
        "resolved) and prunes Dagster's old runs, events and ticks; a summary per table in the metadata. "
        "Run config dry_run: true counts without deleting. One run at a time."
    ),
    tags={"bg_ops/singleton": "weekly_cleanup", **TAGS, **MAX_RUNTIME},
    owners=OWNERS,
    executor_def=dg.in_process_executor,
)
def weekly_cleanup_job():
    weekly_cleanup()


weekly_cleanup_schedule = dg.ScheduleDefinition(
    name="weekly_cleanup_schedule",
    job=weekly_cleanup_job,
    cron_schedule=WEEKLY_CLEANUP_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    owners=OWNERS,
    tags=TAGS,
    description="Sundays 03:00 UTC: runs the weekly cleanup of bg_ops tables and Dagster history.",
)


# -- database backup and restore test (O5) ------------------------------------------------------------


@dg.op(
    description=(
        "Backs up the database (pg_dump custom format on PostgreSQL, the online backup API then gzip on "
        "SQLite), uploads the dump and its manifest (row counts per table) to BG_OPS_DB_BACKUP_FOLDER in "
        "cloud storage, then rotates the folder: keeps the last backup of each of the last "
        "BG_OPS_DB_BACKUP_KEEP_DAILY days and of the last BG_OPS_DB_BACKUP_KEEP_WEEKLY ISO weeks."
    ),
    tags=TAGS,
    retry_policy=TRANSIENT_RETRY,
)
def backup_database_op(context: dg.OpExecutionContext, database: DatabaseResource,
                       storage: CloudStorageResource) -> dg.Output:
    settings = load_settings()
    try:
        report = backup_database(database.engine, storage, folder=settings.db_backup_folder, now=_now(),
                                 keep_daily=settings.db_backup_keep_daily, keep_weekly=settings.db_backup_keep_weekly)
    except BackupError as exc:
        raise dg.Failure(description=f"database backup: {exc}") from None
    data = report.as_dict()
    context.log.info(f"database backup {data['backup']} ({data['size']} bytes, {data['rows']} rows in "
                     f"{data['tables']} tables) stored at {data['cloud_path']} on {storage.describe()}; "
                     f"rotation kept {len(data['kept'])}, deleted {len(data['deleted'])}")
    return dg.Output(None, metadata={
        "backup": data["backup"], "cloud_path": data["cloud_path"], "dialect": data["dialect"],
        "size_bytes": dg.MetadataValue.int(data["size"]), "content_hash": data["content_hash"],
        "rows": dg.MetadataValue.int(data["rows"]), "row_counts": dg.MetadataValue.json(data["row_counts"]),
        "kept": dg.MetadataValue.json(data["kept"]), "deleted": dg.MetadataValue.json(data["deleted"]),
        "kept_daily": dg.MetadataValue.int(data["kept_daily"]), "kept_weekly": dg.MetadataValue.int(data["kept_weekly"]),
    })


@dg.job(
    name="db_backup_job",
    description=(
        "Database backup (O5): dumps the database, stores it in the cloud backups folder with its row "
        "counts and rotates old backups (N daily, M weekly). Scheduled by BG_OPS_DB_BACKUP_CRON."
    ),
    tags={"bg_ops/singleton": "db_backup", **TAGS, **MAX_RUNTIME},
    owners=OWNERS,
    executor_def=dg.in_process_executor,
)
def db_backup_job():
    backup_database_op()


@dg.schedule(
    name="db_backup_schedule",
    job=db_backup_job,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    owners=OWNERS,
    tags=TAGS,
    description=(
        "Launches the database backup at the times BG_OPS_DB_BACKUP_CRON names (UTC, default '30 2 * * *', "
        "02:30 every night); it ticks every minute because that cron is read from configuration at run time."
    ),
)
def db_backup_schedule(context: dg.ScheduleEvaluationContext):
    cron = load_settings().db_backup_cron
    when = (context.scheduled_execution_time or _now()).astimezone(UTC)
    if not parse_cron(cron).matches(when):
        return dg.SkipReason(f"BG_OPS_DB_BACKUP_CRON={cron!r} does not name {when:%Y-%m-%d %H:%M} UTC")
    return dg.RunRequest(run_key=f"db_backup|{when:%Y%m%dT%H%M}")


@dg.op(
    description=(
        "Restores the latest database backup into a scratch database (a new PostgreSQL database, dropped "
        "afterwards, or a temporary SQLite file) and compares its row count per table with the source at "
        "backup time (and shows today's counts). Fails naming every table that differs."
    ),
    tags=TAGS,
    retry_policy=TRANSIENT_RETRY,
)
def restore_latest_db_backup(context: dg.OpExecutionContext, database: DatabaseResource,
                             storage: CloudStorageResource) -> dg.Output:
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="bg_ops-restore-") as tmp:
        try:
            report = restore_test(database.engine, storage, folder=settings.db_backup_folder, now=_now(),
                                  workdir=Path(tmp))
        except BackupError as exc:
            raise dg.Failure(description=f"restore test: {exc}", allow_retries=False) from None
    data = report.as_dict()
    metadata = {
        "backup": data["backup"], "scratch": data["scratch"], "passed": data["passed"],
        "tables": dg.MetadataValue.int(data["tables"]), "rows_restored": dg.MetadataValue.int(data["rows_restored"]),
        "counts": dg.MetadataValue.json(data["counts"]),
    }
    if not report.passed:
        raise dg.Failure(
            description=(f"restore test of {report.backup}: row counts differ for "
                         f"{', '.join(report.mismatched) or 'every table (nothing restored)'}"),
            metadata=metadata, allow_retries=False,
        )
    context.log.info(f"restore test of {report.backup}: {data['tables']} tables, {data['rows_restored']} rows, "
                     "every count equal to the source at backup time")
    return dg.Output(None, metadata=metadata)


@dg.job(
    name="db_restore_test_job",
    description=(
        "Restore test (O5): restores the latest database backup into a scratch database and compares row "
        "counts per table with the source; fails when any differ."
    ),
    tags={"bg_ops/singleton": "db_backup", **TAGS, **MAX_RUNTIME},
    owners=OWNERS,
    executor_def=dg.in_process_executor,
)
def db_restore_test_job():
    restore_latest_db_backup()


db_restore_test_schedule = dg.ScheduleDefinition(
    name="db_restore_test_schedule",
    job=db_restore_test_job,
    cron_schedule=RESTORE_TEST_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    owners=OWNERS,
    tags=TAGS,
    description="Sundays 05:00 UTC: restores the latest database backup into a scratch database and checks it.",
)


# -- summary refresh (O6) ------------------------------------------------------------------------------


@dg.schedule(
    name="tenant_summary_schedule",
    job=tenant_defs.tenant_summary_job,
    cron_schedule=TENANT_SUMMARY_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    owners=OWNERS,
    tags=TAGS,
    description=(
        "Every 15 minutes: refreshes the per-tenant summary (one run per tenant partition). The email and "
        "upload queue dashboards have their own 5- and 10-minute schedules."
    ),
)
def tenant_summary_schedule(context: dg.ScheduleEvaluationContext):
    slugs = sorted(context.instance.get_dynamic_partitions(tenant_defs.TENANT_PARTITIONS_NAME))
    if not slugs:
        return dg.SkipReason("no tenant partitions yet (tenant_partitions_sensor adds them)")
    when = (context.scheduled_execution_time or _now()).astimezone(UTC)
    return [
        dg.RunRequest(run_key=f"tenant_summary|{slug}|{when:%Y%m%dT%H%M}", partition_key=slug,
                      tags={"bg_ops/tenant": slug})
        for slug in slugs
    ]
