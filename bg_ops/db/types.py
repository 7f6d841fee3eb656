"""Column types that behave the same on PostgreSQL and SQLite (DATA_MODEL.md "Types").

``UTCDateTime``: ``timestamp with time zone`` on PostgreSQL; ISO-8601 text on SQLite, where
other programs may write ``2026-11-23T09:00:00Z``, ``2026-11-23 10:00:00+01:00`` or a bare
``2026-11-23 09:00:00`` (UTC). Values always read back as aware UTC datetimes. On SQLite,
comparisons normalise both sides with ``strftime`` so text written in any of those forms
orders correctly; on PostgreSQL they compile to plain comparisons and use indexes.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import operators
from sqlalchemy.sql.functions import FunctionElement

SQLITE_TS_FORMAT = "%Y-%m-%d %H:%M:%f"


class utc_normalized(FunctionElement):
    """A timestamp expression in one comparable form: itself on PostgreSQL, strftime on SQLite."""

    inherit_cache = True
    name = "utc_normalized"

    @property
    def type(self):  # noqa: D401 - SQLAlchemy protocol
        return sa.String()


@compiles(utc_normalized)
def _utc_normalized_default(element, compiler, **kw):
    (arg,) = list(element.clauses)
    return compiler.process(arg, **kw)


@compiles(utc_normalized, "sqlite")
def _utc_normalized_sqlite(element, compiler, **kw):
    (arg,) = list(element.clauses)
    return f"strftime('{SQLITE_TS_FORMAT}', {compiler.process(arg, **kw)})"


_COMPARISONS = {
    operators.lt,
    operators.le,
    operators.gt,
    operators.ge,
    operators.eq,
    operators.ne,
    operators.between_op,
    operators.not_between_op,
}


def to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(
            f"naive datetime {value!r} given for a UTC timestamp column: pass an aware datetime"
        )
    return value.astimezone(UTC)


def parse_utc(value: str | datetime) -> datetime:
    """Parse what any program may have stored; no offset means UTC."""
    if isinstance(value, datetime):
        dt = value
    else:
        text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
        dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


class UTCDateTime(sa.types.TypeDecorator):
    impl = sa.DateTime(timezone=True)
    cache_ok = True

    class comparator_factory(sa.types.TypeDecorator.Comparator):
        def operate(self, op, *other, **kwargs):
            if op in _COMPARISONS and not any(o is None for o in other):
                # Compare normalised forms; the function compiles away on PostgreSQL.
                left = utc_normalized(self.expr)
                rights = [
                    utc_normalized(o)
                    if isinstance(o, sa.sql.ClauseElement)
                    else utc_normalized(sa.bindparam(None, o, type_=UTCDateTime()))
                    for o in other
                ]
                return op(left, *rights, **kwargs)
            return super().operate(op, *other, **kwargs)

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(40))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = parse_utc(value)
        value = to_utc(value)
        if dialect.name == "sqlite":
            return value.strftime("%Y-%m-%d %H:%M:%S.%f")
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return parse_utc(value)


class LocalDate(sa.types.TypeDecorator):
    """A calendar date; on SQLite accepts ``YYYY-MM-DD`` text with or without a time part."""

    impl = sa.Date
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(10))
        return dialect.type_descriptor(sa.Date())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, datetime):
            value = value.date()
        if isinstance(value, str):
            value = date.fromisoformat(value[:10])
        return value.isoformat() if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None or isinstance(value, date) and not isinstance(value, datetime):
            return value
        if isinstance(value, datetime):
            return value.date()
        return date.fromisoformat(str(value)[:10])


# JSON everywhere, JSONB on PostgreSQL (indexable, compact).
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Money = sa.Numeric(12, 2)
