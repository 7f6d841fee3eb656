"""Finance reminders: purchase orders expiring this month (R9), overdue invoices (B2)."""

from __future__ import annotations

import calendar
from datetime import date, timedelta
from decimal import Decimal

import sqlalchemy as sa

from bg_ops.db.app_schema import Invoice, Project, PurchaseOrder
from bg_ops.defs.reminders.engine import Rule, RuleContext
from bg_ops.defs.reminders.rules.common import dues, not_suspended, recipient, recipient_columns
from bg_ops.defs.reminders.rules.by_role import role_members

PO_END_OF_MONTH_DAYS = 3  # the rule runs on the 1st and on the last 3 days of the month


def _money(amount, currency: str) -> str:
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    return f"{value:,.2f} {currency}"


def month_end(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def po_period(day: date) -> str | None:
    """"YYYY-MM" on the 1st, "YYYY-MM-end" on the month's last 3 days, None on other days."""
    if day.day == 1:
        return f"{day:%Y-%m}"
    if day > month_end(day) - timedelta(days=PO_END_OF_MONTH_DAYS):
        return f"{day:%Y-%m}-end"
    return None


def find_po_expiring(session, ctx: RuleContext):
    """Open POs with expires_on between the run day and the month's last day: finance and the PM.
    One mail per PO and person at the start of the month and one in its last days (period)."""
    period = po_period(ctx.day)
    if period is None:
        return []
    po, p = PurchaseOrder, Project
    # Half-open range: correct for dates stored as 'YYYY-MM-DD' text with a time part too.
    where = (po.company_id == ctx.tenant.id, po.status == "open", po.expires_on >= ctx.day,
             po.expires_on < month_end(ctx.day) + timedelta(days=1), not_suspended(ctx, po.project_id))
    base = [po.id.label("entity_id"), po.number, po.amount, po.currency, po.expires_on, p.name.label("project")]
    project_ok = sa.and_(p.id == po.project_id, p.company_id == ctx.tenant.id)
    fin, fin_ok = role_members(ctx, "finance", "finance")
    finance = (
        sa.select(*base, *recipient_columns(fin), sa.literal("finance").label("role"))
        .select_from(po).outerjoin(p, project_ok).join(fin, fin_ok)
        .where(*where)
    )
    pm, pm_ok = recipient(ctx, p.pm_id, "pm")
    pms = (
        sa.select(*base, *recipient_columns(pm), sa.literal("pm").label("role"))
        .select_from(po).join(p, project_ok).join(pm, pm_ok)
        .where(*where, pm.role != "finance")  # a PM in finance already has the finance mail
    )
    rows = session.execute(sa.union_all(finance, pms).order_by("entity_id", "recipient_id")).all()

    def context(r):
        days = (r.expires_on - ctx.day).days
        when = "today" if days == 0 else f"in {days} day(s)"
        return {"po_id": r.entity_id, "number": r.number, "project": r.project or "",
                "amount": _money(r.amount, r.currency), "currency": r.currency,
                "expires_on": r.expires_on.isoformat(), "days_left": days, "when": when, "role": r.role,
                "headline": f"PO {r.number} expires {when}",
                "summary": (f"{r.project}: " if r.project else "") + f"{_money(r.amount, r.currency)}, "
                           f"expires {r.expires_on.isoformat()}"}

    return dues(rows, ctx, context, period=period)


po_expiring = Rule(
    name="po_expiring", requirement="R9", title="Purchase order expiring", entity_type="purchase_order",
    find=find_po_expiring,
    description=("Open purchase orders expiring within the month: finance and the project's PM, on the 1st "
                 "and again on the last 3 days of the month (once per PO, person and period)."),
)


def find_invoice_overdue(session, ctx: RuleContext):
    """Sent invoices whose due date is before the run day: every finance user. A suspended
    client's invoices are still chased: suspension stops the work, not the debt."""
    inv, p = Invoice, Project
    fin, fin_ok = role_members(ctx, "finance", "finance")
    rows = session.execute(
        sa.select(inv.id.label("entity_id"), inv.number, inv.amount, inv.currency, inv.issued_on, inv.due_on,
                  p.name.label("project"), p.client_name, *recipient_columns(fin))
        .select_from(inv)
        .outerjoin(p, sa.and_(p.id == inv.project_id, p.company_id == ctx.tenant.id))
        .join(fin, fin_ok)
        .where(inv.company_id == ctx.tenant.id, inv.status == "sent", inv.due_on.is_not(None),
               inv.due_on < ctx.day)
        .order_by(inv.id, fin.id)
    ).all()

    def context(r):
        days = (ctx.day - r.due_on).days
        return {"invoice_id": r.entity_id, "number": r.number, "project": r.project or "",
                "client": r.client_name or "", "amount": _money(r.amount, r.currency), "currency": r.currency,
                "issued_on": r.issued_on.isoformat() if r.issued_on else "", "due_on": r.due_on.isoformat(),
                "days_overdue": days,
                "headline": f"Invoice {r.number} overdue {days} day(s)",
                "summary": (f"{r.client_name}: " if r.client_name else "") + f"{_money(r.amount, r.currency)}, "
                           f"due {r.due_on.isoformat()}"}

    return dues(rows, ctx, context)


invoice_overdue = Rule(
    name="invoice_overdue", requirement="B2", title="Invoice overdue", entity_type="invoice",
    find=find_invoice_overdue,
    description="Sent invoices past their due date: every finance user (accounts receivable), daily.",
)
