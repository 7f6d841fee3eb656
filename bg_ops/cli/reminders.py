"""``bg-ops reminders`` and ``bg-ops services``: preview reminders (R17), switch services (P7)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import click


@click.group()
def reminders() -> None:
    """Reminders: see what a tenant's rules would send on a day, without sending anything.

    \b
    Examples:
      bg-ops reminders preview --tenant acme
      bg-ops reminders preview --tenant acme --date 2026-11-23 --rule task_due --json
    """


@click.group()
def services() -> None:
    """Switch services off or on for every tenant (tenants switch their own in companies.settings).

    \b
    Examples:
      bg-ops services list
      bg-ops services disable reminders.birthdays --note "HR asked to pause"
      bg-ops services enable reminders.birthdays
    """


from bg_ops.cli.main import EXIT_CONFIG, CliError, emit, json_option, settings_from  # noqa: E402


@reminders.command("preview")
@click.option("--tenant", "slug", required=True, metavar="SLUG", help="The tenant (company slug).")
@click.option("--date", "day", default=None, metavar="YYYY-MM-DD", help="Tenant-local day (default: today there).")
@click.option("--rule", "rule_names", multiple=True, metavar="NAME", help="Only these rules (repeatable).")
@json_option
@click.pass_context
def preview(ctx: click.Context, slug: str, day: str | None, rule_names: tuple[str, ...], as_json: bool) -> None:
    """List, per rule, who would get which reminder; enqueue nothing.

    Operator report: prints full addresses. 'already sent' marks reminders the log says went
    out before for that day, so a backfill of that day would skip them.

    \b
    Examples:
      bg-ops reminders preview --tenant acme
      bg-ops reminders preview --tenant nordlicht --date 2026-11-20 --json
    """
    from bg_ops.db.engine import get_engine, session_scope
    from bg_ops.defs.email.enqueue import MailSettings
    from bg_ops.defs.reminders.engine import RuleContext, run_rule
    from bg_ops.defs.reminders.rules import ALL_RULES, RULES_BY_NAME
    from bg_ops.defs.tenants.logic import UnknownTenant, get_tenant, switched_off_services

    settings = settings_from(ctx)
    unknown = [n for n in rule_names if n not in RULES_BY_NAME]
    if unknown:
        raise CliError(f"--rule {unknown[0]!r} is not a rule: use one of {', '.join(RULES_BY_NAME)}", EXIT_CONFIG)
    rules = [RULES_BY_NAME[n] for n in rule_names] if rule_names else list(ALL_RULES)
    now = datetime.now(UTC)
    mail_settings = MailSettings(mail_from=settings.mail_from, files_root=settings.files_root)
    report = {}
    # Read-only: the session is rolled back at the end, whatever a rule's query did.
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        try:
            tenant = get_tenant(session, slug)
        except UnknownTenant as exc:
            raise CliError(str(exc), EXIT_CONFIG) from None
        try:
            run_day = date.fromisoformat(day) if day else now.astimezone(tenant.zone).date()
        except ValueError:
            raise CliError(f"--date {day!r} is not a date: use YYYY-MM-DD", EXIT_CONFIG) from None
        globally_off = switched_off_services(session)
        rctx = RuleContext(tenant=tenant, day=run_day, now=now)
        for rule in rules:
            result = run_rule(session, rule, rctx, mail_settings=mail_settings, globally_off=globally_off, dry_run=True)
            report[rule.name] = {
                "requirement": rule.requirement, "title": rule.title, "found": result.found,
                "already_sent": result.already_sent, "switched_off": result.switched_off,
                "items": result.preview,
            }
        session.rollback()
    if as_json:
        emit({"tenant": slug, "date": run_day.isoformat(), "rules": report}, True)
        return
    lines = [f"Reminders for {tenant.name} ({slug}) on {run_day} ({tenant.timezone}) - preview, nothing sent", ""]
    for name, r in report.items():
        if r["switched_off"]:
            lines.append(f"{name} ({r['requirement']}): switched off ({r['switched_off']})")
            continue
        new = r["found"] and len(r["items"]) - r["already_sent"]
        lines.append(f"{name} ({r['requirement']}): {len(r['items'])} reminder(s), {new} new, {r['already_sent']} already sent")
        for item in r["items"]:
            mark = "  (already sent)" if item["already_sent"] else ""
            lines.append(f"    {item['recipient']:<36} {item['what']}  (at {item['send_at'][:16]}Z){mark}")
    emit(None, False, "\n".join(lines))


@services.command("list")
@json_option
@click.pass_context
def services_list(ctx: click.Context, as_json: bool) -> None:
    """Services switched off (or back on) for every tenant.

    \b
    Examples:
      bg-ops services list
      bg-ops services list --json
    """
    import sqlalchemy as sa

    from bg_ops.db.engine import get_engine
    from bg_ops.db.own_schema import service_switches as sw

    settings = settings_from(ctx)
    with get_engine(settings.database_url).connect() as conn:
        rows = conn.execute(sa.select(sw).order_by(sw.c.service)).mappings().all()
    data = [{"service": r["service"], "enabled": bool(r["enabled"]), "note": r["note"],
             "changed_at": r["changed_at"].isoformat()} for r in rows]
    human = "\n".join(f"{d['service']:<36} {'on' if d['enabled'] else 'OFF':<4} {d['changed_at']}  {d['note'] or ''}"
                      for d in data) or "every service is on (no switches set)"
    emit(data, as_json, human)


def _switch(ctx: click.Context, service: str, enabled: bool, note: str | None, as_json: bool) -> None:
    import sqlalchemy as sa

    from bg_ops.db.engine import get_engine
    from bg_ops.db.own_schema import service_switches as sw

    if not service or not all(part.replace("_", "").isalnum() for part in service.split(".")):
        raise CliError(f"{service!r} is not a service name: use e.g. 'reminders' or 'reminders.birthdays'", EXIT_CONFIG)
    settings = settings_from(ctx)
    now = datetime.now(UTC)
    with get_engine(settings.database_url).begin() as conn:
        updated = conn.execute(sa.update(sw).where(sw.c.service == service).values(enabled=enabled, note=note, changed_at=now))
        if updated.rowcount == 0:
            conn.execute(sa.insert(sw).values(service=service, enabled=enabled, note=note, changed_at=now))
    emit({"service": service, "enabled": enabled}, as_json,
         f"{service} is now {'on' if enabled else 'off'} for every tenant")


@services.command("disable")
@click.argument("service")
@click.option("--note", default=None, help="Why (shown by 'services list').")
@json_option
@click.pass_context
def services_disable(ctx: click.Context, service: str, note: str | None, as_json: bool) -> None:
    """Switch SERVICE off for every tenant (e.g. reminders, reminders.task_due).

    Runs that skip a switched-off service say so in their metadata.

    \b
    Examples:
      bg-ops services disable reminders.birthdays --note "HR asked, until January"
      bg-ops services disable backup
    """
    _switch(ctx, service, False, note, as_json)


@services.command("enable")
@click.argument("service")
@click.option("--note", default=None, help="Why (shown by 'services list').")
@json_option
@click.pass_context
def services_enable(ctx: click.Context, service: str, note: str | None, as_json: bool) -> None:
    """Switch SERVICE back on for every tenant.

    \b
    Example:
      bg-ops services enable reminders.birthdays
    """
    _switch(ctx, service, True, note, as_json)
