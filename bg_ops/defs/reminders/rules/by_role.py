"""Recipients chosen by role, with the same guarantee as ``common.recipient``: active users of
this tenant only (R15). Used where a rule notifies a whole role (translators, finance…) or
falls back to one when the person named on the item is missing or no longer active."""

from __future__ import annotations

import sqlalchemy as sa

from bg_ops.db.app_schema import User
from bg_ops.defs.reminders.engine import RuleContext
from bg_ops.defs.reminders.rules.common import alias_of


def role_members(ctx: RuleContext, role: str, alias_name: str = "member"):
    """(alias, join condition) for every active user of this tenant with ``role``."""
    u = alias_of(User, alias_name)
    cond = sa.and_(u.company_id == ctx.tenant.id, u.role == role, u.is_active.is_(True))
    return u, cond


def no_active_user(ctx: RuleContext, user_id_column, alias_name: str = "named"):
    """True when ``user_id_column`` is null or names no active user of this tenant: the item
    has nobody to remind personally, so the rule falls back to the role."""
    u = alias_of(User, alias_name)
    return ~sa.exists().where(u.id == user_id_column, u.company_id == ctx.tenant.id, u.is_active.is_(True))
