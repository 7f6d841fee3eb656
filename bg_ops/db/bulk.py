"""Insert many rows at once: COPY on PostgreSQL, executemany elsewhere.

A multi-row ``INSERT … VALUES`` with RETURNING (what SQLAlchemy's insertmanyvalues sends)
costs about 0.2 ms a row on PostgreSQL for the queue tables, most of it building, sending
and parsing one parameter per column and row. COPY streams the rows as text into a
temporary table of the same columns, and one ``INSERT … SELECT`` moves them into place with
the table's defaults, constraints, ``ON CONFLICT DO NOTHING`` and ``RETURNING`` — several
times faster (B2, B3). It runs in the caller's transaction, so it commits or rolls back with
the rest of the work.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

# Below this many rows the plain statement is as fast and keeps the SQL simple.
COPY_THRESHOLD = 50


def _escape(text: str) -> str:
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text


# One encoder for every call: ``json.dumps`` with options builds a new one each time.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _json(value) -> str:
    return _escape(_encode_json(value))


def _bytes(value) -> str:
    return "\\\\x" + bytes(value).hex()


def _datetime(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware datetime (UTC)")
    return value.isoformat()


# COPY's text format, by the value's exact type (a dict lookup beats a chain of isinstance).
_FORMATS = {
    str: _escape, int: str, float: repr, bool: lambda v: "t" if v else "f",
    datetime: _datetime, date: date.isoformat, dict: _json, list: _json,
    bytes: _bytes, bytearray: _bytes, memoryview: _bytes, Decimal: str,
}


# COPY's binary format (PostgreSQL's documentation of COPY, "Binary Format"): nothing for the
# server to parse or unescape. For the queue's ~4 KB rows its COPY took 0.22-0.28 s for 10,000
# rows instead of 0.38 s in text format, and making the rows in Python was faster too (B2).
BINARY_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension
BINARY_COPY_TRAILER = b"\xff\xff"
BINARY_NULL = b"\xff\xff\xff\xff"
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_length = struct.Struct("!i").pack
_int4 = struct.Struct("!ii").pack
_int8 = struct.Struct("!iq").pack


def binary_copy(records: Iterable[bytes]) -> Iterator[bytes]:
    """COPY's binary stream for ``copy_from``: the header, the records (each ``binary_fields``
    and its fields), the trailer."""
    yield BINARY_COPY_HEADER
    yield from records
    yield BINARY_COPY_TRAILER


def binary_fields(count: int) -> bytes:
    """The start of one row: its number of fields."""
    return struct.pack("!h", count)


def binary_int4(value: int | None) -> bytes:
    return BINARY_NULL if value is None else _int4(4, value)


def binary_int8(value: int | None) -> bytes:
    return BINARY_NULL if value is None else _int8(8, value)


def binary_text(value: str | None) -> bytes:
    """text, varchar."""
    if value is None:
        return BINARY_NULL
    data = value.encode("utf-8")
    return _length(len(data)) + data


def binary_bytea(value: bytes | None) -> bytes:
    return BINARY_NULL if value is None else _length(len(value)) + bytes(value)


def binary_jsonb(value) -> bytes:
    if value is None:
        return BINARY_NULL
    data = b"\x01" + _encode_json(value).encode("utf-8")  # jsonb's binary form: version 1, then the text
    return _length(len(data)) + data


def binary_timestamptz(value: datetime | None) -> bytes:
    """Microseconds since 2000-01-01 UTC."""
    if value is None:
        return BINARY_NULL
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware datetime (UTC)")
    since = value - _PG_EPOCH
    return _int8(8, (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds)


def copy_text(value) -> str:
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    fmt = _FORMATS.get(type(value))
    if fmt is None:
        raise TypeError(f"cannot COPY a {type(value).__name__} value: convert it first")
    return fmt(value)


def insert_rows(
    session: Session,
    table: sa.Table,
    rows: Sequence[dict],
    *,
    returning: Sequence[str] = (),
    conflict_columns: Sequence[str] | None = None,
) -> list:
    """Insert ``rows`` (dicts with the same keys) into ``table``; return the RETURNING rows
    (in no particular order) when ``returning`` names columns.

    ``conflict_columns``: skip rows that collide on this unique key (``ON CONFLICT DO
    NOTHING``); the skipped rows return nothing."""
    if not rows:
        return []
    columns = list(rows[0])
    dialect = session.get_bind().dialect.name
    if dialect != "postgresql" or len(rows) < COPY_THRESHOLD:
        return _insert_statement(session, table, rows, dialect, returning, conflict_columns)

    staging = f"_bulk_{table.name}"
    cols = ", ".join(f'"{c}"' for c in columns)
    conn = session.connection()
    # A temporary table per connection, emptied after each use (and at commit).
    conn.exec_driver_sql(
        f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" ON COMMIT DELETE ROWS AS '
        f'SELECT {", ".join(f"{c!s}" for c in _quoted(table, columns))} FROM "{table.name}" WITH NO DATA'
    )
    buffer = io.StringIO()
    buffer.writelines("\t".join(copy_text(row[c]) for c in columns) + "\n" for row in rows)
    copy_from(conn, f'COPY "{staging}" ({cols}) FROM STDIN', buffer)
    sql = f'INSERT INTO "{table.name}" ({cols}) SELECT {cols} FROM "{staging}"'
    if conflict_columns:
        sql += f" ON CONFLICT ({', '.join(conflict_columns)}) DO NOTHING"
    if returning:
        sql += " RETURNING " + ", ".join(f'"{c}"' for c in returning)
    result = conn.execute(sa.text(sql).columns(*[table.c[c] for c in returning]) if returning else sa.text(sql))
    out = result.all() if returning else []
    conn.exec_driver_sql(f'DELETE FROM "{staging}"')
    return out


# How much COPY text the driver asks for at a time from a stream of lines.
_COPY_CHUNK = 64 * 1024


class _RowsNotMade(Exception):
    """Raised to the driver in place of the error that stopped the lines (kept aside): what
    the driver gets is sent to the server, whose log must not hold the message's words."""


class _LineStream:
    """A file for COPY that pulls lines from an iterator as the driver asks for them: the
    server stores one chunk of rows while the next are made (the two run on different cores)."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self.error: BaseException | None = None
        self.binary = False  # lines of bytes: COPY's binary format

    def read(self, size: int = -1) -> str | bytes:
        out: list = []
        length = 0
        try:
            for line in self._lines:
                out.append(line)
                length += len(line)
                if 0 < size <= length:
                    break
        except BaseException as exc:  # an interrupt too: the driver would replace it with its own error
            self.error = exc
            raise _RowsNotMade("the rows could not be made") from None
        if not out:
            return b"" if self.binary else ""
        self.binary = isinstance(out[0], bytes)
        return (b"" if self.binary else "").join(out)


def copy_from(conn: sa.Connection, copy_sql: str, data: io.StringIO | Iterable[str] | Iterable[bytes]) -> None:
    """Run ``COPY … FROM STDIN`` on the connection's psycopg2 cursor, in the connection's
    transaction, with ``data``: a buffer in COPY's text format (rewound here), or an iterable
    of lines made while the COPY runs (``str`` in text format, ``bytes`` in binary format:
    ``binary_copy``). An error raised while making the lines is raised here as it was; the COPY is then aborted, so the transaction needs a rollback (to a
    savepoint, say) before it goes on."""
    if isinstance(data, io.StringIO):
        data.seek(0)
        source: io.StringIO | _LineStream = data
    else:
        source = _LineStream(data)
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.copy_expert(copy_sql, source, size=_COPY_CHUNK)
    except Exception:
        if isinstance(source, _LineStream) and source.error is not None:
            raise source.error from None
        raise
    finally:
        cursor.close()


def _quoted(table: sa.Table, columns: Iterable[str]) -> list[str]:
    for c in columns:
        if c not in table.c:
            raise KeyError(f"table {table.name} has no column {c!r}")
    return [f'"{c}"' for c in columns]


def _insert_statement(session, table, rows, dialect, returning, conflict_columns) -> list:
    if conflict_columns:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        statement = insert(table).on_conflict_do_nothing(index_elements=list(conflict_columns))
    else:
        statement = sa.insert(table)
    if returning:
        statement = statement.returning(*[table.c[c] for c in returning])
        return session.execute(statement, list(rows) if len(rows) > 1 else rows[0]).all()
    session.execute(statement, list(rows))
    return []
