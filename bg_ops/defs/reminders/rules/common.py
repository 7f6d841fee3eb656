"""Pieces every rule uses: recipients are active users of the same tenant, never others."""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from bg_ops.db.app_schema import Project, User
from bg_ops.defs.reminders.engine import Due, RuleContext

RECIPIENT_COLUMNS = ("recipient_id", "email", "name", "timezone")
SUSPENDED = "suspended"  # projects.status set by client suspension (O7): no reminders about its items


@lru_cache(maxsize=None)
def alias_of(entity, name: str):
    """The ORM alias ``name`` of ``entity``, made once per process: an alias adapts every column
    of its table the first time it is used (~0.35 ms), and a daily run made a few dozen (B3).
    Aliases hold no state of a query or tenant, so every rule can share them."""
    return aliased(entity, name=name)


def recipient(ctx: RuleContext, user_id_column, alias_name: str = "recipient"):
    """(alias, join condition) for an active user of this tenant whose id is ``user_id_column``."""
    u = alias_of(User, alias_name)
    cond = sa.and_(u.id == user_id_column, u.company_id == ctx.tenant.id, u.is_active.is_(True))
    return u, cond


def not_suspended(ctx: RuleContext, project_id_column):
    """True unless ``project_id_column`` names a suspended project of this tenant: items of a
    suspended client's projects are not reminded about; items without a project are unaffected."""
    p = alias_of(Project, "suspended_project")
    return ~sa.exists().where(p.id == project_id_column, p.company_id == ctx.tenant.id, p.status == SUSPENDED)


def recipient_columns(u) -> list:
    return [u.id.label("recipient_id"), u.email.label("email"), u.full_name.label("name"), u.timezone.label("timezone")]


def local_date(ctx: RuleContext, moment: datetime | None) -> date | None:
    return moment.astimezone(ctx.zone).date() if moment is not None else None


def dues(rows, ctx: RuleContext, make_context, period=None) -> list[Due]:
    """Turn result rows (with ``entity_id`` and the recipient columns) into ``Due`` items."""
    return [
        Due(entity_id=r.entity_id, recipient_id=r.recipient_id, email=r.email, name=r.name,
            timezone=r.timezone, context=make_context(r), period=period(r) if callable(period) else period)
        for r in rows
    ]
