"""Waiting for an outside process to reach a state.

``wait_for_line`` blocks on the process's own output (a server saying it listens) and wakes
the moment the line comes or the process ends. ``wait_for`` polls a condition for what no
process tells (a state read over HTTP, a process group gone): only for other processes,
never for our own work, which tests drive with a clock they pass in or wait on directly.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import IO, TypeVar

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



class OutputWatch:
    """Reads a process's text pipe on a thread of its own, to its end (so the process never
    blocks on a full pipe), and lets the test wait for a line on it: the wait wakes the moment
    the line comes or the stream ends (the process exited)."""

    def __init__(self, stream: IO[str], name: str = "output") -> None:
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(stream,), name=f"read {name}", daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for_line(self, pattern: str, *, timeout: float, what: str) -> str:
        """The first line matching ``pattern``; ``WaitTimeout`` with what was said otherwise."""
        wanted = re.compile(pattern)

        def matched() -> str | None:
            return next((line for line in self._lines if wanted.search(line)), None)

        with self._changed:
            self._changed.wait_for(lambda: matched() is not None or self._ended, timeout=timeout)
            line, ended, said = matched(), self._ended, "".join(self._lines[-40:])
        if line is not None:
            return line
        reason = "its output ended" if ended else f"nothing matched in {timeout:.0f}s"
        raise WaitTimeout(f"gave up waiting for {what}: {reason}; it said:\n{said}")

    def text(self, timeout: float = 20) -> str:
        """Everything read, once the stream has ended (call after the process exited)."""
        self._thread.join(timeout)
        with self._changed:
            return "".join(self._lines)
