"""The upload queue: files to the cloud, verified by content hash, retried with backoff.

Rows come from bg_ops (backup, archival) or from the platform with plain SQL
(``upload_queue`` contract: company_id, source_path, dest_path, delete_after_upload).

- **Claim** due rows (queued, or failed and due for another try; or stuck ``uploading``
  after the lease) in one ``UPDATE … RETURNING`` under a lease, ``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL; each claim counts an attempt, and the attempts of the day.
- **Upload**: the source must resolve inside the files root (``..``, absolute paths and
  symlinks leading out are refused) and still exist; it counts only when the cloud's content
  hash equals the local one. Conflict policy per row or configured: ``keep_both`` (same
  content: done; different: a renamed copy ``name (2).ext``) or ``overwrite``.
- **Record** (one statement per batch, on one connection held for the drain): uploaded; transient errors (429, 5xx, network, hash mismatch) → ``failed`` (will
  retry) with exponential backoff and jitter, at most ``daily_attempt_cap`` tries a day,
  ``canceled`` after ``max_attempts`` (200); refusals → ``canceled`` at once. A tenant over its
  storage quota waits in ``queued`` with the reason instead of failing (F8).
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from types import SimpleNamespace

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Company
from bg_ops.db.own_schema import UPLOAD_ACTIVE_STATUSES
from bg_ops.db.own_schema import upload_queue as u
from bg_ops.resources.storage import (
    CloudStorageResource,
    StorageBadPath,
    StorageConflict,
    StorageError,
    normalize_cloud_path,
)
from bg_ops.util.backoff import jittered_backoff
from bg_ops.util.drain import claimed_batches
from bg_ops.util.files import MissingFile, UnsafePath, resolve_under_root

log = logging.getLogger("bg_ops.uploads")

CONFLICT_POLICIES = ("keep_both", "overwrite")


class UploadRefused(ValueError):
    """A row that can never be uploaded as given (bad source or destination)."""


@dataclass(frozen=True)
class UploadPolicy:
    batch_size: int = 5
    lease_seconds: int = 900
    max_attempts: int = 200
    daily_attempt_cap: int = 24
    backoff_base_seconds: float = 60.0
    backoff_max_seconds: float = 6 * 3600.0
    time_budget_seconds: float = 240.0
    on_conflict: str = "keep_both"
    quota_wait_seconds: float = 3600.0


@dataclass
class UploadReport:
    batches: int = 0
    claimed: int = 0
    uploaded: int = 0
    retried: int = 0
    canceled: int = 0
    waiting_for_quota: int = 0
    bytes_uploaded: int = 0
    canceled_ids: list[int] = field(default_factory=list)
    cloud_paths: list[str] = field(default_factory=list)  # what this drain stored, in order
    stopped_because: str = ""

    def as_metadata(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("canceled_ids", "cloud_paths")}


def queue_upload(session: Session, *, company_id: int, source_path: str, dest_path: str, files_root: Path,
                 now: datetime, delete_after_upload: bool = False, on_conflict: str | None = None,
                 kind: str | None = None) -> int:
    """Queue one file; refuse bad paths at once. A file already waiting for the same
    destination is not queued twice: its row id is returned."""
    try:
        resolve_under_root(files_root, source_path)
        dest = normalize_cloud_path(dest_path)
    except (UnsafePath, MissingFile, StorageBadPath) as exc:
        raise UploadRefused(f"upload of {source_path!r} refused: {exc}") from None
    if not dest:
        raise UploadRefused(f"upload of {source_path!r} refused: the destination is the storage root")
    if on_conflict is not None and on_conflict not in CONFLICT_POLICIES:
        raise UploadRefused(f"on_conflict {on_conflict!r} is not one of {', '.join(CONFLICT_POLICIES)}")
    existing = session.execute(
        sa.select(u.c.id).where(u.c.company_id == company_id, u.c.source_path == source_path,
                                u.c.dest_path == dest, u.c.status.in_(("queued", "failed", "uploading")))
        .order_by(u.c.id).limit(1)
    ).scalar_one_or_none()
    if existing is not None:
        return int(existing)
    return int(session.execute(
        sa.insert(u).values(company_id=company_id, source_path=source_path, dest_path=dest,
                            delete_after_upload=delete_after_upload, on_conflict=on_conflict, kind=kind,
                            status="queued", created_at=now, updated_at=now).returning(u.c.id)
    ).scalar_one())


def due_condition(now: datetime):
    # The leading status test is the claim index's predicate (ix_upload_queue_claim_order), so
    # PostgreSQL reads that index in order instead of sorting every row still to upload.
    return sa.and_(u.c.status.in_(UPLOAD_ACTIVE_STATUSES), sa.or_(
        sa.and_(u.c.status.in_(("queued", "failed")), sa.or_(u.c.next_attempt_at.is_(None), u.c.next_attempt_at <= now)),
        sa.and_(u.c.status == "uploading", sa.or_(u.c.locked_until.is_(None), u.c.locked_until < now)),
    ))


def count_due(conn: sa.Connection, now: datetime) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(u).where(due_condition(now))).scalar_one())


@contextmanager
def _transaction(bind: sa.Engine | sa.Connection) -> Iterator[sa.Connection]:
    """A transaction of its own on an engine; on a connection (``drain_uploads`` holds one in
    AUTOCOMMIT mode for the whole drain) the statement commits by itself: one round trip, no
    BEGIN, COMMIT or pool ping around it. Every write here is a single statement."""
    if isinstance(bind, sa.Engine):
        with bind.begin() as conn:
            yield conn
    else:
        yield bind


def claim_uploads(bind: sa.Engine | sa.Connection, *, now: datetime, worker_id: str, policy: UploadPolicy) -> list:
    today = now.date().isoformat()
    candidates = (
        sa.select(u.c.id).where(due_condition(now)).order_by(u.c.created_at, u.c.id)
        .limit(policy.batch_size).with_for_update(skip_locked=True)
    )
    claim = (
        sa.update(u).where(u.c.id.in_(candidates.scalar_subquery()))
        .values(
            status="uploading", attempts=u.c.attempts + 1,
            attempts_today=sa.case((u.c.attempts_day == today, u.c.attempts_today + 1), else_=1),
            attempts_day=today, locked_until=now + timedelta(seconds=policy.lease_seconds),
            locked_by=worker_id, updated_at=now,
        )
        .returning(u.c.id, u.c.company_id, u.c.source_path, u.c.dest_path, u.c.delete_after_upload,
                   u.c.on_conflict, u.c.attempts, u.c.attempts_today, u.c.created_at)
    )
    with _transaction(bind) as conn:
        rows = conn.execute(claim).all()
    return sorted(rows, key=lambda r: (r.created_at, r.id))


@dataclass
class _Outcome:
    id: int
    status: str  # uploaded | retry | canceled | quota
    error: str | None = None
    attempts: int = 0
    attempts_today: int = 0
    size: int | None = None
    content_hash: str | None = None
    cloud_path: str | None = None
    rev: str | None = None
    delete_local: Path | None = None  # removed only once the upload is recorded


def used_bytes(conn: sa.Connection, company_ids: set[int] | None = None) -> dict[int, int]:
    """Bytes each tenant keeps in the cloud: the latest upload per cloud path (an overwritten
    backup replaces its earlier version, it does not add to it)."""
    latest = sa.select(sa.func.max(u.c.id).label("id")).where(u.c.status == "uploaded")
    if company_ids is not None:
        latest = latest.where(u.c.company_id.in_(company_ids))
    latest = latest.group_by(u.c.company_id, sa.func.coalesce(u.c.cloud_path, u.c.dest_path)).subquery()
    rows = conn.execute(
        sa.select(u.c.company_id, sa.func.coalesce(sa.func.sum(u.c.size_bytes), 0))
        .join(latest, latest.c.id == u.c.id).group_by(u.c.company_id)
    ).all()
    return {int(cid): int(total) for cid, total in rows}


def _quota_left(bind: sa.Engine | sa.Connection, company_ids: set[int]) -> dict[int, int | None]:
    """Bytes each tenant may still upload (None: no quota). History is summed only for the
    tenants that have a quota; ``drain_uploads`` asks once per tenant and then counts down."""
    with _transaction(bind) as conn:
        quotas = dict(conn.execute(sa.select(Company.id, Company.storage_quota_bytes).where(Company.id.in_(company_ids))).all())
        limited = {cid for cid in company_ids if quotas.get(cid) is not None}
        used = used_bytes(conn, limited) if limited else {}
    return {cid: (int(quotas[cid]) - int(used.get(cid, 0)) if cid in limited else None) for cid in company_ids}


def upload_one(row, storage: CloudStorageResource, *, files_root: Path, policy: UploadPolicy,
               quota_left: dict[int, int | None]) -> _Outcome:
    """Upload one claimed row. The file is read once: the backend hashes the bytes it sends and
    returns the entry only when the cloud's content hash equals that hash (storage contract),
    so the hash recorded here is the verified hash of exactly what was uploaded."""
    base = dict(id=row.id, attempts=row.attempts, attempts_today=row.attempts_today)
    try:
        local = resolve_under_root(files_root, row.source_path)
    except UnsafePath as exc:
        return _Outcome(status="canceled", error=f"refused: {exc}", **base)
    except MissingFile as exc:
        return _Outcome(status="canceled", error=f"file vanished before upload: {exc}", **base)
    try:
        size = local.stat().st_size
        left = quota_left.get(row.company_id)
        if left is not None and size > left:
            return _Outcome(status="quota", error=f"waiting: the tenant's storage quota is reached ({size} bytes needed, "
                                                     f"{max(left, 0)} left); raise companies.storage_quota_bytes", **base)
        policy_name = row.on_conflict or policy.on_conflict
        mode = "overwrite" if policy_name == "overwrite" else "add"
        entry = storage.upload(local, row.dest_path, mode=mode, autorename=policy_name == "keep_both")
    except (StorageBadPath, StorageConflict) as exc:
        return _Outcome(status="canceled", error=f"refused by the cloud: {exc}", **base)
    except StorageError as exc:
        return _Outcome(status="retry", error=f"{exc.__class__.__name__}: {exc}", **base)
    except OSError as exc:
        return _Outcome(status="retry", error=f"reading the file failed: {exc.strerror or exc}", **base)
    if not entry.content_hash:
        return _Outcome(status="retry", error="the cloud returned no content hash to verify the upload", **base)
    stored = entry.size if entry.size is not None else size
    if left is not None:
        quota_left[row.company_id] = left - stored
    return _Outcome(status="uploaded", size=stored, content_hash=entry.content_hash, cloud_path=entry.path,
                    rev=entry.rev, delete_local=local if row.delete_after_upload else None, **base)


def _next_day(now: datetime) -> datetime:
    return datetime.combine(now.date() + timedelta(days=1), time.min, tzinfo=UTC)


# Outcome columns: (name, type) of what record_outcomes writes per row.
_OUTCOME_COLUMNS = (
    ("o_id", u.c.id.type), ("o_status", u.c.status.type), ("o_error", u.c.last_error.type),
    ("o_next", u.c.next_attempt_at.type), ("o_refund", sa.Integer()), ("o_size", u.c.size_bytes.type),
    ("o_hash", u.c.content_hash.type), ("o_path", u.c.cloud_path.type), ("o_rev", u.c.cloud_rev.type),
)


def _outcome_update(src):
    """The UPDATE that records outcomes whose values come from ``src`` (``src.o_status`` …)."""
    uploaded = src.o_status == "uploaded"
    now = sa.bindparam("o_now", type_=u.c.updated_at.type)

    def if_uploaded(value, column):
        return sa.case((uploaded, value), else_=column)

    return sa.update(u).where(u.c.id == src.o_id, u.c.status == "uploading").values(
        status=src.o_status, last_error=src.o_error, next_attempt_at=src.o_next,
        # a row that waited for quota never left: its claim was not an attempt
        attempts=u.c.attempts - src.o_refund, attempts_today=u.c.attempts_today - src.o_refund,
        uploaded_at=if_uploaded(now, u.c.uploaded_at),
        size_bytes=if_uploaded(src.o_size, u.c.size_bytes), content_hash=if_uploaded(src.o_hash, u.c.content_hash),
        cloud_path=if_uploaded(src.o_path, u.c.cloud_path), cloud_rev=if_uploaded(src.o_rev, u.c.cloud_rev),
        locked_until=None, locked_by=None, updated_at=now,
    )


@functools.cache
def _outcome_statement(dialect: str):
    """Built once per dialect. On PostgreSQL the batch travels as one array per column joined
    with ``unnest``: one statement, one round trip (an executemany UPDATE is one round trip per
    row on psycopg2). SQLite runs an executemany in-process, where a row costs no round trip."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        src = sa.func.unnest(*(sa.bindparam(name, type_=ARRAY(type_)) for name, type_ in _OUTCOME_COLUMNS)) \
            .table_valued(*(sa.column(name, type_) for name, type_ in _OUTCOME_COLUMNS)).render_derived(name="o")
        return _outcome_update(src.c)
    return _outcome_update(SimpleNamespace(**{name: sa.bindparam(name, type_=type_) for name, type_ in _OUTCOME_COLUMNS}))


def _write_outcomes(conn: sa.Connection, rows: list[dict], now: datetime) -> None:
    stmt = _outcome_statement(conn.dialect.name)
    if conn.dialect.name == "postgresql":
        conn.execute(stmt, {"o_now": now, **{name: [r[name] for r in rows] for name, _ in _OUTCOME_COLUMNS}})
    else:
        conn.execute(stmt, [{"o_now": now, **r} for r in rows])


def record_outcomes(bind: sa.Engine | sa.Connection, outcomes: list[_Outcome], *, now: datetime, policy: UploadPolicy,
                    rng: random.Random) -> UploadReport:
    """Record a batch's outcomes in one statement; only rows still ``uploading`` change, so a row
    reclaimed elsewhere after its lease ran out is left alone."""
    report = UploadReport()
    rows: list[dict] = []
    for o in outcomes:
        row = dict(o_id=o.id, o_status="", o_error=o.error, o_next=None, o_refund=0, o_size=None, o_hash=None,
                   o_path=None, o_rev=None)
        if o.status == "uploaded":
            row.update(o_status="uploaded", o_error=None, o_size=o.size, o_hash=o.content_hash,
                       o_path=o.cloud_path, o_rev=o.rev)
            report.uploaded += 1
            report.bytes_uploaded += o.size or 0
            report.cloud_paths.append(o.cloud_path)
        elif o.status == "quota":
            row.update(o_status="queued", o_refund=1, o_next=now + timedelta(seconds=policy.quota_wait_seconds))
            report.waiting_for_quota += 1
        elif o.status == "retry" and o.attempts < policy.max_attempts:
            next_at = now + timedelta(seconds=jittered_backoff(
                o.attempts, base=policy.backoff_base_seconds, maximum=policy.backoff_max_seconds, rng=rng))
            if o.attempts_today >= policy.daily_attempt_cap:
                next_at = max(next_at, _next_day(now))
            row.update(o_status="failed", o_next=next_at)
            report.retried += 1
        else:
            if o.status != "canceled":
                row["o_error"] = f"gave up after {o.attempts} attempts: {o.error}"
            row["o_status"] = "canceled"
            report.canceled_ids.append(o.id)
        rows.append(row)
    report.canceled = len(report.canceled_ids)
    if rows:
        with _transaction(bind) as conn:
            _write_outcomes(conn, rows, now)
    # Only now that 'uploaded' is committed may the local copy go: a crash before this point
    # leaves a row that is retried against a file that is still there.
    for o in outcomes:
        if o.status == "uploaded" and o.delete_local is not None:
            try:
                o.delete_local.unlink()
            except OSError as exc:
                log.warning("uploaded #%s but could not delete the local file: %s", o.id, exc.strerror or exc)
    return report


def drain_uploads(
    engine: sa.Engine,
    storage: CloudStorageResource,
    *,
    clock: Callable[[], datetime],
    files_root: Path,
    policy: UploadPolicy = UploadPolicy(),
    worker_id: str = "uploads",
    rng: random.Random | None = None,
    max_batches: int | None = None,
    on_batch: Callable[[UploadReport], None] | None = None,
) -> UploadReport:
    """Upload what is due, batch after batch, until nothing is due, the budget or ``max_batches``."""
    rng = rng or random.Random()
    total = UploadReport()
    quota: dict[int, int | None] = {}  # bytes left per tenant, summed once per drain, then counted down
    # One connection for the whole drain, each statement its own transaction (see _transaction).
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        batches = claimed_batches(
            lambda now: claim_uploads(conn, now=now, worker_id=worker_id, policy=policy), clock=clock,
            time_budget_seconds=policy.time_budget_seconds, max_batches=max_batches, report=total,
        )
        for _now, rows in batches:
            new_tenants = {r.company_id for r in rows} - quota.keys()
            if new_tenants:
                quota.update(_quota_left(conn, new_tenants))
            outcomes = [upload_one(r, storage, files_root=files_root, policy=policy, quota_left=quota) for r in rows]
            batch = record_outcomes(conn, outcomes, now=clock(), policy=policy, rng=rng)
            total.batches += 1
            total.claimed += len(rows)
            for key in ("uploaded", "retried", "canceled", "waiting_for_quota", "bytes_uploaded"):
                setattr(total, key, getattr(total, key) + getattr(batch, key))
            total.canceled_ids += batch.canceled_ids
            total.cloud_paths += batch.cloud_paths
            log.info("upload batch %d: uploaded %d, retry %d, canceled %d", total.batches, batch.uploaded,
                     batch.retried, batch.canceled)
            if on_batch:
                on_batch(batch)
    return total

