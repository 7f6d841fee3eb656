"""Run bg_ops's Alembic migrations programmatically (``bg-ops db upgrade``).

The migrations ship inside the package, so ``pip install .`` is enough; the version is kept
in ``bg_ops_alembic_version`` so it never collides with the platform's own Alembic table.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

VERSION_TABLE = "bg_ops_alembic_version"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _config(connection: sa.Connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = _config(None)  # type: ignore[arg-type]
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade to ``revision``; return (before, after). Idempotent: at head it changes nothing."""
    from alembic import command

    before = current_revision(engine)
    with engine.begin() as conn:
        command.upgrade(_config(conn), revision)
    return before, current_revision(engine)


def create_app_schema(engine: sa.Engine) -> list[str]:
    """Create the application tables of DATA_MODEL.md that are missing (demo and tests)."""
    from bg_ops.db.app_schema import AppBase

    existing = set(sa.inspect(engine).get_table_names())
    AppBase.metadata.create_all(engine, checkfirst=True)
    return [t.name for t in AppBase.metadata.sorted_tables if t.name not in existing]
