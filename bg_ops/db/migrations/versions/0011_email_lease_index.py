"""email_queue: a partial index of the leases of messages being sent

The claim also takes messages stuck in ``sending`` after their lease ended (a dead worker's).
It found them through (status, failed_at): every claimed message leaves an index entry with
status 'sending' behind (the row is updated again when it is sent), and a bitmap scan visits
each of those dead entries' heap rows on every claim without ever marking them dead. Over a
drain of 20,000 mails a claim of 20 grew from 2.1 ms to 6.2 ms (B1). Here the entries are
keyed by ``locked_until``: a lease still running, and every dead entry (its lease was still
running when the row left ``sending``), lies past ``now`` and is never read; the claim stays
at ~1.9 ms to the end.

Revision ID: 0011_email_lease_index
Revises: 0010_raw_message_storage
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_email_lease_index"
down_revision = "0010_raw_message_storage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_email_queue_lease", "email_queue", ["locked_until"],
        postgresql_where=sa.text("status = 'sending'"), sqlite_where=sa.text("status = 'sending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_email_queue_lease", "email_queue")
