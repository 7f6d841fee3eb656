"""The payment webhook intake (B5, O8): authenticate, store in the inbox, answer fast.

``POST /payments/<provider>`` takes a provider's event, checks its ``Payment-Signature``
(``signatures.verify``: current or next secret, five minutes' tolerance) and inserts it into
the ``payment_events`` inbox, nothing more: the ``payment_event_sensor`` processes it later,
so the provider gets its answer in milliseconds and never retries because we were slow.

Answers:

- 202 ``{"status": "accepted"}``: a new authentic event, stored;
- 200 ``{"status": "duplicate"}``: an event id already stored (the provider retried): accepted
  again, stored once (``ON CONFLICT (event_id) DO NOTHING``);
- 413: a body over ``BG_OPS_INTAKE_MAX_BODY_BYTES``, refused from its Content-Length or as
  soon as the stream passes the limit, never read whole;
- 400: no or malformed signature header, a body that is not a JSON object with a string
  ``id``; 401: a bad signature or a timestamp outside the tolerance; 404: a provider name
  that is not a name.

Every well-formed attempt that fails authentication is stored as well, closed and unusable:
``signature_valid = false``, ``event_id = "rejected:<uuid>"`` (so a forgery can never occupy
the id of the real event), ``processed_at = received_at`` and ``error = "rejected: <reason>"``.
Log lines name the provider, the reason, the size and the stored row, never a secret, a
signature, a body or a client address (run uvicorn without its access log).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bg_ops.db.app_schema import PaymentEvent
from bg_ops.db.engine import get_engine
from bg_ops.defs.billing.signatures import SIGNATURE_HEADER, SignatureError, verify
from bg_ops.settings import DEFAULT_INTAKE_MAX_BODY_BYTES

log = logging.getLogger("bg_ops.intake")

PROVIDER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
EVENT_ID_RE = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII: safe in logs and run keys
SECRET_NAMES = ("current", "next")


class MalformedEvent(ValueError):
    """The body is not a JSON object carrying a string ``id``."""


def parse_event(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise MalformedEvent("body is not JSON") from None
    if not isinstance(payload, dict):
        raise MalformedEvent("body is not a JSON object")
    event_id = payload.get("id")
    if not isinstance(event_id, str) or not event_id.strip():
        raise MalformedEvent("event has no id")
    if not EVENT_ID_RE.match(event_id) or event_id.startswith("rejected:"):
        raise MalformedEvent("event id is not valid")
    return payload


def _insert(engine: sa.Engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(PaymentEvent.__table__)


def store_event(
    engine: sa.Engine, *, provider: str, event_id: str, payload: dict, received_at: datetime,
    signature_valid: bool = True, error: str | None = None,
) -> int | None:
    """Insert one inbox row in its own short transaction; the new row's id, or None when an
    event with that id is already stored (a replay)."""
    table = PaymentEvent.__table__
    values = {"provider": provider, "event_id": event_id, "received_at": received_at, "payload": payload,
              "signature_valid": signature_valid}
    if not signature_valid:  # closed at once: never in the unprocessed inbox
        values.update(processed_at=received_at, error=error)
    stmt = _insert(engine).values(**values).on_conflict_do_nothing(index_elements=["event_id"]).returning(table.c.id)
    with engine.begin() as conn:
        return conn.execute(stmt).scalar_one_or_none()


def _answer(http_status: int, **body) -> JSONResponse:
    return JSONResponse(body, status_code=http_status)


def create_app(
    *,
    database_url: str,
    secrets: Sequence[str | None],
    max_body_bytes: int = DEFAULT_INTAKE_MAX_BODY_BYTES,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The intake ASGI app. ``secrets`` is (current, next); ``clock`` gives Unix seconds."""
    keys = tuple(secrets)
    if not any(keys):
        raise ValueError("the payment intake needs a signing secret (BG_OPS_PAYMENT_SIGNING_SECRET)")

    def engine() -> sa.Engine:
        return get_engine(database_url)

    def reject(status: int, reason: str, provider: str, size: int | None, stored: int | None = None) -> JSONResponse:
        log.warning("payment intake rejected a request: provider=%s status=%s reason=%s bytes=%s stored_row=%s",
                    provider, status, reason, size if size is not None else "?", stored if stored else "-")
        return _answer(status, error=reason)

    async def read_body(request: Request) -> bytes | None:
        """The body, or None as soon as it is known to be over the limit (never read whole)."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise MalformedEvent("Content-Length is not a number")
            if int(declared) > max_body_bytes:
                return None
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return None
        return bytes(body)

    async def receive_payment(request: Request) -> JSONResponse:
        provider = request.path_params["provider"]
        if not PROVIDER_RE.match(provider):
            return reject(404, "unknown provider", "?", None)
        try:
            body = await read_body(request)
        except MalformedEvent as exc:
            return reject(400, str(exc), provider, None)
        except ClientDisconnect:
            return reject(400, "client disconnected before the end of the body", provider, None)
        if body is None:
            return reject(413, "body too large", provider, int(request.headers.get("content-length") or 0) or None)
        now = clock()
        received_at = datetime.fromtimestamp(now, UTC)
        try:
            matched = verify(request.headers.get(SIGNATURE_HEADER), body, keys, now=now)
        except SignatureError as exc:
            stored = None
            try:
                payload = parse_event(body)
            except MalformedEvent:
                payload = None
            if payload is not None:  # kept for the audit trail, under an id nobody can claim
                try:
                    stored = await run_in_threadpool(
                        store_event, engine(), provider=provider, event_id=f"rejected:{uuid.uuid4().hex}",
                        payload=payload, received_at=received_at, signature_valid=False,
                        error=f"rejected: {exc.reason}")
                except sa.exc.SQLAlchemyError as db_exc:
                    log.error("payment intake could not store a rejected attempt: %s", db_exc.__class__.__name__)
            return reject(exc.status, exc.reason, provider, len(body), stored)
        try:
            payload = parse_event(body)
        except MalformedEvent as exc:
            return reject(400, str(exc), provider, len(body))
        event_id = payload["id"]
        try:
            row_id = await run_in_threadpool(
                store_event, engine(), provider=provider, event_id=event_id, payload=payload,
                received_at=received_at)
        except sa.exc.SQLAlchemyError as exc:
            # The exception text carries the statement's parameters (the payload): name the class only.
            log.error("payment intake could not store event %s: %s", event_id, exc.__class__.__name__)
            return _answer(503, error="could not store the event, try again")
        if row_id is None:
            log.info("payment event %s (%s) received again: already stored", event_id, provider)
            return _answer(200, status="duplicate", event_id=event_id)
        log.info("payment event %s (%s) stored as row %s (signed with the %s secret)", event_id, provider,
                 row_id, SECRET_NAMES[matched] if matched < len(SECRET_NAMES) else matched)
        return _answer(202, status="accepted", event_id=event_id)

    async def health(_request: Request) -> JSONResponse:
        def ping() -> None:
            with engine().connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        try:
            await run_in_threadpool(ping)
        except sa.exc.SQLAlchemyError as exc:
            log.error("payment intake health check: database unreachable (%s)", exc.__class__.__name__)
            return _answer(503, status="database unreachable")
        return _answer(200, status="ok")

    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        # Unknown paths and wrong methods answer in JSON like everything else.
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    return Starlette(
        routes=[
            Route("/payments/{provider}", receive_payment, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
