"""Launching queue workers (email delivery, uploads): only when work is due, one run at a time."""

from collections.abc import Callable
from datetime import datetime

import dagster as dg

ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def worker_run_request(context, *, job_name: str, count_due: Callable[[], int], now: datetime,
                       what: str) -> dg.RunRequest | dg.SkipReason:
    """A run request for ``job_name`` when ``count_due()`` finds work and no run of it is going."""
    active = context.instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=ACTIVE_RUN_STATUSES), limit=1)
    if active:
        return dg.SkipReason(f"{what} run {active[0].run_id[:8]} is still going")
    due = count_due()
    if not due:
        return dg.SkipReason(f"no {what} is due")
    return dg.RunRequest(run_key=f"{job_name}-{now.strftime('%Y%m%dT%H%M%S')}", tags={"due_at_request": str(due)})
