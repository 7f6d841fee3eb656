"""Tenants: every company is one. Plain functions over a session, no Dagster here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Company


class UnknownTenant(LookupError):
    pass


@dataclass(frozen=True)
class Tenant:
    id: int
    slug: str
    name: str
    timezone: str
    is_active: bool
    settings: Mapping

    @property
    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.timezone or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            return ZoneInfo("UTC")

    def service_enabled(self, service: str, globally_off: frozenset[str] = frozenset()) -> bool:
        """``companies.settings`` switches: ``{"reminders": false}`` turns off every reminder,
        ``{"reminders.task_due": false}`` only that one. Missing keys mean on. ``globally_off``
        (from ``switched_off_services``) applies the same way to every tenant."""
        return switched_off_by(service, self.settings, globally_off) is None


def switched_off_by(service: str, tenant_settings: Mapping, globally_off: frozenset[str] = frozenset()) -> str | None:
    """Which switch turns ``service`` off ("tenant: reminders" / "global: reminders.x"), or None."""
    parts = service.split(".")
    for i in range(1, len(parts) + 1):
        key = ".".join(parts[:i])
        if key in globally_off:
            return f"global: {key}"
        if tenant_settings.get(key) is False:
            return f"tenant: {key}"
    return None


def switched_off_services(session: Session) -> frozenset[str]:
    """Services an operator switched off for every tenant (``service_switches``)."""
    from bg_ops.db.own_schema import service_switches

    rows = session.execute(sa.select(service_switches.c.service).where(service_switches.c.enabled.is_(False)))
    return frozenset(r.service for r in rows)


def _tenant(row: Company) -> Tenant:
    return Tenant(
        id=row.id,
        slug=row.slug,
        name=row.name,
        timezone=row.timezone or "UTC",
        is_active=bool(row.is_active),
        settings=dict(row.settings or {}),
    )


def active_tenant_slugs(session: Session) -> list[str]:
    return list(
        session.scalars(
            sa.select(Company.slug).where(Company.is_active.is_(True)).order_by(Company.slug)
        )
    )


def active_tenants(session: Session) -> list[Tenant]:
    rows = session.scalars(sa.select(Company).where(Company.is_active.is_(True)).order_by(Company.slug))
    return [_tenant(r) for r in rows]


def get_tenant(session: Session, slug: str) -> Tenant:
    """The tenant with ``slug``; ``UnknownTenant`` names the slug and the fix when missing."""
    # Columns, not the ORM entity: each job run looks its tenant up in a fresh process, and
    # preparing an entity load there costs more than the query (B3).
    row = session.execute(sa.select(*Company.__table__.c).where(Company.slug == slug)).one_or_none()
    if row is None:
        known = active_tenant_slugs(session)
        hint = f"known tenants: {', '.join(known[:10])}" if known else "no tenants exist yet"
        raise UnknownTenant(
            f"unknown tenant {slug!r}: no company has that slug ({hint}); check the partition "
            "key or --tenant value"
        )
    return _tenant(row)


def partition_changes(existing: set[str], wanted: list[str]) -> tuple[list[str], list[str]]:
    """(to add, to delete) so the tenant partitions equal the active companies."""
    wanted_set = set(wanted)
    return sorted(wanted_set - existing), sorted(existing - wanted_set)


def tenant_summary(session: Session, tenant: Tenant) -> dict[str, int]:
    """Counts an operator looks at first for one tenant; every query filters by company_id."""
    from bg_ops.db.app_schema import Approval, Invoice, Project, Task, User

    def count(model, *where) -> int:
        stmt = sa.select(sa.func.count()).select_from(model).where(model.company_id == tenant.id, *where)
        return int(session.scalar(stmt) or 0)

    return {
        "active_users": count(User, User.is_active.is_(True)),
        "active_projects": count(Project, Project.status == "active"),
        "open_tasks": count(Task, Task.status.in_(("open", "in_progress"))),
        "approvals_in_review": count(Approval, Approval.status == "in_review"),
        "unpaid_invoices": count(Invoice, Invoice.status == "sent"),
    }
