"""``bg-ops uploads``: the upload queue from the operator's side (F1, F7, E8, U2).

Every test runs on SQLite and on a real PostgreSQL and calls the CLI in-process with the
local storage backend, so what is asserted is what an operator sees: exit codes, one JSON
document on stdout, one-line errors, and the files that land in the cloud folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from bg_ops.cli.main import main
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import upload_queue as u
from bg_ops.defs.files.uploads import queue_upload
from bg_ops.util.content_hash import content_hash_file

STATUSES = {"queued", "uploading", "uploaded", "failed", "canceled"}


@dataclass
class Env:
    engine: sa.Engine
    files: Path
    cloud: Path
    capsys: object

    def run(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str):
        code, out, err = self.run(*args, "--json")
        assert code == 0, err
        return json.loads(out)  # exactly one document, or this raises

    def file(self, rel: str, content: bytes | None = None) -> str:
        path = self.files / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if content is not None else f"content of {rel}".encode())
        return rel

    def queue(self, company_id: int, rel: str, dest: str, **kw) -> int:
        with session_scope(self.engine) as s:
            return queue_upload(s, company_id=company_id, source_path=rel, dest_path=dest, files_root=self.files,
                                now=datetime.now(UTC), **kw)

    def insert_sql(self, company_id: int, source: str, dest: str) -> int:
        """A row the platform queued with plain SQL: producer columns only."""
        with self.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO upload_queue (company_id, source_path, dest_path) VALUES (:c, :s, :d)"),
                         {"c": company_id, "s": source, "d": dest})
            return conn.execute(sa.select(sa.func.max(u.c.id))).scalar_one()

    def rows(self) -> dict[int, sa.Row]:
        with self.engine.connect() as conn:
            return {r.id: r for r in conn.execute(sa.select(u))}

    def cloud_files(self) -> dict[str, bytes]:
        return {p.relative_to(self.cloud).as_posix(): p.read_bytes() for p in self.cloud.rglob("*") if p.is_file()}


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _point_the_cli_at(db_url: str, tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """The database, an empty files root and a local cloud folder, by environment as an operator would."""
    files, cloud = tmp_path / "files", tmp_path / "cloud"
    files.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BG_OPS_DATABASE_URL", db_url)
    monkeypatch.setenv("BG_OPS_FILES_ROOT", str(files))
    monkeypatch.setenv("BG_OPS_STORAGE_DIR", str(cloud))
    return files, cloud


@pytest.fixture
def env(db_engine, db_url, tmp_path, monkeypatch, capsys) -> Env:
    from bg_ops.db.app_schema import Company

    files, cloud = _point_the_cli_at(db_url, tmp_path, monkeypatch)
    with db_engine.begin() as conn:
        conn.execute(sa.insert(Company.__table__), [
            {"id": 1, "name": "Acme Creative", "slug": "acme"},
            {"id": 2, "name": "Beta Studio", "slug": "beta"},
        ])
    return Env(engine=db_engine, files=files, cloud=cloud, capsys=capsys)


def test_stats_counts_every_status_with_tenant_filter(env):
    env.queue(1, env.file("acme/a.txt"), "/acme/Cores/a.txt")
    env.queue(1, env.file("acme/b.txt"), "/acme/Cores/b.txt")
    later = env.queue(2, env.file("beta/c.txt"), "/beta/Cores/c.txt")
    with env.engine.begin() as conn:
        conn.execute(sa.update(u).where(u.c.id == later).values(next_attempt_at=datetime.now(UTC) + timedelta(hours=2)))
    env.insert_sql(2, "beta/from-sql.txt", "/beta/Cores/from-sql.txt")

    data = env.json("uploads", "stats")
    assert {k: data[k] for k in STATUSES} == {"queued": 4, "uploading": 0, "uploaded": 0, "failed": 0, "canceled": 0}
    assert all(type(data[k]) is int for k in STATUSES)
    assert data["due_now"] == 3 and data["oldest_due_age_seconds"] is not None
    assert data["bytes_uploaded"] == 0 and data["bytes_by_tenant"] == {}

    env.json("uploads", "drain")
    data = env.json("uploads", "stats")
    assert (data["uploaded"], data["queued"], data["canceled"], data["due_now"]) == (2, 1, 1, 0)
    assert data["bytes_by_tenant"] == {"acme": 2 * len(b"content of acme/a.txt")}
    assert data["bytes_uploaded"] == sum(data["bytes_by_tenant"].values())
    assert data["uploaded_last_hour"] == 2 and data["failed_last_hour"] == 1
    beta = env.json("uploads", "stats", "--tenant", "beta")
    assert (beta["queued"], beta["canceled"], beta["uploaded"], beta["bytes_uploaded"]) == (1, 1, 0, 0)

    code, out, _ = env.run("uploads", "stats")
    assert code == 0 and "uploaded" in out and "due now" in out and "acme" in out
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert len({len(line) for line in lines}) == 1  # an aligned table

    code, out, err = env.run("uploads", "stats", "--tenant", "nope", "--json")
    assert code == 2 and out == "" and "'nope'" in one_error_line(err)


def test_drain_uploads_everything_due_exactly_once(env):
    ids = {}
    for slug, cid in (("acme", 1), ("beta", 2)):
        for i in range(4):
            rel = env.file(f"{slug}/projects/p{i}.txt", f"{slug} {i} ✓".encode())
            ids[rel] = env.queue(cid, rel, f"/{slug}/Project Backups/p{i}.txt")
    ids["sql"] = env.insert_sql(1, env.file("acme/sql.bin", b"\x00" * 10), "/acme/Cores/sql.bin")
    not_due = env.queue(1, env.file("acme/later.txt"), "/acme/Cores/later.txt")
    with env.engine.begin() as conn:
        conn.execute(sa.update(u).where(u.c.id == not_due).values(next_attempt_at=datetime.now(UTC) + timedelta(hours=1)))

    code, out, err = env.run("uploads", "drain", "--batch-size", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["uploaded"], report["retried"], report["canceled"]) == (9, 0, 0)
    assert report["due_at_start"] == 9 and report["batches"] == 5 and report["stopped_because"] == "nothing due"
    assert "{" not in err  # progress goes to stderr, the document to stdout

    rows = env.rows()
    assert {rows[i].status for i in ids.values()} == {"uploaded"}
    assert {rows[i].attempts for i in ids.values()} == {1}  # each claimed once
    assert rows[not_due].status == "queued" and rows[not_due].attempts == 0
    cloud = env.cloud_files()
    assert len(cloud) == 9 and not any("(2)" in p for p in cloud)
    assert cloud["acme/Project Backups/p3.txt"] == "acme 3 ✓".encode()
    for rel, row_id in ids.items():
        local = env.files / (rel if rel != "sql" else "acme/sql.bin")
        assert rows[row_id].content_hash == content_hash_file(local)

    again = env.json("uploads", "drain")
    assert (again["uploaded"], again["batches"], again["due_at_start"]) == (0, 0, 0)
    code, out, _ = env.run("uploads", "drain", "--max-batches", "1")
    assert code == 0 and out.startswith("uploaded 0")


def test_failed_lists_canceled_rows_with_the_reason_and_retry_puts_them_back(env):
    passwd = env.insert_sql(1, "../../etc/passwd", "/acme/Cores/passwd")
    vanished = env.insert_sql(2, "beta/vanished.pdf", "/beta/Invoices/vanished.pdf")
    ok = env.queue(1, env.file("acme/ok.txt"), "/acme/Cores/ok.txt")
    report = env.json("uploads", "drain")
    assert (report["uploaded"], report["canceled"]) == (1, 2) and report["canceled_ids"] == sorted([passwd, vanished])
    assert not (env.cloud / "acme" / "Cores" / "passwd").exists()

    failed = {f["id"]: f for f in env.json("uploads", "failed")}
    assert set(failed) == {passwd, vanished}
    assert failed[passwd]["status"] == "canceled" and failed[passwd]["tenant"] == "acme"
    assert failed[passwd]["source_path"] == "../../etc/passwd" and "refused" in failed[passwd]["last_error"]
    assert "vanished" in failed[vanished]["last_error"] and failed[vanished]["tenant"] == "beta"
    assert [f["id"] for f in env.json("uploads", "failed", "--tenant", "beta")] == [vanished]
    assert len(env.json("uploads", "failed", "--limit", "1")) == 1
    code, out, _ = env.run("uploads", "failed")
    assert code == 0 and "../../etc/passwd" in out and "refused" in out

    code, out, err = env.run("uploads", "retry")
    assert code == 2 and "--all-failed" in one_error_line(err)
    data = env.json("uploads", "retry", "--id", str(vanished), "--id", str(ok), "--id", "9999")
    assert data["retried"] == [vanished] and data["not_retried"] == sorted([ok, 9999])
    row = env.rows()[vanished]
    assert (row.status, row.attempts, row.last_error) == ("queued", 0, None)

    env.file("beta/vanished.pdf", b"%PDF-1.4 back")  # the cause is fixed
    assert env.json("uploads", "drain")["uploaded"] == 1
    assert env.rows()[vanished].status == "uploaded"

    assert env.json("uploads", "retry", "--all-failed", "--tenant", "beta")["retried"] == []
    code, out, _ = env.run("uploads", "retry", "--all-failed")
    assert code == 0 and "put 1 upload(s) back" in out and f"#{passwd}" in out
    assert env.json("uploads", "failed") == []
    code, out, _ = env.run("uploads", "retry", "--all-failed")
    assert code == 0 and "nothing to retry" in out


def test_show_prints_one_upload(env):
    row_id = env.queue(1, env.file("acme/brief.pdf", b"%PDF-1.4 brief"), "/acme/Approvals/brief.pdf", kind="archive")
    env.json("uploads", "drain")
    code, out, err = env.run("uploads", "show", str(row_id))
    assert code == 0, err
    assert "acme/brief.pdf" in out and "/acme/Approvals/brief.pdf" in out and "uploaded" in out and "acme" in out
    data = env.json("uploads", "show", str(row_id))
    assert data["status"] == "uploaded" and data["tenant"] == "acme" and data["size_bytes"] == 14
    assert data["cloud_path"] == "/acme/Approvals/brief.pdf" and data["content_hash"]
    datetime.fromisoformat(data["uploaded_at"])

    code, out, err = env.run("uploads", "show", "424242")
    assert code == 1 and out == "" and "424242" in one_error_line(err)


def test_drain_with_the_storage_unreachable_is_one_line_and_claims_nothing(env, tmp_path, monkeypatch):
    row_id = env.queue(1, env.file("acme/a.txt"), "/acme/Cores/a.txt")
    (tmp_path / "not-a-folder").write_text("a file where the storage folder should be")
    monkeypatch.setenv("BG_OPS_STORAGE_DIR", str(tmp_path / "not-a-folder" / "cloud"))
    code, out, err = env.run("uploads", "drain", "--json")
    assert code == 1 and out == ""
    assert "BG_OPS_STORAGE_DIR" in one_error_line(err)
    row = env.rows()[row_id]
    assert (row.status, row.attempts) == ("queued", 0)


def test_every_uploads_command_has_examples_and_json(capsys):
    for command in ("stats", "failed", "retry", "drain", "show", "scan"):
        assert main(["uploads", command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "Examples:" in out and "--json" in out, command
    for command in ("stats", "failed", "retry"):
        main(["uploads", command, "--help"])
        assert "--tenant" in capsys.readouterr().out, command


# -- scan (the nightly backup scan of one tenant, U2) ---------------------------------------


@pytest.fixture
def demo_env(db_engine, db_url, tmp_path, monkeypatch, capsys) -> Env:
    """The demo data of two tenants (acme, nordlicht) with their files, and the CLI pointed at it."""
    from datetime import date

    from bg_ops.demo.seed import seed_demo

    files, cloud = _point_the_cli_at(db_url, tmp_path, monkeypatch)
    seed_demo(db_engine, files, tenants=2, today=date(2026, 11, 23))
    return Env(engine=db_engine, files=files, cloud=cloud, capsys=capsys)


def _backup_sources(env: Env, slug: str) -> set[str]:
    """What the backup must cover, worked out apart from the code under test: the files on disk
    under <slug>/projects/ and every approval attachment of the tenant."""
    from bg_ops.db.app_schema import Approval, ApprovalFile, Company

    on_disk = {p.relative_to(env.files).as_posix() for p in (env.files / slug / "projects").rglob("*") if p.is_file()}
    with env.engine.connect() as conn:
        attached = set(conn.execute(
            sa.select(ApprovalFile.path).join(Approval, Approval.id == ApprovalFile.approval_id)
            .join(Company, Company.id == Approval.company_id).where(Company.slug == slug)).scalars())
    return on_disk | attached


def test_scan_queues_the_tenants_new_files_once_then_only_what_changed(demo_env):
    env = demo_env
    expected = _backup_sources(env, "acme")
    assert len(expected) > 10 and all(src.startswith("acme/") for src in expected)

    code, out, err = env.run("uploads", "scan", "--tenant", "acme")
    assert code == 0, err
    assert f"acme: scanned {len(expected)} file(s)" in out and f"queued {len(expected)} " in out
    rows = list(env.rows().values())
    assert sorted(r.source_path for r in rows) == sorted(expected)  # each file once, nothing of nordlicht
    assert {(r.status, r.kind) for r in rows} == {("queued", "backup")}
    assert {r.company_id for r in rows} == {1}
    assert all(r.dest_path.startswith("/acme/") for r in rows)

    again = env.json("uploads", "scan", "--tenant", "acme")  # nothing changed: nothing queued
    assert (again["tenant"], again["scanned"], again["unchanged"], again["queued"]) == ("acme", len(expected),
                                                                                      len(expected), 0)
    assert len(env.rows()) == len(expected)

    changed = sorted(expected)[0]
    (env.files / changed).write_bytes(b"a new version")
    data = env.json("uploads", "scan", "--tenant", "acme")
    assert (data["changed"], data["new"], data["queued"]) == (1, 0, 1)
    assert [r.source_path for r in env.rows().values()].count(changed) == 2

    other = env.json("uploads", "scan", "--tenant", "nordlicht")
    assert other["queued"] == len(_backup_sources(env, "nordlicht")) > 0
    assert {r.company_id for r in env.rows().values()} == {1, 2}


def test_scan_of_an_unknown_tenant_is_one_line_and_queues_nothing(demo_env):
    code, out, err = demo_env.run("uploads", "scan", "--tenant", "nosuch")
    assert code == 2 and out == ""
    assert "nosuch" in one_error_line(err)
    assert demo_env.rows() == {}


def test_scan_reports_progress_while_it_walks(demo_env):
    """The progress bar's feed: the running figures every N files, then the final ones."""
    from bg_ops.defs.files.backup import scan_and_queue
    from bg_ops.defs.tenants.logic import get_tenant

    seen: list[tuple[int, int]] = []
    with session_scope(demo_env.engine) as s:
        report = scan_and_queue(s, get_tenant(s, "acme"), demo_env.files, now=datetime.now(UTC),
                                on_progress=lambda r: seen.append((r.scanned, r.queued)), progress_every=4)
    total = len(_backup_sources(demo_env, "acme"))
    assert report.scanned == total
    assert [n for n, _ in seen[:-1]] == list(range(4, total + 1, 4))
    assert seen[-1] == (total, total)
