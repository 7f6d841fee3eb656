"""Nightly backup (F4): queue the tenant's new and changed files for upload, nothing else.

What is backed up: every file under ``<files root>/<slug>/projects/`` (to ``Project Backups``)
and every approval attachment listed in ``approval_files`` (to ``Approval Backups``).
The manifest (``backup_manifest``) remembers size, mtime and content hash of what was last
queued: a file whose size and mtime did not move is not even hashed, so a rescan of 100,000
unchanged files is a directory walk and one query (B4). A file whose upload was canceled
is queued again. Symlinks are never followed: nothing outside the files root is read.
"""

from __future__ import annotations

import os
import time as _time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Approval, ApprovalFile
from bg_ops.db.own_schema import backup_manifest as m
from bg_ops.db.own_schema import upload_queue as u
from bg_ops.defs.files.layout import APPROVAL_BACKUPS, PROJECT_BACKUPS, tenant_path
from bg_ops.defs.tenants.logic import Tenant
from bg_ops.util.content_hash import content_hash_file
from bg_ops.util.files import MissingFile, UnsafePath, resolve_under_root


PROGRESS_EVERY = 200  # files scanned between two ``on_progress`` calls


@dataclass
class BackupReport:
    scanned: int = 0
    unchanged: int = 0
    hashed: int = 0
    touched_same_content: int = 0
    new: int = 0
    changed: int = 0
    queued: int = 0
    bytes_queued: int = 0
    missing_attachments: int = 0
    seconds: float = 0.0

    def as_metadata(self) -> dict:
        return dict(self.__dict__)


def _walk(root: Path, rel_prefix: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative path under the files root, absolute path, stat) for every regular file."""
    root_str = str(root)
    stack = [root_str]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        sub = folder[len(root_str) + 1:]
        base = rel_prefix + sub.replace(os.sep, "/") + "/" if sub else rel_prefix  # once per folder
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield base + entry.name, entry.path, entry.stat(follow_symlinks=False)


def _candidates(session: Session, tenant: Tenant, files_root: Path) -> Iterator[tuple[str, str, os.stat_result | None, str, str]]:
    """(source path, absolute path, stat, cloud folder, path inside it) for every file to keep
    backed up; the destination (``tenant_path`` of the last two) is left to the caller, who
    needs it only for the files it queues: building it for each of 100,000 unchanged files
    was most of a rescan (B4)."""
    prefix = f"{tenant.slug}/projects/"
    for rel, abs_path, st in _walk(Path(files_root) / tenant.slug / "projects", prefix):
        yield rel, abs_path, st, PROJECT_BACKUPS, rel[len(prefix):]
    paths = session.execute(
        sa.select(ApprovalFile.path).join(Approval, Approval.id == ApprovalFile.approval_id)
        .where(Approval.company_id == tenant.id).order_by(ApprovalFile.id)
    ).scalars()
    for rel in dict.fromkeys(paths):  # a file attached twice is backed up once
        try:
            real = resolve_under_root(files_root, rel)
        except (UnsafePath, MissingFile):
            yield rel, "", None, "", ""  # reported as missing, never read
            continue
        inside = rel[len(tenant.slug) + 1:] if rel.startswith(f"{tenant.slug}/") else rel
        yield rel, str(real), real.stat(), APPROVAL_BACKUPS, inside


def backup_candidates(session: Session, tenant: Tenant, files_root: Path) -> Iterator[tuple[str, str, os.stat_result, str]]:
    """(source path, absolute path, stat, cloud destination) for every file to keep backed up."""
    for rel, abs_path, st, folder, inside in _candidates(session, tenant, files_root):
        yield rel, abs_path, st, tenant_path(tenant.slug, folder, inside) if folder else ""


def _upsert(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(m)
    # RETURNING makes SQLAlchemy send the rows as one multi-row INSERT ("insertmanyvalues");
    # without it this upsert went out as an executemany, one round trip per row on psycopg2.
    return stmt.on_conflict_do_update(
        index_elements=["company_id", "source_path"],
        set_={c: stmt.excluded[c] for c in ("size_bytes", "mtime_ns", "content_hash", "dest_path", "upload_id", "updated_at")},
    ).returning(m.c.id)


def scan_and_queue(session: Session, tenant: Tenant, files_root: Path, *, now: datetime,
                   hash_file: Callable[[str], str] = content_hash_file, chunk: int = 1000,
                   on_progress: Callable[[BackupReport], None] | None = None,
                   progress_every: int = PROGRESS_EVERY) -> BackupReport:
    """Compare the tenant's files with the manifest and queue uploads of new or changed ones.

    ``on_progress(report)``, when given, is called with the running figures every
    ``progress_every`` files scanned and once at the end (the CLI's progress bar)."""
    started = _time.perf_counter()
    report = BackupReport()
    # {source path: (size, mtime_ns, content hash, upload id)}
    known = {
        source: (size, mtime, digest, upload_id) for source, size, mtime, digest, upload_id in session.execute(
            sa.select(m.c.source_path, m.c.size_bytes, m.c.mtime_ns, m.c.content_hash, m.c.upload_id)
            .where(m.c.company_id == tenant.id)
        )
    }
    # Uploads that were given up on must be queued again.
    lost = set(session.execute(
        sa.select(u.c.id).where(u.c.company_id == tenant.id, u.c.status == "canceled", u.c.kind == "backup")
    ).scalars())

    pending_queue: list[dict] = []
    pending_manifest: list[dict] = []
    refresh: list[dict] = []

    def flush():
        if pending_queue:
            ids = session.execute(
                sa.insert(u).returning(u.c.id, u.c.source_path, sort_by_parameter_order=True), pending_queue
            ).all()
            by_source = {r.source_path: r.id for r in ids}
            for row in pending_manifest:
                row["upload_id"] = by_source[row["source_path"]]
            session.execute(_upsert(session), pending_manifest).all()
        if refresh and session.get_bind().dialect.name == "postgresql":
            # One statement per chunk: an executemany UPDATE is one round trip per row on
            # psycopg2 (100,000 files touched, say by a restore, took 38 s that way).
            from sqlalchemy.dialects.postgresql import ARRAY

            rows = sa.func.unnest(
                sa.bindparam("r_sources", [r["r_source"] for r in refresh], type_=ARRAY(sa.Text)),
                sa.bindparam("r_sizes", [r["r_size"] for r in refresh], type_=ARRAY(sa.BigInteger)),
                sa.bindparam("r_mtimes", [r["r_mtime"] for r in refresh], type_=ARRAY(sa.BigInteger)),
            ).table_valued("r_source", "r_size", "r_mtime").render_derived(name="r")
            session.execute(
                sa.update(m).where(m.c.company_id == tenant.id, m.c.source_path == rows.c.r_source)
                .values(size_bytes=rows.c.r_size, mtime_ns=rows.c.r_mtime, updated_at=now)
            )
        elif refresh:
            session.execute(
                sa.update(m).where(m.c.company_id == tenant.id, m.c.source_path == sa.bindparam("r_source"))
                .values(size_bytes=sa.bindparam("r_size"), mtime_ns=sa.bindparam("r_mtime"), updated_at=now),
                refresh,
            )
        pending_queue.clear()
        pending_manifest.clear()
        refresh.clear()

    for rel, abs_path, st, folder, inside in _candidates(session, tenant, files_root):
        if st is None:
            report.missing_attachments += 1
            continue
        report.scanned += 1
        if on_progress is not None and not report.scanned % progress_every:
            on_progress(report)
        seen = known.get(rel)
        if (seen is not None and seen[0] == st.st_size and seen[1] == st.st_mtime_ns
                and seen[3] not in lost):
            report.unchanged += 1
            continue
        digest = hash_file(abs_path)
        report.hashed += 1
        if seen is not None and seen[2] == digest and seen[3] not in lost:
            report.touched_same_content += 1  # mtime moved, bytes did not: remember, don't upload
            refresh.append({"r_source": rel, "r_size": st.st_size, "r_mtime": st.st_mtime_ns})
        else:
            if seen is None:
                report.new += 1
            else:
                report.changed += 1
            dest = tenant_path(tenant.slug, folder, inside)
            pending_queue.append({
                "company_id": tenant.id, "source_path": rel, "dest_path": dest, "delete_after_upload": False,
                "status": "queued", "on_conflict": "overwrite", "kind": "backup", "created_at": now, "updated_at": now,
            })
            pending_manifest.append({
                "company_id": tenant.id, "source_path": rel, "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                "content_hash": digest, "dest_path": dest, "upload_id": None, "updated_at": now,
            })
            report.queued += 1
            report.bytes_queued += st.st_size
        if len(pending_queue) + len(refresh) >= chunk:
            flush()
    flush()
    report.seconds = round(_time.perf_counter() - started, 3)
    if on_progress is not None:
        on_progress(report)
    return report
