"""email_queue and upload_queue: the two queue tables of DATA_MODEL.md

Revision ID: 0001_queues
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from bg_ops.db.types import JSONType, UTCDateTime

revision = "0001_queues"
down_revision = None
branch_labels = None
depends_on = None

NOW = sa.func.now()
BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "email_queue",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("company_id", sa.Integer, nullable=False),
        sa.Column("to_addrs", JSONType, nullable=False),
        sa.Column("cc_addrs", JSONType),
        sa.Column("bcc_addrs", JSONType),
        sa.Column("reply_to", sa.Text),
        sa.Column("subject", sa.Text),
        sa.Column("body_text", sa.Text),
        sa.Column("body_html", sa.Text),
        sa.Column("template", sa.Text),
        sa.Column("context", JSONType),
        sa.Column("attachments", JSONType),
        sa.Column("priority", sa.String(8), nullable=False, server_default="normal"),
        sa.Column("send_after", UTCDateTime),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("kind", sa.String(16), server_default="internal"),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer),
        sa.Column("next_attempt_at", UTCDateTime),
        sa.Column("locked_until", UTCDateTime),
        sa.Column("locked_by", sa.String(128)),
        sa.Column("last_error", sa.Text),
        sa.Column("message_id", sa.String(255)),
        sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.Column("updated_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("failed_at", UTCDateTime),
        sa.Column("canceled_at", UTCDateTime),
        sa.CheckConstraint("priority IN ('high', 'normal', 'low')", name="ck_email_queue_priority"),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'failed', 'canceled')",
            name="ck_email_queue_status",
        ),
        sa.CheckConstraint("kind IN ('customer', 'internal')", name="ck_email_queue_kind"),
        sa.PrimaryKeyConstraint("id", name="pk_email_queue"),
    )
    op.create_index("ix_email_queue_idempotency_key", "email_queue", ["idempotency_key"], unique=True)
    op.create_index("ix_email_queue_status_next_attempt_at", "email_queue", ["status", "next_attempt_at"])
    op.create_index("ix_email_queue_status_send_after", "email_queue", ["status", "send_after"])
    op.create_index("ix_email_queue_company_id_status", "email_queue", ["company_id", "status"])

    op.create_table(
        "upload_queue",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("company_id", sa.Integer, nullable=False),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("dest_path", sa.Text, nullable=False),
        sa.Column("delete_after_upload", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attempts_today", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attempts_day", sa.String(10)),
        sa.Column("next_attempt_at", UTCDateTime),
        sa.Column("locked_until", UTCDateTime),
        sa.Column("locked_by", sa.String(128)),
        sa.Column("last_error", sa.Text),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("cloud_path", sa.Text),
        sa.Column("cloud_rev", sa.String(64)),
        sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.Column("updated_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.Column("uploaded_at", UTCDateTime),
        sa.CheckConstraint(
            "status IN ('queued', 'uploading', 'uploaded', 'failed', 'canceled')",
            name="ck_upload_queue_status",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_upload_queue"),
    )
    op.create_index("ix_upload_queue_status_next_attempt_at", "upload_queue", ["status", "next_attempt_at"])
    op.create_index("ix_upload_queue_company_id_status", "upload_queue", ["company_id", "status"])
    op.create_index("ix_upload_queue_company_id_source_path", "upload_queue", ["company_id", "source_path"])


def downgrade() -> None:
    op.drop_table("upload_queue")
    op.drop_table("email_queue")
