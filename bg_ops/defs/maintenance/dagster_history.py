"""Dagster's own history pruned per the same policy as bg_ops's tables (O4, seed 003 BR-2).

- Runs that succeeded or were canceled, created before the retention cutoff, are deleted with
  their event logs (``DagsterInstance.delete_run``), asset materialization history included.
- A failed run is kept until resolved: it goes only once past the cutoff *and* a later run of
  the same job (and the same partition, if it had one) succeeded. Runs still going are never
  touched.
- Ticks of every schedule and sensor: skipped ticks (temporary state, the "nothing to do"
  evaluations) after ``temp_state_hours``; others after the retention, a failed tick only
  once a later tick of its instigator went well.

Dagster's daemon also purges ticks itself per ``retention:`` in dagster.yaml; this job applies
bg_ops's policy on top, and covers runs, which the daemon never deletes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import dagster as dg

DELETABLE = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED]
FAILED = [dg.DagsterRunStatus.FAILURE]
PARTITION_TAG = "dagster/partition"


@dataclass
class HistoryReport:
    dry_run: bool
    cutoff: datetime
    runs_deleted: list[str] = field(default_factory=list)
    failed_runs_kept: list[str] = field(default_factory=list)  # past the cutoff but not resolved
    ticks_purged: dict[str, int] = field(default_factory=dict)  # status -> count
    instigators: int = 0

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run, "cutoff": self.cutoff.isoformat(), "runs_deleted": len(self.runs_deleted),
                "failed_runs_kept_unresolved": len(self.failed_runs_kept), "ticks_purged": dict(self.ticks_purged),
                "instigators": self.instigators}


def _old_runs(instance: dg.DagsterInstance, statuses, cutoff: datetime, page: int):
    cursor = None
    while True:
        records = instance.get_run_records(
            filters=dg.RunsFilter(statuses=statuses, created_before=cutoff), limit=page, cursor=cursor,
        )
        if not records:
            return
        yield from records
        if len(records) < page:
            return
        cursor = records[-1].dagster_run.run_id


def prune_runs(instance: dg.DagsterInstance, *, now: datetime, retention_days: int, dry_run: bool = False,
               page: int = 500, keep_run_ids: frozenset[str] = frozenset(),
               on_delete: Callable[[str], None] | None = None) -> HistoryReport:
    cutoff = now - timedelta(days=retention_days)
    report = HistoryReport(dry_run=dry_run, cutoff=cutoff)
    # Collect first, delete after: deleting while paging by cursor would skip pages.
    doomed = [r.dagster_run.run_id for r in _old_runs(instance, DELETABLE, cutoff, page)]
    latest_success: dict[tuple[str, str | None], datetime | None] = {}
    for record in _old_runs(instance, FAILED, cutoff, page):
        run = record.dagster_run
        key = (run.job_name, run.tags.get(PARTITION_TAG))
        if key not in latest_success:
            tags = {PARTITION_TAG: key[1]} if key[1] is not None else None
            found = instance.get_run_records(
                filters=dg.RunsFilter(job_name=key[0], statuses=[dg.DagsterRunStatus.SUCCESS], tags=tags), limit=1,
            )
            latest_success[key] = found[0].create_timestamp if found else None
        succeeded_at = latest_success[key]
        if succeeded_at is not None and succeeded_at > record.create_timestamp:
            doomed.append(run.run_id)
        else:
            report.failed_runs_kept.append(run.run_id)
    for run_id in doomed:
        if run_id in keep_run_ids:
            continue
        if not dry_run:
            instance.delete_run(run_id)
            if on_delete is not None:
                on_delete(run_id)
        report.runs_deleted.append(run_id)
    return report


def _tick_statuses(instance: dg.DagsterInstance, instigator_type) -> dict[str, object]:
    """Dagster's TickStatus members by name. The enum is not exported by ``dagster``; the
    instance's retention settings are keyed by it, which reaches it without a private import."""
    settings = instance.get_tick_retention_settings(instigator_type)
    enum = type(next(iter(settings)))
    return {member.value: member for member in enum}


def _last_good_tick(instance: dg.DagsterInstance, origin_id: str, selector_id: str, good) -> float | None:
    ticks = instance.get_ticks(origin_id, selector_id, limit=1, statuses=good)
    return ticks[0].timestamp if ticks else None


def prune_ticks(instance: dg.DagsterInstance, report: HistoryReport, *, now: datetime, retention_days: int,
                temp_state_hours: int) -> HistoryReport:
    cutoff = (now - timedelta(days=retention_days)).timestamp()
    temp_cutoff = (now - timedelta(hours=temp_state_hours)).timestamp()
    for state in instance.all_instigator_state():
        report.instigators += 1
        status = _tick_statuses(instance, state.instigator_type)
        origin_id, selector_id = state.instigator_origin_id, state.selector_id
        good = [status["SUCCESS"], status["SKIPPED"]]
        last_good = _last_good_tick(instance, origin_id, selector_id, good)
        plan = [("SKIPPED", temp_cutoff), ("SUCCESS", cutoff)]
        if last_good is not None:  # failures before the instigator last went well are resolved
            plan.append(("FAILURE", min(cutoff, last_good)))
        for name, before in plan:
            doomed = len(instance.get_ticks(origin_id, selector_id, before=before, statuses=[status[name]]))
            if doomed and not report.dry_run:
                instance.purge_ticks(origin_id, selector_id, before=before, tick_statuses=[status[name]])
            report.ticks_purged[name.lower()] = report.ticks_purged.get(name.lower(), 0) + doomed
    return report


def prune_dagster_history(instance: dg.DagsterInstance, *, now: datetime, retention_days: int,
                          temp_state_hours: int, dry_run: bool = False,
                          keep_run_ids: frozenset[str] = frozenset()) -> HistoryReport:
    """Runs (with their events) and ticks past the retention; ``keep_run_ids`` are never deleted."""
    report = prune_runs(instance, now=now, retention_days=retention_days, dry_run=dry_run, keep_run_ids=keep_run_ids)
    return prune_ticks(instance, report, now=now, retention_days=retention_days, temp_state_hours=temp_state_hours)
