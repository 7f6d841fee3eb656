"""B5 upload drain (PERFORMANCE.md): files through the upload queue to Dropbox, real SDK.

N files of 64 KB (full 1,000, quick 60) of deterministic random bytes under the files root,
queued (``queue_upload``, before the clock starts) for one tenant on PostgreSQL, then
uploaded by ``drain_uploads`` (the code the upload job runs: claim a batch of 50 under a
lease, check the quota, ``DropboxStorageResource.upload`` through the real ``dropbox`` SDK —
read each file once, hash those bytes, send them with the hash, compare the content hash
Dropbox returns —, record the batch in one UPDATE) to the loopback
Dropbox test server (``bench/dropbox_sink.py``: ``FakeDropboxServer`` in its own process, so
its CPU is not in the measured process; HTTPS with its own certificate).

The limit measured in the same run: a bare SDK loop, ``dbx.files_upload(data, path)`` for
the same files read from disk, with an SDK client set up the same way (same server, TLS,
token refresh done before the clock). Both run in one child process started with the
SDK's ``DROPBOX_*_HOST`` variables pointing at the server (the SDK reads them once, at
import); each client is warmed up (token, TLS connection) before its clock starts. Full
size runs two rounds. Within a round the two loops take turns in slices of 100 files (two
drain batches; which goes first alternates), so both see the same load on a shared machine;
the drain keeps its queue between slices and the last slice drains until nothing is due.
Ratio = drain files/s / bare files/s over all rounds, goal >= 0.8.

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
SLICE = 100  # files per interleaved slice (two batches)
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
    original_upload = DropboxStorageResource.upload
    DropboxStorageResource.upload = probes.wrap("storage.upload (read, hash, SDK call)", original_upload)

    engine = create_db_engine(spec["db"])
    policy = uploads_mod.UploadPolicy(batch_size=BATCH, time_budget_seconds=3600)
    out: dict = {"runs": []}

    def warmed() -> DropboxStorageResource:
        client_storage = storage()
        client_storage.get_metadata("/warm-up")  # token refresh + TLS connection, before the clock
        return client_storage

    def one_round(rep: int) -> dict:
        """All n files both ways, interleaved in slices of SLICE files (alternating which goes
        first), so both loops see the same load on a shared machine."""
        dbx, drain_storage = warmed()._client(), warmed()
        now = datetime.now(UTC)
        with session_scope(engine) as session:
            for name in names:
                uploads_mod.queue_upload(session, company_id=TENANT_ID, source_path=f"{TENANT_SLUG}/uploads/{name}",
                                         dest_path=f"/{TENANT_SLUG}/drain-{rep}/{name}", files_root=root, now=now)
        with engine.connect() as conn:  # the pool's connection is open before the clock
            conn.exec_driver_sql("SELECT 1")
        probes.reset()
        bare_s = drain_s = 0.0
        totals = {"uploaded": 0, "retried": 0, "canceled": 0, "batches": 0}
        stopped = ""
        starts = list(range(0, len(names), SLICE))
        for k, first in enumerate(starts):
            last_slice = k == len(starts) - 1
            for kind in (("bare", "drain") if k % 2 == 0 else ("drain", "bare")):
                t = now_s()
                if kind == "bare":
                    for name in names[first:first + SLICE]:
                        with open(root / TENANT_SLUG / "uploads" / name, "rb") as fh:
                            data = fh.read()
                        dbx.files_upload(data, f"{CLOUD_ROOT}/{TENANT_SLUG}/bare-{rep}/{name}",
                                         mode=dbx_files.WriteMode.add)
                    bare_s += now_s() - t
                else:
                    # the last slice drains until nothing is due, as a real drain ends
                    report = uploads_mod.drain_uploads(engine, drain_storage, clock=lambda: datetime.now(UTC),
                                                       files_root=root, policy=policy,
                                                       max_batches=None if last_slice else SLICE // BATCH)
                    drain_s += now_s() - t
                    for key in totals:
                        totals[key] += getattr(report, key)
                    stopped = report.stopped_because
        return {"rep": rep, "bare_s": bare_s, "drain_s": drain_s,
                "drain": {**totals, "stopped_because": stopped, "slices": len(starts), "probes": probes.snapshot()}}

    try:
        for rep in range(spec["repeats"]):
            out["runs"].append(one_round(rep))
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

    # Every round counts (no best-of): the slices already interleave the two loops.
    drain_s = sum(r["drain_s"] for r in out["runs"])
    bare_s = sum(r["bare_s"] for r in out["runs"])
    files_total = n * len(out["runs"])
    rate, bare_rate = files_total / drain_s, files_total / bare_s
    ratio = rate / bare_rate
    probes: dict[str, float] = {}
    for r in out["runs"]:
        for k, v in r["drain"]["probes"].items():
            probes[k] = probes.get(k, 0.0) + v["seconds"]
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
        "ratio_per_round": [round(r["bare_s"] / r["drain_s"], 3) for r in out["runs"]],
        "slice": SLICE,
        "drain_mb_per_s": round(files_total * FILE_BYTES / drain_s / 2**20, 2),
        "bare_mb_per_s": round(files_total * FILE_BYTES / bare_s / 2**20, 2),
        "drain_breakdown": breakdown, "drain_probes_s": {k: round(v, 4) for k, v in probes.items()},
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
