"""email_queue.raw_message: stored out of line without compression (PostgreSQL)

A built message is ~2.6 KB, mostly base64 bodies, which pglz shrinks by about 6%: PostgreSQL
spent more time trying to compress each one than writing it (B2 bulk: the COPY of 10,000
rows 0.55 s -> 0.35 s with ``STORAGE EXTERNAL``, the table the same size). Reading a row
back skips the decompression too. Other databases have no such setting: nothing to do there.

Revision ID: 0010_raw_message_storage
Revises: 0009_email_indexes
Create Date: 2026-12-02
"""

from alembic import op

revision = "0010_raw_message_storage"
down_revision = "0009_email_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE email_queue ALTER COLUMN raw_message SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE email_queue ALTER COLUMN raw_message SET STORAGE EXTENDED")
