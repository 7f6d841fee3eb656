"""The loop both queue drains share (email, uploads): claim batch after batch until done."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Protocol


class DrainReport(Protocol):
    batches: int
    stopped_because: str


def stop_reason(start: datetime, now: datetime, *, claimed: int, time_budget_seconds: float,
                max_batches: int | None) -> str:
    """Why a drain that began at ``start`` and has claimed ``claimed`` batches must claim no
    more at ``now`` ("" when it may go on). Checked before each claim."""
    if (now - start).total_seconds() >= time_budget_seconds:
        return "time budget spent"
    if max_batches is not None and claimed >= max_batches:
        return "batch limit reached"
    return ""


def claimed_batches(
    claim: Callable[[datetime], Sequence],
    *,
    clock: Callable[[], datetime],
    time_budget_seconds: float,
    max_batches: int | None,
    report: DrainReport,
) -> Iterator[tuple[datetime, Sequence]]:
    """Yield ``(now, rows)`` for each claimed batch until nothing is due, the time budget is
    spent or ``max_batches`` batches were claimed; say which in ``report.stopped_because``.

    Each batch is claimed here once the caller is done with the one before. (The PostgreSQL
    email drain claims ahead on a thread of its own: ``bg_ops.defs.email.delivery``.)
    """
    start = clock()
    claimed = 0
    reason = ""
    try:
        while True:
            now = clock()
            reason = stop_reason(start, now, claimed=claimed, time_budget_seconds=time_budget_seconds,
                                 max_batches=max_batches)
            if reason:
                break
            rows = claim(now)
            if not rows:
                reason = "nothing due"
                break
            claimed += 1
            yield now, rows
    finally:
        report.stopped_because = reason
