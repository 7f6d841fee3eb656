"""upload_queue: a partial index in the upload claim's order (rows still to upload only)

Revision ID: 0008_upload_claim
Revises: 0007_suspension
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_upload_claim"
down_revision = "0007_suspension"
branch_labels = None
depends_on = None

ACTIVE = "status IN ('queued', 'failed', 'uploading')"


def upgrade() -> None:
    op.create_index(
        "ix_upload_queue_claim_order", "upload_queue", ["created_at", "id"],
        postgresql_where=sa.text(ACTIVE), sqlite_where=sa.text(ACTIVE),
    )


def downgrade() -> None:
    op.drop_index("ix_upload_queue_claim_order", "upload_queue")
