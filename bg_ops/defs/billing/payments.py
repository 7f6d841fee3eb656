"""Payment events (B5): what one authentic event from the inbox does, as plain logic.

``process_payment_event`` handles one ``payment_events`` row in the caller's transaction:

1. it claims the row (``processed_at`` set where it is still null): a second run of the same
   event, a retry after a commit or a concurrent run does nothing more;
2. a ``payment_intent.succeeded`` or ``invoice.paid`` event names an invoice
   (``data.object.metadata.invoice_number``, else ``data.object.number``) and, ideally, its
   tenant (``data.object.metadata.tenant``, or ``company`` / ``company_slug``);
3. the invoice is marked paid (``status = 'paid'``, ``paid_at`` = the event's ``created``
   time, else the time it was received) unless it already is, and only then the tenant's
   active finance users are told, once (``notify_now``, period = the event id).

Tenant rule: invoice numbers are unique per company only, so the tenant named in the
payment's metadata decides; without one, the invoice number must exist in exactly one
tenant, otherwise the event is recorded as ambiguous (never guessed).

What cannot succeed however often it is retried (an unsupported event type, no invoice
number, an unknown tenant or invoice, an ambiguous or void invoice) is *recorded*: the row is
closed with its ``error``. Anything else (the database going away, a lock timeout) is raised
and the run retries; ``record_failure`` and ``alert_payment_event_failed`` handle the event
whose retries are exhausted: it stays in the inbox (``processed_at`` null) with its error and
the operators get one alert mail per event.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Company, Invoice, PaymentEvent, Project, User
from bg_ops.db.types import parse_utc
from bg_ops.defs.email.enqueue import SYSTEM_COMPANY_ID, Email, MailSettings, enqueue
from bg_ops.defs.reminders.engine import Due
from bg_ops.defs.reminders.immediate import Notice, notify_now
from bg_ops.defs.tenants.logic import Tenant

PAID_TYPES = frozenset({"payment_intent.succeeded", "invoice.paid"})
TENANT_KEYS = ("tenant", "company", "company_slug")
PAYABLE_STATUSES = ("draft", "sent")
ALERT_TEMPLATE = "admin_payment_event_failed"
MAX_ERROR_LENGTH = 1000

PAYMENT_NOTICE = Notice(
    rule="payment_received", title="Payment received", entity_type="invoice", priority="high",
    template_name="payment_received", service_name="billing.payment_received",
)

# Plain (Core) updates: the ORM's bulk-update path would re-evaluate the session for nothing.
EVENTS = PaymentEvent.__table__
INVOICES = Invoice.__table__

_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")


class Unprocessable(ValueError):
    """An event that no retry can make succeed; recorded as the row's error."""


@dataclass(frozen=True)
class PaymentRef:
    """What a payment event says about the invoice it pays."""

    event_type: str
    invoice_number: str
    tenant_slug: str | None
    paid_at: datetime | None
    amount_minor: int | None
    currency: str | None


@dataclass
class PaymentOutcome:
    event_id: str
    status: str  # paid | already_paid | already_processed | error
    tenant: str | None = None
    invoice_id: int | None = None
    invoice_number: str | None = None
    notified: int = 0
    error: str | None = None

    def as_metadata(self) -> dict:
        return {"event_id": self.event_id, "outcome": self.status, "tenant": self.tenant or "",
                "invoice": self.invoice_number or "", "finance_notified": self.notified,
                "error": self.error or ""}


def _object(payload: Mapping) -> Mapping:
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    return obj if isinstance(obj, Mapping) else {}


def tenant_hint(payload: Mapping | None) -> str | None:
    """The tenant slug a payment's metadata names, when it names a plausible one."""
    if not isinstance(payload, Mapping):
        return None
    metadata = _object(payload).get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    for key in TENANT_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and _SLUG_RE.match(value.strip()):
            return value.strip()
    return None


def read_payment(payload: Mapping) -> PaymentRef:
    """The invoice reference of a supported event; ``Unprocessable`` otherwise."""
    if not isinstance(payload, Mapping):
        raise Unprocessable("payload is not a JSON object")
    event_type = payload.get("type")
    if event_type not in PAID_TYPES:
        shown = event_type if isinstance(event_type, str) else type(event_type).__name__
        raise Unprocessable(f"unsupported event type {shown[:80]!r}: only {', '.join(sorted(PAID_TYPES))} "
                            "mark invoices paid")
    obj = _object(payload)
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    number = metadata.get("invoice_number") or obj.get("number")
    if not isinstance(number, str) or not number.strip():
        raise Unprocessable(f"{event_type} names no invoice: expected data.object.metadata.invoice_number "
                            "or data.object.number")
    created = payload.get("created")
    paid_at = None
    if isinstance(created, int) and not isinstance(created, bool) and 0 < created < 2**33:
        paid_at = datetime.fromtimestamp(created, UTC)
    amount = obj.get("amount_paid", obj.get("amount_received"))
    currency = obj.get("currency")
    return PaymentRef(
        event_type=event_type, invoice_number=number.strip()[:64], tenant_slug=tenant_hint(payload),
        paid_at=paid_at,
        amount_minor=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
        currency=currency.upper() if isinstance(currency, str) else None,
    )


def resolve_invoice(session: Session, ref: PaymentRef) -> tuple[Tenant, Invoice]:
    """The tenant and invoice a payment is for (see the tenant rule above), row-locked."""
    if ref.tenant_slug is not None:
        company = session.scalars(sa.select(Company).where(Company.slug == ref.tenant_slug)).one_or_none()
        if company is None:
            raise Unprocessable(f"unknown tenant {ref.tenant_slug!r} in the payment's metadata")
    else:
        owners = list(session.scalars(
            sa.select(Invoice.company_id).where(Invoice.number == ref.invoice_number).distinct().limit(2)))
        if len(owners) > 1:
            raise Unprocessable(f"invoice {ref.invoice_number} exists in several tenants and the payment names "
                                "none: the platform must put the tenant slug in metadata.tenant")
        if not owners:
            raise Unprocessable(f"unknown invoice {ref.invoice_number}: no tenant has it")
        company = session.get(Company, owners[0])
    invoices = session.scalars(
        sa.select(Invoice).where(Invoice.company_id == company.id, Invoice.number == ref.invoice_number)
        .order_by(Invoice.id).limit(2).with_for_update()
    ).all()
    if not invoices:
        raise Unprocessable(f"unknown invoice {ref.invoice_number} for tenant {company.slug}")
    if len(invoices) > 1:
        raise Unprocessable(f"invoice number {ref.invoice_number} appears more than once in tenant "
                            f"{company.slug}: fix the platform's data")
    tenant = Tenant(id=company.id, slug=company.slug, name=company.name, timezone=company.timezone or "UTC",
                    is_active=bool(company.is_active), settings=dict(company.settings or {}))
    return tenant, invoices[0]


def _money(amount, currency: str) -> str:
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    return f"{value:,.2f} {currency}"


def _period(event_id: str) -> str:
    """The notification period (reminder_log.period is 64 characters)."""
    return event_id if len(event_id) <= 64 else "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()[:57]


def finance_dues(session: Session, tenant: Tenant, invoice: Invoice, *, event_id: str, paid_at: datetime) -> list[Due]:
    """One notice per active finance user of the invoice's tenant."""
    project = session.execute(
        sa.select(Project.name, Project.client_name)
        .where(Project.id == invoice.project_id, Project.company_id == tenant.id)
    ).one_or_none()
    people = session.execute(
        sa.select(User.id, User.email, User.full_name, User.timezone)
        .where(User.company_id == tenant.id, User.role == "finance", User.is_active.is_(True))
        .order_by(User.id)
    ).all()
    amount = _money(invoice.amount, invoice.currency)
    paid_on = paid_at.astimezone(tenant.zone).strftime("%Y-%m-%d %H:%M")
    client = (project.client_name if project else None) or ""
    context = {"invoice_id": invoice.id, "number": invoice.number, "amount": amount, "currency": invoice.currency,
               "client": client, "project": (project.name if project else None) or "", "paid_on": paid_on,
               "headline": f"Invoice {invoice.number} paid",
               "summary": (f"{client}: " if client else "") + f"{amount}, paid {paid_on}"}
    return [Due(entity_id=invoice.id, recipient_id=u.id, email=u.email, name=u.full_name, timezone=u.timezone,
                context=context, period=_period(event_id)) for u in people]


def _close(session: Session, event_pk: int, *, error: str | None) -> None:
    session.execute(sa.update(EVENTS).where(EVENTS.c.id == event_pk).values(error=error))


def process_payment_event(
    session: Session, event_row, *, now: datetime, mail_settings: MailSettings,
    globally_off: frozenset[str] = frozenset(),
) -> PaymentOutcome:
    """Apply one authentic inbox event (a ``PaymentEvent`` or a row with the same fields)."""
    claimed = session.execute(
        sa.update(EVENTS)
        .where(EVENTS.c.id == event_row.id, EVENTS.c.processed_at.is_(None), EVENTS.c.signature_valid.is_(True))
        .values(processed_at=now, error=None)
    ).rowcount
    if not claimed:
        return PaymentOutcome(event_id=event_row.event_id, status="already_processed")
    outcome = PaymentOutcome(event_id=event_row.event_id, status="error")
    try:
        ref = read_payment(event_row.payload)
        outcome.invoice_number = ref.invoice_number
        outcome.tenant = ref.tenant_slug
        tenant, invoice = resolve_invoice(session, ref)
        outcome.tenant, outcome.invoice_id = tenant.slug, invoice.id
        if invoice.status == "paid":
            outcome.status = "already_paid"
            return outcome
        if invoice.status not in PAYABLE_STATUSES:
            raise Unprocessable(f"invoice {invoice.number} of tenant {tenant.slug} is {invoice.status}: "
                                "not marked paid; finance should look at this payment")
    except Unprocessable as exc:
        outcome.error = str(exc)[:MAX_ERROR_LENGTH]
        _close(session, event_row.id, error=outcome.error)
        return outcome
    paid_at = ref.paid_at or parse_utc(event_row.received_at)
    flipped = session.execute(
        sa.update(INVOICES)
        .where(INVOICES.c.id == invoice.id, INVOICES.c.company_id == tenant.id,
               INVOICES.c.status.in_(PAYABLE_STATUSES))
        .values(status="paid", paid_at=paid_at, updated_at=now)
    ).rowcount
    if not flipped:  # paid by a concurrent event in the meantime
        outcome.status = "already_paid"
        return outcome
    outcome.status = "paid"
    dues = finance_dues(session, tenant, invoice, event_id=event_row.event_id, paid_at=paid_at)
    notice = notify_now(session, PAYMENT_NOTICE, tenant, dues, now=now, mail_settings=mail_settings,
                        globally_off=globally_off)
    outcome.notified = notice.enqueued
    return outcome


def load_event(session: Session, event_id: str) -> PaymentEvent | None:
    return session.scalars(sa.select(PaymentEvent).where(PaymentEvent.event_id == event_id)).one_or_none()


@dataclass(frozen=True)
class PendingEvent:
    id: int
    event_id: str
    provider: str
    tenant: str | None


def pending_events(session: Session, *, after_id: int, limit: int, upto_id: int | None = None) -> list[PendingEvent]:
    """Authentic events not processed and not failed, with ids in (after_id, upto_id], oldest first."""
    stmt = (
        sa.select(PaymentEvent.id, PaymentEvent.event_id, PaymentEvent.provider, PaymentEvent.payload)
        .where(PaymentEvent.processed_at.is_(None), PaymentEvent.signature_valid.is_(True),
               PaymentEvent.error.is_(None), PaymentEvent.id > after_id)
        .order_by(PaymentEvent.id)
        .limit(limit)
    )
    if upto_id is not None:
        stmt = stmt.where(PaymentEvent.id <= upto_id)
    return [PendingEvent(id=r.id, event_id=r.event_id, provider=r.provider, tenant=tenant_hint(r.payload))
            for r in session.execute(stmt)]


def error_text(exc: BaseException) -> str:
    """A one-line error for the inbox and the alert: the class and the first line only (a
    database error's later lines carry the statement's parameters)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {first}"[:MAX_ERROR_LENGTH]


def record_failure(session: Session, event_id: str, *, error: str) -> PaymentEvent | None:
    """Leave a failed event in the inbox (``processed_at`` null) with its error."""
    event = load_event(session, event_id)
    if event is not None and event.processed_at is None:
        event.error = error[:MAX_ERROR_LENGTH]
    return event


def alert_payment_event_failed(
    session: Session, event: PaymentEvent, *, error: str, attempts: int, now: datetime,
    mail_settings: MailSettings, admin_emails: list[str],
) -> int | None:
    """Queue the one admin alert for a payment event that failed for good; return its id
    (None when nobody is configured to receive it). The idempotency key is per event, so
    another failure of the same event (a re-executed run) does not mail again."""
    if not admin_emails:
        return None
    context = {"event_id": event.event_id, "provider": event.provider, "tenant": tenant_hint(event.payload) or "",
               "received_at": parse_utc(event.received_at).isoformat(), "attempts": attempts, "error": error}
    return enqueue(
        session,
        Email(company_id=SYSTEM_COMPANY_ID, to=list(admin_emails), template=ALERT_TEMPLATE, context=context,
              priority="high", idempotency_key=f"payment-event-failed:{event.id}"),
        now=now, settings=mail_settings,
    ).id
