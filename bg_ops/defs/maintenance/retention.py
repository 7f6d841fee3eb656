"""Retention of bg_ops's own tables (O4, seed 003 BR-2), plain logic over an engine and ``now``.

BR-2: completed records are kept 90 days, failed ones until someone resolves them, temporary
state 24 hours. Each table gets explicit rules (``RULES``) or an explicit reason to keep every
row (``KEPT_TABLES``); a test fails when a new bg_ops table has neither.

Work is done in batches of ``batch_size`` rows chosen by primary key, each batch its own short
transaction (on PostgreSQL the batch's rows are locked ``SKIP LOCKED``, so cleanup never waits
for a worker and a worker claiming due mail never waits for more than one batch). A rule only
ever touches rows its condition names, checked again in the statement that deletes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from bg_ops.db.app_schema import PaymentEvent
from bg_ops.db.own_schema import OWN_TABLES, email_queue, notifications, reminder_log, upload_queue
from bg_ops.defs.email import admin as email_admin

DEFAULT_BATCH_SIZE = 5000
payment_events = PaymentEvent.__table__


@dataclass(frozen=True)
class RetentionPolicy:
    """How long things are kept; defaults are BR-2's (``Settings`` carries the configured ones)."""

    completed_days: int = 90
    temp_state_hours: int = 24
    notification_days: int = 90
    reminder_log_days: int = 400
    batch_size: int = DEFAULT_BATCH_SIZE

    @classmethod
    def from_settings(cls, settings, *, batch_size: int = DEFAULT_BATCH_SIZE) -> RetentionPolicy:
        return cls(completed_days=settings.retention_days, temp_state_hours=settings.temp_state_retention_hours,
                   notification_days=settings.notification_retention_days,
                   reminder_log_days=settings.reminder_log_retention_days, batch_size=batch_size)

    def completed_cutoff(self, now: datetime) -> datetime:
        return now - timedelta(days=self.completed_days)

    def temp_cutoff(self, now: datetime) -> datetime:
        return now - timedelta(hours=self.temp_state_hours)


@dataclass(frozen=True)
class Rule:
    """Rows of ``table`` that ``where(now, policy)`` names are deleted (or, with ``clear``, the
    listed columns set to NULL). ``candidates``, when given, is a query for the ids to consider,
    for conditions too costly to evaluate per batch (it is run once, before the batches)."""

    name: str
    table: sa.Table
    where: Callable[[datetime, RetentionPolicy], sa.ColumnElement]
    cutoff: Callable[[datetime, RetentionPolicy], datetime]
    keeps: str
    clear: tuple[str, ...] = ()
    candidates: Callable[[datetime, RetentionPolicy], sa.Select] | None = None

    @property
    def action(self) -> str:
        return "clear" if self.clear else "delete"


def _superseded_uploads(now: datetime, policy: RetentionPolicy) -> sa.Select:
    """Uploaded rows past the retention that a newer upload to the same cloud path superseded.

    The latest upload to each path is the record of the file in the cloud now: the storage
    quota (``used_bytes``) and the restore drill read it, so it stays whatever its age."""
    u = upload_queue
    newest_by_path = sa.func.max(u.c.id).over(partition_by=(u.c.company_id, sa.func.coalesce(u.c.cloud_path,
                                                                                              u.c.dest_path)))
    newest_by_cloud = sa.func.max(u.c.id).over(partition_by=(u.c.company_id, sa.func.lower(u.c.cloud_path)))
    ranked = (
        sa.select(u.c.id, u.c.uploaded_at, newest_by_path.label("newest_by_path"),
                  newest_by_cloud.label("newest_by_cloud"))
        .where(u.c.status == "uploaded")
        .subquery()
    )
    return (
        sa.select(ranked.c.id)
        .where(ranked.c.id != ranked.c.newest_by_path, ranked.c.id != ranked.c.newest_by_cloud,
               ranked.c.uploaded_at < policy.completed_cutoff(now))
        .order_by(ranked.c.id)
    )


def _completed(now, policy):
    return policy.completed_cutoff(now)


def _temp(now, policy):
    return policy.temp_cutoff(now)


# Also run on its own by ``bg-ops emails cleanup`` (``rules=(MAIL_RULE,)``).
MAIL_RULE = Rule(
    name="sent or canceled mail",
    table=email_queue,
    where=lambda now, p: email_admin.past_retention(p.completed_cutoff(now)),
    cutoff=_completed,
    keeps="failed mail (until retried or canceled), pending and sending mail, everything newer",
)

RULES: tuple[Rule, ...] = (
    MAIL_RULE,
    Rule(
        name="stale mail leases",
        table=email_queue,
        where=lambda now, p: sa.and_(email_queue.c.status != "sending", email_queue.c.locked_until < p.temp_cutoff(now)),
        cutoff=_temp,
        keeps="the lease of every message being sent",
        clear=("locked_until", "locked_by"),
    ),
    Rule(
        name="superseded uploads",
        table=upload_queue,
        where=lambda now, p: sa.and_(upload_queue.c.status == "uploaded",
                                     upload_queue.c.uploaded_at < p.completed_cutoff(now)),
        candidates=_superseded_uploads,
        cutoff=_completed,
        keeps=("the latest upload to each cloud path (quota and restore drill read it), failed and canceled "
               "uploads (until retried), queued and uploading ones, everything newer"),
    ),
    Rule(
        name="stale upload leases",
        table=upload_queue,
        where=lambda now, p: sa.and_(upload_queue.c.status != "uploading",
                                     upload_queue.c.locked_until < p.temp_cutoff(now)),
        cutoff=_temp,
        keeps="the lease of every file being uploaded",
        clear=("locked_until", "locked_by"),
    ),
    Rule(
        name="old in-app notifications",
        table=notifications,
        where=lambda now, p: notifications.c.created_at < now - timedelta(days=p.notification_days),
        cutoff=lambda now, p: now - timedelta(days=p.notification_days),
        keeps="notifications newer than BG_OPS_NOTIFICATION_RETENTION_DAYS",
    ),
    Rule(
        name="old reminder log",
        table=reminder_log,
        where=lambda now, p: reminder_log.c.created_at < now - timedelta(days=p.reminder_log_days),
        cutoff=lambda now, p: now - timedelta(days=p.reminder_log_days),
        keeps=("entries newer than BG_OPS_REMINDER_LOG_RETENTION_DAYS (they are the at-most-once key: a "
               "backfill older than that could send a reminder again)"),
    ),
    Rule(
        name="rejected payment attempts",
        table=payment_events,
        where=lambda now, p: sa.and_(payment_events.c.event_id.like("rejected:%"),
                                     payment_events.c.signature_valid.is_(False),
                                     payment_events.c.received_at < p.completed_cutoff(now)),
        cutoff=_completed,
        keeps="every real payment event (the platform's inbox), and rejected attempts newer than the retention",
    ),
)

KEPT_TABLES: dict[str, str] = {
    "service_switches": "operator configuration",
    "backup_manifest": "what the nightly backup has seen; without it every file would be uploaded again",
    "archives": "the index of archived documents in the cloud; a deleted row would archive the document again",
    "renditions": "the index of thumbnails in the cloud; a deleted row would render it again",
    "billing_triggers": "the once-only key of billing tasks",
    "pto_ledger": "the PTO ledger, a financial record",
    "client_suspensions": "the requests and outcome of client suspensions (audit)",
    "client_suspension_changes": "the journal a reinstatement reverses; needed while a client is suspended",
}


def unaccounted_tables() -> list[str]:
    """bg_ops tables with neither a retention rule nor a reason to keep them (should be none)."""
    ruled = {r.table.name for r in RULES}
    return sorted(t.name for t in OWN_TABLES if t.name not in ruled and t.name not in KEPT_TABLES)


@dataclass
class RuleResult:
    rule: str
    table: str
    action: str
    cutoff: datetime
    rows: int = 0  # deleted (or cleared); with dry_run, that would be
    batches: int = 0
    largest_batch: int = 0

    def as_dict(self) -> dict:
        return {"rule": self.rule, "table": self.table, "action": self.action, "cutoff": self.cutoff.isoformat(),
                "rows": self.rows, "batches": self.batches, "largest_batch": self.largest_batch}


@dataclass
class CleanupReport:
    dry_run: bool
    batch_size: int
    results: list[RuleResult] = field(default_factory=list)

    @property
    def deleted(self) -> int:
        return sum(r.rows for r in self.results if r.action == "delete")

    @property
    def cleared(self) -> int:
        return sum(r.rows for r in self.results if r.action == "clear")

    @property
    def batches(self) -> int:
        return sum(r.batches for r in self.results)

    def by_table(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.results:
            entry = out.setdefault(r.table, {"deleted": 0, "cleared": 0, "batches": 0})
            entry["deleted" if r.action == "delete" else "cleared"] += r.rows
            entry["batches"] += r.batches
        return out

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run, "batch_size": self.batch_size, "deleted": self.deleted,
                "cleared": self.cleared, "batches": self.batches, "tables": self.by_table(),
                "rules": [r.as_dict() for r in self.results]}


def _apply(conn: sa.Connection, rule: Rule, ids: list[int], condition) -> int:
    t = rule.table
    if rule.clear:
        stmt = sa.update(t).where(t.c.id.in_(ids), condition).values({c: None for c in rule.clear})
    else:
        stmt = sa.delete(t).where(t.c.id.in_(ids), condition)
    return conn.execute(stmt).rowcount


def _run_rule(engine: sa.Engine, rule: Rule, *, now: datetime, policy: RetentionPolicy, dry_run: bool,
              on_batch: Callable[[RuleResult, int], None] | None) -> RuleResult:
    t = rule.table
    size = policy.batch_size
    condition = rule.where(now, policy)
    result = RuleResult(rule=rule.name, table=t.name, action=rule.action, cutoff=rule.cutoff(now, policy))

    if rule.candidates is not None:
        with engine.connect() as conn:
            pending = conn.execute(rule.candidates(now, policy)).scalars().all()
        if dry_run:
            result.rows, result.batches = len(pending), math.ceil(len(pending) / size)
            result.largest_batch = min(size, len(pending))
            return result
        for start in range(0, len(pending), size):
            chunk = pending[start:start + size]
            with engine.begin() as conn:
                done = _apply(conn, rule, chunk, condition)
            _count(result, done, on_batch)
        return result

    if dry_run:
        with engine.connect() as conn:
            n = int(conn.execute(sa.select(sa.func.count()).select_from(t).where(condition)).scalar_one())
        result.rows, result.batches, result.largest_batch = n, math.ceil(n / size), min(size, n)
        return result

    last = None
    while True:
        pick = sa.select(t.c.id).where(condition)
        if last is not None:
            pick = pick.where(t.c.id > last)
        # SKIP LOCKED (PostgreSQL): a row a worker holds right now is left for next week.
        pick = pick.order_by(t.c.id).limit(size).with_for_update(skip_locked=True)
        if rule.clear:
            stmt = sa.update(t).where(t.c.id.in_(pick.scalar_subquery())).values({c: None for c in rule.clear})
        else:
            stmt = sa.delete(t).where(t.c.id.in_(pick.scalar_subquery()))
        with engine.begin() as conn:  # one statement, one short transaction per batch
            ids = conn.execute(stmt.returning(t.c.id)).scalars().all()
        if not ids:
            break
        last = max(ids)
        _count(result, len(ids), on_batch)
        if len(ids) < size:
            break
    return result


def _count(result: RuleResult, done: int, on_batch) -> None:
    result.rows += done
    result.batches += 1
    result.largest_batch = max(result.largest_batch, done)
    if on_batch is not None:
        on_batch(result, done)


def run_cleanup(engine: sa.Engine, *, now: datetime, policy: RetentionPolicy = RetentionPolicy(),
                dry_run: bool = False, rules: tuple[Rule, ...] = RULES,
                on_batch: Callable[[RuleResult, int], None] | None = None) -> CleanupReport:
    """Apply every retention rule in batches; with ``dry_run``, count what would go and change nothing.

    ``on_batch(result, rows)`` is called after each batch's transaction has committed."""
    if policy.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {policy.batch_size}")
    report = CleanupReport(dry_run=dry_run, batch_size=policy.batch_size)
    present = set(sa.inspect(engine).get_table_names())
    for rule in rules:
        if rule.table.name not in present:  # e.g. payment_events on a database without the platform's tables
            continue
        report.results.append(_run_rule(engine, rule, now=now, policy=policy, dry_run=dry_run, on_batch=on_batch))
    return report
