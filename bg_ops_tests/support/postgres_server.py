"""A real, throwaway PostgreSQL server for tests and benchmarks.

``initdb`` and ``postgres`` refuse to run as root (CI runs as root), so as root every
server command goes through ``runuser -u postgres``, in a temporary folder that user owns.
The server listens on 127.0.0.1 only, on a free port, with durability off (``fsync=off``):
it starts in about a second and is deleted afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def find_bindir() -> Path:
    env = os.environ.get("BG_OPS_PG_BINDIR")
    candidates = [env] if env else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for c in candidates:
        if c and Path(c, "initdb").exists() and Path(c, "pg_ctl").exists():
            return Path(c)
    found = shutil.which("pg_ctl")
    if found and Path(found).with_name("initdb").exists():
        return Path(found).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them with "
        "'apt-get install -y postgresql' (.ci/run does this) or set BG_OPS_PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port = free_port()
        self.user = "postgres"
        self._as_root = os.geteuid() == 0
        self.basedir = Path(tempfile.mkdtemp(prefix="bg_ops_pg_"))
        self.datadir = self.basedir / "data"
        self.sockdir = self.basedir / "sock"
        self.sockdir.mkdir()
        if self._as_root:
            shutil.chown(self.basedir, "postgres", "postgres")
            shutil.chown(self.sockdir, "postgres", "postgres")
        else:
            self.user = os.environ.get("USER") or "postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, cwd=self.basedir)

    def start(self) -> PostgresServer:
        try:
            self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C")
            self._pg_ctl_start()
        except subprocess.CalledProcessError as exc:
            log = ""
            logfile = self.basedir / "server.log"
            if logfile.exists():
                log = logfile.read_text(errors="replace")[-2000:]
            raise PostgresUnavailable(
                f"could not start PostgreSQL ({' '.join(exc.cmd[-3:])}): {exc.stderr.strip()[-1000:]} {log}"
            ) from exc
        return self

    def _pg_ctl_start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.sockdir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c shared_buffers=128MB"
        )
        self._run("pg_ctl", "-D", str(self.datadir), "-o", options, "-l",
                  str(self.basedir / "server.log"), "-w", "-t", "60", "start")

    def halt(self) -> None:
        """Stop the server as an operator's restart does (``fast``: every session is
        terminated, committed work is kept), keeping its data; new connections are refused
        until ``resume``. For fault drills. (Not ``immediate``: with this server's
        ``synchronous_commit=off`` a crash would lose the last acknowledged commits, which a
        production server does not.)"""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start a halted server again, on the same port with the same data."""
        self._pg_ctl_start()

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.datadir), "status", check=False).returncode == 0

    def restart(self) -> None:
        """Restart the server: every open connection is lost, committed data stays."""
        self.halt()
        self.resume()

    def stop(self) -> None:
        if self.datadir.exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.basedir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self, name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _has_c_utf8() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.lower()
    except OSError:
        return False
    return "c.utf8" in out or "c.utf-8" in out


def serve_postgres():
    """A fixture body: a throwaway server for the fixture's scope, or the test fails with the reason.

    ``yield from serve_postgres()`` in a pytest fixture."""
    import pytest

    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
