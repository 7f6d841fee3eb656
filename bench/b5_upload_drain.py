"""B5 upload drain (PERFORMANCE.md): files through the upload queue to Dropbox, real SDK.

N files of 64 KB (full 1,000, quick 60) of deterministic random bytes under the files root,
queued (``queue_upload``, before the clock starts) for one tenant on PostgreSQL, then
uploaded by ``drain_uploads`` (the code the upload job runs: claim a batch of 50 under a
lease, check the quota, hash each file, ``DropboxStorageResource.upload`` through the real
``dropbox`` SDK, compare the content hash Dropbox returns, record the batch) to the loopback
Dropbox test server (``bench/dropbox_sink.py``: ``FakeDropboxServer`` in its own process, so
its CPU is not in the measured process; HTTPS with its own certificate).

The limit measured in the same run: a bare SDK loop, ``dbx.files_upload(data, path)`` for
the same files read from disk, with an SDK client set up the same way (same server, TLS,
token refresh done before the clock). Both run in one child process started with the
SDK's ``DROPBOX_*_HOST`` variables pointing at the server (the SDK reads them once, at
import); each client is warmed up (token, TLS connection) before its clock starts. Full
size alternates bare/drain twice and keeps the best of each. Ratio = drain files/s / bare
files/s, goal >= 0.8.

Checked after every run, on the server: every file arrived under its own path with the
content hash of the local file, by exactly one successful upload request; in the database:
every row 'uploaded' with that content hash.

    python -m bench.b5_upload_drain --size full    # standalone, prints the table
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO_ROOT, BenchPostgres, BenchResult, Figure, dominant, log, now_s

NAME = "b5_upload_drain"
TITLE = "B5 upload drain"
SIZES = {"quick": 60, "full": 1_000}
REPEATS = {"quick": 1, "full": 2}
FILE_BYTES = 64 * 1024
BATCH = 50
RATIO_GOAL = 0.8
TENANT_ID = 1
TENANT_SLUG = "bench-1"
CLOUD_ROOT = "/bg_ops"
_HOST_VARS = ("DROPBOX_API_HOST", "DROPBOX_API_CONTENT_HOST", "DROPBOX_API_NOTIFY_HOST", "DROPBOX_WEB_HOST")


def make_files(root: Path, n: int) -> dict[str, str]:
    """n files of 64 KB under root/bench-1/uploads; {name: content hash}."""
    from bg_ops.util.content_hash import content_hash_bytes

    folder = root / TENANT_SLUG / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for i in range(n):
        data = random.Random(i).randbytes(FILE_BYTES)
        name = f"f{i:05d}.bin"
        (folder / name).write_bytes(data)
        hashes[name] = content_hash_bytes(data)
    return hashes


class DropboxSink:
    """``bench/dropbox_sink.py`` in its own process, driven over its standard input."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> DropboxSink:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.dropbox_sink"], cwd=REPO_ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"Dropbox test server did not start: {line!r}")
        self.info = json.loads(line[len("READY "):])
        return self

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# -- the child: both upload loops, timed -------------------------------------------------------


def _child(spec: dict) -> dict:
    """Runs with DROPBOX_*_HOST pointing at the test server, before anything imported dropbox."""
    from datetime import UTC, datetime

    from dropbox import files as dbx_files

    from bench.common import Probes
    from bg_ops.db.engine import create_db_engine, session_scope
    from bg_ops.defs.files import uploads as uploads_mod
    from bg_ops.resources.dropbox_storage import DropboxStorageResource

    root = Path(spec["files_root"])
    names = spec["names"]
    sink = spec["sink"]

    def storage() -> DropboxStorageResource:
        return DropboxStorageResource(root=CLOUD_ROOT, app_key=sink["app_key"], app_secret=sink["app_secret"],
                                      refresh_token=sink["refresh_token"], ca_certs=sink["cert"], timeout_seconds=30)

    probes = Probes()
    uploads_mod.claim_uploads = probes.wrap("claim (SQL)", uploads_mod.claim_uploads)
    uploads_mod._quota_left = probes.wrap("quota (SQL)", uploads_mod._quota_left)
    uploads_mod.record_outcomes = probes.wrap("record (SQL)", uploads_mod.record_outcomes)
    uploads_mod.content_hash_file = probes.wrap("local content hash (upload_one)", uploads_mod.content_hash_file)
    original_upload = DropboxStorageResource.upload
    DropboxStorageResource.upload = probes.wrap("storage.upload (hash again, read, SDK call)", original_upload)

    engine = create_db_engine(spec["db"])
    policy = uploads_mod.UploadPolicy(batch_size=BATCH, time_budget_seconds=3600)
    out: dict = {"runs": []}

    def bare(rep: int) -> float:
        client_storage = storage()
        client_storage.get_metadata("/warm-up")  # token refresh + TLS connection, before the clock
        dbx = client_storage._client()
        t = now_s()
        for name in names:
            with open(root / TENANT_SLUG / "uploads" / name, "rb") as fh:
                data = fh.read()
            dbx.files_upload(data, f"{CLOUD_ROOT}/{TENANT_SLUG}/bare-{rep}/{name}", mode=dbx_files.WriteMode.add)
        return now_s() - t

    def drain(rep: int) -> tuple[float, dict]:
        drain_storage = storage()
        drain_storage.get_metadata("/warm-up")
        now = datetime.now(UTC)
        with session_scope(engine) as session:
            for name in names:
                uploads_mod.queue_upload(session, company_id=TENANT_ID, source_path=f"{TENANT_SLUG}/uploads/{name}",
                                         dest_path=f"/{TENANT_SLUG}/drain-{rep}/{name}", files_root=root, now=now)
        with engine.connect() as conn:  # the pool's connection is open before the clock
            conn.exec_driver_sql("SELECT 1")
        probes.reset()
        t = now_s()
        report = uploads_mod.drain_uploads(engine, drain_storage, clock=lambda: datetime.now(UTC),
                                           files_root=root, policy=policy)
        seconds = now_s() - t
        return seconds, {"uploaded": report.uploaded, "retried": report.retried, "canceled": report.canceled,
                         "batches": report.batches, "stopped_because": report.stopped_because,
                         "probes": probes.snapshot()}

    try:
        for rep in range(spec["repeats"]):
            order = ("bare", "drain") if rep % 2 == 0 else ("drain", "bare")
            run: dict = {"rep": rep, "order": order}
            for kind in order:
                if kind == "bare":
                    run["bare_s"] = bare(rep)
                else:
                    run["drain_s"], run["drain"] = drain(rep)
            out["runs"].append(run)
    finally:
        DropboxStorageResource.upload = original_upload
        engine.dispose()
    return out


def run_child(spec: dict, sink_info: dict, timeout: float = 1800) -> dict:
    env = dict(os.environ)
    for name in _HOST_VARS:
        env[name] = f"127.0.0.1:{sink_info['port']}"
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "bench.b5_upload_drain", "--child", json.dumps(spec)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"B5 child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


# -- checks and figures ------------------------------------------------------------------------


def _arrived(sink: DropboxSink, prefix: str, expected: dict[str, str]) -> dict:
    stats = sink.ask(f"STATS {prefix}")
    files = stats["files"]
    wrong = [name for name, digest in expected.items() if files.get(f"{prefix}{name}".lower(), [None])[0] != digest]
    counts = stats["ok_uploads_by_path"]
    not_once = [name for name in expected if counts.get(f"{prefix}{name}".lower(), 0) != 1]
    sink.ask(f"DROP {prefix}")  # keep the server's memory small
    return {"files": len(files), "wrong_or_missing": wrong[:5], "n_wrong_or_missing": len(wrong),
            "not_exactly_once": not_once[:5], "n_not_exactly_once": len(not_once),
            "uploads_by_status": stats["uploads_by_status"],
            "ok": len(files) == len(expected) and not wrong and not not_once}


def _db_check(pg: BenchPostgres, db: str, expected: dict[str, str], reps: int) -> dict:
    import sqlalchemy as sa

    from bg_ops.db.engine import create_db_engine
    from bg_ops.db.own_schema import upload_queue as u

    engine = create_db_engine(pg.url(db))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(u.c.source_path, u.c.status, u.c.content_hash)).all()
    finally:
        engine.dispose()
    bad = [r.source_path for r in rows
           if r.status != "uploaded" or r.content_hash != expected.get(r.source_path.rsplit("/", 1)[-1])]
    return {"rows": len(rows), "not_uploaded_or_wrong_hash": len(bad), "ok": len(rows) == reps * len(expected) and not bad}


def run(size: str, pg: BenchPostgres) -> BenchResult:
    n, reps = SIZES[size], REPEATS[size]
    result = BenchResult(NAME, TITLE, size)
    root = Path(tempfile.mkdtemp(prefix="bg_ops_b5_"))
    db = pg.fresh_database()
    sink = DropboxSink()
    checks: dict = {}
    try:
        expected = make_files(root, n)
        sink.start()
        log(f"B5: {n} files of {FILE_BYTES // 1024} KB, drain_uploads (batch {BATCH}) vs bare SDK loop, "
            f"{reps} round(s), Dropbox test server in its own process on port {sink.info['port']}")
        cpu0 = sink.ask("STATS /nothing")["cpu"]
        out = run_child({"db": pg.url(db), "files_root": str(root), "names": sorted(expected), "repeats": reps,
                         "sink": sink.info}, sink.info)
        server_cpu = sink.ask("STATS /nothing")["cpu"] - cpu0
        for run_ in out["runs"]:
            rep = run_["rep"]
            checks[f"bare_{rep}"] = _arrived(sink, f"{CLOUD_ROOT}/{TENANT_SLUG}/bare-{rep}/", expected)
            arrived = _arrived(sink, f"{CLOUD_ROOT}/{TENANT_SLUG}/drain-{rep}/", expected)
            arrived["report_uploaded"] = run_["drain"]["uploaded"]
            arrived["ok"] = arrived["ok"] and run_["drain"]["uploaded"] == n and run_["drain"]["retried"] == 0
            checks[f"drain_{rep}"] = arrived
        checks["database"] = _db_check(pg, db, expected, reps)
    finally:
        sink.stop()
        pg.drop(db)
        shutil.rmtree(root, ignore_errors=True)

    best_drain = min(out["runs"], key=lambda r: r["drain_s"])
    drain_s = best_drain["drain_s"]
    bare_s = min(r["bare_s"] for r in out["runs"])
    rate, bare_rate = n / drain_s, n / bare_s
    ratio = rate / bare_rate
    probes = {k: v["seconds"] for k, v in best_drain["drain"]["probes"].items()}
    # storage.upload includes its own second content hash; upload_one's hash is separate
    breakdown = dominant(probes, drain_s)
    log(f"B5: drain {rate:,.0f} files/s ({drain_s:.2f} s), bare SDK loop {bare_rate:,.0f} files/s ({bare_s:.2f} s); "
        f"server CPU {server_cpu:.1f} s")
    result.figures.append(Figure(
        f"drain_uploads, {n:,} files of {FILE_BYTES // 1024} KB, batch {BATCH}", round(rate, 1), "files/s",
        limit=round(bare_rate, 1), limit_label="bare SDK files_upload loop, files/s", ratio=round(ratio, 3),
        goal=f">= {RATIO_GOAL:g}", ok=ratio >= RATIO_GOAL,
        note="" if ratio >= RATIO_GOAL else f"drain time: {breakdown}"))
    checks["ok"] = all(c["ok"] for c in checks.values() if isinstance(c, dict))
    result.checks = checks
    result.details = {
        "files": n, "file_bytes": FILE_BYTES, "batch": BATCH, "repeats": reps,
        "drain_s": [round(r["drain_s"], 3) for r in out["runs"]], "bare_s": [round(r["bare_s"], 3) for r in out["runs"]],
        "drain_mb_per_s": round(n * FILE_BYTES / drain_s / 2**20, 2),
        "bare_mb_per_s": round(n * FILE_BYTES / bare_s / 2**20, 2),
        "drain_breakdown": breakdown, "drain_probes": best_drain["drain"]["probes"],
        "server": "bench/dropbox_sink.py (FakeDropboxServer) in its own process; its CPU over all runs: "
                  f"{server_cpu:.2f} s",
        "runs": out["runs"],
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b5_upload_drain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="quick")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(_child(json.loads(args.child)), default=str), flush=True)
        return 0
    from bench.common import write_result
    from bench.run import table

    pg = BenchPostgres().start()
    try:
        result = run(args.size, pg)
    finally:
        pg.stop()
    write_result(result)
    print(table([result]))
    return 0 if result.checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
