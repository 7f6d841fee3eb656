"""The loop both queue drains share (email, uploads): claim batch after batch until done."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Protocol


class DrainReport(Protocol):
    batches: int
    stopped_because: str


Submit = Callable[..., Future]


def run_now(fn: Callable, *args, **kwargs) -> Future:
    """``Executor.submit`` without an executor: run ``fn`` at once, return its done future."""
    future: Future = Future()
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
        future.set_exception(exc)
    return future


def claimed_batches(
    claim: Callable[[datetime], Sequence],
    *,
    clock: Callable[[], datetime],
    time_budget_seconds: float,
    max_batches: int | None,
    report: DrainReport,
    submit: Submit | None = None,
    release: Callable[[Sequence], None] | None = None,
) -> Iterator[tuple[datetime, Sequence]]:
    """Yield ``(now, rows)`` for each claimed batch until nothing is due, the time budget is
    spent or ``max_batches`` batches were claimed; say which in ``report.stopped_because``.

    Without ``submit`` each batch is claimed here once the caller is done with the one before.
    With an executor's ``submit`` the next batch is claimed in the background as soon as a
    batch is handed out, while the caller works on it; a batch claimed that way is always
    handed out, so the budget may be passed by the one batch already claimed, never leaving
    rows to wait for their lease. When the caller stops early (an error), a batch claimed but
    not handed out is given to ``release``.
    """
    start = clock()
    claimed = 0
    ahead = submit is not None
    run = submit or run_now

    def ask() -> tuple[str, tuple[datetime, Future] | None]:
        now = clock()
        if (now - start).total_seconds() >= time_budget_seconds:
            return "time budget spent", None
        if max_batches is not None and claimed >= max_batches:
            return "batch limit reached", None
        return "", (now, run(claim, now))

    reason, pending = ask()
    try:
        while pending is not None:
            now, future = pending
            pending = None
            rows = future.result()
            if not rows:
                reason = "nothing due"
                break
            claimed += 1
            if ahead:
                reason, pending = ask()
            yield now, rows
            if not ahead:
                reason, pending = ask()
    finally:
        report.stopped_because = reason
        if pending is not None and release is not None:
            try:  # best effort: otherwise the rows wait for their lease to end
                rows = pending[1].result()
                if rows:
                    release(rows)
            except Exception:  # noqa: BLE001 - the error that stopped the caller matters more
                pass
