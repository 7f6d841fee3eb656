"""Archival (F5): one PDF per document version, Unicode intact, on SQLite and PostgreSQL, on the
local storage backend and on Dropbox (real SDK, loopback server)."""

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pypdfium2 as pdfium
import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import Approval, ApprovalFile, ApprovalStep, Company, Invoice, Project, User
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import archives
from bg_ops.defs.files import archival_defs
from bg_ops.defs.files.archival import archive_document
from bg_ops.defs.files.pdf import ApprovalJourney, JourneyStep, font_book, render_approval_journey
from bg_ops.defs.tenants.logic import get_tenant
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.storage import LocalStorageResource

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DONE = NOW - timedelta(hours=2)
TITLE = "Cover / Back: ✓ final"
COMMENTS = ["Farben passen ✓ – bitte Logo größer, merci à Zoë", "Всё отлично, согласовано", "Εντάξει από εμένα"]
FOLDER = "/nordlicht/Approvals/Frühjahrskatalog 2027"


@pytest.fixture
def world(db_engine, tmp_path):
    """Nordlicht (Berlin) with a completed approval, one in review and a sent invoice; Kiwi
    (Auckland) with a completed approval of its own."""
    files = tmp_path / "files"
    (files / "nordlicht/approvals/a100").mkdir(parents=True)
    (files / "nordlicht/approvals/a100/proof.pdf").write_bytes(b"%PDF-1.4 proof" * 100)
    with session_scope(db_engine) as s:
        s.add_all([Company(id=1, name="Nordlicht Agentur", slug="nordlicht", timezone="Europe/Berlin"),
                   Company(id=2, name="Kiwi Studio", slug="kiwi", timezone="Pacific/Auckland")])
        s.flush()
        s.add_all([
            User(id=1, company_id=1, email="zoe@nordlicht.example", full_name="Zoë Ångström", role="approver"),
            User(id=2, company_id=1, email="petr@client.example", full_name="Пётр Иванов", role="client"),
            User(id=3, company_id=1, email="eleni@nordlicht.example", full_name="Ελένη Παππά", role="pm"),
            User(id=4, company_id=1, email="sam@nordlicht.example", full_name="Sam Skipped", role="approver"),
            User(id=11, company_id=2, email="kim@kiwi.example", full_name="Kim Kiwi", role="approver"),
        ])
        s.flush()
        s.add_all([Project(id=10, company_id=1, name="Frühjahrskatalog 2027", client_name="Café Müller", pm_id=3),
                   Project(id=20, company_id=2, name="Kiwi brand", pm_id=11)])
        s.flush()
        s.add_all([
            Approval(id=100, company_id=1, project_id=10, title=TITLE, status="completed", current_stage=2,
                     created_at=DONE - timedelta(days=3), updated_at=DONE, completed_at=DONE),
            Approval(id=101, company_id=1, project_id=10, title="Still in review", status="in_review",
                     created_at=DONE, updated_at=DONE),
            Approval(id=200, company_id=2, project_id=20, title="Kiwi poster", status="completed",
                     created_at=DONE - timedelta(days=1), updated_at=DONE, completed_at=DONE + timedelta(minutes=1)),
        ])
        s.flush()
        s.add_all([
            ApprovalStep(approval_id=100, stage=1, approver_id=1, status="approved", comment=COMMENTS[0],
                         responded_at=DONE - timedelta(days=2)),
            ApprovalStep(approval_id=100, stage=1, approver_id=4, status="skipped"),
            ApprovalStep(approval_id=100, stage=2, approver_id=2, status="approved", comment=COMMENTS[1],
                         responded_at=DONE - timedelta(hours=3)),
            ApprovalStep(approval_id=100, stage=2, approver_id=3, status="approved", comment=COMMENTS[2],
                         responded_at=DONE),
            ApprovalStep(approval_id=200, stage=1, approver_id=11, status="approved", responded_at=DONE),
            ApprovalFile(approval_id=100, path="nordlicht/approvals/a100/proof.pdf", uploaded_at=DONE - timedelta(days=3)),
            ApprovalFile(approval_id=100, path="nordlicht/approvals/a100/gone.png", uploaded_at=DONE - timedelta(days=3)),
            Invoice(id=300, company_id=1, project_id=10, number="INV-2026/042", amount=Decimal("12500.50"),
                    currency="EUR", issued_on=date(2026, 11, 20), due_on=date(2026, 12, 20), status="sent",
                    updated_at=DONE + timedelta(minutes=5)),
            Invoice(id=301, company_id=1, project_id=10, number="INV-2026/043", amount=Decimal("10"),
                    currency="EUR", status="draft", updated_at=DONE),
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


@pytest.fixture(params=["local", "dropbox"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    return request.getfixturevalue("dropbox_storage")


def archive(engine, storage, slug, doc_type, doc_id, tmp_path, now=NOW):
    with session_scope(engine) as s:
        return archive_document(s, storage, get_tenant(s, slug), doc_type, doc_id, now=now, files_root=tmp_path / "files")


def pdf_files(storage, folder):
    if storage.get_metadata(folder) is None:
        return []
    return sorted((e.path, e.content_hash) for e in storage.list_folder(folder) if not e.is_folder)


def pdf_text(storage, path, tmp_path) -> str:
    local = tmp_path / "downloaded.pdf"
    storage.download(path, local)
    doc = pdfium.PdfDocument(str(local))
    try:
        return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()


def complete_again(engine, approval_id, at):
    with session_scope(engine) as s:
        s.execute(sa.update(Approval).where(Approval.id == approval_id).values(completed_at=at, updated_at=at))


def test_completed_approval_is_archived_once_per_version(world, storage, tmp_path):
    first = archive(world, storage, "nordlicht", "approval", 100, tmp_path)
    v1 = f"{FOLDER}/100 Cover - Back- ✓ final v1.pdf"
    assert (first.status, first.version, first.cloud_path) == ("archived", 1, v1)
    [(path, digest)] = pdf_files(storage, "/nordlicht/Approvals")
    assert (path, digest) == (v1, first.content_hash)

    text = pdf_text(storage, v1, tmp_path)
    for expected in ["Nordlicht Agentur", "Frühjahrskatalog 2027 (Café Müller)", TITLE, "Zoë Ångström",
                     "<zoe@nordlicht.example>", "Пётр Иванов", "Ελένη Παππά", "Sam Skipped", "✓ Approved",
                     "– Skipped", *COMMENTS, "Europe/Berlin (UTC+01:00)", "2026-11-23 11:00 Europe/Berlin",
                     "nordlicht/approvals/a100/proof.pdf — 1.4 KB", "nordlicht/approvals/a100/gone.png — missing",
                     "Stage 1", "Stage 2"]:
        assert expected in text, expected
    assert "□" not in text

    # Archiving the same version again: nothing new, same answer.
    again = archive(world, storage, "nordlicht", "approval", 100, tmp_path, now=NOW + timedelta(hours=1))
    assert (again.status, again.version, again.cloud_path) == ("already_archived", 1, v1)
    assert pdf_files(storage, "/nordlicht/Approvals") == [(v1, first.content_hash)]

    # Reopened and completed again: version 2 beside version 1, which is left as it was.
    complete_again(world, 100, NOW + timedelta(days=1))
    second = archive(world, storage, "nordlicht", "approval", 100, tmp_path, now=NOW + timedelta(days=1))
    v2 = f"{FOLDER}/100 Cover - Back- ✓ final v2.pdf"
    assert (second.status, second.version, second.cloud_path) == ("archived", 2, v2)
    assert second.content_hash != first.content_hash
    assert pdf_files(storage, "/nordlicht/Approvals") == [(v1, first.content_hash), (v2, second.content_hash)]
    assert "2026-11-24 13:00 Europe/Berlin" in pdf_text(storage, v2, tmp_path)

    with world.connect() as c:
        rows = c.execute(sa.select(archives.c.company_id, archives.c.doc_type, archives.c.doc_id, archives.c.version,
                                   archives.c.cloud_path).order_by(archives.c.version)).all()
    assert [tuple(r) for r in rows] == [(1, "approval", 100, 1, v1), (1, "approval", 100, 2, v2)]
    # Kiwi's approval was never touched, nor its folder.
    assert storage.get_metadata("/kiwi") is None


def test_documents_of_other_tenants_and_unfinished_ones_are_not_archived(world, storage, tmp_path):
    assert archive(world, storage, "nordlicht", "approval", 200, tmp_path).status == "not_found"  # Kiwi's
    assert archive(world, storage, "nordlicht", "approval", 101, tmp_path).status == "not_archivable"
    assert archive(world, storage, "nordlicht", "invoice", 301, tmp_path).status == "not_archivable"  # draft
    assert storage.get_metadata("/kiwi") is None and storage.get_metadata("/nordlicht") is None

    # An invoice that was sent goes to Invoices, in its project's folder.
    sent = archive(world, storage, "nordlicht", "invoice", 300, tmp_path)
    assert sent.cloud_path == "/nordlicht/Invoices/Frühjahrskatalog 2027/INV-2026-042 v1.pdf"
    assert pdf_files(storage, "/nordlicht/Invoices") == [(sent.cloud_path, sent.content_hash)]
    text = pdf_text(storage, sent.cloud_path, tmp_path)
    for expected in ["Invoice INV-2026/042", "12,500.50 EUR", "Café Müller", "2026-12-20", "Sent"]:
        assert expected in text, expected
    # A run that uploaded but died before recording the version: its retry renders the same
    # bytes, finds its own file (add mode, same content) and records it; no second file.
    with session_scope(world) as s:
        s.execute(sa.delete(archives).where(archives.c.doc_type == "invoice"))
    retried = archive(world, storage, "nordlicht", "invoice", 300, tmp_path, now=NOW + timedelta(minutes=1))
    assert (retried.status, retried.version, retried.cloud_path, retried.content_hash) == (
        "archived", 1, sent.cloud_path, sent.content_hash)
    assert pdf_files(storage, "/nordlicht/Invoices") == [(sent.cloud_path, sent.content_hash)]
    # Paid later: a second version, the first one kept.
    with session_scope(world) as s:
        s.execute(sa.update(Invoice).where(Invoice.id == 300).values(status="paid", paid_at=NOW, updated_at=NOW))
    paid = archive(world, storage, "nordlicht", "invoice", 300, tmp_path)
    assert (paid.status, paid.version) == ("archived", 2)
    assert [p for p, _ in pdf_files(storage, "/nordlicht/Invoices")] == [sent.cloud_path, paid.cloud_path]
    assert storage.get_metadata("/nordlicht/Approvals") is None


def _tick(db_url, instance, cursor, monkeypatch, now=NOW):
    monkeypatch.setattr(archival_defs, "_now", lambda: now)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"database": DatabaseResource(url=db_url)})
    return archival_defs.document_archival_sensor(ctx)


def _docs(request) -> list[tuple[str, int, str]]:
    return [(d["doc_type"], d["doc_id"], d["version_key"])
            for d in request.run_config["ops"]["archive_document"]["config"]["documents"]]


def test_sensor_requests_one_run_per_tenant_and_each_version_never_twice(world, db_url, instance, monkeypatch):
    with session_scope(world) as s:  # a tenant with archival switched off is passed over
        s.add(Company(id=3, name="Quiet", slug="quiet", settings={"archival": False}))
        s.flush()
        s.add(Project(id=30, company_id=3, name="Quiet project"))
        s.flush()
        s.add(Approval(id=300, company_id=3, project_id=30, title="Off", status="completed", completed_at=DONE))
    instance.add_dynamic_partitions("tenants", ["nordlicht"])
    first = _tick(db_url, instance, None, monkeypatch)
    # One run per tenant with all its new versions, oldest first; tenants never share a run.
    assert [(r.partition_key, _docs(r)) for r in first.run_requests] == [
        ("nordlicht", [("approval", 100, DONE.isoformat()),
                       ("invoice", 300, f"{(DONE + timedelta(minutes=5)).isoformat()}|sent")]),
        ("kiwi", [("approval", 200, (DONE + timedelta(minutes=1)).isoformat())]),
    ]
    assert [r.tags["bg_ops/tenant"] for r in first.run_requests] == ["nordlicht", "kiwi"]
    assert first.run_requests[0].tags["bg_ops/doc_type"] == "approval,invoice"
    assert first.run_requests[0].run_key.startswith("archive|nordlicht|2|")
    assert first.run_requests[1].run_key.startswith("archive|kiwi|1|")
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [["kiwi"]]
    # The run key is the version set's: the same set, the same key, a different set, another.
    again = _tick(db_url, instance, None, monkeypatch)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]

    # Later ticks with the stored cursor: nothing is requested again.
    second = _tick(db_url, instance, first.cursor, monkeypatch, NOW + timedelta(minutes=1))
    assert second.run_requests == [] and second.skip_reason

    # Completed again (a new version), and a completion that committed late, with a
    # completed_at behind the cursor: each requested once, together.
    complete_again(world, 100, NOW + timedelta(minutes=2))
    with session_scope(world) as s:
        s.add(Approval(id=102, company_id=1, project_id=10, title="Late", status="completed",
                       completed_at=DONE - timedelta(minutes=1)))
    third = _tick(db_url, instance, second.cursor, monkeypatch, NOW + timedelta(minutes=3))
    assert [(r.partition_key, _docs(r)) for r in third.run_requests] == [("nordlicht", [
        ("approval", 102, (DONE - timedelta(minutes=1)).isoformat()),
        ("approval", 100, (NOW + timedelta(minutes=2)).isoformat()),
    ])]
    assert third.run_requests[0].run_key not in {r.run_key for r in first.run_requests}
    fourth = _tick(db_url, instance, third.cursor, monkeypatch, NOW + timedelta(minutes=4))
    assert fourth.run_requests == []
    assert set(json.loads(fourth.cursor)) == {"approval", "core_request", "invoice", "estimate"}


def test_a_future_dated_completion_does_not_hide_the_ones_before_its_time(world, db_url, instance, monkeypatch):
    """Demo data or another program's clock can stamp completed_at ahead of ours: that approval
    is archived once, and completions stamped before its time are still seen."""
    instance.add_dynamic_partitions("tenants", ["nordlicht", "kiwi"])
    with session_scope(world) as s:
        s.add(Approval(id=120, company_id=1, project_id=10, title="Ahead", status="completed",
                       completed_at=NOW + timedelta(hours=8)))
    first = _tick(db_url, instance, None, monkeypatch)
    assert ("approval", 120) in {(t, i) for r in first.run_requests for t, i, _ in _docs(r)}
    with session_scope(world) as s:
        s.add(Approval(id=121, company_id=1, project_id=10, title="Now", status="completed",
                       completed_at=NOW + timedelta(minutes=1)))
    second = _tick(db_url, instance, first.cursor, monkeypatch, NOW + timedelta(minutes=2))
    assert [(r.partition_key, [(t, i) for t, i, _ in _docs(r)]) for r in second.run_requests] == [
        ("nordlicht", [("approval", 121)])]
    third = _tick(db_url, instance, second.cursor, monkeypatch, NOW + timedelta(hours=9))
    assert third.run_requests == []


def test_a_busy_tenant_is_split_into_runs_of_at_most_per_run_versions(world, instance):
    from bg_ops.defs.files import archival

    with session_scope(world) as s:
        for i in range(3):
            s.add(Approval(id=110 + i, company_id=1, project_id=10, title=f"More {i}", status="completed",
                           completed_at=DONE + timedelta(seconds=10 + i)))
    with session_scope(world) as s:
        plan = archival.plan_archival_runs(s, archival.ArchivalCursor(start=DONE - timedelta(hours=1)),
                                           existing_partitions=["nordlicht", "kiwi"], per_run=2)
    assert [(r.partition_key, [(d.doc_type, d.doc_id) for d in r.docs]) for r in plan.runs] == [
        ("nordlicht", [("approval", 100), ("approval", 110)]),
        ("nordlicht", [("approval", 111), ("approval", 112)]),
        ("nordlicht", [("invoice", 300)]),
        ("kiwi", [("approval", 200)]),
    ]
    assert len({r.run_key for r in plan.runs}) == 4


def test_archive_job_runs_in_the_tenant_partition(world, db_url, instance, tmp_path):
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    resources = {"database": DatabaseResource(url=db_url), "storage": storage,
                 "files": FilesResource(root=str(tmp_path / "files"))}

    def run(partition, doc_type, doc_id) -> dict:
        result = archival_defs.archive_document_job.execute_in_process(
            instance=instance, partition_key=partition, resources=resources,
            run_config={"ops": {"archive_document": {"config": {"doc_type": doc_type, "doc_id": doc_id}}}})
        assert result.success
        [output] = [e for e in result.all_events if e.is_successful_output]
        return {k: v.value for k, v in output.step_output_data.metadata.items()}

    instance.add_dynamic_partitions("tenants", ["nordlicht", "kiwi"])
    first = run("nordlicht", "approval", 100)
    assert (first["status"], first["version"], first["cloud_path"]) == (
        "archived", 1, f"{FOLDER}/100 Cover - Back- ✓ final v1.pdf")
    assert first["content_hash"] == pdf_files(storage, "/nordlicht/Approvals")[0][1]
    assert first["size_bytes"] > 1000
    # Kiwi's approval asked for in Nordlicht's partition: not found there.
    assert run("nordlicht", "approval", 200)["status"] == "not_found"
    assert storage.get_metadata("/kiwi") is None
    assert run("kiwi", "approval", 200)["status"] == "archived"
    assert len(pdf_files(storage, "/nordlicht/Approvals")) == 1
    assert [p for p, _ in pdf_files(storage, "/kiwi/Approvals")] == ["/kiwi/Approvals/Kiwi brand/200 Kiwi poster v1.pdf"]
    with world.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(archives)).scalar() == 2


def test_journey_pdf_is_deterministic_and_marks_characters_without_a_font(tmp_path):
    journey = ApprovalJourney(
        tenant_name="Nordlicht", timezone="Asia/Tokyo", approval_id=7, project_name="P", title="日本語 title",
        status="completed", created_at=DONE, completed_at=DONE,
        steps=(JourneyStep(stage=1, approver_name="Zoë", approver_email=None, decision="approved",
                           responded_at=DONE, comment="中文 ✓"),))
    plain = font_book().with_fallbacks(())
    data = render_approval_journey(journey, book=plain)
    assert data == render_approval_journey(journey, book=plain)  # same input, same bytes
    doc = pdfium.PdfDocument(data)
    text = doc[0].get_textpage().get_text_range()
    doc.close()
    assert "□□□ title" in text and "□□ ✓" in text and "2026-11-23 19:00 Asia/Tokyo (UTC+09:00)" in text
    assert "5 character(s) shown as □" in text

    # Beyond DejaVu's core: Vietnamese (its extended face) and Armenian (the whole font), bold and regular.
    wider = ApprovalJourney(
        tenant_name="Nordlicht", timezone="UTC", approval_id=8, project_name="P", title="Trần Thị Ngọc Ánh",
        status="completed", created_at=DONE, completed_at=DONE,
        steps=(JourneyStep(stage=1, approver_name="Nguyễn Văn Đức", approver_email=None, decision="approved",
                           comment="Շնորհակալություն – ✓ Đồng ý"),))
    doc = pdfium.PdfDocument(render_approval_journey(wider, book=plain))
    text = doc[0].get_textpage().get_text_range()
    doc.close()
    for expected in ["Trần Thị Ngọc Ánh", "Nguyễn Văn Đức", "Շնորհակալություն – ✓ Đồng ý"]:
        assert expected in text, expected
    assert "□" not in text

    # With a fallback font that has the characters, they print as themselves.
    fallback = _cjk_test_font(tmp_path / "cjk.ttf", "日本語中文")
    with_cjk = font_book().with_fallbacks([(fallback, 0)])
    doc = pdfium.PdfDocument(render_approval_journey(journey, book=with_cjk))
    text = doc[0].get_textpage().get_text_range()
    doc.close()
    assert "日本語 title" in text and "中文 ✓" in text and "□" not in text
    assert font_book() is font_book()  # parsed once per process


def _cjk_test_font(path, chars: str):
    """A tiny TrueType font with a square glyph for each of ``chars`` (a stand-in CJK font)."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    names = [".notdef"] + [f"uni{ord(c):04X}" for c in chars]
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(names)
    fb.setupCharacterMap({ord(c): f"uni{ord(c):04X}" for c in chars})
    glyphs = {}
    for name in names:
        pen = TTGlyphPen(None)
        pen.moveTo((100, 0)), pen.lineTo((100, 800)), pen.lineTo((900, 800)), pen.lineTo((900, 0)), pen.closePath()
        glyphs[name] = pen.glyph()
    fb.setupGlyf(glyphs)
    fb.setupHorizontalMetrics({n: (1000, 100) for n in names})
    fb.setupHorizontalHeader(ascent=880, descent=-120)
    fb.setupNameTable({"familyName": "BgOpsTestCJK", "styleName": "Regular"})
    fb.setupOS2(sTypoAscender=880, usWinAscent=880, usWinDescent=120)
    fb.setupPost()
    fb.save(str(path))
    return path


def test_one_run_archives_each_of_its_documents_once_and_a_rerun_adds_nothing(world, db_url, instance, tmp_path):
    storage = LocalStorageResource(storage_dir=str(tmp_path / "cloud"))
    resources = {"database": DatabaseResource(url=db_url), "storage": storage,
                 "files": FilesResource(root=str(tmp_path / "files"))}
    instance.add_dynamic_partitions("tenants", ["nordlicht", "kiwi"])
    documents = [{"doc_type": "approval", "doc_id": 100}, {"doc_type": "approval", "doc_id": 200},
                 {"doc_type": "invoice", "doc_id": 300}]

    def run() -> dict:
        result = archival_defs.archive_document_job.execute_in_process(
            instance=instance, partition_key="nordlicht", resources=resources,
            run_config={"ops": {"archive_document": {"config": {"documents": documents}}}})
        assert result.success
        [output] = [e for e in result.all_events if e.is_successful_output]
        return {k: v.value for k, v in output.step_output_data.metadata.items()}

    first = run()
    assert [(r["doc_type"], r["doc_id"], r["status"]) for r in first["results"]] == [
        ("approval", 100, "archived"), ("approval", 200, "not_found"), ("invoice", 300, "archived")]
    assert (first["documents"], first["n_archived"], first["n_not_found"]) == (3, 2, 1)
    assert storage.get_metadata("/kiwi") is None  # Kiwi's approval is not Nordlicht's to archive
    files_before = pdf_files(storage, "/nordlicht")
    assert len(files_before) == 2
    # The run page links to what it stored: exactly the two archives, in the order archived.
    assert first["cloud_paths"] == [r["cloud_path"] for r in first["results"] if r["status"] == "archived"]
    assert len(first["cloud_paths"]) == 2 and all(storage.get_metadata(p) is not None for p in first["cloud_paths"])
    second = run()
    assert [r["status"] for r in second["results"]] == ["already_archived", "not_found", "already_archived"]
    assert pdf_files(storage, "/nordlicht") == files_before
    with world.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(archives)).scalar() == 2

    # Both forms at once, or neither: one clear error, nothing archived.
    with pytest.raises(dg.Failure, match="not both"):
        archival_defs.archive_document_job.execute_in_process(
            instance=instance, partition_key="kiwi", resources=resources,
            run_config={"ops": {"archive_document": {"config": {"documents": documents, "doc_type": "approval",
                                                                 "doc_id": 200}}}})
    assert storage.get_metadata("/kiwi") is None
