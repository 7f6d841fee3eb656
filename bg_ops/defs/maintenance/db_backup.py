"""Database backups (O5, seed 002): dump, upload to the cloud, rotate, and prove a restore works.

- PostgreSQL: ``pg_dump --format=custom`` (compressed by pg_dump). The password reaches it
  through ``PGPASSWORD`` in its environment, never on its command line or in a log line. The
  dump is taken from a snapshot exported by a REPEATABLE READ transaction that also counts the
  rows of every table, so the counts describe exactly what the dump holds.
- SQLite: the online backup API (``sqlite3.Connection.backup``) inside a read transaction
  that counts the rows of the same snapshot, then gzip.

Each backup is two files in ``BG_OPS_DB_BACKUP_FOLDER`` of the storage resource:
``bg_ops-db-<YYYYmmddTHHMMSSZ>.dump`` (or ``.sqlite3.gz``) and ``<that name>.json``, its
manifest (time, dialect, size, content hash, row count per table).

Rotation keeps the last backup of each of the ``keep_daily`` most recent UTC days that have a
backup, and the last backup of each of the ``keep_weekly`` most recent ISO weeks (Monday to
Sunday, UTC) that have one: a backup counts as weekly when it is the last one taken in its week.
One file may be both. Everything else named like a backup in the folder is deleted; other
files there are never touched.

The restore test restores the latest backup into a scratch database (a new PostgreSQL
database, dropped afterwards; a temporary SQLite file) and compares its row count per table
with the manifest (the source when the dump was taken), and shows the source's counts now.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bg_ops.resources.storage import CloudStorageResource, StorageNotFound, join_cloud_path
from bg_ops.util.content_hash import content_hash_file

PREFIX = "bg_ops-db-"
SUFFIXES = {"postgresql": ".dump", "sqlite": ".sqlite3.gz"}
NAME_RE = re.compile(r"^bg_ops-db-(\d{8}T\d{6}Z)(\.dump|\.sqlite3\.gz)$")
STAMP = "%Y%m%dT%H%M%SZ"
# libpq settings a URL may carry as query parameters, passed on as environment variables.
_PG_QUERY_ENV = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
                 "sslkey": "PGSSLKEY", "connect_timeout": "PGCONNECT_TIMEOUT", "host": "PGHOST"}


class BackupError(Exception):
    """A backup, rotation or restore test that could not be done; the message says why and what to do."""


# -- names ------------------------------------------------------------------------------------


def backup_name(taken_at: datetime, dialect: str) -> str:
    return f"{PREFIX}{taken_at.astimezone(UTC):{STAMP}}{SUFFIXES[dialect]}"


def parse_backup_name(name: str) -> datetime | None:
    match = NAME_RE.match(name)
    return datetime.strptime(match.group(1), STAMP).replace(tzinfo=UTC) if match else None


# -- PostgreSQL tools ----------------------------------------------------------------------------


def find_pg_tool(name: str) -> str:
    """``pg_dump``/``pg_restore`` on PATH, else the newest under /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0, reverse=True)
    if candidates:
        return candidates[0]
    raise BackupError(f"{name} not found on PATH or under /usr/lib/postgresql/*/bin: install the PostgreSQL "
                      "client tools (apt-get install -y postgresql-client), the same major version as the server")


def pg_command(url: str, tool: str, *args: str, database: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment to run a PostgreSQL tool against ``url``: the password goes in
    ``PGPASSWORD``, never in argv."""
    parsed = make_url(url)
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    for key, var in _PG_QUERY_ENV.items():
        value = parsed.query.get(key)
        if value:
            env[var] = value if isinstance(value, str) else value[0]
    argv = [find_pg_tool(tool), "--no-password"]
    if parsed.host:
        argv.append(f"--host={parsed.host}")
    if parsed.port:
        argv.append(f"--port={parsed.port}")
    if parsed.username:
        argv.append(f"--username={parsed.username}")
    argv += list(args)
    argv.append(f"--dbname={database or parsed.database}")
    return argv, env


def _run_tool(argv: list[str], env: dict[str, str], what: str, secret: str | None) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        text = (proc.stderr or proc.stdout or "").strip()
        if secret:
            text = text.replace(secret, "***")
        last = text.splitlines()[-1] if text else f"exit status {proc.returncode}"
        raise BackupError(f"{what} failed: {last}")


# -- row counts -------------------------------------------------------------------------------------


def count_rows(conn: sa.Connection) -> dict[str, int]:
    """Rows per table of the connection's database (default schema), in the transaction given."""
    prep = conn.dialect.identifier_preparer
    names = sorted(sa.inspect(conn).get_table_names())
    return {name: int(conn.execute(sa.text(f"SELECT count(*) FROM {prep.quote(name)}")).scalar_one())
            for name in names}


def _sqlite_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {name: int(conn.execute(f'SELECT count(*) FROM "{name.replace(chr(34), chr(34) * 2)}"').fetchone()[0])
            for name in names}


# -- dump ------------------------------------------------------------------------------------------------


@dataclass
class Dump:
    name: str
    path: Path
    dialect: str
    taken_at: datetime
    size: int
    content_hash: str
    row_counts: dict[str, int]

    def manifest(self) -> dict:
        return {"backup": self.name, "taken_at": self.taken_at.isoformat(), "dialect": self.dialect,
                "size": self.size, "content_hash": self.content_hash, "row_counts": self.row_counts}


def dump_database(engine: sa.Engine, workdir: Path, *, now: datetime) -> Dump:
    """Write a consistent dump of the database into ``workdir`` with its row counts."""
    dialect = engine.dialect.name
    if dialect not in SUFFIXES:
        raise BackupError(f"cannot back up a {dialect} database: bg_ops backs up PostgreSQL and SQLite")
    name = backup_name(now, dialect)
    target = Path(workdir) / name
    if dialect == "postgresql":
        url = engine.url.render_as_string(hide_password=False)
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
                counts = count_rows(conn)
                argv, env = pg_command(url, "pg_dump", "--format=custom", f"--snapshot={snapshot}",
                                       f"--file={target}")
                _run_tool(argv, env, "pg_dump", engine.url.password)
    else:
        source = engine.url.database
        if not source or not Path(source).exists():
            raise BackupError(f"SQLite database {source} does not exist: check BG_OPS_DATABASE_URL")
        raw = target.with_name(target.name[: -len(".gz")])
        src = sqlite3.connect(source, isolation_level=None, timeout=30)
        try:
            src.execute("BEGIN")  # one read snapshot for the counts and the copy
            counts = _sqlite_counts(src)
            dst = sqlite3.connect(raw)
            try:
                src.backup(dst)
            finally:
                dst.close()
            src.execute("ROLLBACK")
        finally:
            src.close()
        with open(raw, "rb") as f_in, gzip.open(target, "wb", compresslevel=6) as f_out:
            shutil.copyfileobj(f_in, f_out, 1024 * 1024)
        raw.unlink()
    return Dump(name=name, path=target, dialect=dialect, taken_at=now, size=target.stat().st_size,
                content_hash=content_hash_file(target), row_counts=counts)


# -- the cloud folder ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBackup:
    name: str
    taken_at: datetime
    has_manifest: bool


def list_backups(storage: CloudStorageResource, folder: str) -> list[StoredBackup]:
    """Backups in ``folder``, oldest first (an absent folder has none)."""
    try:
        entries = list(storage.list_folder(folder, recursive=False))
    except StorageNotFound:
        return []
    names = {e.path.rsplit("/", 1)[-1] for e in entries if not e.is_folder}
    found = []
    for name in names:
        taken = parse_backup_name(name)
        if taken is not None:
            found.append(StoredBackup(name=name, taken_at=taken, has_manifest=f"{name}.json" in names))
    return sorted(found, key=lambda b: (b.taken_at, b.name))


@dataclass
class BackupReport:
    dump: Dump
    cloud_path: str
    rotation: RotationReport

    def as_dict(self) -> dict:
        return {"backup": self.dump.name, "cloud_path": self.cloud_path, "dialect": self.dump.dialect,
                "size": self.dump.size, "content_hash": self.dump.content_hash,
                "tables": len(self.dump.row_counts), "rows": sum(self.dump.row_counts.values()),
                "row_counts": self.dump.row_counts, **self.rotation.as_dict()}


def backup_database(engine: sa.Engine, storage: CloudStorageResource, *, folder: str, now: datetime,
                    keep_daily: int, keep_weekly: int, workdir: Path | None = None) -> BackupReport:
    """Dump, upload dump and manifest, then rotate the folder."""
    with tempfile.TemporaryDirectory(prefix="bg_ops-db-backup-", dir=workdir) as tmp:
        dump = dump_database(engine, Path(tmp), now=now)
        cloud_path = join_cloud_path(folder, dump.name)
        entry = storage.upload(dump.path, cloud_path, mode="overwrite")
        if entry.content_hash != dump.content_hash:
            raise BackupError(f"{cloud_path}: the stored copy's content hash differs from the dump: run the backup again")
        manifest = Path(tmp) / f"{dump.name}.json"
        manifest.write_text(json.dumps(dump.manifest(), indent=2, sort_keys=True))
        storage.upload(manifest, join_cloud_path(folder, manifest.name), mode="overwrite")
    rotation = rotate_backups(storage, folder=folder, keep_daily=keep_daily, keep_weekly=keep_weekly)
    return BackupReport(dump=dump, cloud_path=cloud_path, rotation=rotation)


# -- rotation ------------------------------------------------------------------------------------------------------


def plan_rotation(taken: list[datetime], *, keep_daily: int, keep_weekly: int) -> tuple[set[datetime], set[datetime], set[datetime]]:
    """(kept as daily, kept as weekly, deleted) for backups taken at ``taken`` (UTC)."""
    latest_per_day: dict[date, datetime] = {}
    latest_per_week: dict[tuple[int, int], datetime] = {}
    for t in taken:
        day = t.astimezone(UTC).date()
        week = tuple(day.isocalendar())[:2]
        latest_per_day[day] = max(t, latest_per_day.get(day, t))
        latest_per_week[week] = max(t, latest_per_week.get(week, t))
    daily = {latest_per_day[d] for d in sorted(latest_per_day, reverse=True)[:keep_daily]}
    weekly = {latest_per_week[w] for w in sorted(latest_per_week, reverse=True)[:keep_weekly]}
    return daily, weekly, set(taken) - daily - weekly


@dataclass
class RotationReport:
    kept_daily: list[str] = field(default_factory=list)
    kept_weekly: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def kept(self) -> list[str]:
        return sorted(set(self.kept_daily) | set(self.kept_weekly))

    def as_dict(self) -> dict:
        return {"kept": self.kept, "kept_daily": len(self.kept_daily), "kept_weekly": len(self.kept_weekly),
                "deleted": self.deleted}


def rotate_backups(storage: CloudStorageResource, *, folder: str, keep_daily: int, keep_weekly: int,
                   dry_run: bool = False) -> RotationReport:
    if keep_daily < 1:
        raise BackupError("keep_daily must be at least 1 (BG_OPS_DB_BACKUP_KEEP_DAILY): the newest backup is always kept")
    backups = list_backups(storage, folder)
    by_time: dict[datetime, list[StoredBackup]] = {}
    for b in backups:
        by_time.setdefault(b.taken_at, []).append(b)
    daily, weekly, doomed = plan_rotation(list(by_time), keep_daily=keep_daily, keep_weekly=keep_weekly)
    report = RotationReport(
        kept_daily=sorted(b.name for t in daily for b in by_time[t]),
        kept_weekly=sorted(b.name for t in weekly for b in by_time[t]),
    )
    for t in sorted(doomed):
        for b in by_time[t]:
            if not dry_run:
                storage.delete(join_cloud_path(folder, b.name))
                if b.has_manifest:
                    storage.delete(join_cloud_path(folder, f"{b.name}.json"))
            report.deleted.append(b.name)
    return report


# -- restore test ----------------------------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    backup: str
    dialect: str
    scratch: str
    tables: dict[str, dict[str, int | None]]  # table -> at_backup, restored, source_now

    @property
    def mismatched(self) -> list[str]:
        return sorted(t for t, c in self.tables.items() if c["restored"] != c["at_backup"])

    @property
    def passed(self) -> bool:
        return bool(self.tables) and not self.mismatched

    def as_dict(self) -> dict:
        return {"backup": self.backup, "dialect": self.dialect, "scratch": self.scratch, "passed": self.passed,
                "tables": len(self.tables), "rows_restored": sum(c["restored"] or 0 for c in self.tables.values()),
                "mismatched": self.mismatched, "counts": self.tables}


def _scratch_name(database: str, now: datetime) -> str:
    suffix = f"_restore_test_{now.astimezone(UTC):%Y%m%d%H%M%S}"
    return re.sub(r"[^a-z0-9_]", "_", database.lower())[: 63 - len(suffix)] + suffix


def restore_test(engine: sa.Engine, storage: CloudStorageResource, *, folder: str, now: datetime,
                 workdir: Path | None = None) -> RestoreReport:
    """Restore the latest backup into a scratch database and compare row counts per table."""
    dialect = engine.dialect.name
    candidates = [b for b in list_backups(storage, folder) if b.name.endswith(SUFFIXES.get(dialect, "?"))]
    if not candidates:
        raise BackupError(f"no {dialect} backup in {folder}: run the database backup first (bg-ops db backup)")
    latest = candidates[-1]
    with engine.connect() as conn:
        source_now = count_rows(conn)
    with tempfile.TemporaryDirectory(prefix="bg_ops-restore-test-", dir=workdir) as tmp:
        local = Path(tmp) / latest.name
        storage.download(join_cloud_path(folder, latest.name), local)
        at_backup: dict[str, int] | None = None
        if latest.has_manifest:
            storage.download(join_cloud_path(folder, f"{latest.name}.json"), Path(tmp) / "manifest.json")
            at_backup = json.loads((Path(tmp) / "manifest.json").read_text())["row_counts"]
        if dialect == "postgresql":
            scratch, restored = _restore_postgres(engine, local, now)
        else:
            scratch = str(Path(tmp) / "restored.sqlite3")
            with gzip.open(local, "rb") as f_in, open(scratch, "wb") as f_out:
                shutil.copyfileobj(f_in, f_out, 1024 * 1024)
            conn = sqlite3.connect(scratch)
            try:
                check = conn.execute("PRAGMA integrity_check").fetchone()[0]
                if check != "ok":
                    raise BackupError(f"{latest.name} restored into a damaged SQLite file ({check})")
                restored = _sqlite_counts(conn)
            finally:
                conn.close()
            scratch = "temporary SQLite file (deleted)"
    expected = at_backup if at_backup is not None else source_now
    tables = {
        t: {"at_backup": expected.get(t), "restored": restored.get(t), "source_now": source_now.get(t)}
        for t in sorted(set(expected) | set(restored))
    }
    return RestoreReport(backup=latest.name, dialect=dialect, scratch=scratch, tables=tables)


def _restore_postgres(engine: sa.Engine, dump: Path, now: datetime) -> tuple[str, dict[str, int]]:
    url = engine.url.render_as_string(hide_password=False)
    scratch = _scratch_name(engine.url.database or "bg_ops", now)
    quoted = engine.dialect.identifier_preparer.quote(scratch)
    admin = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted}"))
            conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else exc.__class__.__name__
        raise BackupError(f"cannot create the scratch database {scratch} ({reason}): give the role in "
                          "BG_OPS_DATABASE_URL the CREATEDB privilege (ALTER ROLE … CREATEDB)") from None
    try:
        argv, env = pg_command(url, "pg_restore", "--no-owner", "--no-privileges", "--exit-on-error",
                               str(dump), database=scratch)
        _run_tool(argv, env, "pg_restore", engine.url.password)
        scratch_engine = sa.create_engine(engine.url.set(database=scratch), poolclass=sa.pool.NullPool)
        try:
            with scratch_engine.connect() as conn:
                counts = count_rows(conn)
        finally:
            scratch_engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    return f"{scratch} (dropped)", counts
