"""Alembic environment for bg_ops's own tables. Run through ``bg_ops.db.migrate``."""

from alembic import context

from bg_ops.db.migrate import VERSION_TABLE
from bg_ops.db.own_schema import own_metadata

config = context.config
connection = config.attributes["connection"]

context.configure(
    connection=connection,
    target_metadata=own_metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    compare_server_default=False,
)
with context.begin_transaction():
    context.run_migrations()
