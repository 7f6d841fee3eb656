"""The loop both queue drains share (email, uploads): claim batch after batch until done."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Protocol


class DrainReport(Protocol):
    batches: int
    stopped_because: str


def claimed_batches(
    claim: Callable[[datetime], Sequence],
    *,
    clock: Callable[[], datetime],
    time_budget_seconds: float,
    max_batches: int | None,
    report: DrainReport,
) -> Iterator[tuple[datetime, Sequence]]:
    """Yield ``(now, rows)`` for each claimed batch until nothing is due, the time budget is
    spent or ``report.batches`` reaches ``max_batches`` (the caller counts its batches); say
    which in ``report.stopped_because``."""
    start = clock()
    while True:
        now = clock()
        if (now - start).total_seconds() >= time_budget_seconds:
            report.stopped_because = "time budget spent"
            return
        if max_batches is not None and report.batches >= max_batches:
            report.stopped_because = "batch limit reached"
            return
        rows = claim(now)
        if not rows:
            report.stopped_because = "nothing due"
            return
        yield now, rows
