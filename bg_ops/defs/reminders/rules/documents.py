"""Document expiry (R11): alerts before expiry, escalation after.

On the tenant-local run day D (``expires_on`` is a tenant-local calendar date):

* a document still ``valid`` that expires in exactly 30, 7 or 1 day(s), or today, alerts its
  owner once per stage (period ``"30d"``, ``"7d"``, ``"1d"``, ``"0d"``);
* a document that expired before D and was not renewed (status ``valid`` or ``expired``)
  escalates to the owner's manager and the tenant's admins, every day until it is renewed
  (period = the run day).

Recipients are active users of the tenant; the owner being inactive does not stop the
escalation (someone still has to resolve the document).
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from bg_ops.db.app_schema import Document, User
from bg_ops.defs.reminders.engine import Rule, RuleContext
from bg_ops.defs.reminders.rules.common import alias_of, dues, recipient, recipient_columns

ALERT_DAYS_BEFORE = (30, 7, 1, 0)
UNRESOLVED_STATUSES = ("valid", "expired")  # 'renewed' resolves a document
ADMIN_ROLE = "admin"


def _expiring(session, ctx: RuleContext):
    targets = {ctx.day + timedelta(days=n): n for n in ALERT_DAYS_BEFORE}
    owner, owner_ok = recipient(ctx, Document.owner_id, "owner")
    rows = session.execute(
        sa.select(Document.id.label("entity_id"), Document.title, Document.kind, Document.expires_on,
                  *recipient_columns(owner), sa.literal("owner").label("role"))
        .join(owner, owner_ok)
        .where(Document.company_id == ctx.tenant.id, Document.status == "valid",
               Document.expires_on.in_(list(targets)))
        .order_by(Document.id)
    ).all()

    def context(r):
        days = targets[r.expires_on]
        when = "today" if days == 0 else f"in {days} day(s)"
        return {"document_id": r.entity_id, "title": r.title, "kind": r.kind, "expires_on": r.expires_on.isoformat(),
                "stage": "expiring", "days": days, "when": when, "role": r.role, "owner_name": r.name,
                "headline": f"Document expires {when}: {r.title}",
                "summary": f"{r.kind} document expires on {r.expires_on.isoformat()}"}

    return dues(rows, ctx, context, period=lambda r: f"{targets[r.expires_on]}d")


def _expired(session, ctx: RuleContext):
    doc_owner = alias_of(User, "doc_owner")
    where = (
        Document.company_id == ctx.tenant.id,
        Document.status.in_(UNRESOLVED_STATUSES),
        Document.expires_on < ctx.day,
    )
    base = [Document.id.label("entity_id"), Document.title, Document.kind, Document.expires_on,
            doc_owner.full_name.label("owner_name")]
    owner_join = sa.and_(doc_owner.id == Document.owner_id, doc_owner.company_id == ctx.tenant.id)
    manager, manager_ok = recipient(ctx, doc_owner.manager_id, "manager")
    managers = (
        sa.select(*base, *recipient_columns(manager), sa.literal("manager").label("role"))
        .join(doc_owner, owner_join)
        .join(manager, manager_ok)
        .where(*where)
    )
    admin = alias_of(User, "admin_user")
    admin_ok = sa.and_(admin.company_id == ctx.tenant.id, admin.is_active.is_(True), admin.role == ADMIN_ROLE)
    admins = (
        sa.select(*base, *recipient_columns(admin), sa.literal("admin").label("role"))
        .join(doc_owner, owner_join)
        .join(admin, admin_ok)
        .where(*where)
    )
    rows = session.execute(sa.union_all(managers, admins).order_by("entity_id", "recipient_id", "role")).all()

    def context(r):
        days = (ctx.day - r.expires_on).days
        return {"document_id": r.entity_id, "title": r.title, "kind": r.kind, "expires_on": r.expires_on.isoformat(),
                "stage": "expired", "days": days, "when": f"{days} day(s) ago", "role": r.role,
                "owner_name": r.owner_name,
                "headline": f"Expired, not renewed: {r.title}",
                "summary": f"{r.owner_name}'s {r.kind} document expired on {r.expires_on.isoformat()} ({days} day(s) ago)"}

    return dues(rows, ctx, context)  # period = the run day: daily until resolved


def find_document_expiry(session, ctx: RuleContext):
    return _expiring(session, ctx) + _expired(session, ctx)


document_expiry = Rule(
    name="document_expiry", requirement="R11", title="Document expiry", entity_type="document",
    find=find_document_expiry,
    description=("Valid documents expiring in 30, 7 or 1 day(s) or today (tenant-local): the owner, once per "
                 "stage. Expired and not renewed: the owner's manager and the tenant's admins, daily until "
                 "renewed."),
)
