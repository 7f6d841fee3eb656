"""email_queue: drop the two (status, …) indexes the claim used before 0006

Every delivery changes a row's status twice (sending, then sent), so each index holding status
is written twice per mail. Since 0006 the claim reads ``ix_email_queue_claim_order``; the
other status queries use ``ix_email_queue_status_failed_at`` (failed mail, retention by
status) or ``ix_email_queue_company_id_status`` (stats per tenant). PERFORMANCE.md B1, B2.

Revision ID: 0009_email_indexes
Revises: 0008_upload_claim
Create Date: 2026-12-02
"""

from alembic import op

revision = "0009_email_indexes"
down_revision = "0008_upload_claim"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_email_queue_status_next_attempt_at", "email_queue")
    op.drop_index("ix_email_queue_status_send_after", "email_queue")


def downgrade() -> None:
    op.create_index("ix_email_queue_status_send_after", "email_queue", ["status", "send_after"])
    op.create_index("ix_email_queue_status_next_attempt_at", "email_queue", ["status", "next_attempt_at"])
