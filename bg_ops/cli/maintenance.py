"""``bg-ops maintenance cleanup`` and ``bg-ops db backup | restore-test`` (O4, O5).

The same logic the weekly cleanup and backup jobs run (``bg_ops.defs.maintenance``), without a
Dagster instance: ``maintenance cleanup`` cleans bg_ops's tables only (Dagster's run and tick
history is pruned by ``weekly_cleanup_job``, which has the instance). Conventions as every
``bg-ops`` command: configuration validated first, ``--json`` prints one JSON document.
"""

from __future__ import annotations

import sys

import click


@click.group()
def maintenance() -> None:
    """Retention cleanup of bg_ops's tables.

    \b
    Examples:
      bg-ops maintenance cleanup --dry-run     what the weekly cleanup would delete now
      bg-ops maintenance cleanup --json        delete it, one JSON summary per table
    """


from bg_ops.cli.main import CliError, emit, json_option, settings_from  # noqa: E402

from bg_ops.cli.common import engine_for, now_utc, table  # noqa: E402


@maintenance.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; change nothing.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True,
              help="Rows per transaction (each batch commits on its own).")
@json_option
@click.pass_context
def maintenance_cleanup(ctx: click.Context, dry_run: bool, batch_size: int, as_json: bool) -> None:
    """Delete bg_ops rows past the retention (seed 003 BR-2), in batches.

    Sent and canceled mail and superseded uploads after BG_OPS_RETENTION_DAYS (90), notifications
    after BG_OPS_NOTIFICATION_RETENTION_DAYS, the reminder log after
    BG_OPS_REMINDER_LOG_RETENTION_DAYS, rejected payment attempts after BG_OPS_RETENTION_DAYS;
    leases left on finished rows are cleared after BG_OPS_TEMP_STATE_RETENTION_HOURS (24).
    Failed mail and failed or canceled uploads are kept until resolved. Safe beside running
    workers: each batch is a short transaction.

    \b
    Examples:
      bg-ops maintenance cleanup --dry-run
      bg-ops maintenance cleanup --batch-size 1000 --json
    """
    from tqdm import tqdm

    from bg_ops.defs.maintenance.retention import RetentionPolicy, run_cleanup

    s = settings_from(ctx)
    policy = RetentionPolicy.from_settings(s, batch_size=batch_size)
    bar = tqdm(desc="cleaning", unit="row", file=sys.stderr, disable=None, leave=False)
    try:
        report = run_cleanup(engine_for(s), now=now_utc(), policy=policy, dry_run=dry_run,
                             on_batch=lambda _result, rows: bar.update(rows))
    finally:
        bar.close()
    verb = "would delete" if dry_run else "deleted"
    rows = [[r.table, r.rule, "clear" if r.action == "clear" else "delete", f"{r.cutoff:%Y-%m-%d %H:%M}",
             str(r.rows), str(r.batches)] for r in report.results]
    human = table(["TABLE", "RULE", "ACTION", "BEFORE (UTC)", "ROWS", "BATCHES"], rows)
    human += (f"\n{verb} {report.deleted} row(s), cleared {report.cleared} lease(s) in {report.batches} batch(es) "
              f"of at most {batch_size}; failed mail and failed or canceled uploads are kept until resolved")
    if dry_run:
        human += "\n(dry run: nothing changed)"
    emit(report.as_dict(), as_json, human)


# -- bg-ops db backup | restore-test (registered on the `db` group in main.py) ----------------------


@click.command("backup")
@json_option
@click.pass_context
def db_backup(ctx: click.Context, as_json: bool) -> None:
    """Back up the database to cloud storage now, then rotate old backups.

    pg_dump (custom format) on PostgreSQL, the online backup API then gzip on SQLite; stored
    in BG_OPS_DB_BACKUP_FOLDER with a manifest of row counts. Rotation keeps the last backup
    of each of the last BG_OPS_DB_BACKUP_KEEP_DAILY days (7) and of the last
    BG_OPS_DB_BACKUP_KEEP_WEEKLY ISO weeks (4).

    \b
    Examples:
      bg-ops db backup
      bg-ops db backup --json
    """
    from bg_ops.defs.maintenance.db_backup import BackupError, backup_database
    from bg_ops.resources.factory import plain_resources

    s = settings_from(ctx)
    storage = plain_resources(s)["storage"]
    try:
        report = backup_database(engine_for(s), storage, folder=s.db_backup_folder, now=now_utc(),
                                 keep_daily=s.db_backup_keep_daily, keep_weekly=s.db_backup_keep_weekly)
    except BackupError as exc:
        raise CliError(f"database backup: {exc}") from None
    data = report.as_dict()
    human = (f"backed up {data['rows']} rows in {data['tables']} tables to {data['cloud_path']} "
             f"({data['size']} bytes, {storage.describe()})\n"
             f"rotation: kept {len(data['kept'])} backup(s), deleted {len(data['deleted'])}")
    emit(data, as_json, human)


@click.command("restore-test")
@json_option
@click.pass_context
def db_restore_test(ctx: click.Context, as_json: bool) -> None:
    """Restore the latest backup into a scratch database and compare row counts per table.

    On PostgreSQL the scratch database is created beside the source and dropped afterwards
    (the user needs CREATEDB); on SQLite it is a temporary file. Exits 1 when a count differs.

    \b
    Examples:
      bg-ops db restore-test
      bg-ops db restore-test --json
    """
    from bg_ops.defs.maintenance.db_backup import BackupError, restore_test
    from bg_ops.resources.factory import plain_resources

    s = settings_from(ctx)
    storage = plain_resources(s)["storage"]
    try:
        report = restore_test(engine_for(s), storage, folder=s.db_backup_folder, now=now_utc())
    except BackupError as exc:
        raise CliError(f"restore test: {exc}") from None
    data = report.as_dict()
    rows = [[t, str(c["at_backup"]), str(c["restored"]), str(c["source_now"])] for t, c in report.tables.items()]
    human = table(["TABLE", "AT BACKUP", "RESTORED", "SOURCE NOW"], rows)
    human += (f"\nrestore test of {report.backup}: " + ("every row count equal" if report.passed
              else f"counts differ for {', '.join(report.mismatched) or 'every table'}"))
    emit(data, as_json, human)
    if not report.passed:
        ctx.exit(1)
