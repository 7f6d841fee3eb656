"""email_queue: the (status, failed_at) index split into two partial ones no delivery writes twice

``ix_email_queue_status_failed_at`` held every row by status, so each delivered mail wrote two
entries to it (``sending``, then ``sent``), and the planner read it for ``status = 'sending'``:
the record of sent mail and the claim's look for expired leases scanned every entry the
messages sent before had left behind (~100 a claim, growing with the queue's churn) instead of
the primary key and ``ix_email_queue_lease``. Its two readers get partial indexes of their own:

- ``ix_email_queue_failed``: failed mail by ``failed_at`` (``bg-ops emails failed``);
- ``ix_email_queue_retention``: sent and canceled mail by (status, ``sent_at``), for the cleanup
  of mail past the retention (canceled rows are few: read by status, filtered by their time).

A delivered mail now writes one index entry fewer (none for ``sending`` here). PERFORMANCE.md B1.

Revision ID: 0012_email_status_indexes
Revises: 0011_email_lease_index
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_email_status_indexes"
down_revision = "0011_email_lease_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_email_queue_failed", "email_queue", ["failed_at"],
        postgresql_where=sa.text("status = 'failed'"), sqlite_where=sa.text("status = 'failed'"),
    )
    op.create_index(
        "ix_email_queue_retention", "email_queue", ["status", "sent_at"],
        postgresql_where=sa.text("status IN ('sent', 'canceled')"),
        sqlite_where=sa.text("status IN ('sent', 'canceled')"),
    )
    op.drop_index("ix_email_queue_status_failed_at", "email_queue")


def downgrade() -> None:
    op.create_index("ix_email_queue_status_failed_at", "email_queue", ["status", "failed_at"])
    op.drop_index("ix_email_queue_retention", "email_queue")
    op.drop_index("ix_email_queue_failed", "email_queue")
