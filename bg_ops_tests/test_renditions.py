"""Renditions (F6): thumbnails of approval attachments, made once, beside the backups, on
SQLite and PostgreSQL."""

import io
import os
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa
from PIL import Image

from bg_ops.db.app_schema import Approval, ApprovalFile, Company, Project
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import renditions
from bg_ops.defs.files import renditions_defs
from bg_ops.defs.files.pdf import render_document
from bg_ops.defs.files.renditions import RenditionError, backfill_renditions, make_thumbnail
from bg_ops.defs.tenants.logic import get_tenant
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.storage import LocalStorageResource
from bg_ops.util.content_hash import content_hash_file

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BACKUPS = "/nordlicht/Approval Backups/approvals/a100"


def _png(path, size, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")


@pytest.fixture
def world(db_engine, tmp_path):
    """Nordlicht's approval 100 has a PDF, a PNG, a text file and one attachment that is not on
    disk; Kiwi has a PNG of its own."""
    root = tmp_path / "files"
    a100 = root / "nordlicht/approvals/a100"
    a100.mkdir(parents=True)
    (a100 / "proof v1.pdf").write_bytes(render_document("Proof", [("Page", "one")], as_of=NOW))  # A4 portrait
    _png(a100 / "mockup.png", (1200, 800), "teal")
    (a100 / "notes.txt").write_text("no thumbnail for text")
    _png(root / "kiwi/approvals/a200/poster.png", (500, 500), "orange")
    with session_scope(db_engine) as s:
        s.add_all([Company(id=1, name="Nordlicht", slug="nordlicht", timezone="Europe/Berlin"),
                   Company(id=2, name="Kiwi", slug="kiwi", timezone="Pacific/Auckland")])
        s.flush()
        s.add_all([Project(id=10, company_id=1, name="Katalog"), Project(id=20, company_id=2, name="Kiwi")])
        s.flush()
        s.add_all([Approval(id=100, company_id=1, project_id=10, title="Proof", status="in_review"),
                   Approval(id=200, company_id=2, project_id=20, title="Poster", status="in_review")])
        s.flush()
        s.add_all([
            ApprovalFile(id=1, approval_id=100, path="nordlicht/approvals/a100/proof v1.pdf"),
            ApprovalFile(id=2, approval_id=100, path="nordlicht/approvals/a100/mockup.png"),
            ApprovalFile(id=3, approval_id=100, path="nordlicht/approvals/a100/notes.txt"),
            ApprovalFile(id=4, approval_id=100, path="nordlicht/approvals/a100/vanished.pdf"),
            ApprovalFile(id=5, approval_id=200, path="kiwi/approvals/a200/poster.png"),
        ])
    return db_engine


@pytest.fixture(scope="module")
def shared_instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def instance(shared_instance):
    """One Dagster instance for the module (each costs seconds), tenant partitions reset per test."""
    for key in shared_instance.get_dynamic_partitions("tenants"):
        shared_instance.delete_dynamic_partition("tenants", key)
    return shared_instance


def backfill(engine, storage, tmp_path, slug="nordlicht", now=NOW, limit=None):
    with session_scope(engine) as s:
        return backfill_renditions(s, storage, tmp_path / "files", get_tenant(s, slug), now=now, limit=limit)


def thumbnail(storage, path, tmp_path) -> Image.Image:
    local = tmp_path / "thumb.png"
    storage.download(path, local)
    img = Image.open(io.BytesIO(local.read_bytes()))
    img.load()
    assert img.format == "PNG"
    return img


def rendition_rows(engine):
    with engine.connect() as c:
        return c.execute(sa.select(renditions.c.company_id, renditions.c.approval_file_id, renditions.c.source_hash,
                                   renditions.c.cloud_path).order_by(renditions.c.id)).all()


def test_backfill_makes_each_thumbnail_once_beside_the_backup(world, tmp_path):
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    first = backfill(world, storage, tmp_path)
    assert first.as_metadata() == {"created": 2, "already_done": 0, "unsupported": 1, "missing": 1, "refused": 0,
                                   "failed": 0, "deferred": 0}
    assert any("vanished.pdf" in w for w in first.warnings)
    stored = sorted(e.path for e in storage.list_folder("/nordlicht") if not e.is_folder)
    assert stored == [f"{BACKUPS}/mockup.png.thumb.png", f"{BACKUPS}/proof v1.pdf.thumb.png"]
    pdf_thumb = thumbnail(storage, f"{BACKUPS}/proof v1.pdf.thumb.png", tmp_path)
    assert pdf_thumb.height == 320 and 220 <= pdf_thumb.width <= 230  # A4 portrait, long side 320
    png_thumb = thumbnail(storage, f"{BACKUPS}/mockup.png.thumb.png", tmp_path)
    assert png_thumb.size == (320, 213) and png_thumb.getpixel((10, 10))[:3] == (0, 128, 128)
    root = tmp_path / "files/nordlicht/approvals/a100"
    assert [tuple(r) for r in rendition_rows(world)] == [
        (1, 1, content_hash_file(root / "proof v1.pdf"), f"{BACKUPS}/proof v1.pdf.thumb.png"),
        (1, 2, content_hash_file(root / "mockup.png"), f"{BACKUPS}/mockup.png.thumb.png"),
    ]
    assert storage.get_metadata("/kiwi") is None  # another tenant's attachments are not touched

    # Run again (a retry, the next day's run): nothing is made twice.
    again = backfill(world, storage, tmp_path, now=NOW + timedelta(days=1))
    assert (again.created, again.already_done, again.missing) == (0, 2, 1)
    assert len(rendition_rows(world)) == 2

    # New content for the mockup: its thumbnail is made again, in place; the PDF's is not.
    _png(root / "mockup.png", (300, 600), "purple")
    later = time.time() + 3 * 86400  # modified after the last run, whatever the clocks say
    os.utime(root / "mockup.png", (later, later))
    third = backfill(world, storage, tmp_path, now=NOW + timedelta(days=2))
    assert (third.created, third.already_done) == (1, 1)
    assert thumbnail(storage, f"{BACKUPS}/mockup.png.thumb.png", tmp_path).size == (160, 320)
    assert len(rendition_rows(world)) == 3

    # The other tenant's own run.
    kiwi = backfill(world, storage, tmp_path, slug="kiwi")
    assert kiwi.created == 1
    assert thumbnail(storage, "/kiwi/Approval Backups/approvals/a200/poster.png.thumb.png", tmp_path).size == (320, 320)


def test_limit_defers_the_rest_to_the_next_run(world, tmp_path):
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    first = backfill(world, storage, tmp_path, limit=1)
    assert (first.created, first.deferred) == (1, 2)  # the PNG and the vanished PDF wait
    second = backfill(world, storage, tmp_path, limit=1)
    assert (second.created, second.already_done) == (1, 1)


def test_make_thumbnail_by_file_type(tmp_path):
    small = tmp_path / "small.jpg"
    Image.new("RGB", (100, 40), "red").save(small, format="JPEG")
    img = Image.open(io.BytesIO(make_thumbnail(small)))
    assert img.format == "PNG" and img.size == (100, 40)  # never enlarged
    palette = tmp_path / "logo.gif"
    Image.new("P", (640, 640)).save(palette, format="GIF", transparency=0)
    assert Image.open(io.BytesIO(make_thumbnail(palette))).size == (320, 320)
    assert make_thumbnail(tmp_path / "brief.docx") is None
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 this is not really a PDF")
    with pytest.raises(RenditionError):
        make_thumbnail(broken)
    not_png = tmp_path / "fake.png"
    not_png.write_text("text")
    with pytest.raises(RenditionError):
        make_thumbnail(not_png)


def test_schedule_and_job_run_per_tenant(world, db_url, instance, tmp_path):
    with session_scope(world) as s:
        s.execute(sa.update(Company).where(Company.slug == "kiwi").values(settings={"renditions": False}))
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    resources = {"database": DatabaseResource(url=db_url), "storage": storage,
                 "files": FilesResource(root=str(tmp_path / "files"))}
    instance.add_dynamic_partitions("tenants", ["nordlicht", "kiwi"])
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=NOW,
                                   resources={"database": DatabaseResource(url=db_url)}) as ctx:
        requests = renditions_defs.approval_thumbnails_schedule(ctx)
    assert [(r.partition_key, r.run_key) for r in requests] == [("nordlicht", "thumbnails|nordlicht|2026-11-23")]
    for expected in (2, 0):  # the second run finds nothing left to do
        result = renditions_defs.approval_thumbnails_job.execute_in_process(
            instance=instance, partition_key="nordlicht", resources=resources)
        assert result.success
        [output] = [e for e in result.all_events if e.is_successful_output]
        raw = output.step_output_data.metadata
        meta = {k: v.value for k, v in raw.items()}
        assert (meta["created"], meta["missing"]) == (expected, 1)
        if expected:  # the run links to the thumbnails it wrote
            assert meta["cloud_paths"] == [f"{BACKUPS}/proof v1.pdf.thumb.png", f"{BACKUPS}/mockup.png.thumb.png"]
            assert all(storage.get_metadata(path) is not None for path in meta["cloud_paths"])
        else:
            assert "cloud_paths" not in meta and "cloud_path" not in meta
    assert storage.get_metadata("/kiwi") is None


def test_cloud_paths_metadata_links_one_path_or_lists_a_few():
    from bg_ops.defs.files.run_metadata import cloud_paths_metadata

    assert cloud_paths_metadata([]) == {}
    one = cloud_paths_metadata(["/acme/Approval Backups/a.png.thumb.png"])
    assert one == {"cloud_path": dg.MetadataValue.path("/acme/Approval Backups/a.png.thumb.png")}
    many = cloud_paths_metadata([f"/acme/f{i}" for i in range(7)], limit=5)
    assert many["cloud_paths"].value == [f"/acme/f{i}" for i in range(5)]
    assert many["cloud_paths_not_listed"].value == 2
