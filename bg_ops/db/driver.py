"""A statement compiled once and run on the driver's own cursor, for the few hottest loops.

SQLAlchemy's execution (parameter processing, the execution context, result processing)
costs 100-200 us a statement and ~10 us a returned row of Python. Where a statement runs on
a thread beside a latency-bound one — the email drain claims and records batches while
another thread sends — that Python holds the GIL the sending thread waits for (B1: each
microsecond a mail of it cost ~0.2% of the drain's rate). ``DriverStatement`` keeps the
SQL text SQLAlchemy compiled and the values of its literal parameters, and runs it on the
driver's cursor of the caller's connection, in the caller's transaction.

Values come back as the driver makes them: jsonb decoded, bytea as ``memoryview``,
timestamps aware; no type's result processing runs, so use it only where the caller needs
nothing more. Parameters are passed as given: give timestamps aware (UTC).

Given a ``prepare`` name (PostgreSQL), the statement is a server-side prepared statement on
each connection that runs it (``PREPARE`` the first time, ``EXECUTE`` after): PostgreSQL
parses it once and, after its first runs, keeps one plan. The email claim took longer to
plan (1.1 ms) than to run (a batch of 20: 1.3 ms). Where prepared statements do not last
from one statement to the next — a pooler such as PgBouncer in transaction mode, or a
``DISCARD ALL`` — the error is caught: the run goes on unprepared when the connection is in
autocommit, as the drain's is (a transaction of the caller's is aborted by the error, which is
raised), the next run prepares anew, and a connection found so twice runs its statements
unprepared from then on, saying so in the log.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import namedtuple
from collections.abc import Iterable, Mapping

import sqlalchemy as sa

log = logging.getLogger("bg_ops.db")

# pyformat placeholders as SQLAlchemy's psycopg2 dialect writes them, and escaped percent signs.
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
_INVALID_STATEMENT_NAME = "26000"  # SQLSTATE: no prepared statement of that name on the server
_DUPLICATE_STATEMENT_NAME = "42P05"  # SQLSTATE: one of that name is there already
_PREPARED = "bg_ops_prepared"  # key in the DBAPI connection's info: names prepared there, or None
_LOST = "bg_ops_prepared_lost"  # how often that connection was found without them
_serial = itertools.count(1)


class DriverStatement:
    def __init__(self, statement: sa.Executable, dialect: sa.Dialect, parameters: Iterable[str],
                 *, prepare: str | None = None) -> None:
        """``parameters``: the names the caller gives at each run, passed to the driver as
        given; every other parameter is a literal of the statement, bound here once as its
        type binds it (JSON serialised, say). ``prepare``: run as a prepared statement of
        this name (made unique per process) where the dialect is PostgreSQL."""
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        given = set(parameters)
        self.literals = {}
        for name, value in compiled.construct_params({name: None for name in given}).items():
            if name not in given and value is not None:  # a literal: made once as its type binds it
                bind = compiled.binds[name]
                process = bind.type.dialect_impl(dialect).bind_processor(dialect)
                value = process(value) if process else value
            self.literals[name] = value
        self._row_type = None
        self.name = None
        if prepare and dialect.name == "postgresql":
            self.name = f"{prepare}_{next(_serial)}"
            self._given = tuple(dict.fromkeys(m[1] for m in _PLACEHOLDER.finditer(self.sql) if m[1] in given))
            self._execute = f"EXECUTE {self.name} ({', '.join(f'%({n})s' for n in self._given)})"

    def _prepare_sql(self, cursor) -> str:
        """``PREPARE name AS …``: the caller's values as ``$1, $2 …``, the literals written in."""
        number = {n: i for i, n in enumerate(self._given, 1)}

        def substitute(match: re.Match) -> str:
            if match[1] is None:
                return "%"
            if match[1] in number:
                return f"${number[match[1]]}"
            return cursor.mogrify("%s", (self.literals[match[1]],)).decode()

        return f"PREPARE {self.name} AS {_PLACEHOLDER.sub(substitute, self.sql)}"

    def _lost(self, info: dict) -> None:
        """The server has none of this connection's prepared statements (``DISCARD ALL``, or a
        pooler gave us another server session): prepare anew next time; the second time on one
        connection, stop preparing there."""
        lost = info[_LOST] = info.get(_LOST, 0) + 1
        if lost == 1:
            info[_PREPARED] = set()
            log.info("database connection lost its prepared statements (DISCARD ALL?): preparing %s anew", self.name)
        else:
            info[_PREPARED] = None
            log.warning("prepared statements do not last on this database connection (a pooler in "
                        "transaction mode?): running %s and the others unprepared on it from now on", self.name)

    def rows(self, conn: sa.Connection, values: Mapping) -> list:
        """Run with ``values``; return the rows (tuples with named fields), or [] for a
        statement that returns none.

        A driver error is raised as SQLAlchemy raises it (``sqlalchemy.exc.DBAPIError`` and
        its kinds), and a lost connection is invalidated so the pool does not hand it out
        again: callers handle these statements' errors like any other's. (``exec_driver_sql``
        would do that too, but keeps most of the per-statement cost this avoids.)"""
        raw = conn.connection.driver_connection
        info = conn.connection.info
        prepared = info.setdefault(_PREPARED, set()) if self.name else None
        parameters = {**self.literals, **values}
        try:
            with raw.cursor() as cursor:
                if prepared is None:
                    cursor.execute(self.sql, parameters)
                else:
                    if self.name not in prepared:
                        try:
                            cursor.execute(self._prepare_sql(cursor))
                        except conn.dialect.loaded_dbapi.Error as exc:
                            # Prepared there before this connection lost track (a pooler's other session).
                            if getattr(exc, "pgcode", None) != _DUPLICATE_STATEMENT_NAME:
                                raise
                            prepared.add(self.name)
                            if not raw.autocommit:
                                raise
                        prepared.add(self.name)
                    try:
                        cursor.execute(self._execute, values)
                    except conn.dialect.loaded_dbapi.Error as exc:
                        if getattr(exc, "pgcode", None) != _INVALID_STATEMENT_NAME:
                            raise
                        self._lost(info)
                        if not raw.autocommit:  # the caller's transaction is aborted: its retry prepares anew
                            raise
                        cursor.execute(self.sql, parameters)
                if cursor.description is None:
                    return []
                fetched = cursor.fetchall()
                fields = tuple(d.name for d in cursor.description)
        except conn.dialect.loaded_dbapi.Error as exc:
            lost = conn.dialect.is_disconnect(exc, raw, None)
            if lost:
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(
                self.sql, parameters, exc, conn.dialect.loaded_dbapi.Error, hide_parameters=True,
                connection_invalidated=lost, dialect=conn.dialect,
            ) from exc
        row_type = self._row_type
        if row_type is None or row_type._fields != fields:
            row_type = self._row_type = namedtuple("Row", fields)
        return [row_type._make(r) for r in fetched]
