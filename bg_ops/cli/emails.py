"""``bg-ops emails``: the email queue for operators (PRODUCT.md E8, E12, U2, P9).

Each command validates the configuration (and reaches the database) first, prints a
readable report by default and exactly one JSON document on stdout with ``--json``.
Operator reports (``show``, ``failed``) print full addresses; progress and summary lines
never do. The queue logic lives in ``bg_ops.defs.email``; it (and anything that imports
Dagster) is imported inside the commands, so ``bg-ops`` starts fast.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime

import click

# -- the group ----------------------------------------------------------------------------


@click.group()
def emails() -> None:
    """The email queue: figures, failed mail, retries, drains.

    \b
    Examples:
      bg-ops emails stats                       messages per status, due now, error rate
      bg-ops emails failed --tenant acme        what failed for good, and why
      bg-ops emails retry --all-failed          put every failed message back in the queue
      bg-ops emails drain                       send everything that is due now
    """


# main.py imports this module to register the group, so the group is defined before main is
# imported: importing bg_ops.cli.emails on its own (before bg_ops.cli.main) works too.
from bg_ops.cli.main import EXIT_CONFIG, EXIT_ERROR, CliError, emit, json_option, settings_from  # noqa: E402

from bg_ops.cli.common import (  # noqa: E402
    age, company_id_for, engine_for, figures_table, id_list, iso, now_utc, retry_report, short, table,
    tenant_option, tenant_slugs,
)

STATUS_ORDER = ("pending", "sending", "sent", "failed", "canceled")
def _json_object(value: str | None, option: str) -> dict:
    if value is None:
        return {}
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CliError(f"{option} is not valid JSON ({exc.msg} at column {exc.colno}): "
                       """give an object such as '{"note": "hello"}'""", EXIT_CONFIG) from None
    if not isinstance(data, dict):
        raise CliError(f"{option} must be a JSON object such as '{{\"note\": \"hello\"}}', "
                       f"not {type(data).__name__}", EXIT_CONFIG)
    return data


def _parse_when(_ctx, _param, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise CliError(f"--send-after {value!r} is not an ISO date-time: use e.g. 2026-11-23T09:00:00+01:00 "
                       "or 2026-11-23T08:00:00Z", EXIT_CONFIG) from None
    if when.tzinfo is None:
        raise CliError(f"--send-after {value!r} has no time zone: add one, e.g. {value}Z for UTC or "
                       f"{value}+01:00", EXIT_CONFIG)
    return when.astimezone(UTC)


def _mail_settings(settings, mail):
    from bg_ops.defs.email.enqueue import MailSettings

    return MailSettings(mail_from=mail.mail_from, files_root=settings.files_root)


# -- stats --------------------------------------------------------------------------------


@emails.command("stats")
@tenant_option
@json_option
@click.pass_context
def emails_stats(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """Messages per status and the dashboard's figures.

    Counts every status (pending includes mail scheduled for later), then what is due now,
    the age of the oldest due message and the last hour's sent, failed and error rate.

    \b
    Examples:
      bg-ops emails stats
      bg-ops emails stats --tenant acme --json
    """
    from bg_ops.defs.email import admin

    s = settings_from(ctx)
    engine = engine_for(s)
    company_id = company_id_for(engine, tenant)
    with engine.connect() as conn:
        figures = admin.stats(conn, now=now_utc(), company_id=company_id)
    figures = {k: (int(v) if k in STATUS_ORDER else v) for k, v in figures.items()}
    rate = figures["error_rate_last_hour"]
    rows = [[status, str(figures[status])] for status in STATUS_ORDER]
    rows += [
        ["total", str(figures["queued"])],
        ["due now", str(figures["due_now"])],
        ["oldest due", age(figures["oldest_due_age_seconds"])],
        ["sent (last hour)", str(figures["sent_last_hour"])],
        ["failed (last hour)", str(figures["failed_last_hour"])],
        ["error rate (last hour)", f"{rate:.1%}"],
    ]
    title = f"email queue, tenant {tenant}" if tenant else "email queue, all tenants"
    human = figures_table(title, rows)
    emit(figures, as_json, human)


# -- failed -------------------------------------------------------------------------------


@emails.command("failed")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="At most this many, most recent failure first.")
@tenant_option
@json_option
@click.pass_context
def emails_failed(ctx: click.Context, limit: int, tenant: str | None, as_json: bool) -> None:
    """Messages that failed for good, most recent first, with the reason.

    They stay here until retried (bg-ops emails retry) or canceled (bg-ops emails cancel).
    Full addresses are shown: this is an operator's report.

    \b
    Examples:
      bg-ops emails failed
      bg-ops emails failed --tenant acme --limit 10 --json
    """
    from bg_ops.defs.email import admin

    s = settings_from(ctx)
    engine = engine_for(s)
    company_id = company_id_for(engine, tenant)
    with engine.connect() as conn:
        items = admin.failed(conn, limit=limit, company_id=company_id)
        slugs = tenant_slugs(conn, {m.company_id for m in items})
    data = [
        {
            "id": m.id,
            "tenant": slugs.get(m.company_id),
            "company_id": m.company_id,
            "to": list(m.to_addrs or []),
            "subject": m.subject,
            "attempts": m.attempts,
            "last_error": m.last_error,
            "failed_at": iso(m.failed_at),
        }
        for m in items
    ]
    if not data:
        human = "no failed mail" + (f" for tenant {tenant}" if tenant else "")
    else:
        rows = [
            [str(d["id"]), d["tenant"] or f"company {d['company_id']}",
             d["failed_at"][:19].replace("T", " ") if d["failed_at"] else "-", str(d["attempts"]),
             ", ".join(d["to"]), short(d["subject"], 40), d["last_error"] or "unknown error"]
            for d in data
        ]
        human = table(["ID", "TENANT", "FAILED AT (UTC)", "TRIES", "TO", "SUBJECT", "ERROR"], rows)
        if len(data) == limit:
            human += f"\n(the {limit} most recent; --limit N for more)"
    emit(data, as_json, human)


# -- retry --------------------------------------------------------------------------------


@emails.command("retry")
@click.option("--id", "ids", type=int, multiple=True, metavar="ID", help="A failed or canceled message (repeatable).")
@click.option("--all-failed", is_flag=True, help="Every failed message (of --tenant, if given).")
@tenant_option
@json_option
@click.pass_context
def emails_retry(ctx: click.Context, ids: tuple[int, ...], all_failed: bool, tenant: str | None, as_json: bool) -> None:
    """Put failed (or canceled) messages back in the queue, due now, with fresh attempts.

    Fix the cause first (bg-ops emails failed shows it); the next drain or delivery run
    sends them.

    \b
    Examples:
      bg-ops emails retry --id 42 --id 43
      bg-ops emails retry --all-failed --tenant acme
    """
    from bg_ops.defs.email import admin

    if bool(ids) == all_failed:
        raise CliError("say which messages: give --id ID (repeatable) or --all-failed, not both", EXIT_CONFIG)
    s = settings_from(ctx)
    engine = engine_for(s)
    company_id = company_id_for(engine, tenant)
    with engine.begin() as conn:
        done = sorted(admin.retry(conn, now=now_utc(), ids=list(ids) or None, all_failed=all_failed,
                                  company_id=company_id))
    data, human = retry_report(done, ids, all_failed, tenant, "message", "no failed mail")
    emit(data, as_json, human)


# -- cancel -------------------------------------------------------------------------------


@emails.command("cancel")
@click.argument("ids", type=int, nargs=-1, required=True, metavar="ID [ID ...]")
@json_option
@click.pass_context
def emails_cancel(ctx: click.Context, ids: tuple[int, ...], as_json: bool) -> None:
    """Cancel messages not sent yet (pending or failed); one being sent now is left alone.

    \b
    Examples:
      bg-ops emails cancel 42
      bg-ops emails cancel 42 43 44 --json
    """
    from bg_ops.defs.email import admin

    s = settings_from(ctx)
    with engine_for(s).begin() as conn:
        done = sorted(admin.cancel(conn, now=now_utc(), ids=list(ids)))
    skipped = sorted(set(ids) - set(done))
    data = {"canceled": done, "count": len(done), "not_canceled": skipped}
    human = f"canceled {len(done)} message(s)" + (f": {id_list(done)}" if done else "")
    if skipped:
        human += f"\nleft alone (unknown, already sent, being sent or canceled): {id_list(skipped)}"
    emit(data, as_json, human)


# -- drain --------------------------------------------------------------------------------


@emails.command("drain")
@click.option("--batch-size", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Messages claimed and sent per SMTP connection.")
@click.option("--max-batches", type=click.IntRange(1), default=None, help="Stop after this many batches (default: until nothing is due).")
@json_option
@click.pass_context
def emails_drain(ctx: click.Context, batch_size: int, max_batches: int | None, as_json: bool) -> None:
    """Send everything that is due now, in as many batches as it takes.

    Uses the configured mail backend (BG_OPS_MAIL_BACKEND). Transient failures are retried
    later with backoff, permanent ones fail at once; then one admin alert listing the new
    failures is queued for BG_OPS_ADMIN_EMAILS (the next drain or delivery run sends it).
    Exits 0 when it ran, even if some mail failed; non-zero only for configuration, database
    or mail-server connection errors. Safe beside running delivery jobs.

    \b
    Examples:
      bg-ops emails drain
      bg-ops emails drain --batch-size 50 --max-batches 10 --json
    """
    from tqdm import tqdm

    from bg_ops.db.engine import session_scope
    from bg_ops.defs.email import admin
    from bg_ops.defs.email.delivery import DeliveryPolicy, count_due, deliver_due
    from bg_ops.resources.factory import plain_resources
    from bg_ops.resources.mail import MailError
    from bg_ops.util.masking import mask_emails

    s = settings_from(ctx)
    engine = engine_for(s)
    mail = plain_resources(s)["mail"]
    settings = _mail_settings(s, mail)
    try:
        mail.check_connection()
    except MailError as exc:
        hint = "" if "BG_OPS_" in str(exc) else (
            ": check BG_OPS_SMTP_HOST and BG_OPS_SMTP_PORT (and that the server is running)"
            if s.mail_backend == "smtp" else ": check BG_OPS_OUTBOX_DIR"
        )
        raise CliError(f"cannot reach the mail backend ({mail.describe()}): {exc}{hint}", EXIT_ERROR) from None

    with engine.connect() as conn:
        due = count_due(conn, now_utc())
    policy = DeliveryPolicy(batch_size=batch_size, time_budget_seconds=math.inf)
    bar = tqdm(total=due, desc="sending", unit="msg", file=sys.stderr, disable=None, leave=False)
    try:
        report = deliver_due(
            engine, mail, clock=now_utc, settings=settings, policy=policy, max_batches=max_batches,
            on_batch=lambda b: bar.update(b.sent + b.retried + b.failed),
        )
    finally:
        bar.close()
    admins = list(mail.admin_emails)
    with session_scope(engine) as session:
        alert_id = admin.alert_failed(session, now=now_utc(), settings=settings, admin_emails=admins)

    data = {
        **report.as_metadata(),
        "failed_ids": sorted(report.failed_ids),
        "due_at_start": due,
        "admin_alert_id": alert_id,
    }
    human = (
        f"sent {report.sent}, will retry {report.retried}, failed {report.failed} "
        f"in {report.batches} batch(es) ({report.stopped_because or 'done'})"
    )
    if report.failed_ids:
        human += f"\nfailed for good: {id_list(sorted(report.failed_ids))} (see bg-ops emails failed)"
    if alert_id is not None:
        human += f"\nadmin alert #{alert_id} queued for {mask_emails(admins)}"
    if report.failed and not admins:
        click.echo(
            f"warning: {report.failed} message(s) failed for good and BG_OPS_ADMIN_EMAILS is empty: "
            "nobody was told; see 'bg-ops emails failed'",
            err=True,
        )
    emit(data, as_json, human)


# -- cleanup ------------------------------------------------------------------------------


@emails.command("cleanup")
@click.option("--older-than", "days", type=click.IntRange(1), default=90, show_default=True, metavar="DAYS",
              help="Delete sent and canceled mail older than this many days.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True,
              help="Rows per transaction (each batch commits on its own).")
@json_option
@click.pass_context
def emails_cleanup(ctx: click.Context, days: int, batch_size: int, as_json: bool) -> None:
    """Delete sent and canceled mail past the retention; failed mail is kept until resolved.

    The mail rule of the weekly cleanup (bg-ops maintenance cleanup) on its own: in batches,
    each a short transaction, so it is safe beside running workers.

    \b
    Examples:
      bg-ops emails cleanup
      bg-ops emails cleanup --older-than 30 --json
    """
    from tqdm import tqdm

    from bg_ops.defs.maintenance.retention import MAIL_RULE, RetentionPolicy, run_cleanup

    s = settings_from(ctx)
    now = now_utc()
    policy = RetentionPolicy(completed_days=days, batch_size=batch_size)
    bar = tqdm(desc="cleaning", unit="message", file=sys.stderr, disable=None, leave=False)
    try:
        report = run_cleanup(engine_for(s), now=now, policy=policy, rules=(MAIL_RULE,),
                             on_batch=lambda _result, rows: bar.update(rows))
    finally:
        bar.close()
    deleted = report.deleted
    cutoff = policy.completed_cutoff(now)
    data = {"deleted": deleted, "older_than_days": days, "cutoff": cutoff.isoformat(), "batches": report.batches}
    human = (f"deleted {deleted} sent or canceled message(s) older than {days} days "
             f"(before {cutoff:%Y-%m-%d %H:%M} UTC); failed mail is kept until retried or canceled")
    emit(data, as_json, human)


# -- show ---------------------------------------------------------------------------------

_SHOW_ORDER = (
    "id", "tenant", "company_id", "status", "priority", "kind", "to_addrs", "cc_addrs", "bcc_addrs", "reply_to",
    "subject", "template", "context", "attachments", "idempotency_key", "message_id", "attempts", "max_attempts",
    "last_error", "created_at", "send_after", "next_attempt_at", "last_attempt_at", "locked_until", "locked_by",
    "sent_at", "failed_at", "canceled_at", "alerted_at", "updated_at", "prebuilt_bytes", "bodies", "body_text", "body_html",
)


@emails.command("show")
@click.argument("message_id", type=int, metavar="ID")
@json_option
@click.pass_context
def emails_show(ctx: click.Context, message_id: int, as_json: bool) -> None:
    """Everything about one message: recipients, status, attempts, timestamps, bodies.

    Full addresses are shown: this is an operator's report.

    \b
    Examples:
      bg-ops emails show 42
      bg-ops emails show 42 --json
    """
    from bg_ops.defs.email import admin

    s = settings_from(ctx)
    with engine_for(s).connect() as conn:
        row = admin.show(conn, message_id)
        if row is None:
            raise CliError(f"no email with id {message_id}: see 'bg-ops emails failed' or 'bg-ops emails stats'")
        tenant = tenant_slugs(conn, {row["company_id"]}).get(row["company_id"])
    data = {k: iso(v) for k, v in row.items()}
    data["tenant"] = tenant
    keys = [k for k in _SHOW_ORDER if k in data] + sorted(k for k in data if k not in _SHOW_ORDER)
    width = max(len(k) for k in keys)
    lines = []
    for key in keys:
        value = data[key]
        if key == "body_html" and value:
            value = f"({len(value)} characters; --json prints it)"
        elif key in ("to_addrs", "cc_addrs", "bcc_addrs", "attachments") and isinstance(value, list):
            value = ", ".join(map(str, value))
        elif isinstance(value, dict):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        if value is None or value == "":
            value = "-"
        text = str(value)
        if "\n" in text:
            text = "\n" + "\n".join("    " + line for line in text.rstrip("\n").splitlines())
        lines.append(f"{key.ljust(width)}  {text}")
    emit(data, as_json, "\n".join(lines))


# -- enqueue ------------------------------------------------------------------------------


@emails.command("enqueue")
@click.option("--tenant", required=True, metavar="SLUG", help="The tenant (company slug) the message belongs to.")
@click.option("--to", "to", multiple=True, metavar="ADDR", help="Recipient (repeatable).")
@click.option("--cc", multiple=True, metavar="ADDR", help="Cc recipient (repeatable).")
@click.option("--bcc", multiple=True, metavar="ADDR", help="Bcc recipient (repeatable).")
@click.option("--reply-to", default=None, metavar="ADDR", help="Reply-To address.")
@click.option("--subject", default=None, help="Subject (a template supplies one when omitted).")
@click.option("--text", default=None, help="Plain-text body.")
@click.option("--html", default=None, help="HTML body.")
@click.option("--template", default=None, metavar="NAME", help="Template name, e.g. test_message.")
@click.option("--context", "context_json", default=None, metavar="JSON", help="Template variables as a JSON object.")
@click.option("--attach", multiple=True, metavar="PATH", help="File relative to BG_OPS_FILES_ROOT (repeatable).")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default="normal", show_default=True)
@click.option("--send-after", callback=_parse_when, default=None, metavar="ISO",
              help="Not before this time, with a zone: 2026-11-23T09:00:00+01:00 or ...Z.")
@click.option("--kind", type=click.Choice(["customer", "internal"]), default="internal", show_default=True,
              help="Customer mail goes first at equal priority.")
@click.option("--idempotency-key", default=None, metavar="KEY", help="The same key never queues twice.")
@json_option
@click.pass_context
def emails_enqueue(ctx: click.Context, tenant: str, to, cc, bcc, reply_to, subject, text, html, template,
                   context_json, attach, priority, send_after, kind, idempotency_key, as_json: bool) -> None:
    """Queue a message (for testing the pipeline); delivery sends it when due.

    Validated exactly like mail from the platform: a bad address, a missing template or
    variable, or an attachment outside the files root is refused and nothing is queued.

    \b
    Examples:
      bg-ops emails enqueue --tenant acme --to ops@example.com --subject Hello --text 'It works.'
      bg-ops emails enqueue --tenant acme --to ops@example.com --template test_message \\
          --context '{"note": "hello"}' --priority high --send-after 2026-11-23T09:00:00Z
    """
    from bg_ops.db.engine import session_scope
    from bg_ops.defs.email.enqueue import Email, EnqueueError, MailSettings, enqueue

    if template and (text is not None or html is not None):
        raise CliError("give either --template (with --context) or --text/--html, not both", EXIT_CONFIG)
    if context_json is not None and not template:
        raise CliError("--context needs --template NAME", EXIT_CONFIG)
    if not template and text is None and html is None:
        raise CliError("no body: give --text and/or --html, or --template NAME --context JSON", EXIT_CONFIG)
    if not (to or cc or bcc):
        raise CliError("no recipients: give --to ADDR (or --cc/--bcc)", EXIT_CONFIG)
    context = _json_object(context_json, "--context")
    s = settings_from(ctx)
    engine = engine_for(s)
    company_id = company_id_for(engine, tenant)
    email = Email(
        company_id=company_id, to=list(to), cc=list(cc), bcc=list(bcc), reply_to=reply_to, subject=subject,
        text=text, html=html, template=template, context=context if template else None,
        attachments=list(attach), priority=priority, send_after=send_after, kind=kind,
        idempotency_key=idempotency_key,
    )
    settings = MailSettings(mail_from=s.mail_from, files_root=s.files_root)
    try:
        with session_scope(engine) as session:
            result = enqueue(session, email, now=now_utc(), settings=settings)
    except EnqueueError as exc:
        raise CliError(str(exc).splitlines()[0], EXIT_ERROR) from None
    recipients = len(to) + len(cc) + len(bcc)
    data = {"id": result.id, "created": result.created, "tenant": tenant,
            "send_after": iso(send_after), "priority": priority}
    if result.created:
        human = (f"queued email #{result.id} for tenant {tenant} ({recipients} recipient(s), {priority} priority"
                 + (f", not before {send_after:%Y-%m-%d %H:%M} UTC" if send_after else "") + ")")
    else:
        human = f"already queued as email #{result.id} (same --idempotency-key): nothing new queued"
    emit(data, as_json, human)


# -- preview ------------------------------------------------------------------------------


@emails.command("preview")
@click.argument("name", metavar="NAME")
@click.option("--tenant", default=None, metavar="SLUG", help="Brand it for this tenant (default: bg_ops itself).")
@click.option("--context", "context_json", default=None, metavar="JSON", help="Template variables as a JSON object.")
@json_option
@click.pass_context
def emails_preview(ctx: click.Context, name: str, tenant: str | None, context_json: str | None, as_json: bool) -> None:
    """Render a template (subject, text, HTML) without queueing anything.

    A missing template or variable is the same error enqueue would give.

    \b
    Examples:
      bg-ops emails preview test_message --tenant acme --context '{"note": "hello"}'
      bg-ops emails preview admin_failed_mail --context '{"messages": []}' --json
    """
    import sqlalchemy as sa

    from bg_ops.db.app_schema import Company
    from bg_ops.defs.email.enqueue import SYSTEM_NAME
    from bg_ops.defs.email.rendering import TemplateError, render

    context = _json_object(context_json, "--context")
    s = settings_from(ctx)
    engine = engine_for(s)
    company_name, slug = SYSTEM_NAME, ""
    if tenant is not None:
        company_id = company_id_for(engine, tenant)
        with engine.connect() as conn:
            company_name = conn.execute(sa.select(Company.name).where(Company.id == company_id)).scalar_one()
        slug = tenant
    try:
        rendered = render(name, context, company_name=company_name, company_slug=slug)
    except TemplateError as exc:
        raise CliError(str(exc).splitlines()[0], EXIT_ERROR) from None
    data = {"template": name, "tenant": tenant, "subject": rendered.subject, "text": rendered.text,
            "html": rendered.html}
    human = f"Subject: {rendered.subject}\n\n--- text ---\n{rendered.text.rstrip()}\n\n--- html ---\n{rendered.html.rstrip()}"
    emit(data, as_json, human)
