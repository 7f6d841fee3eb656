"""People reminders: birthdays and work anniversaries (R10).

On the tenant-local run day D, a person is celebrated when the month and day of their
``birth_date`` (or ``hire_date``, one full year or more ago) equal D's; someone born (or hired)
on 29 February is celebrated on 28 February in years without a 29th. Only active people are
celebrated, and only the tenant's active HR users and the person's (active) manager are told:
never the person themselves. One reminder per (person, recipient, year); the engine times the
mail for the send hour (default 08:00 local), so it is in inboxes before 09:00.
"""

from __future__ import annotations

import calendar
from datetime import date

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from bg_ops.db.app_schema import User
from bg_ops.defs.reminders.engine import Due, Rule, RuleContext
from bg_ops.defs.reminders.rules.common import alias_of, recipient, recipient_columns

HR_ROLE = "hr"


class month_day(FunctionElement):
    """``'MM-DD'`` of a date column, on PostgreSQL and SQLite (ISO text there)."""

    inherit_cache = True
    name = "month_day"
    type = sa.String()


@compiles(month_day)
def _month_day_default(element, compiler, **kw):
    (arg,) = list(element.clauses)
    return f"to_char({compiler.process(arg, **kw)}, 'MM-DD')"


@compiles(month_day, "sqlite")
def _month_day_sqlite(element, compiler, **kw):
    (arg,) = list(element.clauses)
    # LocalDate text is 'YYYY-MM-DD' (possibly followed by a time part).
    return f"substr({compiler.process(arg, **kw)}, 6, 5)"


def celebrated_month_days(day: date) -> list[str]:
    """The 'MM-DD' values celebrated on ``day``: 29 February moves to the 28th in common years."""
    days = [day.strftime("%m-%d")]
    if day.month == 2 and day.day == 28 and not calendar.isleap(day.year):
        days.append("02-29")
    return days


def _celebrations(session, ctx: RuleContext, date_column_name: str, *, min_years: int) -> list[Due]:
    person = alias_of(User, "person")
    date_col = getattr(person, date_column_name)
    where = [
        person.company_id == ctx.tenant.id,
        person.is_active.is_(True),
        date_col.is_not(None),
        month_day(date_col).in_(celebrated_month_days(ctx.day)),
    ]
    if min_years:
        # Same month-day and a year at least min_years before the run day's year.
        where.append(date_col < date(ctx.day.year - min_years + 1, 1, 1))
    base = [person.id.label("entity_id"), person.full_name.label("person_name"), date_col.label("celebrated_on")]

    hr = alias_of(User, "hr_user")
    hr_ok = sa.and_(hr.company_id == ctx.tenant.id, hr.is_active.is_(True), hr.role == HR_ROLE, hr.id != person.id)
    hr_rows = (
        sa.select(*base, *recipient_columns(hr), sa.literal("hr").label("role"))
        .select_from(person)
        .join(hr, hr_ok)
        .where(*where)
    )
    manager, manager_ok = recipient(ctx, person.manager_id, "manager")
    manager_rows = (
        sa.select(*base, *recipient_columns(manager), sa.literal("manager").label("role"))
        .select_from(person)
        .join(manager, sa.and_(manager_ok, manager.id != person.id))
        .where(*where)
    )
    rows = session.execute(
        sa.union_all(manager_rows, hr_rows).order_by("entity_id", "recipient_id", "role")
    ).all()

    out: dict[tuple[int, int], Due] = {}
    for r in rows:
        key = (r.entity_id, r.recipient_id)
        if key in out and r.role != "manager":
            continue  # a manager who is also HR hears once, as the manager
        years = ctx.day.year - r.celebrated_on.year
        out[key] = Due(
            entity_id=r.entity_id, recipient_id=r.recipient_id, email=r.email, name=r.name,
            timezone=r.timezone, period=str(ctx.day.year),
            context=_context(date_column_name, r.person_name, years, r.role, ctx.day),
        )
    return list(out.values())


def _context(kind: str, person_name: str, years: int, role: str, day: date) -> dict:
    if kind == "birth_date":
        return {"person_name": person_name, "role": role, "day": day.isoformat(),
                "headline": f"Birthday today: {person_name}",
                "summary": f"{person_name} celebrates their birthday today ({day.isoformat()})"}
    return {"person_name": person_name, "role": role, "day": day.isoformat(), "years": years,
            "headline": f"Work anniversary: {person_name}, {years} year(s)",
            "summary": f"{person_name} joined {years} year(s) ago today ({day.isoformat()})"}


def find_birthdays(session, ctx: RuleContext) -> list[Due]:
    return _celebrations(session, ctx, "birth_date", min_years=0)


def find_work_anniversaries(session, ctx: RuleContext) -> list[Due]:
    return _celebrations(session, ctx, "hire_date", min_years=1)


birthdays = Rule(
    name="birthdays", requirement="R10", title="Birthday", entity_type="user", find=find_birthdays,
    description=("Active people whose birthday is the tenant-local run day (29 Feb on the 28th in common "
                 "years): the tenant's HR users and the person's manager, never the person; once a year, "
                 "mail timed for 08:00 local."),
)

work_anniversaries = Rule(
    name="work_anniversaries", requirement="R10", title="Work anniversary", entity_type="user",
    find=find_work_anniversaries,
    description=("Active people hired one or more whole years ago on the tenant-local run day: the "
                 "tenant's HR users and the person's manager, never the person; once a year, mail timed "
                 "for 08:00 local."),
)
