"""PTO accruals (B3) and tenure promotions (B4), plain logic over a session.

On the 1st of each month (tenant-local) every active employee of the tenant — any role but
``client``, with a ``hire_date`` on or before the month's first day — is credited the monthly
hours of their tenure tier:

- service years = full years from ``hire_date`` to the month's first day;
- tier = the tenant's ``pto_tiers`` row with the highest ``min_service_years`` not above the
  service years (equal minimums: the higher id). No such row: nothing is credited (counted).

Mid-month hires: someone hired after the 1st accrues from the next month (no pro rata); someone
hired on the 1st accrues that month. "Active" is today's ``users.is_active`` (the platform keeps
no history of it), so a backfilled month credits the people active now.

One ``pto_ledger`` row per (tenant, employee, month), inserted with ON CONFLICT DO NOTHING: running
or backfilling a month again changes nothing, and a tier edited later does not rewrite past months.

Promotion (B4): when an employee's tier for month M differs from their tier for M-1 (they crossed
a threshold; they must have been employed on M-1's first day, so a first accrual is no promotion),
the employee gets a ``pto_promotion`` mail and the tenant's active HR users a ``pto_promotion_hr``
mail, once per person and month (``notify_now``, period = 'YYYY-MM'), in the same transaction as
the month's ledger rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import PtoTier, User
from bg_ops.db.own_schema import pto_ledger
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.reminders.engine import Due
from bg_ops.defs.reminders.immediate import Notice, notify_now
from bg_ops.defs.tenants.logic import Tenant, switched_off_by

SERVICE = "pto.accrual"  # companies.settings / service_switches key ("pto" turns off both)
PROMOTION_SERVICE = "pto.promotion"
NOT_EMPLOYEES = ("client",)
HR_ROLE = "hr"

PROMOTION_NOTICE = Notice(rule="pto_promotion", title="PTO tier promotion", entity_type="user",
                          template_name="pto_promotion", service_name=PROMOTION_SERVICE)
PROMOTION_HR_NOTICE = Notice(rule="pto_promotion_hr", title="PTO tier promotion", entity_type="user",
                             template_name="pto_promotion_hr", service_name=PROMOTION_SERVICE)


class MonthNotStarted(ValueError):
    """The month has not begun in the tenant's zone: nothing may be accrued for it yet."""


@dataclass(frozen=True)
class Tier:
    id: int
    name: str
    min_service_years: int
    hours: Decimal


def month_key(month_start: date) -> str:
    return f"{month_start:%Y-%m}"


def previous_month(month_start: date) -> date:
    return date(month_start.year - 1, 12, 1) if month_start.month == 1 else date(month_start.year,
                                                                                   month_start.month - 1, 1)


def service_years(hire_date: date, on: date) -> int:
    """Full years of service from ``hire_date`` to ``on`` (negative before the hire date).
    Someone hired on 29 February completes a year on 1 March in common years."""
    return on.year - hire_date.year - ((on.month, on.day) < (hire_date.month, hire_date.day))


def load_tiers(session: Session, tenant: Tenant) -> list[Tier]:
    rows = session.execute(
        sa.select(PtoTier.id, PtoTier.name, PtoTier.min_service_years, PtoTier.hours_per_month)
        .where(PtoTier.company_id == tenant.id)
        .order_by(PtoTier.min_service_years, PtoTier.id)
    ).all()
    return [Tier(id=r.id, name=r.name, min_service_years=int(r.min_service_years),
                 hours=Decimal(str(r.hours_per_month)).quantize(Decimal("0.01"))) for r in rows]


def tier_for(tiers: list[Tier], years: int) -> Tier | None:
    """The tier with the highest minimum not above ``years`` (``tiers`` sorted by minimum, id)."""
    found = None
    for tier in tiers:
        if tier.min_service_years <= years:
            found = tier
    return found


@dataclass(frozen=True)
class Promotion:
    user_id: int
    name: str
    previous_tier: str | None
    tier: str
    service_years: int


@dataclass
class AccrualResult:
    month: str
    switched_off: str | None = None
    eligible: int = 0
    credited: int = 0
    hours_credited: Decimal = Decimal("0.00")
    already_credited: int = 0
    not_yet_eligible: int = 0  # active, hired after the month's first day (accrue from next month)
    without_tier: int = 0
    promotions: list[Promotion] = field(default_factory=list)
    promotion_mails_enqueued: int = 0
    promotion_mails_already_sent: int = 0
    # The month's ledger as it stands after the run (what the asset partition holds).
    ledger_employees: int = 0
    ledger_hours: Decimal = Decimal("0.00")
    ledger_hours_by_tier: dict[str, float] = field(default_factory=dict)


def _ledger_insert(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(pto_ledger).on_conflict_do_nothing(index_elements=["company_id", "user_id", "month"])


def accrue_pto(
    session: Session, tenant: Tenant, month_start: date, *, now: datetime, mail_settings: MailSettings,
    globally_off: frozenset[str] = frozenset(), notify_promotions: bool = True,
) -> AccrualResult:
    """Credit the month's PTO of every eligible employee of the tenant (once) and announce the
    month's tier promotions (once); in the caller's transaction."""
    if month_start.day != 1:
        raise ValueError(f"{month_start.isoformat()} is not the first day of a month")
    result = AccrualResult(month=month_key(month_start))
    local_today = now.astimezone(tenant.zone).date()
    if month_start > local_today:
        raise MonthNotStarted(
            f"{result.month} has not begun in {tenant.slug}'s zone ({tenant.timezone}, today {local_today}): "
            "PTO accrues on the month's 1st; run it then"
        )
    off = switched_off_by(SERVICE, tenant.settings, globally_off)
    if off:
        result.switched_off = off
        _summarise_ledger(session, tenant, result)
        return result

    tiers = load_tiers(session, tenant)
    people = session.execute(
        sa.select(User.id, User.email, User.full_name, User.timezone, User.hire_date)
        .where(User.company_id == tenant.id, User.is_active.is_(True), User.role.not_in(NOT_EMPLOYEES),
               User.hire_date.is_not(None))
        .order_by(User.id)
    ).all()
    before = previous_month(month_start)
    rows, promoted = [], []
    for person in people:
        years = service_years(person.hire_date, month_start)
        if person.hire_date > month_start:  # hired after the 1st: accrues from next month
            result.not_yet_eligible += 1
            continue
        tier = tier_for(tiers, years)
        if tier is None:
            result.without_tier += 1
            continue
        rows.append({"company_id": tenant.id, "user_id": person.id, "month": result.month, "tier_id": tier.id,
                     "tier_name": tier.name, "hours": tier.hours, "service_years": years, "created_at": now})
        if person.hire_date <= before:
            was = tier_for(tiers, service_years(person.hire_date, before))
            if was is None or was.id != tier.id:
                promoted.append((person, was, tier, years))
    result.eligible = len(rows)
    if rows:
        inserted = session.execute(_ledger_insert(session).returning(pto_ledger.c.hours), rows).all()
        result.credited = len(inserted)
        result.hours_credited = sum((Decimal(str(r.hours)) for r in inserted), Decimal("0.00"))
        result.already_credited = result.eligible - result.credited

    result.promotions = [
        Promotion(user_id=p.id, name=p.full_name, previous_tier=was.name if was else None, tier=tier.name,
                  service_years=years)
        for p, was, tier, years in promoted
    ]
    if promoted and notify_promotions:
        _announce(session, tenant, month_start, promoted, result, now=now, mail_settings=mail_settings,
                  globally_off=globally_off)
    _summarise_ledger(session, tenant, result)
    return result


def _announce(session: Session, tenant: Tenant, month_start: date, promoted: list, result: AccrualResult, *,
              now: datetime, mail_settings: MailSettings, globally_off: frozenset[str]) -> None:
    hr = session.execute(
        sa.select(User.id, User.email, User.full_name, User.timezone)
        .where(User.company_id == tenant.id, User.role == HR_ROLE, User.is_active.is_(True))
        .order_by(User.id)
    ).all()
    period = month_key(month_start)
    month_label = f"{month_start:%B %Y}"
    to_employees, to_hr = [], []
    for person, was, tier, years in promoted:
        context = {"employee_name": person.full_name, "hire_date": person.hire_date.isoformat(),
                   "service_years": years, "tier_name": tier.name, "hours_per_month": f"{tier.hours:.2f}",
                   "previous_tier_name": was.name if was else "",
                   "previous_hours": f"{was.hours:.2f}" if was else "",
                   "month": period, "month_label": month_label,
                   "headline": f"PTO tier: {tier.name} from {month_label}",
                   "summary": f"{person.full_name}: {tier.hours:.2f} hours a month from {month_label}"}
        to_employees.append(Due(entity_id=person.id, recipient_id=person.id, email=person.email,
                                name=person.full_name, timezone=person.timezone, period=period, context=context))
        to_hr.extend(
            Due(entity_id=person.id, recipient_id=h.id, email=h.email, name=h.full_name, timezone=h.timezone,
                period=period, context=context)
            for h in hr if h.id != person.id  # an HR person's own promotion reaches them once, as the employee
        )
    for notice, dues in ((PROMOTION_NOTICE, to_employees), (PROMOTION_HR_NOTICE, to_hr)):
        sent = notify_now(session, notice, tenant, dues, now=now, mail_settings=mail_settings,
                          globally_off=globally_off)
        result.promotion_mails_enqueued += sent.enqueued
        result.promotion_mails_already_sent += sent.already_sent


def _summarise_ledger(session: Session, tenant: Tenant, result: AccrualResult) -> None:
    rows = session.execute(
        sa.select(pto_ledger.c.tier_name, sa.func.count(), sa.func.sum(pto_ledger.c.hours))
        .where(pto_ledger.c.company_id == tenant.id, pto_ledger.c.month == result.month)
        .group_by(pto_ledger.c.tier_name)
        .order_by(pto_ledger.c.tier_name)
    ).all()
    by_tier: dict[str, Decimal] = defaultdict(lambda: Decimal("0.00"))
    for name, count, hours in rows:
        result.ledger_employees += int(count)
        by_tier[name] += Decimal(str(hours)).quantize(Decimal("0.01"))
    result.ledger_hours = sum(by_tier.values(), Decimal("0.00"))
    result.ledger_hours_by_tier = {name: float(h) for name, h in by_tier.items()}

