"""The demo seed (PRODUCT P5): deterministic rows and files, every due situation present,
re-seeding that only touches the demo tenants."""

from __future__ import annotations

import calendar
import hashlib
import re
import struct
import zlib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import (
    APP_TABLES,
    USER_ROLES,
    Approval,
    ApprovalFile,
    ApprovalStep,
    CalendarEvent,
    Company,
    CoreRequest,
    Document,
    Invoice,
    PaymentEvent,
    Project,
    PurchaseOrder,
    Task,
    TaskTemplate,
    Translation,
    User,
)
from bg_ops.db.engine import create_db_engine
from bg_ops.db.migrate import create_app_schema
from bg_ops.db.types import UTCDateTime
from bg_ops.demo.seed import DEMO_TENANTS, demo_slugs, seed_demo


TODAY = date(2026, 3, 27)
REF = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def engine(db_url):
    """An empty database, once on SQLite and once on PostgreSQL (conftest's db_url)."""
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


def _sqlite_engine(path: Path) -> sa.Engine:
    return create_db_engine(f"sqlite:///{path}")


def _dump(engine: sa.Engine) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        return {
            t.name: [tuple(row) for row in conn.execute(sa.select(t).order_by(t.c.id))]
            for t in APP_TABLES
        }


def _tenant_dump(engine: sa.Engine, slug: str) -> dict[str, list[tuple]]:
    """Every row belonging to one tenant, table by table."""
    companies = Company.__table__
    with engine.connect() as conn:
        company_id = conn.execute(sa.select(companies.c.id).where(companies.c.slug == slug)).scalar_one()
        out: dict[str, list[tuple]] = {}
        for t in APP_TABLES:
            if t is companies:
                cond = t.c.id == company_id
            elif "company_id" in t.c:
                cond = t.c.company_id == company_id
            elif t is PaymentEvent.__table__:
                cond = t.c.event_id.startswith(f"evt_{slug}_", autoescape=True)
            else:
                fk = next(fk for fk in t.foreign_keys if fk.column.table.name in ("approvals", "calendar_events"))
                parent = fk.column.table
                cond = fk.parent.in_(sa.select(parent.c.id).where(parent.c.company_id == company_id))
            out[t.name] = [tuple(r) for r in conn.execute(sa.select(t).where(cond).order_by(t.c.id))]
        return out


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _seed(engine, root, **kw):
    kw.setdefault("today", TODAY)
    return seed_demo(engine, root, **kw)


# ---------------------------------------------------------------- (a) (b) (c) determinism


def test_reseed_gives_identical_rows_ids_and_files(engine, tmp_path):
    root = tmp_path / "files"
    first = _seed(engine, root)
    rows_before, files_before = _dump(engine), _hashes(root)
    assert first.tenants == ["acme", "nordlicht", "sakura"]
    assert first.files_written == len(files_before) > 50
    assert first.file_bytes == sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert all(rows_before[name] for name in first.rows), "every application table has rows"

    # Jobs and people have touched the demo since: rows changed, a file edited, one deleted.
    some_file = sorted(files_before)[5]
    (root / some_file).write_bytes(b"edited by hand")
    gone = sorted(files_before)[-1]
    (root / gone).unlink()
    with engine.begin() as conn:
        conn.execute(sa.update(Task.__table__).values(status="done"))
        conn.execute(sa.update(Invoice.__table__).values(status="paid"))
        acme = conn.execute(sa.select(Company.id).where(Company.slug == "acme")).scalar_one()
        conn.execute(
            sa.insert(Task.__table__).values(company_id=acme, title="billing", kind="billing", status="open")
        )

    second = _seed(engine, root)
    assert _dump(engine) == rows_before
    assert _hashes(root) == files_before
    assert second.rows == first.rows
    assert second.rows_deleted["tasks"] == first.rows["tasks"] + 1
    assert second.files_unchanged == len(files_before) - 2


def test_two_fresh_databases_get_identical_rows_and_files(tmp_path):
    dumps, hashes = [], []
    for name in ("one", "two"):
        engine = _sqlite_engine(tmp_path / f"{name}.db")
        try:
            _seed(engine, tmp_path / name)
            dumps.append(_dump(engine))
        finally:
            engine.dispose()
        hashes.append(_hashes(tmp_path / name))
    assert dumps[0] == dumps[1]
    assert hashes[0] == hashes[1]
    assert dumps[0]["companies"][0][0] == 1, "a demo-only database numbers from 1"


def test_adding_tenants_leaves_earlier_tenants_unchanged(tmp_path):
    small, large = _sqlite_engine(tmp_path / "small.db"), _sqlite_engine(tmp_path / "large.db")
    try:
        _seed(small, tmp_path / "small", tenants=2)
        _seed(large, tmp_path / "large", tenants=6)
        for slug in ("acme", "nordlicht"):
            assert _tenant_dump(small, slug) == _tenant_dump(large, slug)
        assert _dump(large)["companies"][-1][2] == "tenant-06"
    finally:
        small.dispose()
        large.dispose()
    small_files = _hashes(tmp_path / "small")
    large_files = _hashes(tmp_path / "large")
    assert small_files == {k: v for k, v in large_files.items() if k.split("/")[0] in ("acme", "nordlicht")}


def test_different_seed_gives_different_data(engine, tmp_path):
    first = _seed(engine, tmp_path / "a", seed=42)
    rows_42 = _dump(engine)
    second = _seed(engine, tmp_path / "b", seed=7)
    rows_7 = _dump(engine)
    children = ("approval_steps", "approval_files", "calendar_event_attendees")
    same_shape = {k: v for k, v in first.rows.items() if k not in children}
    assert same_shape == {k: v for k, v in second.rows.items() if k not in children}, (
        "the same situations, only the details differ"
    )
    for table in ("users", "tasks", "approvals", "invoices"):
        assert rows_42[table] != rows_7[table], table
    assert _hashes(tmp_path / "a") != _hashes(tmp_path / "b")


def test_other_day_moves_the_dates(engine, tmp_path):
    _seed(engine, tmp_path / "a", today=TODAY)
    before = _dump(engine)
    _seed(engine, tmp_path / "a", today=TODAY + timedelta(days=1))
    after = _dump(engine)
    shift = {r[0]: r for r in after["documents"]}
    for row in before["documents"]:
        expires_col = [c.name for c in Document.__table__.c].index("expires_on")
        assert shift[row[0]][expires_col] == row[expires_col] + timedelta(days=1)


# ---------------------------------------------------------------- (d) due situations


def _local(dt: datetime, zone: str) -> date:
    return dt.astimezone(ZoneInfo(zone)).date()


@pytest.mark.parametrize(
    "today",
    [TODAY, date(2028, 2, 29), date(2026, 12, 31), date(2026, 10, 25), date(2026, 1, 1)],
    ids=str,
)
def test_demo_contains_every_due_situation(engine, tmp_path, today):
    _seed(engine, tmp_path / "files", today=today, tenants=5)
    ref = datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    eom = today.replace(day=calendar.monthrange(today.year, today.month)[1])
    with engine.connect() as conn:
        companies = conn.execute(sa.select(Company)).all()
        assert sorted(c.slug for c in companies) == sorted(t.slug for t in DEMO_TENANTS)
        for company in companies:
            cid, zone = company.id, company.timezone

            def rows(model, *where, _cid=cid):
                return conn.execute(sa.select(model).where(model.company_id == _cid, *where)).all()

            users = rows(User)
            active_roles = {u.role for u in users if u.is_active}
            assert active_roles == set(USER_ROLES), company.slug
            assert any(not u.is_active for u in users)
            assert len({u.email for u in users}) == len(users)
            assert all(re.fullmatch(r"[a-z0-9.]+@([a-z0-9-]+\.)*[a-z0-9-]+\.example", u.email) for u in users)
            assert any(u.timezone is None for u in users) and any(u.timezone for u in users)
            assert any(u.manager_id for u in users)
            # R10 / B4: birthday today (local calendar day) and anniversaries this week
            week = [today + timedelta(days=k) for k in range(7)]
            assert any(
                u.is_active and u.birth_date and (u.birth_date.month, u.birth_date.day) == (today.month, today.day)
                for u in users
            ), company.slug
            assert any(
                u.birth_date and (u.birth_date.month, u.birth_date.day) in {(d.month, d.day) for d in week[1:]}
                for u in users
            )
            assert any(
                u.hire_date and u.hire_date.year < today.year
                and (u.hire_date.month, u.hire_date.day) in {(d.month, d.day) for d in week}
                for u in users
            )

            # R1 / R2 / R3: overdue, stalled and just-completed approvals
            approvals = rows(Approval)
            in_review = [a for a in approvals if a.status == "in_review"]
            assert any(_local(a.due_at, zone) < today for a in in_review)
            steps = conn.execute(
                sa.select(ApprovalStep).where(ApprovalStep.approval_id.in_([a.id for a in approvals]))
            ).all()
            by_approval: dict[int, list] = {}
            for s in steps:
                by_approval.setdefault(s.approval_id, []).append(s)
            assert all(2 <= len(v) <= 3 for v in by_approval.values())
            assert len(by_approval) == len(approvals)
            stalled = []
            for a in in_review:
                current = [s for s in by_approval[a.id] if s.stage == a.current_stage]
                assert [s.status for s in current] == ["pending"]
                earlier = [s.responded_at for s in by_approval[a.id] if s.responded_at]
                pending_since = max(earlier) if earlier else a.created_at
                if pending_since < ref - timedelta(days=3) and _local(a.due_at, zone) >= today:
                    stalled.append(a)
            assert stalled, company.slug
            assert any(
                a.status == "completed" and ref - timedelta(days=2) <= a.completed_at <= ref for a in approvals
            )
            assert any(a.status == "rejected" for a in approvals) and any(a.status == "draft" for a in approvals)
            assert any(s.status == "rejected" and s.comment for s in steps)

            # R4: tasks overdue, due today and due within 2 days (tenant-local days)
            tasks = [t for t in rows(Task) if t.status in ("open", "in_progress") and t.due_at]
            local_due = [_local(t.due_at, zone) for t in tasks]
            assert any(d < today for d in local_due)
            assert any(d == today for d in local_due)
            assert any(today < d <= today + timedelta(days=2) for d in local_due)
            assert any(d > today + timedelta(days=60) for d in local_due)
            statuses = {t.status for t in rows(Task)}
            assert {"open", "in_progress", "done", "canceled"} <= statuses

            # R5: translation due within 3 days
            assert any(
                t.status == "open" and today < _local(t.due_at, zone) <= today + timedelta(days=3)
                for t in rows(Translation)
            )
            # R6 / R7: core request not accepted after 3 days; ready for approval
            requests = rows(CoreRequest)
            assert any(
                r.status == "submitted" and r.accepted_at is None and r.submitted_at < ref - timedelta(days=3)
                for r in requests
            )
            assert any(r.status == "ready_for_approval" for r in requests)
            # R9: PO expiring this month
            pos = rows(PurchaseOrder)
            assert any(p.status == "open" and today <= p.expires_on <= eom for p in pos)
            assert any(p.status == "open" and p.expires_on > eom for p in pos)
            # R11: documents at 30 / 7 / 1 / 0 days, and one unresolved after expiry
            docs = rows(Document)
            valid_in = {(d.expires_on - today).days for d in docs if d.status == "valid"}
            assert {30, 7, 1, 0} <= valid_in
            assert any(d < 0 for d in valid_in)
            # R12 / R13: an event in the next hours, a weekly recurring one; active templates
            events = rows(CalendarEvent)
            assert any(ref < e.starts_at <= ref + timedelta(hours=6) and e.rrule is None for e in events)
            assert any(e.rrule and "FREQ=WEEKLY" in e.rrule and e.starts_at < ref for e in events)
            assert any(e.rrule is None and e.ends_at < ref for e in events)
            templates = rows(TaskTemplate)
            assert any(t.is_active and t.rrule == "FREQ=WEEKLY;BYDAY=MO" and t.dtstart < ref for t in templates)
            assert any(t.is_active and t.rrule == "FREQ=MONTHLY;BYMONTHDAY=1" for t in templates)
            # B1 / B2 / B5: billable project, overdue sent invoice, unprocessed payment event
            assert any(p.status == "billable" and p.billable_at for p in rows(Project))
            invoices = rows(Invoice)
            assert any(i.status == "sent" and i.due_on < today for i in invoices)
            assert all(i.paid_at for i in invoices if i.status == "paid")
            events = conn.execute(
                sa.select(PaymentEvent).where(PaymentEvent.event_id.startswith(f"evt_{company.slug}_"))
            ).all()
            open_numbers = {i.number for i in invoices if i.status == "sent"}
            assert any(
                e.processed_at is None and e.signature_valid
                and e.payload["data"]["object"]["number"] in open_numbers
                for e in events
            )
            assert all(i.amount.as_tuple().exponent == -2 and i.amount > 0 for i in invoices)


def test_names_settings_and_tiers_are_realistic(engine, tmp_path):
    _seed(engine, tmp_path / "files", tenants=5)
    with engine.connect() as conn:
        names = set(conn.scalars(sa.select(User.full_name)))
        for wanted in ("José Müller", "Zoë Ångström", "李小龍", "Ольга Петрова"):
            assert wanted in names
        settings = {
            c.slug: (c.settings, c.storage_quota_bytes, c.timezone) for c in conn.execute(sa.select(Company))
        }
        assert len({tz for _s, _q, tz in settings.values()}) == 5
        assert sum(1 for s, _q, _tz in settings.values() if s == {}) >= 3
        assert any(s.get("digest") is True for s, _q, _tz in settings.values())
        assert any(False in s.values() for s, _q, _tz in settings.values())
        assert sum(1 for _s, q, _tz in settings.values() if q) == 1
        tiers = conn.execute(
            sa.text(
                "SELECT company_id, min_service_years, hours_per_month FROM pto_tiers "
                "ORDER BY company_id, min_service_years"
            )
        ).all()
        by_company: dict[int, list] = {}
        for cid, years, hours in tiers:
            by_company.setdefault(cid, []).append((years, float(hours)))
        for ladder in by_company.values():
            assert [y for y, _h in ladder] == [0, 3, 7]
            assert ladder[0][1] < ladder[1][1] < ladder[2][1]


# ---------------------------------------------------------------- (e) files


def _check_pdf(data: bytes, name: str) -> None:
    assert data.startswith(b"%PDF-"), name
    assert data.rstrip().endswith(b"%%EOF"), name
    xref_at = int(re.search(rb"startxref\s+(\d+)\s+%%EOF\s*$", data).group(1))
    assert data[xref_at:].startswith(b"xref"), name
    entries = re.findall(rb"(\d{10}) (\d{5}) n ", data[xref_at:])
    assert entries, name
    for number, (offset, _gen) in enumerate(entries, start=1):
        assert data[int(offset):].startswith(b"%d 0 obj" % number), (name, number)


def _check_png(data: bytes, name: str) -> None:
    assert data.startswith(PNG_SIGNATURE), name
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, name
        chunks[kind] = body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    assert b"IEND" in chunks


def test_files_exist_where_the_rows_point(engine, tmp_path):
    root = tmp_path / "files"
    report = _seed(engine, root)
    with engine.connect() as conn:
        paths = list(conn.scalars(sa.select(ApprovalFile.path)))
        projects = conn.execute(
            sa.select(Company.slug, Project.files_path).join(Company, Company.id == Project.company_id)
        ).all()
        approvals = set(conn.scalars(sa.select(Approval.id)))
    assert paths
    for path in paths:
        assert not path.startswith("/") and (root / path).is_file(), path
        assert re.fullmatch(r"[a-z0-9-]+/approvals/a(\d+)/[a-z0-9.-]+", path)
        assert int(re.search(r"/a(\d+)/", path).group(1)) in approvals
    for slug, files_path in projects:
        folder = root / slug / "projects" / files_path
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert 2 <= len(files) <= 4, folder
    kinds = {".pdf": 0, ".png": 0, ".txt": 0}
    all_files = [p for p in root.rglob("*") if p.is_file()]
    assert len(all_files) == report.files_written
    for p in all_files:
        data = p.read_bytes()
        kinds[p.suffix] += 1
        if p.suffix == ".pdf":
            _check_pdf(data, str(p))
        elif p.suffix == ".png":
            _check_png(data, str(p))
        else:
            assert p.suffix == ".txt" and data.decode("utf-8").startswith("Project brief")
    assert all(kinds.values()), kinds


def test_unrelated_files_are_left_alone(engine, tmp_path):
    root = tmp_path / "files"
    keep = root / "acme" / "projects" / "mine.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("not demo")
    _seed(engine, root)
    _seed(engine, root)
    assert keep.read_text() == "not demo"


# ---------------------------------------------------------------- (f) tenant isolation


def test_reseeding_fewer_tenants_leaves_the_others_untouched(engine, tmp_path):
    root = tmp_path / "files"
    # A tenant the platform created itself, before the demo.
    create_app_schema(engine)
    with engine.begin() as conn:
        other = conn.execute(
            sa.insert(Company.__table__)
            .values(name="Other Agency", slug="other", timezone="UTC")
            .returning(Company.id)
        ).scalar_one()
        conn.execute(
            sa.insert(User.__table__).values(
                company_id=other, email="a@other.example", full_name="A", role="admin"
            )
        )
    _seed(engine, root, tenants=3)
    sakura = _tenant_dump(engine, "sakura")
    other_rows = _tenant_dump(engine, "other")
    counts = {name: len(rows) for name, rows in sakura.items()}
    assert all(counts[name] for name in counts), counts
    acme_before = {name: len(rows) for name, rows in _tenant_dump(engine, "acme").items()}

    report = _seed(engine, root, tenants=2)
    assert report.tenants == ["acme", "nordlicht"]
    assert _tenant_dump(engine, "sakura") == sakura
    assert {name: len(rows) for name, rows in _tenant_dump(engine, "sakura").items()} == counts
    assert _tenant_dump(engine, "other") == other_rows
    assert {name: len(rows) for name, rows in _tenant_dump(engine, "acme").items()} == acme_before
    with engine.connect() as conn:
        # ids of the re-seeded tenants start after the rows that stayed
        kept_max = max(r[0] for r in sakura["users"])
        acme_id = conn.execute(sa.select(Company.id).where(Company.slug == "acme")).scalar_one()
        acme_users = list(conn.scalars(sa.select(User.id).where(User.company_id == acme_id)))
        assert min(acme_users) > kept_max
        assert conn.execute(sa.select(sa.func.count()).select_from(Company)).scalar_one() == 4


# ---------------------------------------------------------------- (g) timestamps


def test_timestamps_read_back_as_aware_utc(engine, tmp_path):
    _seed(engine, tmp_path / "files")
    checked = 0
    with engine.connect() as conn:
        for table in APP_TABLES:
            columns = [c for c in table.c if isinstance(c.type, UTCDateTime)]
            if not columns:
                continue
            for row in conn.execute(sa.select(*columns)):
                for value in row:
                    if value is None:
                        continue
                    assert isinstance(value, datetime), (table.name, value)
                    assert value.tzinfo is not None and value.utcoffset() == timedelta(0), (table.name, value)
                    checked += 1
        critique = conn.execute(
            sa.select(CalendarEvent.starts_at).where(CalendarEvent.title == "Design critique")
        ).scalars().first()
    assert checked > 500
    assert critique == REF + timedelta(minutes=25)


# ---------------------------------------------------------------- scale and progress


def test_scale_multiplies_counts_and_progress_adds_up(engine, tmp_path):
    totals, steps = [], []
    one = _seed(engine, tmp_path / "files", tenants=1)
    two = _seed(engine, tmp_path / "files", tenants=1, scale=2, progress=steps.append, progress_total=totals.append)
    assert two.rows["tasks"] == 2 * one.rows["tasks"] >= 80
    assert two.rows["approvals"] == 2 * one.rows["approvals"]
    assert two.rows["users"] == 35 and one.rows["users"] == 25
    assert two.rows["companies"] == 1 and two.rows["pto_tiers"] == 3
    assert totals == [two.total_rows + two.files_written]
    assert sum(steps) == totals[0]
    assert demo_slugs(7) == ["acme", "nordlicht", "sakura", "kiwi", "andes", "tenant-06", "tenant-07"]
    with pytest.raises(ValueError):
        seed_demo(engine, tmp_path, tenants=0, today=TODAY)
