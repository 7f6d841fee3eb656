"""Waiting for an outside process to reach a state: poll a condition, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    alive: Callable[[], str | None] | None = None,
) -> T:
    """Return the first truthy value of ``predicate()``; exceptions count as "not yet".

    ``alive`` returns an error text when the thing being waited on has died, to stop early.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if alive is not None and (dead := alive()):
            raise WaitTimeout(f"gave up waiting for {what}: {dead}")
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last_error = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error!r})")
        time.sleep(interval)
