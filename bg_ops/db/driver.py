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
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Mapping

import sqlalchemy as sa


class DriverStatement:
    def __init__(self, statement: sa.Executable, dialect: sa.Dialect, parameters: Iterable[str]) -> None:
        """``parameters``: the names the caller gives at each run, passed to the driver as
        given; every other parameter is a literal of the statement, bound here once as its
        type binds it (JSON serialised, say)."""
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

    def rows(self, conn: sa.Connection, values: Mapping) -> list:
        """Run with ``values``; return the rows (tuples with named fields), or [] for a
        statement that returns none.

        A driver error is raised as SQLAlchemy raises it (``sqlalchemy.exc.DBAPIError`` and
        its kinds), and a lost connection is invalidated so the pool does not hand it out
        again: callers handle these statements' errors like any other's. (``exec_driver_sql``
        would do that too, but keeps most of the per-statement cost this avoids.)"""
        raw = conn.connection.driver_connection
        parameters = {**self.literals, **values}
        try:
            with raw.cursor() as cursor:
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
