"""What every benchmark needs: a real PostgreSQL, fresh databases, the SMTP sink process,
worker processes, timing helpers and the results files (PERFORMANCE.md).

- ``BenchPostgres`` starts a throwaway server the way the tests do
  (``bg_ops_tests.support.postgres_server``) and hands out fresh databases: the first one
  gets the application schema and bg_ops's migrations and becomes a template, later ones are
  ``CREATE DATABASE … TEMPLATE`` copies (milliseconds instead of a migration run).
- ``SmtpSink`` runs ``bench/smtp_sink.py`` in its own process and reads its counters.
- ``WorkerPool`` keeps N spawned processes alive across runs (importing bg_ops and Dagster
  costs about 2 s a process, so it is paid once) and starts them together: each worker
  prepares (engine, connection, messages), reports ready, waits for one shared start event,
  runs, and reports when it ended on the monotonic clock the parent reads too.
- ``write_result`` writes ``bench/results/<name>.json`` with the absolute numbers, the
  ratio against the limit measured in the same run, the goal, pass/fail and, when a goal
  is missed, what dominated the time.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import signal
import smtplib
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"

MAIL_FROM = "Agency Platform <no-reply@bench.example>"
COMPANIES = 5

SIZES = ("quick", "full")


# -- timing ---------------------------------------------------------------------------


def now_s() -> float:
    """The clock every process shares (CLOCK_MONOTONIC on Linux), in seconds."""
    return time.perf_counter()


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


class CpuMeter:
    """Machine-wide CPU use between ``start`` and ``stop`` (from /proc/stat), in cores busy."""

    def __init__(self) -> None:
        self._begin: tuple[float, float] | None = None
        self.cores_busy = float("nan")
        self.cores = os.cpu_count() or 1

    @staticmethod
    def _read() -> tuple[float, float]:
        try:
            with open("/proc/stat") as fh:
                parts = [float(x) for x in fh.readline().split()[1:]]
        except OSError:
            return (0.0, 0.0)
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0.0)
        return (sum(parts), idle)

    def start(self) -> CpuMeter:
        self._begin = self._read()
        return self

    def stop(self) -> float:
        end = self._read()
        if self._begin is None or end[0] <= self._begin[0]:
            return self.cores_busy
        total = end[0] - self._begin[0]
        idle = end[1] - self._begin[1]
        self.cores_busy = round(self.cores * (total - idle) / total, 2)
        return self.cores_busy


# -- PostgreSQL -----------------------------------------------------------------------


def seed_companies(engine) -> None:
    import sqlalchemy as sa

    from bg_ops.db.app_schema import Company

    with engine.begin() as conn:
        conn.execute(
            sa.insert(Company),
            [{"id": i, "name": f"Bench Agency {i}", "slug": f"bench-{i}"} for i in range(1, COMPANIES + 1)],
        )


class BenchPostgres:
    """A throwaway PostgreSQL server and fresh application databases on it."""

    def __init__(self) -> None:
        from bg_ops_tests.support.postgres_server import PostgresServer

        self.server = PostgresServer()
        self._template: str | None = None

    def start(self) -> BenchPostgres:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def url(self, name: str) -> str:
        return self.server.url(name)

    def admin(self, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.server.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def _app_template(self) -> str:
        """An empty database with the app schema, bg_ops's migrations and the tenants."""
        if self._template is None:
            from bg_ops.db import migrate
            from bg_ops.db.engine import create_db_engine

            name = self.server.create_database(f"bench_tpl_{uuid.uuid4().hex[:8]}")
            engine = create_db_engine(self.url(name))
            try:
                migrate.create_app_schema(engine)
                migrate.upgrade(engine)
                seed_companies(engine)
            finally:
                engine.dispose()
            self._template = name
        return self._template

    def fresh_database(self, template: str | None = None) -> str:
        """A new database copied from ``template`` (default: the empty application database).

        Nobody may be connected to the template while it is copied.
        """
        source = template or self._app_template()
        name = f"bench_{uuid.uuid4().hex[:12]}"
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        return name

    def drop(self, name: str) -> None:
        self.server.drop_database(name)

    def vacuum_analyze(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.server.port, user="postgres", dbname=name)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("VACUUM ANALYZE")
        finally:
            conn.close()


# -- the SMTP sink --------------------------------------------------------------------


@dataclass
class SinkStats:
    count: int
    distinct: int
    bytes: int
    connections: int
    cpu: float


class SmtpSink:
    """``bench/smtp_sink.py`` in its own process; ``stats()`` and ``reset()`` over SMTP NOOP."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port: int = 0
        self.final_line = ""

    def start(self, timeout: float = 15.0) -> SmtpSink:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.smtp_sink"],
            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY "):
                self.port = int(line.split()[1])
                return self
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"SMTP sink did not start: {line!r}")

    def _noop(self, arg: str) -> str:
        with smtplib.SMTP(self.host, self.port, timeout=10) as smtp:
            code, text = smtp.docmd("NOOP", arg)
            if code != 250:
                raise RuntimeError(f"sink answered {code} {text!r}")
            return text.decode()

    def stats(self) -> SinkStats:
        """Counters since the last reset (the control connection itself counts as one)."""
        fields = dict(item.split("=", 1) for item in self._noop("COUNT").split())
        return SinkStats(
            count=int(fields["count"]), distinct=int(fields["distinct"]), bytes=int(fields["bytes"]),
            connections=int(fields["connections"]) - 1, cpu=float(fields["cpu"]),
        )

    def reset(self) -> None:
        self._noop("RESET")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                out, _ = self.proc.communicate(timeout=10)
                self.final_line = (out or "").strip()
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- worker processes -----------------------------------------------------------------


def _worker_main(index: int, tasks, results, go) -> None:
    """Loop of one pool process: prepare, report ready, wait for the start event, run."""
    while True:
        item = tasks.get()
        if item is None:
            return
        target, kwargs = item
        try:
            module_name, func_name = target.split(":")
            prepare = getattr(importlib.import_module(module_name), func_name)
            run, cleanup = prepare(**kwargs)
            results.put(("ready", index, None))
            go.wait()
            cpu0 = time.process_time()
            t0 = now_s()
            out = run()
            t1 = now_s()
            cpu = time.process_time() - cpu0
            if cleanup is not None:
                cleanup()
            results.put(("done", index, {"t_start": t0, "t_end": t1, "cpu_s": cpu, **(out or {})}))
        except BaseException:  # noqa: BLE001 - reported to the parent, which raises
            results.put(("error", index, traceback.format_exc()))


class WorkerPool:
    """N long-lived spawned processes that run prepared tasks together on one start signal.

    A task is ``"module:function"`` plus keyword arguments; the function prepares
    everything that should not be timed and returns ``(run, cleanup)``: ``run()`` is timed
    and returns a dict, ``cleanup()`` (or None) runs after the clock stopped.
    """

    def __init__(self, processes: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._go = ctx.Event()
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(processes)]
        self._procs = [
            ctx.Process(target=_worker_main, args=(i, self._tasks[i], self._results, self._go), daemon=True)
            for i in range(processes)
        ]
        for p in self._procs:
            p.start()

    def _get(self, timeout: float):
        import queue

        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._results.get(timeout=1.0)
            except queue.Empty:
                dead = [p.pid for p in self._procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"benchmark worker process(es) {dead} died") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("benchmark workers did not answer in time") from None

    def run(self, target: str, kwargs_per_worker: Sequence[dict], timeout: float = 1800.0) -> tuple[float, list[dict]]:
        """Run ``target`` on the first len(kwargs_per_worker) workers at once.

        Returns (seconds from the start signal until the last worker ended, their results).
        """
        n = len(kwargs_per_worker)
        if not 1 <= n <= len(self._procs):
            raise ValueError(f"pool has {len(self._procs)} workers, asked for {n}")
        self._go.clear()
        for i, kwargs in enumerate(kwargs_per_worker):
            self._tasks[i].put((target, dict(kwargs)))
        errors: list[str] = []
        ready = 0
        while ready + len(errors) < n:
            kind, index, payload = self._get(timeout)
            if kind == "ready":
                ready += 1
            elif kind == "error":
                errors.append(f"worker {index}:\n{payload}")
        t0 = now_s()
        self._go.set()
        results: dict[int, dict] = {}
        while len(results) + len(errors) < n:
            kind, index, payload = self._get(timeout)
            if kind == "done":
                results[index] = payload
            elif kind == "error":
                errors.append(f"worker {index}:\n{payload}")
        self._go.clear()
        if errors:
            raise RuntimeError("benchmark worker failed:\n" + "\n".join(errors))
        ordered = [results[i] for i in range(n)]
        elapsed = max(r["t_end"] for r in ordered) - t0
        return elapsed, ordered

    def close(self) -> None:
        for q in self._tasks:
            q.put(None)
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- probes: where the time goes ------------------------------------------------------


class Probes:
    """Cumulative seconds and calls of wrapped functions (a few hundred ns a call)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def reset(self) -> None:
        for k in self.seconds:
            self.seconds[k] = 0.0
            self.calls[k] = 0

    def wrap(self, name: str, func: Callable) -> Callable:
        self.seconds.setdefault(name, 0.0)
        self.calls.setdefault(name, 0)
        seconds, calls, clock = self.seconds, self.calls, time.perf_counter

        def probed(*args, **kwargs):
            t = clock()
            try:
                return func(*args, **kwargs)
            finally:
                seconds[name] += clock() - t
                calls[name] += 1

        probed.__wrapped__ = func  # type: ignore[attr-defined]
        return probed

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {k: {"seconds": round(self.seconds[k], 4), "calls": self.calls[k]} for k in self.seconds}


def dominant(breakdown: dict[str, float], total: float) -> str:
    """'send 71% of 12.3 s, claim 12%, …' from {part: seconds}."""
    if total <= 0:
        return ""
    parts = dict(breakdown)
    parts["other"] = max(0.0, total - sum(breakdown.values()))
    ordered = sorted(parts.items(), key=lambda kv: kv[1], reverse=True)
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in ordered if v > 0)


# -- results --------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the table: an absolute value, the limit measured in the same run, the
    ratio, the goal and whether it is met (None: reported, no goal)."""

    figure: str
    value: float
    unit: str
    limit: float | None = None
    limit_label: str = ""
    ratio: float | None = None
    goal: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class BenchResult:
    name: str
    title: str
    size: str
    figures: list[Figure] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def checks_ok(self) -> bool:
        return bool(self.checks.get("ok", False))

    @property
    def goals_missed(self) -> list[Figure]:
        return [f for f in self.figures if f.ok is False]

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "size": self.size,
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "load_average_at_end": load_average(),
            },
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "figures": [asdict(f) for f in self.figures],
            "goals_met": not self.goals_missed,
            "checks": self.checks,
            "details": self.details,
        }


def write_result(result: BenchResult, folder: Path = RESULTS_DIR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.as_json(), indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (other processes on a shared machine skew figures)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
