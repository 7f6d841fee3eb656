"""B3 reminder scan and B8 scale (PERFORMANCE.md): the whole daily reminder run of one tenant.

The workload, on PostgreSQL, for one tenant (company 1, Europe/Berlin) at scale 1x:
5,000 users, 1,000 projects, 100,000 tasks, 50,000 approvals with 3 steps each, 20,000
translations, 20,000 core requests, 10,000 purchase orders, plus 2,000 documents, 5,000
invoices and 300 design queue items so every rule has work. About 1% of each table is due on
the run day (2026-06-01: the 1st of a month, so the PO rule runs too); the role pools that
rules fan out to (finance, translators, approvers, ...) have a fixed size at every scale.
The rows are generated deterministically (seeded ``random``) and loaded with COPY; the
database is then VACUUM ANALYZEd and used as a template, so every measurement starts from
an identical copy.

Measured: the daily run as ``daily_reminders_job`` does it, minus Dagster: every rule of
``ALL_RULES`` through ``run_rule`` in its own session (tenant lookup, switches, find,
checking every reminder and rendering its subject, then reminder_log, the queued mail (bodies
rendered at delivery) and notifications written by one COPY and one statement, commit), then
``send_digests``. It runs in a fresh child process (a Dagster run is a fresh
process too), after the imports and the first connection: "cold" is that first run, "warm"
a second run in the same process on another copy of the data. Both sides run three times
(twice in scale, once in quick) on fresh copies, taking turns, and each side's best run
counts: the machines are shared, and a slow spell of a few seconds moved a single run's
ratio by a third. Before each run the server takes a checkpoint, so the writes of copying
a database (WAL-logged since PostgreSQL 15) are not flushed during a measured run. Peak memory is the child's peak RSS (``VmHWM`` in /proc/self/status,
imports included) read right after each cold run, the highest of them; the RSS after
imports is reported beside it.

The limit measured in the same run (PERFORMANCE.md: "one hand-written ``INSERT … SELECT`` per
rule that writes the same queue rows"): for each rule one hand-written ``INSERT INTO
email_queue (...) SELECT ...`` selecting the same due set with the same filters (the same
recipients, one row per entity, recipient and period, the same row of a key kept), and
writing the very row our run queues: the subject line rendered and folded, the template, the
whole template context, the send time in the recipient's zone, the idempotency key and the
Message-ID. A check compares every column of every row (but the id) of the limit's queue with
ours, at every scale and turn: the limit is only a limit if it does the same job. It does not
write what our run writes besides (reminder_log for R14, the in-app notifications). The
twelve statements run each in its own transaction, through the same engine factory as our
run (so with the same session settings, JIT off), on another copy of the same data. Ratio =
our best cold seconds / the best hand-written seconds (goal <= 3); goals < 5 s and peak RSS
< 300 MB at 1x. The earlier limit, which wrote a cruder row (a subject and body made by
concatenation, no context, no Message-ID), is still measured and printed for comparison.

B8: the same at 0.1x and 1x and, with ``BG_OPS_BENCH_SCALE=1`` (``make bench-scale``) or
``--size scale``, 10x: time per 1,000 source rows and peak RSS per scale; linear time means
the same time per 1,000 rows at every scale. Quick runs 0.01x only (one cold run, one
hand-written run, no B8 rows) so the test suite stays fast.

Checks: at every scale, per rule, the number of mails we queued equals the rows the
hand-written statement wrote, and every queued row equals the limit's; reminder_log and notifications have one row per mail; every
queued mail is ready to send (its subject rendered and its template named, or built).

    python -m bench.b3_reminder_scan --size full [--profile]    # standalone, prints the table
"""

from __future__ import annotations

import argparse
import calendar
import io
import json
import os
import random
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from bench.common import (
    MAIL_FROM,
    REPO_ROOT,
    BenchPostgres,
    BenchResult,
    Figure,
    dominant,
    log,
    now_s,
)

NAME = "b3_reminder_scan"
TITLE = "B3 reminder scan"
TENANT_ID = 1
TENANT_SLUG = "bench-1"
ZONE_NAME = "Europe/Berlin"
ZONE = ZoneInfo(ZONE_NAME)
DAY = date(2026, 6, 1)  # the 1st: po_expiring runs (period "2026-06")
NOW = datetime(2026, 6, 1, 3, 30, tzinfo=UTC)  # 05:30 local, after the tenant's day began
SEED = 20260601
DUE = 0.01
SEND_HOUR = 8

# Rows at scale 1x (PERFORMANCE.md B3, plus small tables so every rule has work).
BASE = {
    "users": 5_000, "projects": 1_000, "tasks": 100_000, "approvals": 50_000, "translations": 20_000,
    "core_requests": 20_000, "purchase_orders": 10_000, "documents": 2_000, "invoices": 5_000,
    "design_queue_items": 300,
}
# Role pools rules fan out to: the same size at every scale.
POOLS = (("admin", 3), ("hr", 4), ("finance", 4), ("approver", 6), ("translator", 10),
         ("account_manager", 8), ("designer", 5))
SCALES = {"quick": (0.01,), "full": (0.1, 1.0), "scale": (0.1, 1.0, 10.0)}
HEADLINE_SCALE = {"quick": 0.01, "full": 1.0, "scale": 1.0}
TIME_GOAL_S = 5.0
RSS_GOAL_MB = 300.0
RATIO_GOAL = 3.0
LINEAR_GOAL = 1.5  # time per 1,000 rows at the largest scale / at the smallest
LIMIT_REPEATS = {"quick": 1, "full": 3, "scale": 2}  # runs of each side, best counts
WARM = {"quick": False, "full": True, "scale": True}

_FIRST = ("Ana", "Björn", "Chloé", "Dmitri", "Eva", "François", "Grete", "Hiro", "Inés", "Jonas", "Kemal", "Lena")
_LAST = ("Lima", "Ås", "Martin", "Orlov", "Nowak", "Dubois", "Berg", "Tanaka", "García", "Weber", "Yıldız", "Moreau")
_ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "Europe/London")
_WORDS = ("brand refresh", "spring campaign", "packaging", "annual report", "trade fair", "website relaunch",
          "product launch", "catalogue", "social ads", "newsletter")
_LANGS = ("de", "fr", "es", "it", "ja", "pl", "tr", "nl")


# -- the data -------------------------------------------------------------------------------


def _local(d: date, minutes: int = 0) -> datetime:
    """UTC instant of ``minutes`` after local midnight of ``d`` in the tenant's zone."""
    return (datetime.combine(d, time.min, tzinfo=ZONE) + timedelta(minutes=minutes)).astimezone(UTC)


def _day_start(offset: int) -> datetime:
    return _local(DAY + timedelta(days=offset))


def _ts(value: datetime | None) -> str:
    return "\\N" if value is None else value.isoformat()


def _d(value: date | None) -> str:
    return "\\N" if value is None else value.isoformat()


def _n(value) -> str:
    return "\\N" if value is None else str(value)


def _at(rng: random.Random, day_from: int, day_to: int) -> datetime:
    """A random instant on a random local day in DAY+day_from .. DAY+day_to (inclusive)."""
    return _local(DAY + timedelta(days=rng.randint(day_from, day_to)), rng.randint(0, 24 * 60 - 1))


def counts_for(scale: float) -> dict[str, int]:
    out = {k: max(1, round(v * scale)) for k, v in BASE.items()}
    out["users"] = max(out["users"], sum(n for _, n in POOLS) + 12)
    out["projects"] = max(out["projects"], 5)
    return out


def generate(scale: float, seed: int = SEED) -> tuple[dict[str, tuple[tuple[str, ...], list[str]]], dict]:
    """{table: (columns, COPY text lines)} and a summary. Deterministic for (scale, seed)."""
    rng = random.Random(f"{seed}:{scale}")
    n = counts_for(scale)
    tables: dict[str, tuple[tuple[str, ...], list[str]]] = {}
    md = DAY.strftime("%m-%d")

    # users: role pools, PMs (4%), employees (3% inactive)
    roles: list[str] = [role for role, k in POOLS for _ in range(k)]
    n_pm = max(5, n["users"] // 25)
    roles += ["pm"] * n_pm
    roles += ["employee"] * (n["users"] - len(roles))
    user_ids = list(range(1, len(roles) + 1))
    by_role: dict[str, list[int]] = {}
    for uid, role in zip(user_ids, roles):
        by_role.setdefault(role, []).append(uid)
    admin0 = by_role["admin"][0]
    lines = []
    for uid, role in zip(user_ids, roles):
        active = not (role == "employee" and rng.random() < 0.03)
        zone = rng.choice(_ZONES) if rng.random() < 0.3 else None
        manager = None if uid == admin0 else (rng.choice(by_role["pm"]) if role == "employee" else admin0)
        if uid % 365 == 17:  # about one in 365 has a birthday on the run day
            birth = date(rng.randint(1960, 2002), DAY.month, DAY.day)
        else:
            birth = date(rng.randint(1960, 2002), 1, 1) + timedelta(days=rng.randint(0, 364))
            if birth.strftime("%m-%d") == md:
                birth += timedelta(days=1)
        if uid % 365 == 20:  # and one in 365 a work anniversary
            hire = date(rng.randint(2012, 2025), DAY.month, DAY.day)
        else:
            hire = date(2010, 1, 1) + timedelta(days=rng.randint(0, 5_900))
            if hire.strftime("%m-%d") == md or hire >= DAY:
                hire = date(hire.year if hire < DAY else 2025, 1, 15)
        name = f"{_FIRST[uid % len(_FIRST)]} {_LAST[(uid // len(_FIRST)) % len(_LAST)]} {uid}"
        lines.append("\t".join((str(uid), str(TENANT_ID), f"user{uid}@bench-agency.example", name, role,
                                "t" if active else "f", _n(zone), _n(manager), _d(birth), _d(hire))))
    tables["users"] = (("id", "company_id", "email", "full_name", "role", "is_active", "timezone", "manager_id",
                        "birth_date", "hire_date"), lines)
    any_user = user_ids

    project_ids = list(range(1, n["projects"] + 1))
    lines = []
    for pid in project_ids:
        pm = rng.choice(by_role["pm"])
        status = "active" if rng.random() < 0.9 else "archived"
        if pid % 100 == 7:  # one project in 100 suspended (O7): every rule but invoices skips its items
            status = "suspended"
        lines.append("\t".join((str(pid), str(TENANT_ID), f"P-{pid} {_WORDS[pid % len(_WORDS)]}",
                                f"Client {pid % 97}", str(pm), status)))
    tables["projects"] = (("id", "company_id", "name", "client_name", "pm_id", "status"), lines)

    # tasks: 1% open and due by D+2 (or overdue); the rest done, or open and due later
    lines = []
    for tid in range(1, n["tasks"] + 1):
        assignee = rng.choice(any_user) if rng.random() < 0.97 else None
        if rng.random() < DUE:
            status, due = rng.choice(("open", "in_progress")), _at(rng, -10, 2)
        elif rng.random() < 0.6:
            status, due = "done", _at(rng, -400, -1)
        else:
            status = rng.choice(("open", "open", "in_progress"))
            due = _at(rng, 3, 120) if rng.random() < 0.9 else None
        lines.append("\t".join((str(tid), str(TENANT_ID), str(rng.choice(project_ids)),
                                f"Task {tid}: {_WORDS[tid % len(_WORDS)]}", _n(assignee), _ts(due), status)))
    tables["tasks"] = (("id", "company_id", "project_id", "title", "assignee_id", "due_at", "status"), lines)

    # approvals (3 steps each): 20% in review, of which 1% of all overdue and 1% of all stalled
    a_lines, s_lines = [], []
    step_id = 0
    for aid in range(1, n["approvals"] + 1):
        overdue, stalled = rng.random() < DUE, rng.random() < DUE
        in_review = overdue or stalled or rng.random() < 0.19
        title = f"Proof {aid}: {_WORDS[aid % len(_WORDS)]}"
        approvers = [rng.choice(any_user) for _ in range(3)]
        if in_review:
            stage = rng.randint(1, 3)
            due = _at(rng, -15, -1) if overdue else _at(rng, 1, 60)
            since = _at(rng, -20, -3) if stalled else _day_start(-2) + timedelta(minutes=rng.randint(0, 3000))
            created = since if stage == 1 else since - timedelta(days=rng.randint(1, 10) * (stage - 1))
            a_lines.append("\t".join((str(aid), str(TENANT_ID), str(rng.choice(project_ids)), title, "in_review",
                                      _ts(due), str(stage), _ts(created), _ts(created), "\\N")))
            for k in range(1, 4):
                step_id += 1
                if k < stage:
                    responded = since if k == stage - 1 else since - timedelta(days=1)
                    s_lines.append(f"{step_id}\t{aid}\t{k}\t{approvers[k - 1]}\tapproved\t{_ts(responded)}")
                else:
                    s_lines.append(f"{step_id}\t{aid}\t{k}\t{approvers[k - 1]}\tpending\t\\N")
        else:
            draft = rng.random() < 0.06
            created = _at(rng, -500, -1)
            due = _at(rng, 1, 90) if draft else created + timedelta(days=14)
            done = None if draft else created + timedelta(days=rng.randint(1, 20))
            a_lines.append("\t".join((str(aid), str(TENANT_ID), str(rng.choice(project_ids)), title,
                                      "draft" if draft else "completed", _ts(due), "1", _ts(created), _ts(created),
                                      _ts(done))))
            for k in range(1, 4):
                step_id += 1
                if draft:
                    s_lines.append(f"{step_id}\t{aid}\t{k}\t{approvers[k - 1]}\tpending\t\\N")
                else:
                    s_lines.append(f"{step_id}\t{aid}\t{k}\t{approvers[k - 1]}\tapproved\t{_ts(done)}")
    tables["approvals"] = (("id", "company_id", "project_id", "title", "status", "due_at", "current_stage",
                            "created_at", "updated_at", "completed_at"), a_lines)
    tables["approval_steps"] = (("id", "approval_id", "stage", "approver_id", "status", "responded_at"), s_lines)

    # translations: 1% open and due by D+3; assignee: a translator, anyone, or nobody (5%)
    lines = []
    for xid in range(1, n["translations"] + 1):
        r = rng.random()
        assignee = None if r < 0.05 else (rng.choice(by_role["translator"]) if r < 0.75 else rng.choice(any_user))
        if rng.random() < DUE:
            status, due = "open", _at(rng, -5, 3)
        elif rng.random() < 0.3:
            status, due = "open", _at(rng, 4, 90)
        else:
            status, due = "done", _at(rng, -300, -1)
        lines.append("\t".join((str(xid), str(TENANT_ID), str(rng.choice(project_ids)), _LANGS[xid % len(_LANGS)],
                                _n(assignee), _ts(due), status)))
    tables["translations"] = (("id", "company_id", "project_id", "language", "assignee_id", "due_at", "status"),
                              lines)

    # core requests: 1% submitted 2+ days ago and not accepted; 0.2% ready for approval
    lines = []
    for cid in range(1, n["core_requests"] + 1):
        r = rng.random()
        am = None if r < 0.05 else (rng.choice(by_role["account_manager"]) if r < 0.85 else rng.choice(any_user))
        accepted = None
        if rng.random() < DUE:
            status, submitted = "submitted", _at(rng, -15, -2)
            updated = submitted
        elif rng.random() < 0.002:
            status, submitted = "ready_for_approval", _at(rng, -30, -3)
            updated = _at(rng, -2, -1)
        elif rng.random() < 0.1:
            status, submitted = "submitted", _day_start(-1) + timedelta(minutes=rng.randint(0, 1500))
            updated = submitted
        else:
            status, submitted = rng.choice(("accepted", "done")), _at(rng, -400, -1)
            accepted = updated = submitted + timedelta(hours=rng.randint(1, 48))
        lines.append("\t".join((str(cid), str(TENANT_ID), str(rng.choice(project_ids)),
                                f"Core request {cid}: {_WORDS[cid % len(_WORDS)]}", status, _n(am),
                                _ts(submitted), _ts(accepted), _ts(updated))))
    tables["core_requests"] = (("id", "company_id", "project_id", "title", "status", "account_manager_id",
                                "submitted_at", "accepted_at", "updated_at"), lines)

    # purchase orders: 1% open and expiring this month
    month_days = calendar.monthrange(DAY.year, DAY.month)[1]
    lines = []
    for oid in range(1, n["purchase_orders"] + 1):
        if rng.random() < DUE:
            status, expires = "open", DAY + timedelta(days=rng.randint(0, month_days - DAY.day))
        elif rng.random() < 0.4:
            status, expires = "open", DAY + timedelta(days=rng.randint(month_days - DAY.day + 1, 400))
        else:
            status, expires = "closed", DAY + timedelta(days=rng.randint(-400, 400))
        lines.append("\t".join((str(oid), str(TENANT_ID), str(rng.choice(project_ids)), f"PO-{oid:06d}",
                                f"{rng.randint(100, 90_000)}.{rng.randint(0, 99):02d}", "EUR", _d(expires), status)))
    tables["purchase_orders"] = (("id", "company_id", "project_id", "number", "amount", "currency", "expires_on",
                                  "status"), lines)

    # documents: 1% at an alert stage (30/7/1/0 days), 0.5% expired and not renewed
    lines = []
    for did in range(1, n["documents"] + 1):
        r = rng.random()
        if r < DUE:
            status, expires = "valid", DAY + timedelta(days=rng.choice((30, 7, 1, 0)))
        elif r < 1.5 * DUE:
            status, expires = rng.choice(("valid", "expired")), DAY - timedelta(days=rng.randint(1, 90))
        elif r < 0.8:
            status, expires = "valid", DAY + timedelta(days=rng.choice((rng.randint(31, 700), rng.randint(8, 29))))
        else:
            status, expires = "renewed", DAY - timedelta(days=rng.randint(1, 400))
        lines.append("\t".join((str(did), str(TENANT_ID), str(rng.choice(any_user)), f"Document {did}",
                                rng.choice(("passport", "visa", "contract", "other")), _d(expires), status)))
    tables["documents"] = (("id", "company_id", "owner_id", "title", "kind", "expires_on", "status"), lines)

    # invoices: 1% sent and overdue
    lines = []
    for iid in range(1, n["invoices"] + 1):
        if rng.random() < DUE:
            status, due = "sent", DAY - timedelta(days=rng.randint(1, 60))
        elif rng.random() < 0.3:
            status, due = "sent", DAY + timedelta(days=rng.randint(0, 60))
        else:
            status, due = "paid", DAY - timedelta(days=rng.randint(1, 400))
        lines.append("\t".join((str(iid), str(TENANT_ID), str(rng.choice(project_ids)), f"INV-{iid:06d}",
                                f"{rng.randint(100, 50_000)}.00", "EUR", _d(due - timedelta(days=30)), _d(due),
                                status)))
    tables["invoices"] = (("id", "company_id", "project_id", "number", "amount", "currency", "issued_on", "due_on",
                           "status"), lines)

    # design queue: 10% queued
    lines = []
    for qid in range(1, n["design_queue_items"] + 1):
        queued = rng.random() < 0.1 or qid == 1
        lines.append("\t".join((str(qid), str(TENANT_ID), str(rng.choice(project_ids)), f"Layout {qid}",
                                "queued" if queued else "done", _ts(_at(rng, -10, -1)))))
    tables["design_queue_items"] = (("id", "company_id", "project_id", "title", "status", "queued_at"), lines)

    summary = {"rows": {t: len(v[1]) for t, v in tables.items()}}
    summary["total_rows"] = sum(summary["rows"].values())
    return tables, summary


def load_world(pg: BenchPostgres, scale: float) -> tuple[str, dict]:
    """A database with the app schema and the world at ``scale``, analyzed; nobody connected."""
    import psycopg2

    t0 = now_s()
    tables, summary = generate(scale)
    t_gen = now_s() - t0
    name = pg.fresh_database()
    conn = psycopg2.connect(host="127.0.0.1", port=pg.server.port, user="postgres", dbname=name)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE companies SET timezone = %s, settings = '{}' WHERE id = %s", (ZONE_NAME, TENANT_ID))
            order = ("users", "projects", "tasks", "approvals", "approval_steps", "translations", "core_requests",
                     "purchase_orders", "documents", "invoices", "design_queue_items")
            for table in order:
                columns, lines = tables.pop(table)
                for start in range(0, len(lines), 200_000):
                    buf = io.StringIO("\n".join(lines[start:start + 200_000]) + "\n")
                    cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buf)
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)")
    finally:
        conn.close()
    pg.vacuum_analyze(name)
    summary["generate_s"] = round(t_gen, 2)
    summary["load_s"] = round(now_s() - t0 - t_gen, 2)
    return name, summary


# -- the earlier, crude limit (for comparison): the same due sets, a cruder row -----------------
#
# Until 2026-12-02 the limit was this: the same due set and recipients, but a subject and body made by
# concatenation instead of the subject line and the template's context, no Message-ID: not the
# same queue rows. Still measured and printed beside the limit, so the two can be compared.

_U = "u.id AS recipient_id, u.email, u.full_name AS name, u.timezone"
_ACTIVE = "u.company_id = :cid AND u.is_active"

CRUDE_SQL: dict[str, str] = {
    "approval_overdue": f"""
        SELECT a.id AS entity_id, {_U}, a.title AS what, :day AS period
        FROM approvals a
        JOIN projects p ON p.id = a.project_id AND p.company_id = :cid
        JOIN approval_steps s ON s.approval_id = a.id AND s.stage = a.current_stage AND s.status = 'pending'
        JOIN users u ON u.id = s.approver_id AND {_ACTIVE}
        WHERE a.company_id = :cid AND a.status = 'in_review' AND a.due_at < :d0
        UNION ALL
        SELECT a.id, {_U}, a.title, :day
        FROM approvals a
        JOIN projects p ON p.id = a.project_id AND p.company_id = :cid
        JOIN users u ON u.id = p.pm_id AND {_ACTIVE}
        WHERE a.company_id = :cid AND a.status = 'in_review' AND a.due_at < :d0""",
    "approval_stalled": f"""
        SELECT a.id AS entity_id, {_U}, a.title AS what, :day AS period
        FROM approvals a
        JOIN projects p ON p.id = a.project_id AND p.company_id = :cid
        JOIN approval_steps s ON s.approval_id = a.id AND s.stage = a.current_stage AND s.status = 'pending'
        JOIN users u ON u.id = s.approver_id AND {_ACTIVE}
        WHERE a.company_id = :cid AND a.status = 'in_review'
          AND coalesce((SELECT max(e.responded_at) FROM approval_steps e
                        WHERE e.approval_id = a.id AND e.stage < a.current_stage), a.created_at) < :stalled_cutoff""",
    "task_due": f"""
        SELECT t.id AS entity_id, {_U}, t.title AS what, :day AS period
        FROM tasks t
        JOIN users u ON u.id = t.assignee_id AND {_ACTIVE}
        LEFT JOIN projects p ON p.id = t.project_id AND p.company_id = :cid
        WHERE t.company_id = :cid AND t.status IN ('open', 'in_progress') AND t.due_at IS NOT NULL
          AND t.due_at < :task_cutoff""",
    "birthdays": f"""
        SELECT per.id AS entity_id, {_U}, per.full_name AS what, :year AS period
        FROM users per JOIN users u ON u.id = per.manager_id AND {_ACTIVE} AND u.id <> per.id
        WHERE per.company_id = :cid AND per.is_active AND per.birth_date IS NOT NULL
          AND to_char(per.birth_date, 'MM-DD') = ANY(:month_days)
        UNION ALL
        SELECT per.id, {_U}, per.full_name, :year
        FROM users per JOIN users u ON {_ACTIVE} AND u.role = 'hr' AND u.id <> per.id
        WHERE per.company_id = :cid AND per.is_active AND per.birth_date IS NOT NULL
          AND to_char(per.birth_date, 'MM-DD') = ANY(:month_days)""",
    "work_anniversaries": f"""
        SELECT per.id AS entity_id, {_U}, per.full_name AS what, :year AS period
        FROM users per JOIN users u ON u.id = per.manager_id AND {_ACTIVE} AND u.id <> per.id
        WHERE per.company_id = :cid AND per.is_active AND per.hire_date IS NOT NULL
          AND to_char(per.hire_date, 'MM-DD') = ANY(:month_days) AND per.hire_date < :jan1
        UNION ALL
        SELECT per.id, {_U}, per.full_name, :year
        FROM users per JOIN users u ON {_ACTIVE} AND u.role = 'hr' AND u.id <> per.id
        WHERE per.company_id = :cid AND per.is_active AND per.hire_date IS NOT NULL
          AND to_char(per.hire_date, 'MM-DD') = ANY(:month_days) AND per.hire_date < :jan1""",
    "document_expiry": f"""
        SELECT d.id AS entity_id, {_U}, d.title AS what,
               CASE d.expires_on WHEN :t0 THEN '0d' WHEN :t1 THEN '1d' WHEN :t7 THEN '7d' ELSE '30d' END AS period
        FROM documents d JOIN users u ON u.id = d.owner_id AND {_ACTIVE}
        WHERE d.company_id = :cid AND d.status = 'valid' AND d.expires_on IN (:t0, :t1, :t7, :t30)
        UNION ALL
        SELECT d.id, {_U}, d.title, :day
        FROM documents d JOIN users o ON o.id = d.owner_id AND o.company_id = :cid
        JOIN users u ON u.id = o.manager_id AND {_ACTIVE}
        WHERE d.company_id = :cid AND d.status IN ('valid', 'expired') AND d.expires_on < :t0
        UNION ALL
        SELECT d.id, {_U}, d.title, :day
        FROM documents d JOIN users o ON o.id = d.owner_id AND o.company_id = :cid
        JOIN users u ON {_ACTIVE} AND u.role = 'admin'
        WHERE d.company_id = :cid AND d.status IN ('valid', 'expired') AND d.expires_on < :t0""",
    "translation_due": f"""
        SELECT t.id AS entity_id, {_U}, t.language || ' translation' AS what, :day AS period
        FROM translations t LEFT JOIN projects p ON p.id = t.project_id AND p.company_id = :cid
        JOIN users u ON u.id = t.assignee_id AND {_ACTIVE}
        WHERE t.company_id = :cid AND t.status = 'open' AND t.due_at < :translation_cutoff
        UNION ALL
        SELECT t.id, {_U}, t.language || ' translation', :day
        FROM translations t LEFT JOIN projects p ON p.id = t.project_id AND p.company_id = :cid
        JOIN users u ON {_ACTIVE} AND u.role = 'translator'
        WHERE t.company_id = :cid AND t.status = 'open' AND t.due_at < :translation_cutoff
          AND NOT EXISTS (SELECT 1 FROM users n WHERE n.id = t.assignee_id AND n.company_id = :cid AND n.is_active)""",
    "core_request_not_accepted": f"""
        SELECT c.id AS entity_id, {_U}, c.title AS what, :day AS period
        FROM core_requests c LEFT JOIN projects p ON p.id = c.project_id AND p.company_id = :cid
        JOIN users u ON u.id = c.account_manager_id AND {_ACTIVE}
        WHERE c.company_id = :cid AND c.status = 'submitted' AND c.accepted_at IS NULL
          AND c.submitted_at < :core_cutoff
        UNION ALL
        SELECT c.id, {_U}, c.title, :day
        FROM core_requests c LEFT JOIN projects p ON p.id = c.project_id AND p.company_id = :cid
        JOIN users u ON {_ACTIVE} AND u.role = 'account_manager'
        WHERE c.company_id = :cid AND c.status = 'submitted' AND c.accepted_at IS NULL
          AND c.submitted_at < :core_cutoff
          AND NOT EXISTS (SELECT 1 FROM users n WHERE n.id = c.account_manager_id AND n.company_id = :cid
                          AND n.is_active)""",
    "core_request_ready": f"""
        SELECT c.id AS entity_id, {_U}, c.title AS what, :day AS period
        FROM core_requests c LEFT JOIN projects p ON p.id = c.project_id AND p.company_id = :cid
        JOIN users u ON {_ACTIVE} AND u.role = 'approver'
        WHERE c.company_id = :cid AND c.status = 'ready_for_approval'""",
    "design_queue": f"""
        SELECT CAST(:cid AS bigint) AS entity_id, {_U},
               (SELECT count(*) FROM design_queue_items q WHERE q.company_id = :cid AND q.status = 'queued'
                AND q.queued_at < :d1) || ' item(s) waiting' AS what, :day AS period
        FROM users u WHERE {_ACTIVE} AND u.role = 'designer'
          AND EXISTS (SELECT 1 FROM design_queue_items q WHERE q.company_id = :cid AND q.status = 'queued'
                      AND q.queued_at < :d1)""",
    "po_expiring": f"""
        SELECT po.id AS entity_id, {_U}, 'PO ' || po.number AS what, :po_period AS period
        FROM purchase_orders po LEFT JOIN projects p ON p.id = po.project_id AND p.company_id = :cid
        JOIN users u ON {_ACTIVE} AND u.role = 'finance'
        WHERE po.company_id = :cid AND po.status = 'open' AND po.expires_on >= :t0 AND po.expires_on < :po_end
        UNION ALL
        SELECT po.id, {_U}, 'PO ' || po.number, :po_period
        FROM purchase_orders po JOIN projects p ON p.id = po.project_id AND p.company_id = :cid
        JOIN users u ON u.id = p.pm_id AND {_ACTIVE}
        WHERE po.company_id = :cid AND po.status = 'open' AND po.expires_on >= :t0 AND po.expires_on < :po_end
          AND u.role <> 'finance'""",
    "invoice_overdue": f"""
        SELECT i.id AS entity_id, {_U}, 'Invoice ' || i.number AS what, :day AS period
        FROM invoices i LEFT JOIN projects p ON p.id = i.project_id AND p.company_id = :cid
        JOIN users u ON {_ACTIVE} AND u.role = 'finance'
        WHERE i.company_id = :cid AND i.status = 'sent' AND i.due_on IS NOT NULL AND i.due_on < :t0""",
}

_CRUDE_INSERT = """
    INSERT INTO email_queue (company_id, to_addrs, subject, body_text, body_html, template, priority, send_after,
                             idempotency_key, kind, status, attempts, created_at, updated_at)
    SELECT :cid, jsonb_build_array(d.email), :title || ': ' || d.what,
           'Hello ' || d.name || E',\\n\\n' || :title || ': ' || d.what || E'\\n',
           '<p>Hello ' || d.name || '</p><p>' || :title || ': ' || d.what || '</p>',
           :template, :priority,
           (CAST(:day AS date) + make_interval(hours => :hour)) AT TIME ZONE coalesce(d.timezone, :zone),
           'limit:' || :rule || ':' || d.entity_id || ':' || d.recipient_id || ':' || d.period,
           :kind, 'pending', 0, :now, :now
    FROM (SELECT DISTINCT ON (entity_id, recipient_id, period) *
          FROM ({inner}) x ORDER BY entity_id, recipient_id, period) d
"""



# -- the limit: one hand-written INSERT ... SELECT per rule that writes the same queue rows -----
#
# PERFORMANCE.md: "one hand-written INSERT … SELECT per rule that writes the same queue rows".
# Each statement selects the rule's due set with the rule's filters (suspended projects
# included), keeps one row per (entity, recipient, period) as the engine does, and writes the
# very row our run queues: the subject line rendered and folded, the template named, the whole
# context (every variable the template uses), the send time in the recipient's zone, the
# idempotency key and the Message-ID. The checks compare every column of every row with ours.
# What our run writes besides (reminder_log for R14, the in-app notifications) the limit
# does not write.

_D = "CAST(:day AS date)"
_ISO = "to_char({}, 'YYYY-MM-DD')"
_MONEY = "to_char({}, 'FM999,999,999,990.00') || ' ' || {}"
_NOT_SUSPENDED = ("NOT EXISTS (SELECT 1 FROM projects sp WHERE sp.id = {} AND sp.company_id = :cid "
                  "AND sp.status = 'suspended')")
_R = "u.id AS recipient_id, u.email, u.full_name AS name, u.timezone"
_LOCAL = "CROSS JOIN LATERAL (SELECT CAST((x.{} AT TIME ZONE :zone) AS date) AS {}) l"
# Due soon or overdue (tasks, translations): "3 day(s) overdue", "due today", "due in 2 day(s)".
_WHEN_DUE = (f"CROSS JOIN LATERAL (SELECT CASE WHEN l.due < {_D} THEN ({_D} - l.due) || ' day(s) overdue' "
             f"WHEN l.due = {_D} THEN 'due today' ELSE 'due in ' || (l.due - {_D}) || ' day(s)' END AS wh) w")


class Shape:
    """One rule's hand-written statement: the due rows (``rows``: entity_id, the recipient,
    period, ord (which row of a key counts, lowest first) and the raw columns), a lateral join
    of derived values, and the subject and context made from them."""

    def __init__(self, rows: str, subject: str, context: str, lateral: str = ""):
        self.rows, self.subject, self.context, self.lateral = rows, subject, context, lateral


SAME_ROWS: dict[str, Shape] = {
    "approval_overdue": Shape(
        rows=f"""
            SELECT a.id AS entity_id, {_R}, CAST(:day AS text) AS period, 0 AS ord, 'approver' AS role,
                   a.title, p.name AS project, a.due_at
            FROM approvals a
            JOIN projects p ON p.id = a.project_id AND p.company_id = :cid
            JOIN approval_steps s ON s.approval_id = a.id AND s.stage = a.current_stage AND s.status = 'pending'
            JOIN users u ON u.id = s.approver_id AND {_ACTIVE}
            WHERE a.company_id = :cid AND a.status = 'in_review' AND a.due_at < :d0
              AND {_NOT_SUSPENDED.format('a.project_id')}
            UNION ALL
            SELECT a.id, {_R}, :day, 1, 'pm', a.title, p.name, a.due_at
            FROM approvals a
            JOIN projects p ON p.id = a.project_id AND p.company_id = :cid
            JOIN users u ON u.id = p.pm_id AND {_ACTIVE}
            WHERE a.company_id = :cid AND a.status = 'in_review' AND a.due_at < :d0
              AND {_NOT_SUSPENDED.format('a.project_id')}""",
        lateral=_LOCAL.format("due_at", "due"),
        subject="'Approval overdue: ' || x.title",
        context=f"""jsonb_build_object(
            'approval_id', x.entity_id, 'title', x.title, 'project', x.project, 'due_on', {_ISO.format('l.due')},
            'days_overdue', {_D} - l.due, 'role', x.role, 'headline', 'Approval overdue: ' || x.title,
            'summary', x.project || ': due ' || {_ISO.format('l.due')} || ', ' || ({_D} - l.due) || ' day(s) ago')""",
    ),
    "approval_stalled": Shape(
        rows=f"""
            SELECT a.id AS entity_id, {_R}, CAST(:day AS text) AS period, 0 AS ord,
                   a.title, a.current_stage, p.name AS project, ps.pending_since
            FROM approvals a
            JOIN projects p ON p.id = a.project_id AND p.company_id = :cid
            JOIN approval_steps s ON s.approval_id = a.id AND s.stage = a.current_stage AND s.status = 'pending'
            JOIN users u ON u.id = s.approver_id AND {_ACTIVE}
            CROSS JOIN LATERAL (SELECT coalesce((SELECT max(e.responded_at) FROM approval_steps e
                                                 WHERE e.approval_id = a.id AND e.stage < a.current_stage),
                                                a.created_at) AS pending_since) ps
            WHERE a.company_id = :cid AND a.status = 'in_review' AND ps.pending_since < :stalled_cutoff
              AND {_NOT_SUSPENDED.format('a.project_id')}""",
        lateral=_LOCAL.format("pending_since", "since"),
        subject="'Waiting for your approval: ' || x.title",
        context=f"""jsonb_build_object(
            'approval_id', x.entity_id, 'title', x.title, 'project', x.project, 'stage', x.current_stage,
            'pending_since', {_ISO.format('l.since')}, 'days_waiting', {_D} - l.since,
            'headline', 'Waiting for you: ' || x.title,
            'summary', 'stage ' || x.current_stage || ' pending for ' || ({_D} - l.since) || ' day(s)')""",
    ),
    "task_due": Shape(
        rows=f"""
            SELECT t.id AS entity_id, {_R}, CAST(:day AS text) AS period, 0 AS ord,
                   t.title, t.due_at, p.name AS project
            FROM tasks t
            JOIN users u ON u.id = t.assignee_id AND {_ACTIVE}
            LEFT JOIN projects p ON p.id = t.project_id AND p.company_id = :cid
            WHERE t.company_id = :cid AND t.status IN ('open', 'in_progress') AND t.due_at IS NOT NULL
              AND t.due_at < :task_cutoff AND {_NOT_SUSPENDED.format('t.project_id')}""",
        lateral=_LOCAL.format("due_at", "due") + " " + _WHEN_DUE,
        subject="'Task ' || w.wh || ': ' || x.title",
        context=f"""jsonb_build_object(
            'task_id', x.entity_id, 'title', x.title, 'project', coalesce(x.project, ''),
            'due_on', {_ISO.format('l.due')}, 'overdue', l.due < {_D}, 'days', abs({_D} - l.due), 'when', w.wh,
            'headline', 'Task ' || w.wh || ': ' || x.title, 'summary', 'due ' || {_ISO.format('l.due')})""",
    ),
    "birthdays": Shape(
        rows=f"""
            SELECT per.id AS entity_id, {_R}, CAST(:year AS text) AS period, 0 AS ord, 'manager' AS role,
                   per.full_name AS person_name
            FROM users per JOIN users u ON u.id = per.manager_id AND {_ACTIVE} AND u.id <> per.id
            WHERE per.company_id = :cid AND per.is_active AND per.birth_date IS NOT NULL
              AND to_char(per.birth_date, 'MM-DD') = ANY(:month_days)
            UNION ALL
            SELECT per.id, {_R}, :year, 1, 'hr', per.full_name
            FROM users per JOIN users u ON {_ACTIVE} AND u.role = 'hr' AND u.id <> per.id
            WHERE per.company_id = :cid AND per.is_active AND per.birth_date IS NOT NULL
              AND to_char(per.birth_date, 'MM-DD') = ANY(:month_days)""",
        subject="'Birthday today: ' || x.person_name",
        context="""jsonb_build_object(
            'person_name', x.person_name, 'role', x.role, 'day', CAST(:day AS text),
            'headline', 'Birthday today: ' || x.person_name,
            'summary', x.person_name || ' celebrates their birthday today (' || :day || ')')""",
    ),
    "work_anniversaries": Shape(
        rows=f"""
            SELECT per.id AS entity_id, {_R}, CAST(:year AS text) AS period, 0 AS ord, 'manager' AS role,
                   per.full_name AS person_name, per.hire_date
            FROM users per JOIN users u ON u.id = per.manager_id AND {_ACTIVE} AND u.id <> per.id
            WHERE per.company_id = :cid AND per.is_active AND per.hire_date IS NOT NULL
              AND to_char(per.hire_date, 'MM-DD') = ANY(:month_days) AND per.hire_date < :jan1
            UNION ALL
            SELECT per.id, {_R}, :year, 1, 'hr', per.full_name, per.hire_date
            FROM users per JOIN users u ON {_ACTIVE} AND u.role = 'hr' AND u.id <> per.id
            WHERE per.company_id = :cid AND per.is_active AND per.hire_date IS NOT NULL
              AND to_char(per.hire_date, 'MM-DD') = ANY(:month_days) AND per.hire_date < :jan1""",
        lateral=("CROSS JOIN LATERAL (SELECT CAST(:year AS int) - CAST(extract(year FROM x.hire_date) AS int)"
                 " AS years) l"),
        subject="'Work anniversary: ' || x.person_name || ', ' || l.years || ' year' "
                "|| CASE WHEN l.years <> 1 THEN 's' ELSE '' END",
        context="""jsonb_build_object(
            'person_name', x.person_name, 'role', x.role, 'day', CAST(:day AS text), 'years', l.years,
            'headline', 'Work anniversary: ' || x.person_name || ', ' || l.years || ' year(s)',
            'summary', x.person_name || ' joined ' || l.years || ' year(s) ago today (' || :day || ')')""",
    ),
    "document_expiry": Shape(
        rows=f"""
            SELECT d.id AS entity_id, {_R}, (d.expires_on - {_D}) || 'd' AS period, 0 AS ord, 'owner' AS role,
                   'expiring' AS stage, d.expires_on - {_D} AS days, d.title, d.kind, d.expires_on,
                   u.full_name AS owner_name
            FROM documents d JOIN users u ON u.id = d.owner_id AND {_ACTIVE}
            WHERE d.company_id = :cid AND d.status = 'valid' AND d.expires_on IN (:t0, :t1, :t7, :t30)
            UNION ALL
            SELECT d.id, {_R}, :day, 1, 'manager', 'expired', {_D} - d.expires_on, d.title, d.kind, d.expires_on,
                   o.full_name
            FROM documents d JOIN users o ON o.id = d.owner_id AND o.company_id = :cid
            JOIN users u ON u.id = o.manager_id AND {_ACTIVE}
            WHERE d.company_id = :cid AND d.status IN ('valid', 'expired') AND d.expires_on < :t0
            UNION ALL
            SELECT d.id, {_R}, :day, 0, 'admin', 'expired', {_D} - d.expires_on, d.title, d.kind, d.expires_on,
                   o.full_name
            FROM documents d JOIN users o ON o.id = d.owner_id AND o.company_id = :cid
            JOIN users u ON {_ACTIVE} AND u.role = 'admin'
            WHERE d.company_id = :cid AND d.status IN ('valid', 'expired') AND d.expires_on < :t0""",
        lateral="CROSS JOIN LATERAL (SELECT CASE WHEN x.stage = 'expired' THEN x.days || ' day(s) ago' "
                "WHEN x.days = 0 THEN 'today' ELSE 'in ' || x.days || ' day(s)' END AS wh) w",
        subject="CASE WHEN x.stage = 'expired' THEN 'Expired, not renewed: ' || x.title "
                "ELSE 'Document expires ' || w.wh || ': ' || x.title END",
        context=f"""jsonb_build_object(
            'document_id', x.entity_id, 'title', x.title, 'kind', x.kind, 'expires_on', {_ISO.format('x.expires_on')},
            'stage', x.stage, 'days', x.days, 'when', w.wh, 'role', x.role, 'owner_name', x.owner_name,
            'headline', CASE WHEN x.stage = 'expired' THEN 'Expired, not renewed: ' || x.title
                             ELSE 'Document expires ' || w.wh || ': ' || x.title END,
            'summary', CASE WHEN x.stage = 'expired'
                            THEN x.owner_name || '''s ' || x.kind || ' document expired on '
                                 || {_ISO.format('x.expires_on')} || ' (' || x.days || ' day(s) ago)'
                            ELSE x.kind || ' document expires on ' || {_ISO.format('x.expires_on')} END)""",
    ),
    "translation_due": Shape(
        rows=f"""
            SELECT t.id AS entity_id, {_R}, CAST(:day AS text) AS period, 0 AS ord, 'assignee' AS role,
                   t.language, t.due_at, p.name AS project
            FROM translations t LEFT JOIN projects p ON p.id = t.project_id AND p.company_id = :cid
            JOIN users u ON u.id = t.assignee_id AND {_ACTIVE}
            WHERE t.company_id = :cid AND t.status = 'open' AND t.due_at < :translation_cutoff
              AND {_NOT_SUSPENDED.format('t.project_id')}
            UNION ALL
            SELECT t.id, {_R}, :day, 0, 'translator', t.language, t.due_at, p.name
            FROM translations t LEFT JOIN projects p ON p.id = t.project_id AND p.company_id = :cid
            JOIN users u ON {_ACTIVE} AND u.role = 'translator'
            WHERE t.company_id = :cid AND t.status = 'open' AND t.due_at < :translation_cutoff
              AND {_NOT_SUSPENDED.format('t.project_id')}
              AND NOT EXISTS (SELECT 1 FROM users n WHERE n.id = t.assignee_id AND n.company_id = :cid
                              AND n.is_active)""",
        lateral=(_LOCAL.format("due_at", "due") + " " + _WHEN_DUE
                 + " CROSS JOIN LATERAL (SELECT CASE WHEN coalesce(x.project, '') <> '' THEN ' for ' || x.project"
                   " ELSE '' END AS for_project) wt"),
        subject="'Translation ' || w.wh || ': ' || x.language || wt.for_project",
        context=f"""jsonb_build_object(
            'translation_id', x.entity_id, 'language', x.language, 'project', coalesce(x.project, ''),
            'due_on', {_ISO.format('l.due')}, 'overdue', l.due < {_D}, 'days', abs({_D} - l.due), 'when', w.wh,
            'role', x.role,
            'headline', 'Translation ' || w.wh || ': ' || x.language || ' translation' || wt.for_project,
            'summary', 'due ' || {_ISO.format('l.due')})""",
    ),
    "core_request_not_accepted": Shape(
        rows=f"""
            SELECT c.id AS entity_id, {_R}, CAST(:day AS text) AS period, 0 AS ord, 'account_manager' AS role,
                   c.title, c.submitted_at, p.name AS project
            FROM core_requests c LEFT JOIN projects p ON p.id = c.project_id AND p.company_id = :cid
            JOIN users u ON u.id = c.account_manager_id AND {_ACTIVE}
            WHERE c.company_id = :cid AND c.status = 'submitted' AND c.accepted_at IS NULL
              AND c.submitted_at < :core_cutoff AND {_NOT_SUSPENDED.format('c.project_id')}
            UNION ALL
            SELECT c.id, {_R}, :day, 0, 'unassigned', c.title, c.submitted_at, p.name
            FROM core_requests c LEFT JOIN projects p ON p.id = c.project_id AND p.company_id = :cid
            JOIN users u ON {_ACTIVE} AND u.role = 'account_manager'
            WHERE c.company_id = :cid AND c.status = 'submitted' AND c.accepted_at IS NULL
              AND c.submitted_at < :core_cutoff AND {_NOT_SUSPENDED.format('c.project_id')}
              AND NOT EXISTS (SELECT 1 FROM users n WHERE n.id = c.account_manager_id AND n.company_id = :cid
                              AND n.is_active)""",
        lateral=_LOCAL.format("submitted_at", "submitted"),
        subject=f"'Core request not accepted after ' || ({_D} - l.submitted) || ' day(s): ' || x.title",
        context=f"""jsonb_build_object(
            'core_request_id', x.entity_id, 'title', x.title, 'project', coalesce(x.project, ''),
            'submitted_on', {_ISO.format('l.submitted')}, 'days_waiting', {_D} - l.submitted, 'role', x.role,
            'headline', 'Core request not accepted: ' || x.title,
            'summary', 'submitted ' || {_ISO.format('l.submitted')} || ', waiting ' || ({_D} - l.submitted)
                       || ' day(s)')""",
    ),
    "core_request_ready": Shape(
        rows=f"""
            SELECT c.id AS entity_id, {_R}, CAST(:day AS text) AS period, 0 AS ord,
                   c.title, c.updated_at, p.name AS project
            FROM core_requests c LEFT JOIN projects p ON p.id = c.project_id AND p.company_id = :cid
            JOIN users u ON {_ACTIVE} AND u.role = 'approver'
            WHERE c.company_id = :cid AND c.status = 'ready_for_approval'
              AND {_NOT_SUSPENDED.format('c.project_id')}""",
        lateral=_LOCAL.format("updated_at", "since"),
        subject="'Core request ready for approval: ' || x.title",
        context=f"""jsonb_build_object(
            'core_request_id', x.entity_id, 'title', x.title, 'project', coalesce(x.project, ''),
            'ready_since', coalesce({_ISO.format('l.since')}, ''),
            'headline', 'Core request ready for approval: ' || x.title,
            'summary', CASE WHEN coalesce(x.project, '') <> '' THEN x.project || ': ' ELSE '' END
                       || 'waiting for an approver')""",
    ),
    "design_queue": Shape(
        rows=f"""
            WITH items AS (
                SELECT q.id, q.title, q.queued_at, coalesce(p.name, '') AS project,
                       CAST((q.queued_at AT TIME ZONE :zone) AS date) AS queued_on
                FROM design_queue_items q LEFT JOIN projects p ON p.id = q.project_id AND p.company_id = :cid
                WHERE q.company_id = :cid AND q.status = 'queued' AND q.queued_at < :d1
                  AND {_NOT_SUSPENDED.format('q.project_id')}
            ), listed AS (
                SELECT count(*) AS n, max(greatest({_D} - queued_on, 0)) AS oldest,
                       jsonb_agg(jsonb_build_object('id', id, 'title', title, 'project', project,
                                                    'queued_on', {_ISO.format('queued_on')},
                                                    'days_waiting', greatest({_D} - queued_on, 0))
                                 ORDER BY queued_at, id) AS items,
                       (SELECT string_agg(f.title, ', ' ORDER BY f.queued_at, f.id)
                        FROM (SELECT title, queued_at, id FROM items ORDER BY queued_at, id LIMIT 5) f) AS first5
                FROM items
            )
            SELECT CAST(:cid AS bigint) AS entity_id, {_R}, CAST(:day AS text) AS period, 0 AS ord, listed.*
            FROM users u CROSS JOIN listed
            WHERE {_ACTIVE} AND u.role = 'designer' AND listed.n > 0""",
        subject="'Design queue: ' || x.n || ' item(s) waiting'",
        context="""jsonb_build_object(
            'items', x.items, 'count', x.n, 'oldest_days', x.oldest,
            'headline', 'Design queue: ' || x.n || ' item(s) waiting',
            'summary', x.first5 || CASE WHEN x.n > 5 THEN ' …' ELSE '' END)""",
    ),
    "po_expiring": Shape(
        rows=f"""
            SELECT po.id AS entity_id, {_R}, CAST(:po_period AS text) AS period, 0 AS ord, 'finance' AS role,
                   po.number, po.amount, po.currency, po.expires_on, p.name AS project
            FROM purchase_orders po LEFT JOIN projects p ON p.id = po.project_id AND p.company_id = :cid
            JOIN users u ON {_ACTIVE} AND u.role = 'finance'
            WHERE po.company_id = :cid AND po.status = 'open' AND po.expires_on >= :t0 AND po.expires_on < :po_end
              AND {_NOT_SUSPENDED.format('po.project_id')}
            UNION ALL
            SELECT po.id, {_R}, :po_period, 0, 'pm', po.number, po.amount, po.currency, po.expires_on, p.name
            FROM purchase_orders po JOIN projects p ON p.id = po.project_id AND p.company_id = :cid
            JOIN users u ON u.id = p.pm_id AND {_ACTIVE}
            WHERE po.company_id = :cid AND po.status = 'open' AND po.expires_on >= :t0 AND po.expires_on < :po_end
              AND {_NOT_SUSPENDED.format('po.project_id')} AND u.role <> 'finance'""",
        lateral=(f"CROSS JOIN LATERAL (SELECT x.expires_on - {_D} AS days, "
                 f"{_MONEY.format('x.amount', 'x.currency')} AS money) l "
                 "CROSS JOIN LATERAL (SELECT CASE WHEN l.days = 0 THEN 'today' "
                 "ELSE 'in ' || l.days || ' day(s)' END AS wh) w"),
        subject=f"'PO ' || x.number || ' expires ' || w.wh || ' (' || {_ISO.format('x.expires_on')} || ')'",
        context=f"""jsonb_build_object(
            'po_id', x.entity_id, 'number', x.number, 'project', coalesce(x.project, ''), 'amount', l.money,
            'currency', x.currency, 'expires_on', {_ISO.format('x.expires_on')}, 'days_left', l.days,
            'when', w.wh, 'role', x.role, 'headline', 'PO ' || x.number || ' expires ' || w.wh,
            'summary', CASE WHEN coalesce(x.project, '') <> '' THEN x.project || ': ' ELSE '' END
                       || l.money || ', expires ' || {_ISO.format('x.expires_on')})""",
    ),
    "invoice_overdue": Shape(
        rows=f"""
            SELECT i.id AS entity_id, {_R}, CAST(:day AS text) AS period, 0 AS ord,
                   i.number, i.amount, i.currency, i.issued_on, i.due_on, p.name AS project, p.client_name
            FROM invoices i LEFT JOIN projects p ON p.id = i.project_id AND p.company_id = :cid
            JOIN users u ON {_ACTIVE} AND u.role = 'finance'
            WHERE i.company_id = :cid AND i.status = 'sent' AND i.due_on IS NOT NULL AND i.due_on < :t0""",
        lateral=(f"CROSS JOIN LATERAL (SELECT {_D} - x.due_on AS days, "
                 f"{_MONEY.format('x.amount', 'x.currency')} AS money) l"),
        subject="'Invoice ' || x.number || ' overdue ' || l.days || ' day(s)' "
                "|| CASE WHEN coalesce(x.client_name, '') <> '' THEN ': ' || x.client_name ELSE '' END",
        context=f"""jsonb_build_object(
            'invoice_id', x.entity_id, 'number', x.number, 'project', coalesce(x.project, ''),
            'client', coalesce(x.client_name, ''), 'amount', l.money, 'currency', x.currency,
            'issued_on', coalesce({_ISO.format('x.issued_on')}, ''), 'due_on', {_ISO.format('x.due_on')},
            'days_overdue', l.days, 'headline', 'Invoice ' || x.number || ' overdue ' || l.days || ' day(s)',
            'summary', CASE WHEN coalesce(x.client_name, '') <> '' THEN x.client_name || ': ' ELSE '' END
                       || l.money || ', due ' || {_ISO.format('x.due_on')})""",
    ),
}

# The row our run queues for each reminder (engine._WRITE_PG writes the same from its batch).
_SAME_ROWS_INSERT = """
    INSERT INTO email_queue (company_id, to_addrs, subject, template, context, priority, send_after,
                             idempotency_key, kind, status, attempts, message_id, created_at, updated_at)
    SELECT :cid, jsonb_build_array(btrim(d.email)), d.subject, :template, d.context, :priority,
           ({D} + make_interval(hours => :hour)) AT TIME ZONE coalesce(d.timezone, :zone), k.key, :kind,
           'pending', 0, '<' || left(encode(sha256(convert_to(k.key, 'UTF8')), 'hex'), 40) || '@' || :domain || '>',
           :now, :now
    FROM (SELECT x.entity_id, x.recipient_id, x.period, x.email, x.timezone,
                 btrim(regexp_replace('[' || :company || '] ' || {subject}, '\\s+', ' ', 'g')) AS subject,
                 {context} || jsonb_build_object('recipient_name', x.name) AS context
          FROM (SELECT DISTINCT ON (entity_id, recipient_id, period) *
                FROM ({rows}) r ORDER BY entity_id, recipient_id, period, ord) x {lateral}) d,
         LATERAL (SELECT 'reminder:' || :cid || ':' || :rule || ':' || d.entity_id || ':' || d.recipient_id
                         || ':' || d.period AS key) k
"""


def same_rows_statement(rule_name: str) -> str:
    shape = SAME_ROWS[rule_name]
    return _SAME_ROWS_INSERT.format(D=_D, rows=shape.rows, lateral=shape.lateral, subject=shape.subject,
                                    context=shape.context)


def limit_params() -> dict:
    """The values the hand-written statements are given, computed as the rules compute them."""
    from bg_ops.defs.reminders.rules.finance import month_end, po_period
    from bg_ops.defs.reminders.rules.people import celebrated_month_days

    return {
        "cid": TENANT_ID, "day": DAY.isoformat(), "year": str(DAY.year), "zone": ZONE_NAME, "hour": SEND_HOUR,
        "now": NOW, "d0": _day_start(0), "d1": _day_start(1), "stalled_cutoff": _day_start(-3 + 1),
        "task_cutoff": _day_start(2 + 1), "translation_cutoff": _day_start(3 + 1), "core_cutoff": _day_start(-2 + 1),
        "month_days": celebrated_month_days(DAY), "jan1": date(DAY.year, 1, 1),
        "t0": DAY, "t1": DAY + timedelta(days=1), "t7": DAY + timedelta(days=7), "t30": DAY + timedelta(days=30),
        "po_period": po_period(DAY), "po_end": month_end(DAY) + timedelta(days=1),
    }


def run_limit(url: str, kind: str = "same") -> tuple[float, dict[str, dict]]:
    """The twelve hand-written statements, each in its own transaction; (seconds, per rule).

    ``kind`` "same": the statements that write the same queue rows as our run (the limit);
    "crude": the earlier limit's cruder rows (for comparison)."""
    import sqlalchemy as sa

    from bg_ops.db.engine import create_db_engine
    from bg_ops.defs.email.message import message_id_domain
    from bg_ops.defs.reminders.rules import ALL_RULES

    engine = create_db_engine(url)
    with engine.connect() as conn:  # the first connection, and the tenant's name, are not part of the run
        company = conn.execute(sa.text("SELECT name FROM companies WHERE id = :cid"), {"cid": TENANT_ID}).scalar_one()
    params = {**limit_params(), "company": company, "domain": message_id_domain(MAIL_FROM)}
    statements = []
    for rule in ALL_RULES:
        if rule.name == "po_expiring" and params["po_period"] is None:
            continue
        text = (same_rows_statement(rule.name) if kind == "same"
                else _CRUDE_INSERT.format(inner=CRUDE_SQL[rule.name]))
        values = {**params, "title": rule.title, "template": rule.template, "priority": rule.priority,
                  "kind": rule.kind, "rule": rule.name}
        statements.append((rule, sa.text(text).bindparams(**{k: v for k, v in values.items() if f":{k}" in text})))
    per_rule: dict[str, dict] = {}
    try:
        t0 = now_s()
        for rule, stmt in statements:
            t = now_s()
            with engine.begin() as conn:
                rows = conn.execute(stmt).rowcount
            per_rule[rule.name] = {"rows": rows, "seconds": round(now_s() - t, 4)}
        total = now_s() - t0
    finally:
        engine.dispose()
    return total, per_rule


def queue_rows(url: str) -> dict[str, dict]:
    """Every queued mail as {idempotency key: every column but the id} (the rows compared)."""
    import sqlalchemy as sa

    from bg_ops.db.engine import create_db_engine

    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT idempotency_key, to_jsonb(q) - 'id' FROM email_queue q")).all()
    finally:
        engine.dispose()
    return dict(rows)


def compare_rows(ours: dict[str, dict], limit: dict[str, dict]) -> dict:
    """How the limit's queue rows differ from ours: counts and a few examples (none: the same rows)."""
    missing = sorted(set(limit) - set(ours))
    extra = sorted(set(ours) - set(limit))
    differing = sorted(k for k in set(ours) & set(limit) if ours[k] != limit[k])
    examples = []
    for key in differing[:3]:
        columns = sorted(c for c in set(ours[key]) | set(limit[key]) if ours[key].get(c) != limit[key].get(c))
        examples.append({"key": key, **{c: {"ours": ours[key].get(c), "limit": limit[key].get(c)} for c in columns}})
    return {"same": not (missing or extra or differing), "rows": len(ours), "only_in_limit": missing[:5],
            "only_in_ours": extra[:5], "differing": len(differing), "examples": examples}


# -- our run, in a child process ---------------------------------------------------------------


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status in MB: VmRSS (now) or VmHWM (peak RSS of this process).

    VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` across fork and exec, so a child
    started by a parent holding 170 MB reports at least 170 MB whatever it does itself."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def _child(spec: dict) -> dict:
    """Runs in the child: the daily run on spec['cold'] (and spec['warm'] when given)."""
    from pathlib import Path

    import sqlalchemy as sa

    from bench.common import Probes
    from bg_ops.db.engine import create_db_engine, session_scope
    from bg_ops.defs.email import deferred as deferred_mod
    from bg_ops.defs.email.enqueue import MailSettings
    from bg_ops.defs.reminders import engine as engine_mod
    from bg_ops.defs.reminders.engine import RuleContext, run_rule, send_digests
    from bg_ops.defs.reminders.rules import ALL_RULES
    from bg_ops.defs.tenants.logic import get_tenant, switched_off_services

    settings = MailSettings(mail_from=MAIL_FROM, files_root=Path("/nonexistent-bench-files"))
    probes = Probes()
    from dataclasses import replace

    rules = [replace(r, find=probes.wrap("find (rule query + Python)", r.find)) for r in ALL_RULES]
    subject_renderer = deferred_mod.subject_renderer
    deferred_mod.subject_renderer = lambda *a, **k: probes.wrap("render subject", subject_renderer(*a, **k))
    engine_mod._checked = probes.wrap("check", engine_mod._checked)
    engine_mod._write_pg = probes.wrap("write", engine_mod._write_pg)
    digests_probe = probes.wrap("send_digests", send_digests)

    def daily_run(url: str) -> dict:
        engine = create_db_engine(url)
        with engine.connect() as conn:  # the first connection is not part of the run
            conn.execute(sa.text("SELECT 1"))
        probes.reset()
        per_rule = {}
        t0 = now_s()
        for rule in rules:
            t = now_s()
            with session_scope(engine) as session:
                tenant = get_tenant(session, spec["slug"])
                ctx = RuleContext(tenant=tenant, day=date.fromisoformat(spec["day"]),
                                  now=datetime.fromisoformat(spec["now"]))
                result = run_rule(session, rule, ctx, mail_settings=settings,
                                  globally_off=switched_off_services(session))
            per_rule[rule.name] = {"seconds": round(now_s() - t, 4), **result.as_metadata(),
                                   "peak_rss_mb_after": _status_mb("VmHWM")}
        with session_scope(engine) as session:
            tenant = get_tenant(session, spec["slug"])
            ctx = RuleContext(tenant=tenant, day=date.fromisoformat(spec["day"]), now=datetime.fromisoformat(spec["now"]))
            digests = digests_probe(session, ctx, mail_settings=settings)
        seconds = now_s() - t0
        engine.dispose()
        return {"seconds": seconds, "per_rule": per_rule, "digests": digests, "probes": probes.snapshot()}

    out: dict = {"rss_after_imports_mb": _status_mb("VmRSS"), "peak_rss_after_imports_mb": _status_mb("VmHWM")}
    if spec.get("profile"):
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        out["cold"] = daily_run(spec["cold"])
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(40)
        out["profile_cumulative"] = text.getvalue()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
        out["profile_tottime"] = text.getvalue()
    else:
        out["cold"] = daily_run(spec["cold"])
    out["peak_rss_mb"] = _status_mb("VmHWM")
    out["rss_after_run_mb"] = _status_mb("VmRSS")
    if spec.get("warm"):
        out["warm"] = daily_run(spec["warm"])
    return out


def run_child(spec: dict, timeout: float = 1800) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.b3_reminder_scan", "--child", json.dumps(spec)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"B3 child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


# -- checks --------------------------------------------------------------------------------------


def _db_counts(url: str) -> dict:
    import sqlalchemy as sa

    from bg_ops.db.engine import create_db_engine

    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            q = conn.execute(sa.text(
                "SELECT count(*), count(DISTINCT idempotency_key), count(*) FILTER (WHERE raw_message IS NOT NULL "
                "OR (template IS NOT NULL AND subject IS NOT NULL)) FROM email_queue")).one()
            log_rows = conn.execute(sa.text("SELECT count(*), count(email_id) FROM reminder_log")).one()
            notes = conn.execute(sa.text("SELECT count(*) FROM notifications")).scalar_one()
    finally:
        engine.dispose()
    return {"queue": int(q[0]), "distinct_keys": int(q[1]), "built": int(q[2]), "reminder_log": int(log_rows[0]),
            "log_with_email": int(log_rows[1]), "notifications": int(notes)}


# -- one scale -------------------------------------------------------------------------------------


def measure_scale(pg: BenchPostgres, scale: float, *, repeats: int = 2, warm: bool = True,
                  profile: bool = False) -> dict:
    log(f"B3: scale {scale:g}x: generating and loading the tenant")
    template, summary = load_world(pg, scale)
    copies: list[str] = []
    try:
        def copy() -> str:
            name = pg.fresh_database(template)
            copies.append(name)
            return name

        log(f"B3: scale {scale:g}x: {summary['total_rows']:,} rows (generated in {summary['generate_s']} s, "
            f"loaded in {summary['load_s']} s); each turn: the limit (same rows), the crude limit, our run")
        # Each side ``repeats`` times on fresh copies, taking turns so a slow spell of the
        # machine falls on both; each side's best counts. Our run is a fresh child process each
        # time (cold), the first one also runs warm.
        limits, crudes, children, counts_cold, comparisons = [], [], [], [], []
        warm_db = None
        def done(name: str) -> None:  # a 10x copy is large: drop each as soon as it is measured
            copies.remove(name)
            pg.drop(name)

        for i in range(repeats):
            limit_db = copy()
            pg.admin("CHECKPOINT")  # each run starts with the copies' writes flushed
            limits.append(run_limit(pg.url(limit_db), "same"))
            limit_rows = queue_rows(pg.url(limit_db))
            done(limit_db)
            crude_db = copy()
            pg.admin("CHECKPOINT")
            crudes.append(run_limit(pg.url(crude_db), "crude"))
            done(crude_db)
            cold_db = copy()
            if warm and i == 0:
                warm_db = copy()
            pg.admin("CHECKPOINT")
            children.append(run_child({"cold": pg.url(cold_db), "warm": pg.url(warm_db) if i == 0 and warm_db else None,
                                       "slug": TENANT_SLUG, "day": DAY.isoformat(), "now": NOW.isoformat()}))
            counts_cold.append(_db_counts(pg.url(cold_db)))
            comparisons.append(compare_rows(queue_rows(pg.url(cold_db)), limit_rows))
            del limit_rows
            done(cold_db)
        limit_s, limit_rules = min(limits, key=lambda x: x[0])
        crude_s = min(x[0] for x in crudes)
        counts_warm = _db_counts(pg.url(warm_db)) if warm_db else None
        prof = None
        if profile:
            prof = run_child({"cold": pg.url(copy()), "slug": TENANT_SLUG, "day": DAY.isoformat(),
                              "now": NOW.isoformat(), "profile": True})
    finally:
        for name in copies:
            pg.drop(name)
        pg.drop(template)

    child = children[0]
    warm = child.get("warm") or child["cold"]
    colds = [c["cold"] for c in children]
    cold = min(colds, key=lambda c: c["seconds"])
    peak_rss = max(c["peak_rss_mb"] for c in children)
    mails = sum(r["enqueued"] for r in cold["per_rule"].values())
    mismatched = {name: {"ours": r["enqueued"], "hand_written": limit_rules.get(name, {}).get("rows", 0)}
                  for name, r in cold["per_rule"].items()
                  if r["enqueued"] != limit_rules.get(name, {}).get("rows", 0)}
    warm_mails = sum(r["enqueued"] for r in warm["per_rule"].values())
    checks = {
        "queue_rows_equal_to_hand_written": comparisons,  # every column of every row, once per turn
        "per_rule_equal_to_hand_written": not mismatched,
        "mismatched_rules": mismatched,
        "db_cold": counts_cold,  # one per cold run
        "db_warm": counts_warm,
        "rules_that_found_nothing": sorted(n for n, r in cold["per_rule"].items() if r["enqueued"] == 0),
    }
    ok = (not mismatched and warm_mails == mails and all(c["same"] and c["rows"] > 0 for c in comparisons)
          and all(sum(r["enqueued"] for r in c["per_rule"].values()) == mails for c in colds)
          and all(c[k] == mails for c in (*counts_cold, counts_warm) if c is not None
                  for k in ("queue", "distinct_keys", "built", "reminder_log", "log_with_email", "notifications")))
    checks["ok"] = ok
    out = {
        "scale": scale, "rows": summary["total_rows"], "table_rows": summary["rows"], "mails": mails,
        "seconds": round(cold["seconds"], 3), "cold_all": [round(c["seconds"], 3) for c in colds],
        "warm_seconds": round(warm["seconds"], 3) if warm_db else None,
        "limit_seconds": round(limit_s, 4), "limit_all": [round(x[0], 4) for x in limits],
        "crude_limit_seconds": round(crude_s, 4), "crude_limit_all": [round(x[0], 4) for x in crudes],
        "peak_rss_mb": peak_rss, "rss_after_imports_mb": child["rss_after_imports_mb"],
        "rss_after_run_mb": child["rss_after_run_mb"],
        "per_rule": {name: {**r, "hand_written_seconds": limit_rules.get(name, {}).get("seconds")}
                     for name, r in cold["per_rule"].items()},
        "probes_cold": cold["probes"], "probes_warm": warm["probes"] if warm_db else None, "checks": checks,
        "generate_s": summary["generate_s"], "load_s": summary["load_s"],
    }
    if prof is not None:
        out["profile_cumulative"] = prof["profile_cumulative"]
        out["profile_tottime"] = prof["profile_tottime"]
    log(f"B3: scale {scale:g}x: {mails:,} mails in {cold['seconds']:.2f} s cold (best of "
        f"{', '.join(f'{c:.2f}' for c in out['cold_all'])})"
        + (f" ({warm['seconds']:.2f} s warm)" if warm_db else "") + ", "
        f"hand-written, same rows {limit_s:.3f} s (best of {', '.join(f'{x:.3f}' for x in out['limit_all'])}), "
        f"crude rows {crude_s:.3f} s (best of {', '.join(f'{x:.3f}' for x in out['crude_limit_all'])}); "
        f"peak RSS {peak_rss:.0f} MB; rows the same as the limit's: "
        f"{'yes' if all(c['same'] for c in comparisons) else 'NO'}; checks {'ok' if ok else 'FAILED'}")
    return out


def _breakdown(m: dict) -> str:
    p = {k: v["seconds"] for k, v in m["probes_cold"].items()}
    build = p.get("render subject", 0.0)
    parts = {
        "render subject (in the checks)": build,
        "checks (addresses, variables, subjects shared)": max(0.0, p.get("check", 0.0) - build),
        "writes (COPY + one statement: log, mail, notifications)": p.get("write", 0.0),
        "rule queries (find)": p.get("find (rule query + Python)", 0.0),
        "send_digests": p.get("send_digests", 0.0),
    }
    slowest = sorted(m["per_rule"].items(), key=lambda kv: kv[1]["seconds"], reverse=True)[:3]
    return ("daily run: " + dominant(parts, m["seconds"])
            + " (other = sessions, tenant and switch lookups, commits); "
            + "slowest rules: " + ", ".join(f"{n} {r['seconds']:.2f} s for {r['enqueued']} mails" for n, r in slowest))


def run(size: str, pg: BenchPostgres, *, profile: bool = False) -> BenchResult:
    if size == "full" and os.environ.get("BG_OPS_BENCH_SCALE") == "1":
        size = "scale"
    scales = SCALES[size]
    result = BenchResult(NAME, TITLE, size)
    measured = [measure_scale(pg, s, repeats=LIMIT_REPEATS[size], warm=WARM[size],
                              profile=profile and s == HEADLINE_SCALE[size]) for s in scales]
    head = next(m for m in measured if m["scale"] == HEADLINE_SCALE[size])
    ratio = head["seconds"] / head["limit_seconds"]
    note = _breakdown(head)
    result.figures += [
        Figure(f"daily run, {head['scale']:g}x ({head['rows']:,} rows, {head['mails']:,} mails): time",
               head["seconds"], "s", limit=head["limit_seconds"],
               limit_label="hand-written INSERT…SELECT writing the same rows, s",
               ratio=round(ratio, 2), goal=f"ratio <= {RATIO_GOAL:g}", ok=ratio <= RATIO_GOAL, note=note),
        Figure("daily run against the earlier, crude limit (for comparison)", head["seconds"], "s",
               limit=head["crude_limit_seconds"], limit_label="INSERT…SELECT of a cruder row, s",
               ratio=round(head["seconds"] / head["crude_limit_seconds"], 2), goal="", ok=None,
               note="not the same rows: subject and body by concatenation, no context, no Message-ID"),
        Figure("daily run: absolute time", head["seconds"], "s", limit=TIME_GOAL_S, limit_label="goal, s",
               ratio=round(head["seconds"] / TIME_GOAL_S, 2), goal=f"< {TIME_GOAL_S:g} s",
               ok=head["seconds"] < TIME_GOAL_S, note=note),
        Figure("daily run: peak RSS of the run process", head["peak_rss_mb"], "MB", limit=RSS_GOAL_MB,
               limit_label=f"goal, MB; {head['rss_after_imports_mb']:.0f} MB after imports",
               ratio=round(head["peak_rss_mb"] / RSS_GOAL_MB, 2), goal=f"< {RSS_GOAL_MB:g} MB",
               ok=head["peak_rss_mb"] < RSS_GOAL_MB),
    ]
    # B8: growth with the rows (with one scale only, as in quick, there is nothing to compare)
    small = measured[0]
    if len(measured) == 1:
        measured_b8 = []
    else:
        measured_b8 = measured
    small_per_k = 1000 * small["seconds"] / small["rows"]
    for m in measured_b8:
        per_k = 1000 * m["seconds"] / m["rows"]
        big = m is measured[-1] and len(measured) > 1
        growth = per_k / small_per_k
        result.figures.append(Figure(
            f"B8 {m['scale']:g}x ({m['rows']:,} rows, {m['mails']:,} mails): time per 1,000 rows",
            round(1000 * per_k, 3), "ms", limit=round(1000 * small_per_k, 3),
            limit_label=f"ms per 1,000 rows at {small['scale']:g}x",
            ratio=round(growth, 2), goal=f"ratio <= {LINEAR_GOAL:g} (linear)" if big else "",
            ok=(growth <= LINEAR_GOAL) if big else None,
            note=f"{m['seconds']:.2f} s; {_breakdown(m)}" if big and growth > LINEAR_GOAL else ""))
        result.figures.append(Figure(
            f"B8 {m['scale']:g}x: peak RSS", m["peak_rss_mb"], "MB", limit=small["peak_rss_mb"],
            limit_label=f"MB at {small['scale']:g}x", ratio=round(m["peak_rss_mb"] / small["peak_rss_mb"], 2),
            goal=f"< {RSS_GOAL_MB:g} MB" if m is not small else "",
            ok=(m["peak_rss_mb"] < RSS_GOAL_MB) if m is not small else None,
            note=(f"{m['peak_rss_mb'] - m['rss_after_imports_mb']:.0f} MB above the {m['rss_after_imports_mb']:.0f} MB "
                  f"after imports, for {m['mails']:,} mails")))
    result.checks = {f"scale_{m['scale']:g}x": m["checks"] for m in measured}
    result.checks["ok"] = all(m["checks"]["ok"] for m in measured)
    result.details = {
        "day": DAY.isoformat(), "tenant_zone": ZONE_NAME, "due_fraction": DUE, "pools": dict(POOLS),
        "memory_method": "peak RSS = VmHWM (/proc/self/status) of the child process that runs the measured part, "
                         "read right after the cold run (imports included; ru_maxrss is not used: Linux "
                         "carries it over from the parent across fork and exec)",
        "timing": "cold = first daily run in a fresh child process after imports and connect, best of "
                  f"{LIMIT_REPEATS[size]} such processes; warm = second run in the first process on another copy "
                  f"(not in quick); limit = best of {LIMIT_REPEATS[size]} runs of the hand-written statements (the "
                  "same-rows ones; the crude ones likewise, each on its own copy) on "
                  "fresh copies, taking turns with the cold runs",
        "scales": measured,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b3_reminder_scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SCALES), default="quick")
    parser.add_argument("--profile", action="store_true", help="also profile the headline run with cProfile")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        out = _child(json.loads(args.child))
        print("RESULT " + json.dumps(out, default=str), flush=True)
        return 0
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
        if "profile_cumulative" in m:
            print(m["profile_tottime"])
            print(m["profile_cumulative"])
    return 0 if result.checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
