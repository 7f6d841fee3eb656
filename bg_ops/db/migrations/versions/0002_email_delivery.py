"""email_queue: pre-built message bytes, last attempt, alert bookkeeping

Revision ID: 0002_email_delivery
Revises: 0001_queues
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from bg_ops.db.types import UTCDateTime

revision = "0002_email_delivery"
down_revision = "0001_queues"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("email_queue") as batch:
        batch.add_column(sa.Column("raw_message", sa.LargeBinary))
        batch.add_column(sa.Column("last_attempt_at", UTCDateTime))
        batch.add_column(sa.Column("alerted_at", UTCDateTime))
    op.create_index("ix_email_queue_status_failed_at", "email_queue", ["status", "failed_at"])


def downgrade() -> None:
    op.drop_index("ix_email_queue_status_failed_at", "email_queue")
    with op.batch_alter_table("email_queue") as batch:
        batch.drop_column("alerted_at")
        batch.drop_column("last_attempt_at")
        batch.drop_column("raw_message")
