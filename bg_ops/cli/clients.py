"""``bg-ops clients``: suspend or reinstate a client of a tenant, and follow the requests (O7).

``suspend`` and ``reinstate`` only record a request and return at once; the Dagster sensor
``client_suspension_sensor`` launches the run that does the work (all or nothing, in
batches). ``status`` shows each request with its progress and, when it failed, why.
"""

from __future__ import annotations

import click


@click.group()
def clients() -> None:
    """Clients of a tenant (projects.client_name): suspension and reinstatement.

    \b
    Examples:
      bg-ops clients suspend --tenant acme --client "Globex"     request the suspension
      bg-ops clients reinstate --tenant acme --client "Globex"   reverse it exactly
      bg-ops clients status --tenant acme                        requests and their progress
    """


from bg_ops.cli.common import company_id_for, engine_for, iso, now_utc, short, table, tenant_option  # noqa: E402
from bg_ops.cli.main import CliError, emit, json_option, settings_from  # noqa: E402

client_option = click.option("--client", "client", required=True, metavar="NAME",
                             help="The client as written in projects.client_name (exact).")
required_tenant = click.option("--tenant", "tenant", required=True, metavar="SLUG", help="The tenant (company slug).")


def _request(ctx: click.Context, tenant: str, client: str, action: str, as_json: bool) -> None:
    from bg_ops.db.engine import session_scope
    from bg_ops.defs.clients.suspension import ClientSuspensionError, request_client_suspension

    s = settings_from(ctx)
    try:
        with session_scope(engine_for(s)) as session:
            result = request_client_suspension(session, tenant_slug=tenant, client_name=client, action=action,
                                               now=now_utc())
    except ClientSuspensionError as exc:
        raise CliError(str(exc)) from None
    data = {"id": result.id, "created": result.created, "tenant": result.tenant, "client": result.client_name,
            "action": result.action, "status": result.status, "projects": result.projects}
    verb = "suspension" if action == "suspend" else "reinstatement"
    human = (f"requested the {verb} of client {result.client_name!r} of {result.tenant} ({result.projects} "
             f"project(s)): request #{result.id}; client_suspension_sensor launches it "
             f"(follow it with 'bg-ops clients status --tenant {result.tenant}')")
    if not result.created:
        human = f"the {verb} of client {result.client_name!r} of {result.tenant} is already {result.status}: request #{result.id}"
    emit(data, as_json, human)


@clients.command("suspend")
@required_tenant
@client_option
@json_option
@click.pass_context
def clients_suspend(ctx: click.Context, tenant: str, client: str, as_json: bool) -> None:
    """Request the suspension of a client: its open projects become suspended, its approvals in
    review are canceled (pending steps skipped) and its queued mail is canceled. Returns at once.

    \b
    Example:
      bg-ops clients suspend --tenant acme --client "Globex" --json
    """
    _request(ctx, tenant, client, "suspend", as_json)


@clients.command("reinstate")
@required_tenant
@client_option
@json_option
@click.pass_context
def clients_reinstate(ctx: click.Context, tenant: str, client: str, as_json: bool) -> None:
    """Request the reinstatement of a suspended client: every row its suspensions changed goes back to
    what it was (rows changed by someone since are left alone). Returns at once.

    \b
    Example:
      bg-ops clients reinstate --tenant acme --client "Globex"
    """
    _request(ctx, tenant, client, "reinstate", as_json)


@clients.command("status")
@tenant_option
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many requests.")
@json_option
@click.pass_context
def clients_status(ctx: click.Context, tenant: str | None, limit: int, as_json: bool) -> None:
    """The latest suspension and reinstatement requests, newest first, with their progress.

    \b
    Example:
      bg-ops clients status --tenant acme --json
    """
    from bg_ops.db.engine import session_scope
    from bg_ops.defs.clients.suspension import list_requests

    s = settings_from(ctx)
    engine = engine_for(s)
    company_id = company_id_for(engine, tenant)
    with session_scope(engine) as session:
        rows = list_requests(session, company_id=company_id, limit=limit)
    data = [{"id": r["id"], "tenant": r["tenant"], "client": r["client_name"], "action": r["action"],
             "status": r["status"], "attempts": r["attempts"], "batches": r["batches"], "planned": r["planned"],
             "projects": r["projects"], "approvals": r["approvals"], "approval_steps": r["approval_steps"],
             "emails": r["emails"], "skipped": r["skipped"], "reinstated_by": r["reinstated_by"],
             "error": r["error"], "requested_at": iso(r["requested_at"]), "started_at": iso(r["started_at"]),
             "finished_at": iso(r["finished_at"])} for r in rows]
    if not data:
        emit(data, as_json, "no client suspension requests" + (f" for tenant {tenant}" if tenant else ""))
        return
    lines = table(
        ["id", "tenant", "client", "action", "status", "batches", "projects", "approvals", "steps", "emails",
         "skipped", "error"],
        [[f"#{d['id']}", d["tenant"] or "?", short(d["client"], 24), d["action"], d["status"], d["batches"],
          d["projects"], d["approvals"], d["approval_steps"], d["emails"], d["skipped"], short(d["error"], 60) or "-"]
         for d in data])
    emit(data, as_json, lines)
