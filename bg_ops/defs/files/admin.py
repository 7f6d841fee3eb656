"""Operating the upload queue: figures, the failed list, retry, storage use and quota warnings.

Plain functions over a connection/session and ``now``, shared by the ``bg-ops uploads``
commands and the storage dashboard (``health_defs``). Nothing here logs addresses; the quota
warning goes to the tenant's admins through the email queue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Company, User
from bg_ops.db.own_schema import UPLOAD_STATUSES
from bg_ops.db.own_schema import upload_queue as u
from bg_ops.db.types import utc_normalized
from bg_ops.defs.email.enqueue import Email, MailSettings, enqueue
from bg_ops.defs.files.uploads import due_condition

log = logging.getLogger("bg_ops.uploads.admin")

# When a due row became due: the end of its lease when stuck in ``uploading``, else its next
# try (or, never tried, when it was queued).
DUE_AT = sa.case(
    (u.c.status == "uploading", u.c.locked_until),
    else_=sa.func.coalesce(u.c.next_attempt_at, u.c.created_at),
)
QUOTA_WAIT_PREFIX = "waiting: the tenant's storage quota"
QUOTA_WARN_RATIO = 0.8
QUOTA_TEMPLATE = "storage_quota_warning"
FINISHED_BAD = ("failed", "canceled")


def _tenant_filter(stmt, company_id: int | None):
    return stmt.where(u.c.company_id == company_id) if company_id is not None else stmt


def _lease_expired(now: datetime):
    return sa.and_(u.c.status == "uploading", sa.or_(u.c.locked_until.is_(None), u.c.locked_until < now))


def stats(conn: sa.Connection, *, now: datetime, company_id: int | None = None) -> dict:
    """Rows per status (every status present, 0 when none) and the dashboard's figures."""
    counts = dict.fromkeys(UPLOAD_STATUSES, 0)
    rows = conn.execute(_tenant_filter(sa.select(u.c.status, sa.func.count()).group_by(u.c.status), company_id))
    counts.update({status: int(n) for status, n in rows})

    due_now = int(conn.execute(
        _tenant_filter(sa.select(sa.func.count()).select_from(u).where(due_condition(now)), company_id)
    ).scalar_one())
    oldest_due_age = None
    if due_now:
        oldest = conn.execute(
            _tenant_filter(sa.select(DUE_AT).where(due_condition(now)).order_by(utc_normalized(DUE_AT)).limit(1),
                           company_id)
        ).scalar_one()
        oldest_due_age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else None

    hour_ago = now - timedelta(hours=1)
    recent = conn.execute(
        _tenant_filter(
            sa.select(
                sa.func.count().filter(sa.and_(u.c.status == "uploaded", u.c.uploaded_at >= hour_ago)),
                sa.func.count().filter(sa.and_(u.c.status.in_(FINISHED_BAD), u.c.updated_at >= hour_ago)),
                sa.func.count().filter(_lease_expired(now)),
                sa.func.count().filter(sa.and_(u.c.status == "queued", u.c.last_error.like(QUOTA_WAIT_PREFIX + "%"))),
            ).select_from(u),
            company_id,
        )
    ).one()
    uploaded_1h, failed_1h = int(recent[0]), int(recent[1])
    finished = uploaded_1h + failed_1h

    by_tenant = conn.execute(
        _tenant_filter(
            sa.select(u.c.company_id, Company.slug, sa.func.coalesce(sa.func.sum(u.c.size_bytes), 0))
            .select_from(u.outerjoin(Company, Company.id == u.c.company_id))
            .where(u.c.status == "uploaded")
            .group_by(u.c.company_id, Company.slug),
            company_id,
        )
    ).all()
    bytes_by_tenant = {(slug or f"company {cid}"): int(n) for cid, slug, n in sorted(by_tenant, key=lambda r: r[0])}
    return {
        **counts,
        "total": sum(counts.values()),
        "due_now": due_now,
        "oldest_due_age_seconds": oldest_due_age,
        "uploading_past_lease": int(recent[2]),
        "waiting_for_quota": int(recent[3]),
        "uploaded_last_hour": uploaded_1h,
        "failed_last_hour": failed_1h,
        "failure_rate_last_hour": (failed_1h / finished) if finished else 0.0,
        "bytes_uploaded": sum(bytes_by_tenant.values()),
        "bytes_by_tenant": bytes_by_tenant,
    }


@dataclass
class FailedUpload:
    id: int
    company_id: int
    status: str
    source_path: str
    dest_path: str
    attempts: int
    last_error: str | None
    updated_at: datetime | None
    next_attempt_at: datetime | None


def failed(conn: sa.Connection, *, limit: int = 50, company_id: int | None = None) -> list[FailedUpload]:
    """Uploads that failed (will retry on their own) or were canceled (need an operator), most
    recent first, with the reason."""
    rows = conn.execute(
        _tenant_filter(
            sa.select(u.c.id, u.c.company_id, u.c.status, u.c.source_path, u.c.dest_path, u.c.attempts,
                      u.c.last_error, u.c.updated_at, u.c.next_attempt_at)
            .where(u.c.status.in_(FINISHED_BAD))
            .order_by(utc_normalized(u.c.updated_at).desc(), u.c.id.desc())
            .limit(limit),
            company_id,
        )
    )
    return [FailedUpload(**r._mapping) for r in rows]


def retry(conn: sa.Connection, *, now: datetime, ids: list[int] | None = None, all_failed: bool = False,
          company_id: int | None = None) -> list[int]:
    """Put failed or canceled uploads back in the queue, due now, with fresh attempts."""
    if not ids and not all_failed:
        raise ValueError("say which uploads: give --id ID (repeatable) or --all-failed")
    stmt = sa.update(u).values(
        status="queued", attempts=0, attempts_today=0, attempts_day=None, next_attempt_at=now,
        last_error=None, locked_until=None, locked_by=None, updated_at=now,
    ).where(u.c.status.in_(FINISHED_BAD))
    if ids:
        stmt = stmt.where(u.c.id.in_(ids))
    stmt = _tenant_filter(stmt, company_id)
    return [r.id for r in conn.execute(stmt.returning(u.c.id))]


def show(conn: sa.Connection, upload_id: int) -> dict | None:
    row = conn.execute(
        sa.select(u, Company.slug.label("tenant"))
        .select_from(u.outerjoin(Company, Company.id == u.c.company_id))
        .where(u.c.id == upload_id)
    ).mappings().one_or_none()
    return None if row is None else dict(row)


@dataclass
class TenantUsage:
    company_id: int
    slug: str
    name: str
    timezone: str
    is_active: bool
    used_bytes: int
    quota_bytes: int | None
    waiting_for_quota: int

    @property
    def ratio(self) -> float | None:
        if self.quota_bytes is None:
            return None
        if self.quota_bytes <= 0:
            return float("inf") if self.used_bytes > 0 else 1.0
        return self.used_bytes / self.quota_bytes

    def as_dict(self) -> dict:
        ratio = self.ratio
        return {
            "company_id": self.company_id, "tenant": self.slug, "used_bytes": self.used_bytes,
            "quota_bytes": self.quota_bytes,
            "used_ratio": None if ratio is None else (round(ratio, 4) if ratio != float("inf") else None),
            "waiting_for_quota": self.waiting_for_quota,
        }


def storage_usage(conn: sa.Connection) -> list[TenantUsage]:
    """Per tenant: bytes uploaded (the same measure the upload worker checks the quota with)
    against ``companies.storage_quota_bytes`` (NULL: no quota)."""
    from bg_ops.defs.files.uploads import used_bytes

    used = used_bytes(conn)
    waiting = dict(conn.execute(
        sa.select(u.c.company_id, sa.func.count())
        .where(u.c.status == "queued", u.c.last_error.like(QUOTA_WAIT_PREFIX + "%")).group_by(u.c.company_id)
    ).all())
    companies = conn.execute(
        sa.select(Company.id, Company.slug, Company.name, Company.timezone, Company.is_active,
                  Company.storage_quota_bytes).order_by(Company.slug)
    ).all()
    return [
        TenantUsage(company_id=c.id, slug=c.slug, name=c.name, timezone=c.timezone, is_active=bool(c.is_active),
                    used_bytes=int(used.get(c.id, 0)),
                    quota_bytes=None if c.storage_quota_bytes is None else int(c.storage_quota_bytes),
                    waiting_for_quota=int(waiting.get(c.id, 0)))
        for c in companies
    ]


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


@dataclass
class QuotaWarning:
    company_id: int
    tenant: str
    level: int  # 80 or 100
    used_bytes: int
    quota_bytes: int
    admins: int
    email_id: int | None
    created: bool  # False: already told today (same idempotency key)


def quota_level(usage: TenantUsage, warn_ratio: float = QUOTA_WARN_RATIO) -> int | None:
    """100 at or over the quota, 80 at or over ``warn_ratio`` of it, else None."""
    ratio = usage.ratio
    if ratio is None:
        return None
    if ratio >= 1.0:
        return 100
    if ratio >= warn_ratio:
        return 80
    return None


def send_quota_warnings(session: Session, *, now: datetime, settings: MailSettings,
                        usage: list[TenantUsage] | None = None,
                        warn_ratio: float = QUOTA_WARN_RATIO) -> list[QuotaWarning]:
    """Queue one mail per tenant and day (and level) to the active admins of every active tenant
    at or over ``warn_ratio`` of its quota. The idempotency key
    ``quota-warning:{company_id}:{tenant-local date}:{80|100}`` makes repeated runs no-ops."""
    if usage is None:
        usage = storage_usage(session.connection())
    out = []
    for t in usage:
        level = quota_level(t, warn_ratio)
        if level is None or not t.is_active:
            continue
        try:
            day = now.astimezone(ZoneInfo(t.timezone)).date()
        except Exception:  # noqa: BLE001 - a bad zone in the platform's data: fall back to UTC
            day = now.date()
        admins = session.execute(
            sa.select(User.email).where(User.company_id == t.company_id, User.role == "admin",
                                        User.is_active.is_(True)).order_by(User.id)
        ).scalars().all()
        if not admins:
            log.warning("tenant %s is at %d%% of its storage quota but has no active admin to tell", t.slug, level)
            out.append(QuotaWarning(t.company_id, t.slug, level, t.used_bytes, t.quota_bytes or 0, 0, None, False))
            continue
        ratio = t.ratio
        percent = 100 if ratio is None or ratio == float("inf") else int(ratio * 100)
        context = {
            "level": level,
            "percent": percent,
            "used": human_bytes(t.used_bytes),
            "quota": human_bytes(t.quota_bytes),
            "waiting": t.waiting_for_quota,
            "day": day.isoformat(),
        }
        result = enqueue(
            session,
            Email(company_id=t.company_id, to=list(admins), template=QUOTA_TEMPLATE, context=context,
                  priority="high" if level >= 100 else "normal",
                  idempotency_key=f"quota-warning:{t.company_id}:{day.isoformat()}:{level}"),
            now=now, settings=settings,
        )
        out.append(QuotaWarning(t.company_id, t.slug, level, t.used_bytes, t.quota_bytes or 0, len(admins),
                                result.id, result.created))
    return out
