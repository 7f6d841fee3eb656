"""``bg-ops``: the operators' admin CLI.

Conventions (PRODUCT.md E8, U2): every command validates the whole configuration first;
``--json`` puts exactly one JSON document on stdout, progress and logs go to stderr; an
error is one line naming the problem and the fix (exit 2 for configuration, 1 otherwise),
with the traceback only under ``--debug``. No Dagster daemon or instance is needed, and
heavy modules are imported only by the commands that use them (P9).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import click

from bg_ops.settings import ConfigError, Settings, load_settings

EXIT_CONFIG = 2
EXIT_ERROR = 1


class CliError(click.ClickException):
    """A failure reported as one line; ``exit_code`` 2 for configuration problems."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        for line in self.message.splitlines():
            click.echo(f"error: {line}", err=True)


class BgOpsGroup(click.Group):
    """Turns any exception into one line (or a traceback with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except ConfigError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise CliError(str(exc), EXIT_CONFIG) from None
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            if ctx.obj and ctx.obj.get("debug"):
                raise
            missing = _missing_table(exc)
            if missing:
                raise CliError(
                    f"the database has no table {missing}: run 'bg-ops db upgrade' for bg_ops's "
                    "tables, or point BG_OPS_DATABASE_URL at the platform's database "
                    "('bg-ops demo seed' for a demo)", EXIT_CONFIG,
                ) from None
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CliError(
                f"{exc.__class__.__name__}: {text} (run with --debug for the traceback)"
            ) from None


def _missing_table(exc: Exception) -> str | None:
    """The table named by a database's "no such table" error (SQLite, PostgreSQL), if that is it."""
    import re

    if not type(exc).__module__.startswith("sqlalchemy"):
        return None
    found = re.search(r'no such table: (\w+)|relation "(\w+)" does not exist', str(exc))
    return (found.group(1) or found.group(2)) if found else None


def emit(data, as_json: bool, human: str | None = None) -> None:
    """One JSON document on stdout with --json; otherwise the human-readable text."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        click.echo(human if human is not None else json.dumps(data, indent=2, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


def settings_from(ctx: click.Context, *, database: bool = True) -> Settings:
    """Validate the configuration (and reach the database) before a command does anything."""
    settings = load_settings()
    if database:
        from bg_ops.db.engine import check_database

        check_database(settings.database_url)
    ctx.obj["settings"] = settings
    return settings


@click.group(cls=BgOpsGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="bg_ops", prog_name="bg-ops")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Admin tools for bg_ops, the agency platform's background operations.

    bg_ops is one Dagster code location that sends the platform's email from a queue,
    reminds people of approvals, tasks and deadlines, uploads, backs up and archives files to
    Dropbox, and runs billing and PTO jobs, one tenant (company) at a time. Schedules, sensors
    and runs live in the Dagster UI (`make dev`, then http://127.0.0.1:3000); this command is
    for what an operator does beside it, and needs no Dagster daemon or instance.

    \b
    Command groups:
      doctor       check configuration, database, SMTP, Dropbox, files: every problem, with its fix
      config       the effective configuration, secrets hidden
      db           create and upgrade bg_ops's tables; the demo's application tables
      demo         deterministic demo data and files, to try bg_ops out
      tenants      the companies bg_ops serves
      emails       the email queue: stats, failed, retry, cancel, drain, show, enqueue, preview
      uploads      the upload queue: stats, failed, retry, drain, show, scan (backup now)
      reminders    preview what a tenant's reminder rules would send on a day
      services     switch a service off or on for every tenant
      intake       the payment webhook endpoint
      clients      suspend or reinstate one client of a tenant, all or nothing
      maintenance  retention cleanup of bg_ops's tables
    Each command has its own --help with examples.

    \b
    Conventions:
      configuration  BG_OPS_* environment variables (README); with none set, the embedded
                     default under ./.bg_ops: SQLite database, mail as .eml files in
                     ./.bg_ops/outbox, "cloud" storage in ./.bg_ops/cloud
      --json         exactly one JSON document on stdout; progress bars and logs on stderr
      errors         one line naming the problem and the fix; --debug for the traceback
      exit codes     0 done, 1 failed, 2 configuration (or database) problem

    \b
    Examples:
      bg-ops doctor                      is everything configured and reachable?
      bg-ops db upgrade                  create or upgrade bg_ops's own tables
      bg-ops demo seed --tenants 3       fill the database with demo data and files
      bg-ops emails stats --json         queue figures for a script or a dashboard
      bg-ops emails drain                send everything due now, with a progress bar
      bg-ops reminders preview --tenant acme --date 2026-11-23
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# -- config ------------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@json_option
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective configuration; secrets show only whether they are set.

    \b
    Example:
      BG_OPS_MAIL_BACKEND=smtp BG_OPS_SMTP_HOST=mail.example.com bg-ops config show
    """
    from bg_ops.util.masking import mask_url_password

    s = settings_from(ctx, database=False)
    data = {
        "database_url": mask_url_password(s.database_url),
        "files_root": str(s.files_root),
        "mail_backend": s.mail_backend,
        "outbox_dir": str(s.outbox_dir),
        "smtp": {
            "host": s.smtp_host,
            "port": s.smtp_port,
            "security": s.smtp_security,
            "username": s.smtp_username,
            "password_set": "BG_OPS_SMTP_PASSWORD" in s.secrets_set,
            "timeout_seconds": s.smtp_timeout,
            "pipelining": s.smtp_pipelining,
        },
        "mail_from": s.mail_from,
        "admin_emails": list(s.admin_emails),
        "storage_backend": s.storage_backend,
        "storage_dir": str(s.storage_dir),
        "dropbox_root": s.dropbox_root,
        "dropbox_app_key_set": s.dropbox_app_key is not None,
        "secrets_set": sorted(s.secrets_set),
        "retention": {
            "days": s.retention_days,
            "temp_state_hours": s.temp_state_retention_hours,
            "notification_days": s.notification_retention_days,
            "reminder_log_days": s.reminder_log_retention_days,
        },
        "db_backup": {
            "cron": s.db_backup_cron,
            "keep_daily": s.db_backup_keep_daily,
            "keep_weekly": s.db_backup_keep_weekly,
            "folder": s.db_backup_folder,
        },
    }
    lines = [f"{k}: {v}" for k, v in data.items() if k not in ("smtp", "retention", "db_backup")]
    lines += [f"{k}: " + ", ".join(f"{name}={value}" for name, value in data[k].items()) for k in ("retention", "db_backup")]
    lines.insert(4, "smtp: " + ", ".join(f"{k}={v}" for k, v in data["smtp"].items()))
    emit(data, as_json, "\n".join(lines))


# -- db ----------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database schema: bg_ops's own tables (Alembic) and the demo's application tables."""


@db.command("upgrade")
@json_option
@click.pass_context
def db_upgrade(ctx: click.Context, as_json: bool) -> None:
    """Create or upgrade bg_ops's own tables to the latest migration (safe to repeat).

    \b
    Example:
      BG_OPS_DATABASE_URL=postgresql+psycopg2://bg:secret@db:5432/agency bg-ops db upgrade
    """
    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine

    s = settings_from(ctx)
    before, after = migrate.upgrade(get_engine(s.database_url))
    changed = before != after
    human = (
        f"upgraded bg_ops tables from {before or 'nothing'} to {after}"
        if changed
        else f"bg_ops tables already at {after}: nothing to do"
    )
    emit({"before": before, "after": after, "changed": changed}, as_json, human)


@db.command("current")
@json_option
@click.pass_context
def db_current(ctx: click.Context, as_json: bool) -> None:
    """Show the migration the database is at and the latest one shipped.

    \b
    Example:
      bg-ops db current --json           {"current": ..., "head": ..., "up_to_date": true}
    """
    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine

    s = settings_from(ctx)
    current = migrate.current_revision(get_engine(s.database_url))
    head = migrate.head_revision()
    emit(
        {"current": current, "head": head, "up_to_date": current == head},
        as_json,
        f"current: {current or 'none'}  head: {head}" + ("" if current == head else "  (run: bg-ops db upgrade)"),
    )


@db.command("init-app-schema")
@json_option
@click.pass_context
def db_init_app_schema(ctx: click.Context, as_json: bool) -> None:
    """Create the platform's application tables (DATA_MODEL.md) where missing.

    For the demo and tests: in production the platform owns these tables.

    \b
    Example:
      BG_OPS_DATABASE_URL=sqlite:///./demo.db bg-ops db init-app-schema
    """
    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine

    s = settings_from(ctx)
    created = migrate.create_app_schema(get_engine(s.database_url))
    emit(
        {"created": created},
        as_json,
        f"created {len(created)} table(s): {', '.join(created)}" if created else "application tables already exist",
    )


# -- demo --------------------------------------------------------------------------------


@cli.group()
def demo() -> None:
    """Demo data for trying bg_ops out."""


def _parse_day(_ctx, _param, value: str | None) -> date:
    if value is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date: use YYYY-MM-DD") from None


@demo.command("seed")
@click.option("--tenants", type=click.IntRange(1, 500), default=3, show_default=True, help="How many tenants (companies).")
@click.option("--scale", type=click.IntRange(1, 10_000), default=1, show_default=True, help="Multiplies the rows per tenant.")
@click.option("--seed", "seed_value", type=int, default=42, show_default=True, help="Random seed: same seed, same data.")
@click.option("--today", callback=_parse_day, default=None, help="Anchor date YYYY-MM-DD (default: today, UTC).")
@json_option
@click.pass_context
def demo_seed(ctx: click.Context, tenants: int, scale: int, seed_value: int, today: date, as_json: bool) -> None:
    """Fill the database with deterministic demo data and real files under the files root.

    Creates the schema if needed. Re-running with the same --seed and --today gives the same
    rows and files; other tenants' data is left alone.

    \b
    Examples:
      bg-ops demo seed --tenants 3
      bg-ops demo seed --tenants 5 --scale 20 --seed 7 --today 2026-11-23
    """
    from tqdm import tqdm

    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine
    from bg_ops.demo.seed import seed_demo

    s = settings_from(ctx)
    engine = get_engine(s.database_url)
    migrate.upgrade(engine)
    s.files_root.mkdir(parents=True, exist_ok=True)
    bar = tqdm(desc="seeding", unit="step", file=sys.stderr, disable=None, leave=False)
    try:
        report = seed_demo(
            engine,
            Path(s.files_root),
            tenants=tenants,
            scale=scale,
            seed=seed_value,
            today=today,
            progress=bar.update,
            progress_total=lambda total: setattr(bar, "total", total),
        )
    finally:
        bar.close()
    data = {
        "tenants": list(report.tenants),
        "rows": dict(report.rows),
        "files": report.files_written,
        "bytes": report.file_bytes,
        "files_root": str(s.files_root),
        "today": today.isoformat(),
        "seed": seed_value,
    }
    human = (
        f"seeded {len(report.tenants)} tenant(s) ({', '.join(report.tenants)}) for {today}: "
        f"{report.total_rows} rows, {report.files_written} files under {s.files_root}"
    )
    emit(data, as_json, human)


# -- tenants -----------------------------------------------------------------------------


@cli.group()
def tenants() -> None:
    """Tenants (companies)."""


@tenants.command("list")
@json_option
@click.pass_context
def tenants_list(ctx: click.Context, as_json: bool) -> None:
    """List tenants with their time zone and whether they are active.

    \b
    Examples:
      bg-ops tenants list
      bg-ops tenants list --json | jq -r '.[] | select(.is_active) | .slug'
    """
    import sqlalchemy as sa

    from bg_ops.db.app_schema import Company
    from bg_ops.db.engine import get_engine, session_scope

    s = settings_from(ctx)
    with session_scope(get_engine(s.database_url)) as session:
        rows = session.execute(
            sa.select(Company.slug, Company.name, Company.timezone, Company.is_active).order_by(Company.slug)
        ).all()
    data = [{"slug": r.slug, "name": r.name, "timezone": r.timezone, "is_active": bool(r.is_active)} for r in rows]
    human = "\n".join(
        f"{r['slug']:<20} {r['timezone']:<22} {'active' if r['is_active'] else 'inactive':<9} {r['name']}" for r in data
    ) or "no tenants: run 'bg-ops demo seed' for demo data"
    emit(data, as_json, human)


from bg_ops.cli.emails import emails  # noqa: E402 - registers `bg-ops emails`
from bg_ops.cli.reminders import reminders, services  # noqa: E402
from bg_ops.cli.uploads import uploads  # noqa: E402
from bg_ops.cli.intake import intake  # noqa: E402
from bg_ops.cli.maintenance import db_backup, db_restore_test, maintenance  # noqa: E402
from bg_ops.cli.clients import clients  # noqa: E402
from bg_ops.cli.doctor import doctor  # noqa: E402

cli.add_command(emails)
cli.add_command(reminders)
cli.add_command(services)
cli.add_command(uploads)
cli.add_command(intake)
cli.add_command(maintenance)
db.add_command(db_backup)
db.add_command(db_restore_test)
cli.add_command(clients)
cli.add_command(doctor)

def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="bg-ops", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except CliError as exc:
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
