"""reminder_log (at-most-once key for reminders), notifications (in-app rows), service_switches

Revision ID: 0003_reminders
Revises: 0002_email_delivery
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from bg_ops.db.types import UTCDateTime

revision = "0003_reminders"
down_revision = "0002_email_delivery"
branch_labels = None
depends_on = None

NOW = sa.func.now()
BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "reminder_log",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("company_id", sa.Integer, nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("entity_id", sa.BigInteger, nullable=False),
        sa.Column("recipient_id", sa.Integer, nullable=False),
        sa.Column("period", sa.String(64), nullable=False),
        sa.Column("run_date", sa.String(10), nullable=False),
        sa.Column("email_id", sa.BigInteger),
        sa.Column("digest", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("subject", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_reminder_log"),
        sa.UniqueConstraint("company_id", "rule", "entity_id", "recipient_id", "period", name="uq_reminder_log_key"),
    )
    op.create_index("ix_reminder_log_company_id_run_date_digest", "reminder_log", ["company_id", "run_date", "digest"])
    op.create_table(
        "notifications",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("company_id", sa.Integer, nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("entity_type", sa.String(32)),
        sa.Column("entity_id", sa.BigInteger),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.Column("read_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
    )
    op.create_index("ix_notifications_company_id_user_id_read_at", "notifications", ["company_id", "user_id", "read_at"])
    op.create_table(
        "service_switches",
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("note", sa.Text),
        sa.Column("changed_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("service", name="pk_service_switches"),
    )


def downgrade() -> None:
    op.drop_table("service_switches")
    op.drop_table("notifications")
    op.drop_table("reminder_log")
