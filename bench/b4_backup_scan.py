"""B4 backup scan (PERFORMANCE.md, and its part of B8): how fast the nightly backup finds work.

A tenant's files on local disk under ``<files root>/bench-1/projects/``: full 100,000 files in
1,000 folders (100 a folder), quick 2,000 in 20, each a few hundred bytes of deterministic
text. On PostgreSQL (a fresh database), in this process, ``scan_and_queue`` (the code the
backup job runs) is timed, each call in its own session that commits:

1. first scan: every file is new, so every file is hashed, queued and written to the
   manifest -> files/s; the limit beside it is a bare walk that reads and content-hashes
   every file (no database);
2. rescan with nothing changed, 3 times -> best seconds; the limit measured in the same run
   is a bare ``os.scandir`` walk of the same tree that also stats every file, 3 times,
   interleaved with the rescans (best of each; the tree is in the page cache for both).
   Ratio = rescan / bare walk, goal <= 2;
3. 1% of the files changed: half rewritten (new content, mtime moved), half only touched
   (mtime moved, same bytes) -> seconds; checked: exactly the rewritten files are queued,
   exactly the touched ones are recognised as unchanged content, and a rescan afterwards
   finds everything unchanged again.

Memory: the peak of Python allocations (``tracemalloc``) during one extra, untimed rescan.
B8: the same at 0.1x and 1x of the full size (10x, 1,000,000 files and about 4 GB of disk,
only with ``BG_OPS_BENCH_SCALE=1`` / ``make bench-scale`` or ``--size scale``): rescan time
per 1,000 files and the rescan's memory per scale.

    python -m bench.b4_backup_scan --size full [--profile]    # standalone, prints the table
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from bench.common import BenchPostgres, BenchResult, Figure, log, now_s

NAME = "b4_backup_scan"
TITLE = "B4 backup scan"
TENANT_SLUG = "bench-1"
FILES = {"quick": 2_000, "full": 100_000, "scale": 100_000}
SCALES = {"quick": (1.0,), "full": (0.1, 1.0), "scale": (0.1, 1.0, 10.0)}
FILES_PER_FOLDER = 100
CHANGED = 0.01
REPEATS = 3
RESCAN_GOAL = 2.0
LINEAR_GOAL = 1.5
SEED = 4


def _content(i: int) -> bytes:
    return (f"bench file {i:07d}: brief, notes and a proof list\n" * (1 + i % 12)).encode()


def make_tree(root: Path, n: int) -> list[str]:
    """n files in n/100 folders under root/bench-1/projects; returns their relative paths."""
    projects = root / TENANT_SLUG / "projects"
    rels = []
    for folder in range(max(1, -(-n // FILES_PER_FOLDER))):
        (projects / f"p{folder:04d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rel = f"p{i // FILES_PER_FOLDER:04d}/f{i:07d}.txt"
        with open(projects / rel, "wb") as fh:
            fh.write(_content(i))
        rels.append(f"{TENANT_SLUG}/projects/{rel}")
    return rels


def bare_walk(top: str, *, read_hash: bool = False) -> int:
    """os.scandir over the tree, stat of every file (and its content hash): the limit."""
    from bg_ops.util.content_hash import content_hash_file

    count = 0
    stack = [top]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    entry.stat(follow_symlinks=False)
                    if read_hash:
                        content_hash_file(entry.path)
                    count += 1
    return count


def _scan(engine, tenant, root: Path, now: datetime):
    from bg_ops.db.engine import session_scope
    from bg_ops.defs.files.backup import scan_and_queue

    t = now_s()
    with session_scope(engine) as session:
        report = scan_and_queue(session, tenant, root, now=now)
    return now_s() - t, report


def measure_scale(pg: BenchPostgres, n: int, *, profile: bool = False) -> dict:
    import sqlalchemy as sa

    from bg_ops.db.engine import create_db_engine, session_scope
    from bg_ops.db.own_schema import upload_queue
    from bg_ops.defs.tenants.logic import get_tenant

    root = Path(tempfile.mkdtemp(prefix="bg_ops_b4_"))
    db = pg.fresh_database()
    engine = create_db_engine(pg.url(db))
    checks: dict = {}
    out: dict = {"files": n, "folders": max(1, -(-n // FILES_PER_FOLDER))}
    try:
        t = now_s()
        rels = make_tree(root, n)
        out["make_tree_s"] = round(now_s() - t, 2)
        top = str(root / TENANT_SLUG / "projects")
        with session_scope(engine) as session:
            tenant = get_tenant(session, TENANT_SLUG)

        # 1. first scan: all new
        log(f"B4: {n:,} files in {out['folders']:,} folders (made in {out['make_tree_s']} s); first scan")
        first_s, first = _scan(engine, tenant, root, datetime.now(UTC))
        checks["first_scan"] = {"scanned": first.scanned, "new": first.new, "queued": first.queued,
                                "ok": first.scanned == first.new == first.queued == n}
        t = now_s()
        hashed = bare_walk(top, read_hash=True)
        walk_hash_s = now_s() - t

        # 2. rescan, nothing changed, interleaved with the bare walk
        walks, rescans, rescan_ok = [], [], True
        for _ in range(REPEATS):
            t = now_s()
            walked = bare_walk(top)
            walks.append(now_s() - t)
            seconds, report = _scan(engine, tenant, root, datetime.now(UTC))
            rescans.append(seconds)
            rescan_ok &= report.unchanged == report.scanned == n and report.queued == report.hashed == 0
        checks["rescan_unchanged"] = {"ok": rescan_ok and walked == hashed == n, "walked": walked}
        tracemalloc.start()
        _scan(engine, tenant, root, datetime.now(UTC))
        rescan_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        prof_text = None
        if profile:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            _scan(engine, tenant, root, datetime.now(UTC))
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
            prof_text = buf.getvalue()

        # 3. 1% changed: half rewritten, half touched
        rng = random.Random(f"{SEED}:{n}")
        picked = rng.sample(range(n), max(2, round(n * CHANGED)))
        modified = {rels[i] for i in picked[: len(picked) // 2]}
        touched = {rels[i] for i in picked[len(picked) // 2:]}
        for rel in modified | touched:
            path = root / rel
            st = path.stat()
            if rel in modified:
                path.write_bytes(path.read_bytes() + b"changed\n")
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        t = now_s()
        bare_walk(top)
        walk_after_change_s = now_s() - t
        changed_at = datetime.now(UTC)
        changed_s, changed = _scan(engine, tenant, root, changed_at)
        with engine.connect() as conn:
            queued_now = set(conn.execute(
                sa.select(upload_queue.c.source_path).where(upload_queue.c.created_at == changed_at)).scalars())
        _, again = _scan(engine, tenant, root, datetime.now(UTC))
        checks["one_percent_changed"] = {
            "modified": len(modified), "touched": len(touched), "changed": changed.changed,
            "touched_same_content": changed.touched_same_content, "queued": changed.queued,
            "queued_exactly_the_modified": queued_now == modified, "rescan_after_unchanged": again.unchanged,
            "ok": (changed.changed == changed.queued == len(modified) and queued_now == modified
                   and changed.touched_same_content == len(touched) and changed.new == 0
                   and again.unchanged == n and again.queued == 0),
        }
    finally:
        engine.dispose()
        pg.drop(db)
        shutil.rmtree(root, ignore_errors=True)

    out.update({
        "first_scan_s": round(first_s, 3), "first_files_per_s": round(n / first_s, 1),
        "walk_hash_s": round(walk_hash_s, 3), "walk_hash_files_per_s": round(n / walk_hash_s, 1),
        "rescan_s": [round(x, 4) for x in rescans], "walk_s": [round(x, 4) for x in walks],
        "rescan_best_s": round(min(rescans), 4), "walk_best_s": round(min(walks), 4),
        "rescan_peak_python_mb": round(rescan_peak_mb, 1),
        "changed_scan_s": round(changed_s, 4), "walk_after_change_s": round(walk_after_change_s, 4),
        "checks": {**checks, "ok": all(c["ok"] for c in checks.values())},
    })
    if prof_text:
        out["profile_rescan_tottime"] = prof_text
    log(f"B4: {n:,} files: first scan {first_s:.2f} s ({n / first_s:,.0f} files/s), rescan best "
        f"{min(rescans):.3f} s vs bare walk {min(walks):.3f} s, 1% changed {changed_s:.3f} s; "
        f"checks {'ok' if out['checks']['ok'] else 'FAILED'}")
    return out


def run(size: str, pg: BenchPostgres, *, profile: bool = False) -> BenchResult:
    if size == "full" and os.environ.get("BG_OPS_BENCH_SCALE") == "1":
        size = "scale"
    result = BenchResult(NAME, TITLE, size)
    measured = [measure_scale(pg, round(FILES[size] * s), profile=profile and s == 1.0) for s in SCALES[size]]
    head = next(m for m in measured if m["files"] == FILES[size])
    ratio = head["rescan_best_s"] / head["walk_best_s"]
    result.figures += [
        Figure(f"first scan, {head['files']:,} new files", head["first_files_per_s"], "files/s",
               limit=head["walk_hash_files_per_s"], limit_label="bare walk + content hash, files/s",
               ratio=round(head["first_files_per_s"] / head["walk_hash_files_per_s"], 2), goal="", ok=None),
        Figure("rescan, nothing changed", head["rescan_best_s"], "s", limit=head["walk_best_s"],
               limit_label="bare os.scandir walk + stat, s", ratio=round(ratio, 2), goal=f"ratio <= {RESCAN_GOAL:g}",
               ok=ratio <= RESCAN_GOAL,
               note="" if ratio <= RESCAN_GOAL else _rescan_note(head)),
        Figure("rescan, 1% changed (half rewritten, half touched)", head["changed_scan_s"], "s",
               limit=head["walk_after_change_s"], limit_label="bare walk + stat, s",
               ratio=round(head["changed_scan_s"] / head["walk_after_change_s"], 2),
               goal="exactly the rewritten files queued",
               ok=head["checks"]["one_percent_changed"]["ok"]),
    ]
    if len(measured) > 1:
        small = measured[0]
        small_per_k = 1000 * small["rescan_best_s"] / small["files"]
        for m in measured:
            per_k = 1000 * m["rescan_best_s"] / m["files"]
            last = m is measured[-1]
            result.figures.append(Figure(
                f"B8 rescan at {m['files']:,} files: time per 1,000 files", round(1000 * per_k, 3), "ms",
                limit=round(1000 * small_per_k, 3), limit_label=f"ms per 1,000 at {small['files']:,} files",
                ratio=round(per_k / small_per_k, 2), goal=f"ratio <= {LINEAR_GOAL:g} (linear)" if last else "",
                ok=(per_k / small_per_k <= LINEAR_GOAL) if last else None))
            result.figures.append(Figure(
                f"B8 rescan at {m['files']:,} files: peak Python memory (tracemalloc)", m["rescan_peak_python_mb"],
                "MB", limit=small["rescan_peak_python_mb"], limit_label=f"MB at {small['files']:,} files",
                ratio=round(m["rescan_peak_python_mb"] / small["rescan_peak_python_mb"], 2), goal="", ok=None,
                note="the manifest of the tenant is held in memory during a scan: grows with the files"))
    result.checks = {f"files_{m['files']}": m["checks"] for m in measured}
    result.checks["ok"] = all(m["checks"]["ok"] for m in measured)
    result.details = {"files_per_folder": FILES_PER_FOLDER, "changed_fraction": CHANGED, "repeats": REPEATS,
                      "memory_method": "tracemalloc peak during one extra, untimed rescan",
                      "scales": measured}
    return result


def _rescan_note(m: dict) -> str:
    return (f"rescan {m['rescan_best_s']:.3f} s vs bare walk {m['walk_best_s']:.3f} s: the difference is the "
            "manifest query and per-file Python work in scan_and_queue (see details.profile_rescan_tottime "
            "with --profile)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b4_backup_scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SCALES), default="quick")
    parser.add_argument("--profile", action="store_true", help="also profile one rescan with cProfile")
    args = parser.parse_args(argv)
    from bench.common import write_result
    from bench.run import table

    pg = BenchPostgres().start()
    try:
        result = run(args.size, pg, profile=args.profile)
    finally:
        pg.stop()
    write_result(result)
    print(table([result]))
    for m in result.details["scales"]:
        if "profile_rescan_tottime" in m:
            print(m["profile_rescan_tottime"])
    return 0 if result.checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
