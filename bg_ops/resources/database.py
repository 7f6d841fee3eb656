"""The application database (PostgreSQL in production, a SQLite file as the embedded default)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.engine import get_engine, session_scope
from bg_ops.util.masking import mask_url_password


class DatabaseResource(dg.ConfigurableResource):
    """SQLAlchemy engine and sessions for ``BG_OPS_DATABASE_URL``; one pool per process."""

    url: str

    @property
    def engine(self) -> sa.Engine:
        return get_engine(self.url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits at the end of the block, rolls back on error."""
        with session_scope(self.engine) as session:
            yield session

    def describe(self) -> str:
        return mask_url_password(self.url)
