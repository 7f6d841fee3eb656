"""``bg-ops uploads``: the upload queue for operators (PRODUCT.md F1, F7, F8, E8, U2, P9).

Each command validates the configuration (and reaches the database) first, prints a
readable report by default and exactly one JSON document on stdout with ``--json``. The
queue logic lives in ``bg_ops.defs.files``; it (and anything that imports Dagster or the
Dropbox SDK) is imported inside the commands, so ``bg-ops`` starts fast.
"""

from __future__ import annotations

import math
import sys

import click

# -- the group ----------------------------------------------------------------------------


@click.group()
def uploads() -> None:
    """The upload queue: figures, failed and canceled uploads, retries, drains.

    \b
    Examples:
      bg-ops uploads stats                      files per status, due now, bytes per tenant
      bg-ops uploads failed --tenant acme       what failed or was canceled, and why
      bg-ops uploads retry --all-failed         put every failed or canceled upload back
      bg-ops uploads drain                      upload everything that is due now
      bg-ops uploads scan --tenant acme         queue the tenant's new and changed files (backup)
    """


# main.py imports this module to register the group, so the group is defined before main is
# imported: importing bg_ops.cli.uploads on its own (before bg_ops.cli.main) works too.
from bg_ops.cli.common import (  # noqa: E402
    age, company_id_for, engine_for, figures_table, id_list, iso, now_utc, retry_report, short, table, tenant_option,
    tenant_slugs,
)
from bg_ops.cli.main import EXIT_CONFIG, EXIT_ERROR, CliError, emit, json_option, settings_from  # noqa: E402

STATUS_ORDER = ("queued", "uploading", "uploaded", "failed", "canceled")


def _bytes(n) -> str:
    from bg_ops.defs.files.admin import human_bytes

    return human_bytes(n)


# -- stats --------------------------------------------------------------------------------


@uploads.command("stats")
@tenant_option
@json_option
@click.pass_context
def uploads_stats(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """Files per status and the storage dashboard's figures.

    Counts every status (failed files retry on their own; canceled ones need an operator),
    then what is due now, the age of the oldest due file, files stuck after their lease,
    files waiting for quota, the last hour's uploads and failures, and bytes uploaded per
    tenant.

    \b
    Examples:
      bg-ops uploads stats
      bg-ops uploads stats --tenant acme --json
    """
    from bg_ops.defs.files import admin

    s = settings_from(ctx)
    engine = engine_for(s)
    company_id = company_id_for(engine, tenant)
    with engine.connect() as conn:
        figures = admin.stats(conn, now=now_utc(), company_id=company_id)
    rate = figures["failure_rate_last_hour"]
    rows = [[status, str(figures[status])] for status in STATUS_ORDER]
    rows += [
        ["total", str(figures["total"])],
        ["due now", str(figures["due_now"])],
        ["oldest due", age(figures["oldest_due_age_seconds"])],
        ["uploading past lease", str(figures["uploading_past_lease"])],
        ["waiting for quota", str(figures["waiting_for_quota"])],
        ["uploaded (last hour)", str(figures["uploaded_last_hour"])],
        ["failed (last hour)", str(figures["failed_last_hour"])],
        ["failure rate (last hour)", f"{rate:.1%}"],
        ["bytes uploaded", _bytes(figures["bytes_uploaded"])],
    ]
    rows += [[f"  {slug}", _bytes(n)] for slug, n in figures["bytes_by_tenant"].items()]
    title = f"upload queue, tenant {tenant}" if tenant else "upload queue, all tenants"
    human = figures_table(title, rows)
    emit(figures, as_json, human)


# -- failed -------------------------------------------------------------------------------


@uploads.command("failed")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="At most this many, most recent first.")
@tenant_option
@json_option
@click.pass_context
def uploads_failed(ctx: click.Context, limit: int, tenant: str | None, as_json: bool) -> None:
    """Failed and canceled uploads, most recent first, with the reason.

    Failed uploads retry by themselves after a backoff. Canceled uploads hit the attempt limit or were refused (a source outside the files root,
    a symlink leading out of it, a file that no longer exists): they stay canceled until
    retried with 'bg-ops uploads retry'.

    \b
    Examples:
      bg-ops uploads failed
      bg-ops uploads failed --tenant acme --limit 10 --json
    """
    from bg_ops.defs.files import admin

    s = settings_from(ctx)
    engine = engine_for(s)
    company_id = company_id_for(engine, tenant)
    with engine.connect() as conn:
        items = admin.failed(conn, limit=limit, company_id=company_id)
        slugs = tenant_slugs(conn, {f.company_id for f in items})
    data = [
        {
            "id": f.id,
            "tenant": slugs.get(f.company_id),
            "company_id": f.company_id,
            "status": f.status,
            "source_path": f.source_path,
            "dest_path": f.dest_path,
            "attempts": f.attempts,
            "last_error": f.last_error,
            "updated_at": iso(f.updated_at),
            "next_attempt_at": iso(f.next_attempt_at),
        }
        for f in items
    ]
    if not data:
        human = "no failed or canceled uploads" + (f" for tenant {tenant}" if tenant else "")
    else:
        rows = [
            [str(d["id"]), d["tenant"] or f"company {d['company_id']}", d["status"],
             d["updated_at"][:19].replace("T", " ") if d["updated_at"] else "-", str(d["attempts"]),
             short(d["source_path"], 40), d["last_error"] or "unknown error"]
            for d in data
        ]
        human = table(["ID", "TENANT", "STATUS", "SINCE (UTC)", "TRIES", "SOURCE", "ERROR"], rows)
        if len(data) == limit:
            human += f"\n(the {limit} most recent; --limit N for more)"
    emit(data, as_json, human)


# -- retry --------------------------------------------------------------------------------


@uploads.command("retry")
@click.option("--id", "ids", type=int, multiple=True, metavar="ID", help="A failed or canceled upload (repeatable).")
@click.option("--all-failed", is_flag=True, help="Every failed or canceled upload (of --tenant, if given).")
@tenant_option
@json_option
@click.pass_context
def uploads_retry(ctx: click.Context, ids: tuple[int, ...], all_failed: bool, tenant: str | None,
                  as_json: bool) -> None:
    """Put failed or canceled uploads back in the queue, due now, with fresh attempts.

    Fix the cause first ('bg-ops uploads failed' shows it); the next drain or upload run
    takes them.

    \b
    Examples:
      bg-ops uploads retry --id 42 --id 43
      bg-ops uploads retry --all-failed --tenant acme --json
    """
    from bg_ops.defs.files import admin

    if bool(ids) == all_failed:
        raise CliError("say which uploads: give --id ID (repeatable) or --all-failed, not both", EXIT_CONFIG)
    s = settings_from(ctx)
    engine = engine_for(s)
    company_id = company_id_for(engine, tenant)
    with engine.begin() as conn:
        done = sorted(admin.retry(conn, now=now_utc(), ids=list(ids) or None, all_failed=all_failed,
                                  company_id=company_id))
    data, human = retry_report(done, ids, all_failed, tenant, "upload", "no failed or canceled uploads")
    emit(data, as_json, human)


# -- drain --------------------------------------------------------------------------------


def _storage_hint(settings, exc) -> str:
    if "BG_OPS_" in str(exc) or "DROPBOX_" in str(exc):
        return ""
    if settings.storage_backend == "dropbox":
        return (": check DROPBOX_REFRESH_TOKEN and DROPBOX_APP_KEY (or DROPBOX_ACCESS_TOKEN), "
                "BG_OPS_DROPBOX_ROOT and the network")
    return ": check BG_OPS_STORAGE_DIR (an existing, writable folder)"


@uploads.command("drain")
@click.option("--batch-size", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Files claimed and uploaded per batch.")
@click.option("--max-batches", type=click.IntRange(1), default=None,
              help="Stop after this many batches (default: until nothing is due).")
@json_option
@click.pass_context
def uploads_drain(ctx: click.Context, batch_size: int, max_batches: int | None, as_json: bool) -> None:
    """Upload every file that is due now, in as many batches as it takes.

    Uses the configured storage backend (BG_OPS_STORAGE_BACKEND) and checks it first. Each
    upload is verified by content hash; transient errors are retried later with backoff,
    refused sources are canceled with the reason, and a tenant over its quota waits. Exits 0
    when it ran, even if some uploads failed; non-zero only for configuration, database or
    storage connection errors. Safe beside running upload jobs.

    \b
    Examples:
      bg-ops uploads drain
      bg-ops uploads drain --batch-size 20 --max-batches 10 --json
    """
    import socket

    from tqdm import tqdm

    from bg_ops.defs.files.uploads import UploadPolicy, count_due, drain_uploads
    from bg_ops.resources.factory import plain_resources
    from bg_ops.resources.storage import StorageError

    s = settings_from(ctx)
    engine = engine_for(s)
    storage = plain_resources(s)["storage"]
    try:
        storage.check_connection()
    except StorageError as exc:
        text = " ".join(str(exc).split())
        raise CliError(f"cannot reach the cloud storage ({storage.describe()}): {text}{_storage_hint(s, exc)}",
                       EXIT_ERROR) from None

    with engine.connect() as conn:
        due = count_due(conn, now_utc())
    policy = UploadPolicy(batch_size=batch_size, time_budget_seconds=math.inf)
    bar = tqdm(total=due, desc="uploading", unit="file", file=sys.stderr, disable=None, leave=False)
    try:
        report = drain_uploads(
            engine, storage, clock=now_utc, files_root=s.files_root, policy=policy,
            worker_id=f"cli:{socket.gethostname()}", max_batches=max_batches,
            on_batch=lambda b: bar.update(b.uploaded + b.retried + b.canceled + b.waiting_for_quota),
        )
    finally:
        bar.close()
    data = {
        **report.as_metadata(),
        "canceled_ids": sorted(report.canceled_ids),
        "due_at_start": due,
        "storage": storage.describe(),
    }
    human = (
        f"uploaded {report.uploaded} ({_bytes(report.bytes_uploaded)}), will retry {report.retried}, "
        f"canceled {report.canceled}, waiting for quota {report.waiting_for_quota} "
        f"in {report.batches} batch(es) ({report.stopped_because or 'done'})"
    )
    if report.canceled_ids:
        human += f"\ncanceled: {id_list(sorted(report.canceled_ids))} (see bg-ops uploads failed)"
    emit(data, as_json, human)


# -- scan ---------------------------------------------------------------------------------


@uploads.command("scan")
@click.option("--tenant", "slug", required=True, metavar="SLUG", help="The tenant (company slug) to scan.")
@json_option
@click.pass_context
def uploads_scan(ctx: click.Context, slug: str, as_json: bool) -> None:
    """Run the nightly backup scan of one tenant now: queue its new and changed files.

    The same work as nightly_backup_job's scan_tenant_files (F4): every file under
    <files root>/SLUG/projects/ and every approval attachment is compared with the backup
    manifest (size, mtime, content hash); new and changed files are queued for upload to
    'Project Backups' and 'Approval Backups', unchanged ones are not even read. Nothing is
    uploaded here: 'bg-ops uploads drain' (or the upload job) does that. A second scan with
    nothing changed queues nothing. Skipped when the tenant's backup service is switched off.

    \b
    Examples:
      bg-ops uploads scan --tenant acme
      bg-ops uploads scan --tenant acme --json
    """
    from tqdm import tqdm

    from bg_ops.db.engine import session_scope
    from bg_ops.defs.files.backup import scan_and_queue
    from bg_ops.defs.tenants.logic import get_tenant, switched_off_services

    s = settings_from(ctx)
    engine = engine_for(s)
    company_id_for(engine, slug)  # an unknown slug: one line, exit 2
    bar = tqdm(desc="scanning", unit="file", file=sys.stderr, disable=None, leave=False)

    def progress(report) -> None:
        bar.update(report.scanned - bar.n)
        bar.set_postfix(queued=report.queued, refresh=False)

    try:
        with session_scope(engine) as session:
            tenant = get_tenant(session, slug)
            if not tenant.service_enabled("backup", switched_off_services(session)):
                emit({"tenant": slug, "switched_off": True, "queued": 0}, as_json,
                     f"backup is switched off for {slug}: nothing scanned "
                     "(see 'bg-ops services list' and the tenant's settings)")
                return
            report = scan_and_queue(session, tenant, s.files_root, now=now_utc(), on_progress=progress)
    finally:
        bar.close()
    data = {"tenant": slug, "switched_off": False, **report.as_metadata()}
    human = (
        f"{slug}: scanned {report.scanned} file(s) (unchanged {report.unchanged}, hashed {report.hashed}, "
        f"touched with the same content {report.touched_same_content}); queued {report.queued} "
        f"({_bytes(report.bytes_queued)}: new {report.new}, changed {report.changed}) in {report.seconds}s"
    )
    if report.missing_attachments:
        human += f"\n{report.missing_attachments} approval attachment(s) listed but missing from the files root"
    if report.queued:
        human += "\nupload them with 'bg-ops uploads drain' (or let upload_files_job do it)"
    emit(data, as_json, human)


# -- show ---------------------------------------------------------------------------------

_SHOW_ORDER = (
    "id", "tenant", "company_id", "status", "kind", "source_path", "dest_path", "cloud_path", "on_conflict",
    "delete_after_upload", "attempts", "attempts_today", "attempts_day", "last_error", "created_at",
    "next_attempt_at", "locked_until", "locked_by", "uploaded_at", "updated_at", "size_bytes", "content_hash",
    "cloud_rev",
)


@uploads.command("show")
@click.argument("upload_id", type=int, metavar="ID")
@json_option
@click.pass_context
def uploads_show(ctx: click.Context, upload_id: int, as_json: bool) -> None:
    """Everything about one upload: source, destination, status, attempts, hash, timestamps.

    \b
    Examples:
      bg-ops uploads show 42
      bg-ops uploads show 42 --json
    """
    from bg_ops.defs.files import admin

    s = settings_from(ctx)
    with engine_for(s).connect() as conn:
        row = admin.show(conn, upload_id)
    if row is None:
        raise CliError(f"no upload with id {upload_id}: see 'bg-ops uploads failed' or 'bg-ops uploads stats'")
    data = {k: iso(v) for k, v in row.items()}
    keys = [k for k in _SHOW_ORDER if k in data] + sorted(k for k in data if k not in _SHOW_ORDER)
    width = max(len(k) for k in keys)
    lines = []
    for key in keys:
        value = data[key]
        if key == "size_bytes" and value is not None:
            value = f"{value} ({_bytes(value)})"
        lines.append(f"{key.ljust(width)}  {'-' if value is None or value == '' else value}")
    emit(data, as_json, "\n".join(lines))
