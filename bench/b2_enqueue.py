"""B2 enqueue (PERFORMANCE.md): what queueing a mail costs the caller.

On PostgreSQL, in this process, with the B1 workload's mails (text + HTML, 3 priorities)
and an idempotency key on every mail (the usual case for reminders: it adds the lookup of
the key to every call):

- singles: N calls of ``enqueue`` (full 10,000, quick 300), each in its own transaction
  (``session_scope``: session, enqueue, commit), timed one by one -> p50 / p99 ms. Goal:
  p99 < 5 ms; the ratio is p99 / 5 ms. The limit measured in the same run is a bare
  single-row ``INSERT`` of the same row (as ``enqueue`` would write it, built beforehand)
  plus commit through the same kind of engine, timed the same way; both loops alternate
  in blocks so they see the same machine. 50 warm-up calls of each are not counted.
- bulk: one ``enqueue_many`` of N mails in one transaction (on PostgreSQL it COPYs the rows,
  each built while the server stores the ones before it) -> rows/s (goal >= 20,000 rows/s), against a bare executemany ``INSERT`` of the
  same rows, built beforehand; best of 3, each on a fresh database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from bench.b1_email_drain import mail_spec
from bench.common import (
    MAIL_FROM,
    BenchPostgres,
    BenchResult,
    Figure,
    Probes,
    dominant,
    log,
    now_s,
    percentile,
)

NAME = "b2_enqueue"
TITLE = "B2 enqueue"
SIZES = {"quick": 300, "full": 10_000}
WARMUP = 50
BLOCK = {"quick": 100, "full": 500}
BULK_REPEATS = 3
P99_GOAL_MS = 5.0
BULK_GOAL_ROWS_S = 20_000.0
FILES_ROOT = "/nonexistent-bench-files"


def make_email(i: int, tag: str):
    from bg_ops.defs.email.enqueue import Email

    m = mail_spec(i)
    return Email(company_id=m["company_id"], to=[m["to"]], subject=m["subject"], text=m["text"],
                 html=m["html"], priority=m["priority"], idempotency_key=f"b2-{tag}-{i}")


def _settings():
    from bg_ops.defs.email.enqueue import MailSettings

    return MailSettings(mail_from=MAIL_FROM, files_root=Path(FILES_ROOT))


def prepared_rows(emails, settings) -> list[dict]:
    """The rows ``enqueue`` writes for these mails, built beforehand for the bare inserts."""
    from bg_ops.defs.email.enqueue import prepare

    now = datetime.now(UTC)
    companies = {c: (f"Bench Agency {c}", f"bench-{c}") for c in {e.company_id for e in emails}}
    return [prepare(e, company=companies[e.company_id], settings=settings, now=now).row for e in emails]


def _queue_check(engine, expected: int) -> dict:
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT count(*), count(DISTINCT idempotency_key), count(raw_message), "
            "count(*) FILTER (WHERE status = 'pending') FROM email_queue"
        )).one()
    total, keys, built, pending = (int(x) for x in rows)
    return {"rows": total, "distinct_keys": keys, "built": built, "pending": pending,
            "ok": total == expected and keys == expected and built == expected and pending == expected}


def run(size: str, pg: BenchPostgres) -> BenchResult:
    import sqlalchemy as sa

    from bg_ops.db.engine import create_db_engine, session_scope
    from bg_ops.db.own_schema import email_queue
    from bg_ops.defs.email import enqueue as enqueue_mod

    n = SIZES[size]
    block = BLOCK[size]
    settings = _settings()
    result = BenchResult(NAME, TITLE, size)
    details: dict = {"n": n, "warmup": WARMUP, "block": block, "bulk_repeats": BULK_REPEATS}
    checks: dict = {}

    probes = Probes()
    original_prepare, original_names = enqueue_mod.prepare, enqueue_mod.company_names
    enqueue_mod.prepare = probes.wrap("validate + build message", original_prepare)
    # The tenant lookup is the transaction's first statement: it also pays the pool checkout
    # (with the engine's pre-ping) and BEGIN.
    enqueue_mod.company_names = probes.wrap("tenant lookup (1st SQL: checkout, ping, BEGIN)", original_names)
    try:
        # -- singles -------------------------------------------------------------------
        log(f"B2: {n} single enqueues vs {n} bare INSERT + commit, alternating in blocks of {block}")
        api_db, bare_db = pg.fresh_database(), pg.fresh_database()
        api_engine, bare_engine = create_db_engine(pg.url(api_db)), create_db_engine(pg.url(bare_db))
        try:
            warm = [make_email(i, "warm") for i in range(WARMUP)]
            emails = [make_email(i, "single") for i in range(n)]
            warm_rows = prepared_rows([make_email(i, "warm") for i in range(WARMUP)], settings)
            rows = prepared_rows([make_email(i, "single") for i in range(n)], settings)
            insert = sa.insert(email_queue)

            def api_one(email) -> float:
                t = now_s()
                with session_scope(api_engine) as session:
                    enqueue_mod.enqueue(session, email, now=datetime.now(UTC), settings=settings)
                return now_s() - t

            def bare_one(row) -> float:
                t = now_s()
                with bare_engine.begin() as conn:
                    conn.execute(insert, row)
                return now_s() - t

            for e, r in zip(warm, warm_rows):
                api_one(e)
                bare_one(r)
            probes.reset()
            api_ms: list[float] = []
            bare_ms: list[float] = []
            for start in range(0, n, block):
                api_ms += [1000 * api_one(e) for e in emails[start:start + block]]
                bare_ms += [1000 * bare_one(r) for r in rows[start:start + block]]
            single_probes = probes.snapshot()
            checks["singles_api"] = _queue_check(api_engine, n + WARMUP)
            checks["singles_bare"] = _queue_check(bare_engine, n + WARMUP)
        finally:
            api_engine.dispose()
            bare_engine.dispose()
            pg.drop(api_db)
            pg.drop(bare_db)

        p50, p99 = percentile(api_ms, 50), percentile(api_ms, 99)
        b50, b99 = percentile(bare_ms, 50), percentile(bare_ms, 99)
        api_total = sum(api_ms) / 1000
        parts = {k: v["seconds"] for k, v in single_probes.items()}
        single_breakdown = dominant({**parts}, api_total)
        details["singles"] = {
            "api_ms": {"p50": round(p50, 3), "p90": round(percentile(api_ms, 90), 3), "p99": round(p99, 3),
                       "max": round(max(api_ms), 3), "mean": round(api_total * 1000 / n, 3)},
            "bare_ms": {"p50": round(b50, 3), "p90": round(percentile(bare_ms, 90), 3), "p99": round(b99, 3),
                        "max": round(max(bare_ms), 3), "mean": round(sum(bare_ms) / n, 3)},
            "api_probes": single_probes,
            "api_breakdown": "session + INSERT + commit = other; " + single_breakdown,
        }
        log(f"B2: singles p50 {p50:.2f} ms p99 {p99:.2f} ms; bare p50 {b50:.2f} ms p99 {b99:.2f} ms")

        # -- bulk ----------------------------------------------------------------------
        log(f"B2: bulk enqueue_many of {n} vs bare executemany INSERT, best of {BULK_REPEATS}")
        api_rates, bare_rates, bulk_probes = [], [], []
        for rep in range(BULK_REPEATS):
            emails = [make_email(i, f"bulk{rep}") for i in range(n)]
            rows = prepared_rows([make_email(i, f"bulk{rep}") for i in range(n)], settings)
            for kind in ("api", "bare"):
                name = pg.fresh_database()
                engine = create_db_engine(pg.url(name))
                try:
                    with engine.connect() as conn:  # open the connection before the clock starts
                        conn.execute(sa.text("SELECT 1"))
                    probes.reset()
                    t = now_s()
                    if kind == "api":
                        with session_scope(engine) as session:
                            out = enqueue_mod.enqueue_many(session, emails, now=datetime.now(UTC), settings=settings)
                    else:
                        with engine.begin() as conn:
                            conn.execute(sa.insert(email_queue), rows)
                    seconds = now_s() - t
                    check = _queue_check(engine, n)
                    if kind == "api":
                        check["returned_created"] = sum(1 for o in out if o.created)
                        check["returned_distinct_ids"] = len({o.id for o in out})
                        check["ok"] = check["ok"] and check["returned_created"] == n == check["returned_distinct_ids"]
                        api_rates.append(n / seconds)
                        bulk_probes.append((seconds, probes.snapshot()))
                    else:
                        bare_rates.append(n / seconds)
                    checks[f"bulk_{kind}_{rep}"] = check
                finally:
                    engine.dispose()
                    pg.drop(name)
    finally:
        enqueue_mod.prepare, enqueue_mod.company_names = original_prepare, original_names

    bulk, bare_bulk = max(api_rates), max(bare_rates)
    best_seconds, best_probes = min(bulk_probes, key=lambda sp: sp[0])
    bulk_breakdown = ("key look-up + COPY + commit (PostgreSQL; the COPY streams the rows as they are built) "
                      "= other; ") + dominant(
        {k: v["seconds"] for k, v in best_probes.items()}, best_seconds)
    details["bulk"] = {
        "api_rows_per_s": [round(r, 1) for r in api_rates], "bare_rows_per_s": [round(r, 1) for r in bare_rates],
        "api_breakdown": bulk_breakdown,
    }
    log(f"B2: bulk {bulk:,.0f} rows/s; bare executemany {bare_bulk:,.0f} rows/s")

    p99_ok = p99 < P99_GOAL_MS
    result.figures += [
        Figure("single enqueue, own transaction: p50", round(p50, 3), "ms", limit=round(b50, 3),
               limit_label="bare INSERT+commit p50, ms", ratio=round(p50 / b50, 2),
               goal="- (ratio: x bare)", ok=None),
        Figure("single enqueue, own transaction: p99", round(p99, 3), "ms", limit=round(b99, 3),
               limit_label="bare INSERT+commit p99, ms", ratio=round(p99 / P99_GOAL_MS, 3),
               goal=f"< {P99_GOAL_MS:g} ms (ratio = p99/{P99_GOAL_MS:g} ms)", ok=p99_ok,
               note="" if p99_ok else f"p99 {p99:.2f} ms vs bare {b99:.2f} ms; per call: {single_breakdown}"),
        Figure(f"bulk enqueue_many of {n:,}", round(bulk, 1), "rows/s", limit=round(bare_bulk, 1),
               limit_label="bare executemany INSERT", ratio=round(bulk / bare_bulk, 3),
               goal=f">= {BULK_GOAL_ROWS_S:,.0f} rows/s", ok=bulk >= BULK_GOAL_ROWS_S,
               note="" if bulk >= BULK_GOAL_ROWS_S else bulk_breakdown),
    ]
    checks["ok"] = all(c["ok"] for c in checks.values() if isinstance(c, dict))
    result.checks = checks
    result.details = details
    return result
