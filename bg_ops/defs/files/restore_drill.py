"""Restore drill (F9): can we get our files back? Download a random sample of what the upload
queue says is in the cloud and compare each file's content hash with the one recorded when it
was uploaded.

Only the latest upload to each cloud path is a candidate: a backup that overwrote a file
replaced the older version, whose recorded hash is no longer expected there. Every row carries
its ``company_id``; the sample spans all tenants.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from bg_ops.db.own_schema import upload_queue as u
from bg_ops.db.types import utc_normalized
from bg_ops.resources.storage import CloudStorageResource, StorageError, StorageNotFound
from bg_ops.util.content_hash import content_hash_file

log = logging.getLogger("bg_ops.restore_drill")


@dataclass(frozen=True)
class DrillItem:
    id: int
    company_id: int
    cloud_path: str
    expected_hash: str | None
    actual_hash: str | None = None
    size: int | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class DrillReport:
    candidates: int = 0
    ok: list[DrillItem] = field(default_factory=list)
    mismatch: list[DrillItem] = field(default_factory=list)  # downloaded, but not what we uploaded
    missing: list[DrillItem] = field(default_factory=list)  # no longer in the cloud
    errors: list[DrillItem] = field(default_factory=list)  # could not be checked (network, auth …)

    @property
    def sampled(self) -> int:
        return len(self.ok) + len(self.bad)

    @property
    def bad(self) -> list[DrillItem]:
        return self.mismatch + self.missing + self.errors

    @property
    def passed(self) -> bool:
        return not self.bad

    def bad_paths(self) -> list[str]:
        return [i.cloud_path for i in self.bad]

    def as_metadata(self) -> dict:
        return {"candidates": self.candidates, "sampled": self.sampled, "ok": len(self.ok),
                "bad": len(self.bad), "mismatch": len(self.mismatch), "missing": len(self.missing),
                "errors": len(self.errors)}


def latest_uploads_query():
    """The latest uploaded row per (tenant, cloud path), cloud paths compared case-insensitively
    like Dropbox does."""
    rank = sa.func.row_number().over(
        partition_by=(u.c.company_id, sa.func.lower(u.c.cloud_path)),
        order_by=(utc_normalized(u.c.uploaded_at).desc(), u.c.id.desc()),
    ).label("rank")
    ranked = (
        sa.select(u.c.id, rank)
        .where(u.c.status == "uploaded", u.c.cloud_path.is_not(None), u.c.content_hash.is_not(None))
        .subquery()
    )
    return sa.select(ranked.c.id).where(ranked.c.rank == 1).order_by(ranked.c.id)


def restore_drill(engine: sa.Engine, storage: CloudStorageResource, *, sample_size: int, rng: random.Random,
                  workdir: Path) -> DrillReport:
    """Download ``sample_size`` random uploaded files into ``workdir`` (each deleted once
    checked) and sort them into ok, mismatch, missing and errors."""
    with engine.connect() as conn:
        ids = conn.execute(latest_uploads_query()).scalars().all()
        picked = sorted(rng.sample(ids, min(sample_size, len(ids)))) if sample_size > 0 else []
        rows = conn.execute(
            sa.select(u.c.id, u.c.company_id, u.c.cloud_path, u.c.content_hash).where(u.c.id.in_(picked))
            .order_by(u.c.id)
        ).all() if picked else []
    report = DrillReport(candidates=len(ids))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        base = dict(id=int(row.id), company_id=int(row.company_id), cloud_path=row.cloud_path,
                    expected_hash=row.content_hash)
        target = workdir / f"restore-{row.id}"
        try:
            storage.download(row.cloud_path, target)
            actual = content_hash_file(target)
            size = target.stat().st_size
        except StorageNotFound as exc:
            report.missing.append(DrillItem(**base, error=f"not in the cloud: {exc}"))
            continue
        except (StorageError, OSError) as exc:
            report.errors.append(DrillItem(**base, error=f"{exc.__class__.__name__}: {exc}"))
            continue
        finally:
            target.unlink(missing_ok=True)
        item = DrillItem(**base, actual_hash=actual, size=size)
        (report.ok if actual == row.content_hash else report.mismatch).append(item)
    log.info("restore drill: %d sampled of %d, %d ok, %d differ, %d missing, %d unreadable", report.sampled,
             report.candidates, len(report.ok), len(report.mismatch), len(report.missing), len(report.errors))
    return report
