"""Waiting for an outside process to reach a state.

``wait_for_line`` blocks on the process's own output (a server saying it listens) and wakes
the moment the line comes or the process ends. ``wait_for`` checks a state read from other
processes (over HTTP) again each time they write to their log.
``wait_group_gone`` waits on each process's exit through a pidfd. Nothing here sleeps; our
own work, tests drive with a clock they pass in or wait on directly.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


# Between two checks when no watched file changes: only for state a process holds in memory.
RECHECK_SECONDS = 5.0


class FileChanges:
    """Wakes a waiter whenever one of ``files`` is written, created, moved or deleted (inotify,
    through watchdog; the file need not exist yet). Reads are not changes: a waiter whose check
    reads the watched files must not wake itself."""

    _KINDS = frozenset({"modified", "created", "deleted", "moved", "closed"})  # "closed": after a write

    def __init__(self, files: Sequence[Path]) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        self._changed = threading.Event()
        outer = self

        class Handler(FileSystemEventHandler):
            def __init__(self, file: Path) -> None:
                self._file = str(file)  # the other files of its folder do not count

            def on_any_event(self, event) -> None:
                if event.event_type in FileChanges._KINDS and event.src_path == self._file:
                    outer._changed.set()

        self._observer = Observer()
        for file in files:
            self._observer.schedule(Handler(file), str(file.parent), recursive=False)
        self._observer.start()

    def wait(self, timeout: float) -> bool:
        """True when something changed since the last wait (at once if it already had)."""
        changed = self._changed.wait(timeout)
        self._changed.clear()
        return changed

    def close(self) -> None:
        self._observer.stop()
        self._observer.join(5)

    def __enter__(self) -> FileChanges:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    wake_on: Sequence[Path],
    alive: Callable[[], str | None] | None = None,
) -> T:
    """Return the first truthy value of ``predicate()``; exceptions count as "not yet".

    The check runs again each time one of the files ``wake_on`` is written: the other
    processes' logs, to which every state change we wait for writes a line (a run's events,
    a sensor tick, a server starting); at the latest after ``RECHECK_SECONDS``, for state a
    process holds only in memory. ``alive`` returns an error text when the thing being waited
    on has died, to stop early.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    with FileChanges(wake_on) as changes:
        while True:
            if alive is not None and (dead := alive()):
                raise WaitTimeout(f"gave up waiting for {what}: {dead}")
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - not ready yet
                last_error = exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error!r})")
            changes.wait(min(RECHECK_SECONDS, remaining))


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait until process group ``pgid`` has no live process; False on timeout.

    Each member's exit is waited on through a pidfd (the kernel marks it readable when the
    process ends); the group is read again after each exit, since a member may have started
    another."""
    deadline = time.monotonic() + timeout
    while members := group_members(pgid):
        poller = select.poll()
        fds = []
        for pid in members:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            fds.append(fd)
            poller.register(fd, select.POLLIN)
        try:
            remaining = deadline - time.monotonic()
            if fds and (remaining <= 0 or not poller.poll(remaining * 1000)):
                return False
        finally:
            for fd in fds:
                os.close(fd)
    return True


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
