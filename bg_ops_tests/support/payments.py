"""A small billing world for the payment tests: two tenants sharing invoice numbers."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import sqlalchemy as sa

from bg_ops.db.app_schema import Company, Invoice, PaymentEvent, Project, User
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import email_queue as q

NOW = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
PAID_AT = datetime(2026, 11, 23, 13, 58, 20, tzinfo=UTC)

ACME, KIWI = 1, 2
ACME_FINANCE = ["fran@acme.example", "fred@acme.example"]
KIWI_FINANCE = ["fin@kiwi.example"]


def seed_world(engine, *, extra_invoices: int = 0) -> None:
    """acme: INV-2026-0001 (sent), INV-2026-0002 (sent), INV-2026-0003 (void), INV-ACME-ONLY (sent);
    kiwi: INV-2026-0001 (sent) and ``extra_invoices`` INV-BULK-NNNN (sent). acme has two active
    finance users and an inactive one, kiwi one."""
    with session_scope(engine) as s:
        s.add_all([Company(id=ACME, name="Acme Creative", slug="acme", timezone="America/New_York"),
                   Company(id=KIWI, name="Kiwi Studio", slug="kiwi", timezone="Pacific/Auckland")])
        s.flush()
        s.add_all([
            User(id=1, company_id=ACME, email=ACME_FINANCE[0], full_name="Fran Finance", role="finance"),
            User(id=2, company_id=ACME, email=ACME_FINANCE[1], full_name="Fred Finance", role="finance"),
            User(id=3, company_id=ACME, email="gone@acme.example", full_name="Gone", role="finance", is_active=False),
            User(id=4, company_id=ACME, email="pm@acme.example", full_name="Pat PM", role="pm"),
            User(id=11, company_id=KIWI, email=KIWI_FINANCE[0], full_name="Kim Finance", role="finance"),
        ])
        s.flush()
        s.add_all([Project(id=1, company_id=ACME, name="Rebrand", client_name="Globex", pm_id=4, status="invoiced"),
                   Project(id=2, company_id=KIWI, name="Site", client_name="Hooli", status="invoiced")])
        s.flush()
        rows = [
            (1, ACME, 1, "INV-2026-0001", "sent"), (2, ACME, 1, "INV-2026-0002", "sent"),
            (3, ACME, 1, "INV-2026-0003", "void"), (4, ACME, 1, "INV-ACME-ONLY", "sent"),
            (5, KIWI, 2, "INV-2026-0001", "sent"),
        ]
        rows += [(100 + i, KIWI, 2, f"INV-BULK-{i:04d}", "sent") for i in range(extra_invoices)]
        s.add_all([Invoice(id=i, company_id=c, project_id=p, number=n, amount=Decimal("1250.00"), currency="USD",
                           issued_on=date(2026, 11, 1), due_on=date(2026, 12, 1), status=st,
                           updated_at=datetime(2026, 11, 1, tzinfo=UTC))
                   for i, c, p, n, st in rows])


def stripe_event(event_id: str, number: str, *, tenant: str | None = "acme", kind: str = "invoice.paid",
                 created: datetime = PAID_AT, use_metadata: bool = True) -> dict:
    """An event shaped like the demo's (bg_ops.demo.seed.build_payment_events)."""
    metadata = {}
    if use_metadata:
        metadata["invoice_number"] = number
    if tenant is not None:
        metadata["tenant"] = tenant
    obj = {"object": "invoice" if kind == "invoice.paid" else "payment_intent", "amount_paid": 125000,
           "currency": "usd", "metadata": metadata}
    if kind == "invoice.paid":
        obj["number"] = number
    return {"id": event_id, "object": "event", "type": kind, "created": int(created.timestamp()),
            "livemode": False, "data": {"object": obj}}


def add_event(engine, payload: dict, *, received_at: datetime = NOW, signature_valid: bool = True,
              event_id: str | None = None, row_id: int | None = None) -> int:
    values = {"provider": "stripe", "event_id": event_id or payload["id"], "received_at": received_at,
              "payload": payload, "signature_valid": signature_valid}
    if row_id is not None:
        values["id"] = row_id
    with engine.begin() as conn:
        return conn.execute(sa.insert(PaymentEvent.__table__).values(**values)
                            .returning(PaymentEvent.__table__.c.id)).scalar_one()


def events(engine) -> list:
    with engine.connect() as c:
        return c.execute(sa.select(PaymentEvent.__table__).order_by(PaymentEvent.id)).all()


def invoice(engine, invoice_id: int):
    with engine.connect() as c:
        return c.execute(sa.select(Invoice.status, Invoice.paid_at, Invoice.company_id)
                         .where(Invoice.id == invoice_id)).one()


def queued(engine) -> list:
    with engine.connect() as c:
        return c.execute(sa.select(q.c.company_id, q.c.to_addrs, q.c.subject, q.c.template, q.c.idempotency_key,
                                   q.c.context).order_by(q.c.id)).all()
