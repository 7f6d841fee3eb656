"""Renditions (F6): PNG thumbnails of approval attachments, with an idempotent backfill.

A thumbnail is at most 320 px on its long side: the first page of a PDF (pypdfium2) or the
image itself (Pillow); other file types get none. It is stored beside the attachment's
backup, ``/<slug>/Approval Backups/<path>.thumb.png``, where ``<path>`` is the attachment's
``approval_files.path`` without its leading ``<slug>/`` (as the nightly backup does).
``renditions`` keeps one row per (attachment, content hash): the backfill makes each
thumbnail once, and again only when the attachment's content changes.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import Approval, ApprovalFile
from bg_ops.db.own_schema import renditions
from bg_ops.db.types import parse_utc
from bg_ops.defs.files.layout import APPROVAL_BACKUPS, tenant_path
from bg_ops.defs.tenants.logic import Tenant
from bg_ops.resources.storage import CloudStorageResource, StorageBadPath, StorageTransientError
from bg_ops.util.content_hash import content_hash_bytes, content_hash_file
from bg_ops.util.files import MissingFile, UnsafePath, resolve_under_root

THUMB_MAX_PX = 320
THUMB_SUFFIX = ".thumb.png"
PDF_SUFFIXES = frozenset({".pdf"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
MAX_WARNINGS = 20  # kept in the report; the counts are complete


class RenditionError(Exception):
    """A file that could not be turned into a thumbnail (damaged, encrypted, too large …)."""


def thumbnail_kind(path: str | Path) -> str | None:
    """"pdf", "image" or None (no thumbnail for this type), from the file name."""
    suffix = PurePosixPath(str(path)).suffix.lower()
    if suffix in PDF_SUFFIXES:
        return "pdf"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return None


def _pdf_first_page(path: Path):
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
    except (pdfium.PdfiumError, OSError) as exc:
        raise RenditionError(f"cannot open the PDF: {exc}") from None
    try:
        if len(pdf) == 0:
            raise RenditionError("the PDF has no pages")
        page = pdf[0]
        try:
            width, height = page.get_size()
            scale = THUMB_MAX_PX / max(width, height, 1.0)
            bitmap = page.render(scale=scale)
            return bitmap.to_pil()
        finally:
            page.close()
    except pdfium.PdfiumError as exc:
        raise RenditionError(f"cannot render the PDF's first page: {exc}") from None
    finally:
        pdf.close()


def _image(path: Path):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (THUMB_MAX_PX * 2, THUMB_MAX_PX * 2))  # decode at a fraction of the size
            img.load()
            return ImageOps.exif_transpose(img) or img
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise RenditionError(f"cannot read the image: {exc}") from None


def make_thumbnail(path: str | Path) -> bytes | None:
    """PNG bytes of a thumbnail (at most 320 px on the long side) of a PDF's first page or of
    an image; None for other file types. Raises ``RenditionError`` for damaged files."""
    from PIL import Image

    path = Path(path)
    kind = thumbnail_kind(path)
    if kind is None:
        return None
    img = _pdf_first_page(path) if kind == "pdf" else _image(path)
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        has_alpha = img.mode in ("P", "PA") and "transparency" in img.info or img.mode.endswith("A")
        img = img.convert("RGBA" if has_alpha else "RGB")
    img.thumbnail((THUMB_MAX_PX, THUMB_MAX_PX), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def approval_backup_path(slug: str, relative_path: str, suffix: str = "") -> str:
    """Where the nightly backup (``backup.backup_candidates``) puts an approval attachment,
    plus ``suffix``: ``acme/approvals/a12/proof.pdf`` -> ``/acme/Approval Backups/approvals/a12/proof.pdf``."""
    inside = relative_path[len(slug) + 1:] if relative_path.startswith(f"{slug}/") else relative_path
    return tenant_path(slug, APPROVAL_BACKUPS, inside + suffix)


def thumbnail_path(slug: str, relative_path: str) -> str:
    return approval_backup_path(slug, relative_path, THUMB_SUFFIX)


@dataclass
class RenditionReport:
    created: int = 0
    already_done: int = 0
    unsupported: int = 0  # file types without thumbnails
    missing: int = 0  # the attachment is not on disk: skipped
    refused: int = 0  # a path outside the files root: skipped
    failed: int = 0  # damaged files
    deferred: int = 0  # not looked at in this run because of ``limit``
    warnings: list[str] = field(default_factory=list)
    cloud_paths: list[str] = field(default_factory=list)  # the thumbnails written, in order (run metadata)

    def warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)

    def as_metadata(self) -> dict:
        return {k: getattr(self, k) for k in
                ("created", "already_done", "unsupported", "missing", "refused", "failed", "deferred")}


def _insert_rendition(session: Session, row: dict) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(renditions).values(**row).on_conflict_do_nothing(constraint="uq_renditions_file_hash")
    elif dialect == "sqlite":
        stmt = sqlite.insert(renditions).values(**row).on_conflict_do_nothing()
    else:  # pragma: no cover - bg_ops runs on PostgreSQL or SQLite
        stmt = sa.insert(renditions).values(**row)
    session.execute(stmt)


def backfill_renditions(
    session: Session,
    storage: CloudStorageResource,
    files_root: str | Path,
    tenant: Tenant,
    *,
    now: datetime,
    limit: int | None = None,
) -> RenditionReport:
    """Make the thumbnails the tenant's approval attachments lack, safe to run at any time.

    An attachment needs one when no ``renditions`` row has its current content hash. A file
    not modified since its last thumbnail was recorded is not hashed again. Missing files,
    paths outside the files root and damaged files are counted and warned about, never
    failing the batch; storage errors do fail it (the op retries). Each thumbnail is
    committed as it is made, so an interrupted run keeps its progress. ``limit`` caps the
    thumbnails made in one call.
    """
    files = session.execute(
        sa.select(ApprovalFile.id, ApprovalFile.path)
        .join(Approval, sa.and_(Approval.id == ApprovalFile.approval_id, Approval.company_id == tenant.id))
        .order_by(ApprovalFile.id)
    ).all()
    done: dict[int, dict[str, datetime]] = {}
    for r in session.execute(
        sa.select(renditions.c.approval_file_id, renditions.c.source_hash, renditions.c.created_at)
        .where(renditions.c.company_id == tenant.id)
    ):
        done.setdefault(r.approval_file_id, {})[r.source_hash] = parse_utc(r.created_at)

    report = RenditionReport()
    for n, f in enumerate(files):
        if limit is not None and report.created >= limit:
            report.deferred = sum(1 for g in files[n:] if thumbnail_kind(g.path))
            break
        if thumbnail_kind(f.path) is None:
            report.unsupported += 1
            continue
        try:
            real = resolve_under_root(files_root, f.path)
        except MissingFile:
            report.missing += 1
            report.warn(f"attachment #{f.id} {f.path}: not found under the files root, skipped")
            continue
        except UnsafePath as exc:
            report.refused += 1
            report.warn(f"attachment #{f.id}: {exc}")
            continue
        known = done.get(f.id, {})
        try:
            mtime = real.stat().st_mtime
        except OSError:
            report.missing += 1
            report.warn(f"attachment #{f.id} {f.path}: vanished while being read, skipped")
            continue
        if known and max(known.values()).timestamp() >= mtime:
            report.already_done += 1  # unchanged since its thumbnail was recorded
            continue
        try:
            digest = content_hash_file(real)
        except OSError:
            report.missing += 1
            report.warn(f"attachment #{f.id} {f.path}: vanished while being read, skipped")
            continue
        if digest in known:
            report.already_done += 1
            continue
        try:
            png = make_thumbnail(real)
        except RenditionError as exc:
            report.failed += 1
            report.warn(f"attachment #{f.id} {f.path}: {exc}")
            continue
        if png is None:  # pragma: no cover - thumbnail_kind already said yes
            report.unsupported += 1
            continue
        try:
            cloud = thumbnail_path(tenant.slug, f.path)
        except StorageBadPath as exc:
            report.refused += 1
            report.warn(f"attachment #{f.id}: no cloud name for its thumbnail ({exc})")
            continue
        fd, tmp = tempfile.mkstemp(prefix="bg_ops-thumb-", suffix=".png")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(png)
            entry = storage.upload(tmp, cloud, mode="overwrite")
        finally:
            Path(tmp).unlink(missing_ok=True)
        if entry.content_hash != content_hash_bytes(png):
            raise StorageTransientError(f"{cloud}: the cloud stored content hash {entry.content_hash}, "
                                        "not the thumbnail's")
        _insert_rendition(session, {"company_id": tenant.id, "approval_file_id": f.id, "source_hash": digest,
                                    "cloud_path": entry.path or cloud, "created_at": now})
        session.commit()
        done.setdefault(f.id, {})[digest] = now
        report.created += 1
        report.cloud_paths.append(entry.path or cloud)
    return report
