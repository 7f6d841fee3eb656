"""email_queue: a partial index in the delivery claim's send order (pending rows only)

Revision ID: 0006_email_claim
Revises: 0005_people
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_email_claim"
down_revision = "0005_people"
branch_labels = None
depends_on = None

# The same expressions as bg_ops.db.own_schema's index: the claim reads each priority's
# pending rows in this order (customer before internal, earliest due first).
CLAIM_ORDER = (
    "priority",
    "(coalesce(kind, 'internal'))",
    "(coalesce(next_attempt_at, send_after, created_at))",
    "id",
)


def upgrade() -> None:
    op.create_index(
        "ix_email_queue_claim_order", "email_queue", [sa.text(c) for c in CLAIM_ORDER],
        postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_email_queue_claim_order", "email_queue")
