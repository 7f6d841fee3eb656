"""Archival (F5): one PDF per document version in the tenant's cloud folders. Plain logic.

A document *version* is what the platform changed: an approval's ``completed_at`` (completing
it again after a reopen is a new version), or a core request's, invoice's or estimate's
``updated_at`` plus status while it is in an archivable status. ``archives`` holds one row
per (tenant, document, version key): archiving a version twice is a no-op, and a new version
becomes a new file ``… v<N>.pdf`` beside the earlier ones, which are never overwritten.

``find_documents_to_archive`` feeds ``document_archival_sensor``: for each document type it
keeps a high-water mark of the change time and re-reads a short look-back window behind it,
so a transaction that committed a little after a later one is still seen; the versions
already handed out inside that window are remembered in the cursor so none is requested
twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Approval, Company, CoreRequest, Estimate, Invoice
from bg_ops.db.own_schema import archives
from bg_ops.db.types import parse_utc, utc_normalized
from bg_ops.defs.files.layout import APPROVALS, CORES, ESTIMATES, INVOICES, tenant_path
from bg_ops.defs.files.pdf import LOADERS, FontBook, LoadedDocument
from bg_ops.defs.tenants.logic import Tenant, switched_off_by
from bg_ops.resources.storage import CloudStorageResource, StorageConflict
from bg_ops.util.content_hash import content_hash_bytes

DOC_TYPES = ("approval", "core_request", "invoice", "estimate")
ARCHIVABLE_STATUSES: dict[str, tuple[str, ...]] = {
    "approval": ("completed",),
    "core_request": ("approved",),
    "invoice": ("sent", "paid"),
    "estimate": ("sent", "accepted"),
}
FOLDERS = {"approval": APPROVALS, "core_request": CORES, "invoice": INVOICES, "estimate": ESTIMATES}
SERVICE = "archival"  # companies.settings / service_switches key; "archival.invoice" for one type
LOOKBACK = timedelta(minutes=5)
FIRST_LOOKBACK = timedelta(days=1)
MAX_SEEN = 1000  # per type; past it the oldest are forgotten (the archives table still dedupes)
MAX_VERSION_ATTEMPTS = 5

_MODELS = {"approval": Approval, "core_request": CoreRequest, "invoice": Invoice, "estimate": Estimate}


class ArchiveError(Exception):
    """An archive that could not be stored; ``transient`` says whether a retry may succeed."""

    transient = False


class ArchiveVerificationError(ArchiveError):
    transient = True


# -- versions -------------------------------------------------------------------------------


def version_key(doc_type: str, changed_at: datetime, status: str) -> str:
    """``2026-11-23T10:00:00.123000+00:00`` for approvals; ``…+00:00|sent`` for the others."""
    at = parse_utc(changed_at).isoformat()
    return at if doc_type == "approval" else f"{at}|{status}"


def run_key(doc_type: str, doc_id: int, key: str) -> str:
    return f"archive|{doc_type}|{doc_id}|{key}"


def service_name(doc_type: str) -> str:
    return f"{SERVICE}.{doc_type}"


@dataclass(frozen=True)
class DocumentVersion:
    """One version of one document that should be archived (what the sensor requests)."""

    doc_type: str
    doc_id: int
    company_id: int
    tenant_slug: str
    tenant_active: bool
    tenant_settings: Mapping
    changed_at: datetime
    version_key: str

    @property
    def run_key(self) -> str:
        return run_key(self.doc_type, self.doc_id, self.version_key)


# -- the sensor's cursor ----------------------------------------------------------------------


@dataclass
class TypeCursor:
    at: datetime  # high-water mark of the change time handed out
    seen: list[tuple[int, str, datetime]] = field(default_factory=list)  # (id, version key, changed at)

    def as_json(self) -> dict:
        return {"at": self.at.isoformat(), "seen": [[i, k, t.isoformat()] for i, k, t in self.seen]}

    @classmethod
    def from_json(cls, data: Mapping) -> TypeCursor:
        return cls(at=parse_utc(data["at"]),
                   seen=[(int(i), str(k), parse_utc(t)) for i, k, t in data.get("seen", [])])


@dataclass
class ArchivalCursor:
    """Per document type: the high-water mark and the versions handed out in the look-back."""

    types: dict[str, TypeCursor] = field(default_factory=dict)
    start: datetime = datetime(1970, 1, 1, tzinfo=UTC)  # where a type without a cursor starts

    def of(self, doc_type: str) -> TypeCursor:
        if doc_type not in self.types:
            self.types[doc_type] = TypeCursor(at=self.start)
        return self.types[doc_type]

    def to_json(self) -> str:
        return json.dumps({t: c.as_json() for t, c in sorted(self.types.items())}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | None, *, start: datetime) -> ArchivalCursor:
        """Parse the sensor's cursor; a missing or unreadable one starts at ``start``."""
        cursor = cls(start=start)
        if raw:
            try:
                data = json.loads(raw)
                for doc_type in DOC_TYPES:
                    if doc_type in data:
                        cursor.types[doc_type] = TypeCursor.from_json(data[doc_type])
            except (ValueError, KeyError, TypeError):
                cursor.types.clear()
        return cursor


def _changed_column(doc_type: str):
    model = _MODELS[doc_type]
    return model.completed_at if doc_type == "approval" else model.updated_at


def find_documents_to_archive(
    session: Session, *, after_cursor: ArchivalCursor | None, limit: int = 200, now: datetime | None = None,
) -> tuple[list[DocumentVersion], ArchivalCursor]:
    """Document versions to archive since ``after_cursor``, oldest first per type, across
    tenants (this only decides which runs to start; each run reads its own tenant), and the
    cursor to store. At most ``limit`` new versions per type.

    The high-water mark never passes ``now``: a row stamped in the future (another program's
    clock, demo data) is archived, but does not hide the completions that come before its
    time; it stays in the remembered versions until the clock has passed it."""
    cursor = after_cursor if after_cursor is not None else ArchivalCursor()
    found: list[DocumentVersion] = []
    for doc_type in DOC_TYPES:
        model = _MODELS[doc_type]
        col = _changed_column(doc_type)
        state = cursor.of(doc_type)
        since = state.at - LOOKBACK
        rows = session.execute(
            sa.select(model.id, model.company_id, model.status, col.label("changed_at"),
                      Company.slug, Company.is_active, Company.settings)
            .join(Company, Company.id == model.company_id)
            .where(model.status.in_(ARCHIVABLE_STATUSES[doc_type]), col.is_not(None), col >= since)
            .order_by(utc_normalized(col), model.id)
            .limit(limit + len(state.seen) + 50)
        ).all()
        seen = {(i, k) for i, k, _ in state.seen}
        versions = []
        for r in rows:
            changed = parse_utc(r.changed_at)
            key = version_key(doc_type, changed, r.status)
            if (r.id, key) in seen:
                continue
            versions.append(DocumentVersion(
                doc_type=doc_type, doc_id=r.id, company_id=r.company_id, tenant_slug=r.slug,
                tenant_active=bool(r.is_active), tenant_settings=dict(r.settings or {}),
                changed_at=changed, version_key=key,
            ))
        versions.sort(key=lambda v: (v.changed_at, v.doc_id))
        versions = versions[:limit]
        if versions:
            newest = versions[-1].changed_at if now is None else min(versions[-1].changed_at, now)
            state.at = max(state.at, newest)
            state.seen.extend((v.doc_id, v.version_key, v.changed_at) for v in versions)
        horizon = state.at - LOOKBACK
        state.seen = sorted((s for s in state.seen if s[2] >= horizon), key=lambda s: (s[2], s[0]))[-MAX_SEEN:]
        found.extend(versions)
    return found, cursor


MAX_PER_RUN = 50  # document versions one archive run takes at most


def batch_run_key(tenant_slug: str, docs: Iterable[DocumentVersion]) -> str:
    """``archive|<tenant>|<n>|<digest of the (type, id, version) set>``: the same set of versions
    gives the same key, so a repeated tick never launches it twice."""
    versions = sorted(f"{d.doc_type}|{d.doc_id}|{d.version_key}" for d in docs)
    digest = hashlib.sha256("\n".join(versions).encode()).hexdigest()[:16]
    return f"archive|{tenant_slug}|{len(versions)}|{digest}"


@dataclass(frozen=True)
class PlannedRun:
    """One archive run: new versions of documents of one tenant (never two tenants)."""

    docs: tuple[DocumentVersion, ...]

    @property
    def partition_key(self) -> str:
        return self.docs[0].tenant_slug

    @property
    def run_key(self) -> str:
        return batch_run_key(self.partition_key, self.docs)

    @property
    def doc_types(self) -> list[str]:
        return sorted({d.doc_type for d in self.docs})


@dataclass
class ArchivalPlan:
    runs: list[PlannedRun]
    partitions_to_add: list[str]
    skipped: dict[str, int]
    cursor: ArchivalCursor


def plan_archival_runs(
    session: Session, cursor: ArchivalCursor, *, existing_partitions: Iterable[str],
    globally_off: frozenset[str] = frozenset(), limit: int = 200, per_run: int = MAX_PER_RUN,
    now: datetime | None = None,
) -> ArchivalPlan:
    """What the sensor should request: per tenant, one run for all its new versions (up to
    ``per_run`` each, oldest first) of an active tenant whose archival is on; partitions to add
    for tenants the partition sensor has not added yet. Versions of switched-off or inactive
    tenants are passed over (not archived later).

    One run per tenant and tick, not one per document: a run is a new process (seconds of
    start-up), and one per document queued the completions of a busy minute behind the
    tenant's run slots (B6). The guarantee of one archive per version does not rest on run
    keys: ``archives`` is unique per (tenant, document, version key) and a version already
    archived is a no-op, so a version that lands in two runs is archived once."""
    versions, new_cursor = find_documents_to_archive(session, after_cursor=cursor, limit=limit, now=now)
    existing = set(existing_partitions)
    by_tenant: dict[str, list[DocumentVersion]] = {}
    to_add, skipped = set(), {"tenant_inactive": 0, "switched_off": 0}
    for v in versions:
        if not v.tenant_active:
            skipped["tenant_inactive"] += 1
            continue
        if switched_off_by(service_name(v.doc_type), v.tenant_settings, globally_off):
            skipped["switched_off"] += 1
            continue
        if v.tenant_slug not in existing:
            to_add.add(v.tenant_slug)
        by_tenant.setdefault(v.tenant_slug, []).append(v)
    runs = []
    for docs in by_tenant.values():
        docs.sort(key=lambda v: (v.changed_at, DOC_TYPES.index(v.doc_type), v.doc_id))
        runs.extend(PlannedRun(tuple(docs[i:i + per_run])) for i in range(0, len(docs), per_run))
    return ArchivalPlan(runs=runs, partitions_to_add=sorted(to_add), skipped=skipped, cursor=new_cursor)


# -- archiving one document -----------------------------------------------------------------

_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


def safe_name(text: str, *, max_len: int = 100, default: str = "untitled") -> str:
    """A cloud path component: no separators or characters Dropbox/Windows refuse, no
    surrounding spaces or dots, one space between words, at most ``max_len`` characters."""
    name = unicodedata.normalize("NFC", str(text or ""))
    name = _UNSAFE.sub("-", name)
    name = re.sub(r"\s+", " ", name).strip(" .")
    if len(name) > max_len:
        name = name[:max_len].rstrip(" .")
    return name or default


def archive_path(tenant: Tenant, doc: LoadedDocument, version: int) -> str:
    project = safe_name(doc.project_name or "No project")
    return tenant_path(tenant.slug, FOLDERS[doc.doc_type], project, f"{safe_name(doc.name)} v{version}.pdf")


@dataclass(frozen=True)
class ArchiveResult:
    status: str  # archived, already_archived, not_archivable, not_found
    doc_type: str
    doc_id: int
    version_key: str | None = None
    version: int | None = None
    cloud_path: str | None = None
    content_hash: str | None = None
    size_bytes: int | None = None
    reason: str = ""

    def as_metadata(self) -> dict:
        return {k: v for k, v in {
            "status": self.status, "doc_type": self.doc_type, "doc_id": self.doc_id,
            "version_key": self.version_key, "version": self.version, "cloud_path": self.cloud_path,
            "content_hash": self.content_hash, "size_bytes": self.size_bytes, "reason": self.reason or None,
        }.items() if v is not None}


def _existing(session: Session, tenant: Tenant, doc_type: str, doc_id: int, key: str):
    return session.execute(
        sa.select(archives).where(
            archives.c.company_id == tenant.id, archives.c.doc_type == doc_type,
            archives.c.doc_id == doc_id, archives.c.version_key == key,
        )
    ).one_or_none()


def _insert_archive(session: Session, row: dict) -> bool:
    """Insert the archives row unless that version is already there (race-safe); True when inserted."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(archives).values(**row).on_conflict_do_nothing(constraint="uq_archives_version_key")
    elif dialect == "sqlite":
        stmt = sqlite.insert(archives).values(**row).on_conflict_do_nothing()
    else:  # pragma: no cover - bg_ops runs on PostgreSQL or SQLite
        try:
            with session.begin_nested():
                session.execute(sa.insert(archives).values(**row))
            return True
        except sa.exc.IntegrityError:
            return False
    return (session.execute(stmt).rowcount or 0) > 0


def _already(existing, doc_type: str, doc_id: int) -> ArchiveResult:
    return ArchiveResult(
        status="already_archived", doc_type=doc_type, doc_id=doc_id, version_key=existing.version_key,
        version=existing.version, cloud_path=existing.cloud_path, content_hash=existing.content_hash,
        size_bytes=existing.size_bytes,
    )


def archive_document(
    session: Session,
    storage: CloudStorageResource,
    tenant: Tenant,
    doc_type: str,
    doc_id: int,
    *,
    now: datetime,
    files_root: str | Path | None = None,
    book: FontBook | None = None,
) -> ArchiveResult:
    """Archive the current version of one document of ``tenant`` (idempotent).

    Renders the PDF, uploads it in ``add`` mode to
    ``/<slug>/<Approvals|Cores|Invoices|Estimates>/<project>/<name> v<N>.pdf`` (N = versions
    already archived + 1; a different file already at that name — a concurrent version —
    moves it to N+1), checks the stored content hash against the bytes rendered, then
    records the version in ``archives``. The PDF's bytes depend only on the document, so a
    retry after a lost answer finds its own file and completes. ``files_root`` lets the
    approval journey list attachment sizes.
    """
    if doc_type not in LOADERS:
        raise ValueError(f"unknown document type {doc_type!r}: use one of {', '.join(DOC_TYPES)}")
    doc = LOADERS[doc_type](session, tenant, doc_id, files_root=files_root)
    if doc is None:
        return ArchiveResult("not_found", doc_type, doc_id, reason=f"no {doc_type} #{doc_id} in tenant {tenant.slug}")
    if doc.status not in ARCHIVABLE_STATUSES[doc_type] or doc.changed_at is None:
        return ArchiveResult("not_archivable", doc_type, doc_id,
                             reason=f"status {doc.status!r} is not archived (archived: "
                                    f"{', '.join(ARCHIVABLE_STATUSES[doc_type])})")
    key = version_key(doc_type, doc.changed_at, doc.status)
    existing = _existing(session, tenant, doc_type, doc_id, key)
    if existing is not None:
        return _already(existing, doc_type, doc_id)

    data = doc.render(book)
    digest = content_hash_bytes(data)
    earlier = session.scalar(
        sa.select(sa.func.count()).select_from(archives).where(
            archives.c.company_id == tenant.id, archives.c.doc_type == doc_type, archives.c.doc_id == doc_id)
    ) or 0
    version = int(earlier) + 1
    fd, tmp = tempfile.mkstemp(prefix="bg_ops-archive-", suffix=".pdf")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        for _ in range(MAX_VERSION_ATTEMPTS):
            path = archive_path(tenant, doc, version)
            try:
                entry = storage.upload(tmp, path, mode="add")
                break
            except StorageConflict:
                version += 1  # another version took this name: never overwrite it
        else:
            raise ArchiveError(f"{doc_type} #{doc_id}: versions {version - MAX_VERSION_ATTEMPTS + 1}..{version} "
                               "are all taken by other files in the cloud")
    finally:
        Path(tmp).unlink(missing_ok=True)
    if entry.content_hash != digest:
        raise ArchiveVerificationError(
            f"{path}: the cloud stored content hash {entry.content_hash}, the PDF has {digest}")
    row = {"company_id": tenant.id, "doc_type": doc_type, "doc_id": doc_id, "version": version,
           "version_key": key, "cloud_path": entry.path or path, "content_hash": digest,
           "size_bytes": len(data), "created_at": now}
    if not _insert_archive(session, row):
        existing = _existing(session, tenant, doc_type, doc_id, key)
        if existing is not None:  # a concurrent run recorded the same version first
            return _already(existing, doc_type, doc_id)
    return ArchiveResult("archived", doc_type, doc_id, version_key=key, version=version,
                         cloud_path=entry.path or path, content_hash=digest, size_bytes=len(data))

