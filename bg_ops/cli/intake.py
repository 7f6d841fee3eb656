"""``bg-ops intake``: the payment webhook endpoint (PRODUCT.md B5, O8, P9).

``serve`` validates the configuration, reaches the database and checks the inbox table
before it listens. Starlette and uvicorn (installed with dagster-webserver) are imported by
the command only, so ``bg-ops`` starts fast.
"""

from __future__ import annotations

import click


@click.group()
def intake() -> None:
    """The payment webhook intake: signed provider events into the payment_events inbox.

    \b
    Examples:
      bg-ops intake serve                           listen on 127.0.0.1:8765
      bg-ops intake serve --host 0.0.0.0 --port 9000
    """


from bg_ops.cli.main import EXIT_CONFIG, CliError, settings_from  # noqa: E402


@intake.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True, help="Port to listen on.")
@click.pass_context
def intake_serve(ctx: click.Context, host: str, port: int) -> None:
    """Run the payment webhook endpoint until interrupted (Ctrl-C).

    Providers POST events to /payments/<provider> (for example /payments/stripe) with a
    'Payment-Signature: t=<unix>,v1=<hex HMAC-SHA256>' header; GET /health answers 200
    while the database is reachable. Events signed with BG_OPS_PAYMENT_SIGNING_SECRET or
    BG_OPS_PAYMENT_SIGNING_SECRET_NEXT (while rotating) and at most 5 minutes old are stored
    in payment_events and answered at once; payment_event_sensor processes them. Bodies over
    BG_OPS_INTAKE_MAX_BODY_BYTES (default 1 MiB) get 413. Log lines carry no secrets,
    signatures, bodies or client addresses (uvicorn's access log is off).

    \b
    Example:
      BG_OPS_PAYMENT_SIGNING_SECRET=whsec_... bg-ops intake serve --port 8765
    """
    import logging
    import sys

    import sqlalchemy as sa
    import uvicorn

    from bg_ops.db.engine import get_engine
    from bg_ops.defs.billing.intake import create_app

    s = settings_from(ctx)
    current = s.secret("BG_OPS_PAYMENT_SIGNING_SECRET")
    if not current:
        raise CliError(
            "BG_OPS_PAYMENT_SIGNING_SECRET is not set: set it to the payment provider's webhook signing "
            "secret (the intake refuses every event without it)", EXIT_CONFIG)
    if not sa.inspect(get_engine(s.database_url)).has_table("payment_events"):
        raise CliError(
            "the database has no payment_events table: it is the platform's (DATA_MODEL.md); for the demo "
            "run 'bg-ops db init-app-schema'", EXIT_CONFIG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("bg_ops")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    app = create_app(
        database_url=s.database_url,
        secrets=(current, s.secret("BG_OPS_PAYMENT_SIGNING_SECRET_NEXT")),
        max_body_bytes=s.intake_max_body_bytes,
    )
    click.echo(f"payment intake listening on http://{host}:{port} (POST /payments/<provider>, GET /health); "
               "Ctrl-C stops it", err=True)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info", server_header=False,
                proxy_headers=False)
