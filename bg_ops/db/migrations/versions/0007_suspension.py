"""client suspension (O7): requests, the journal of every change, reminder_log.entity_type

Revision ID: 0007_suspension
Revises: 0006_email_claim
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from bg_ops.db.types import JSONType, UTCDateTime

revision = "0007_suspension"
down_revision = "0006_email_claim"
branch_labels = None
depends_on = None

NOW = sa.func.now()
BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "client_suspensions",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("company_id", sa.Integer, nullable=False),
        sa.Column("client_name", sa.Text, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="requested"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("batches", sa.Integer, nullable=False, server_default="0"),
        sa.Column("projects", sa.Integer, nullable=False, server_default="0"),
        sa.Column("approvals", sa.Integer, nullable=False, server_default="0"),
        sa.Column("approval_steps", sa.Integer, nullable=False, server_default="0"),
        sa.Column("emails", sa.Integer, nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("planned", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column("reinstated_by", sa.BigInteger),
        sa.Column("requested_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_client_suspensions"),
        sa.CheckConstraint("action IN ('suspend', 'reinstate')", name="ck_client_suspensions_action"),
        sa.CheckConstraint("status IN ('requested', 'running', 'done', 'failed')", name="ck_client_suspensions_status"),
    )
    op.create_index("ix_client_suspensions_status_id", "client_suspensions", ["status", "id"])
    op.create_index("ix_client_suspensions_company_id_client_name", "client_suspensions",
                    ["company_id", "client_name"])
    op.create_table(
        "client_suspension_changes",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("request_id", sa.BigInteger, nullable=False),
        sa.Column("company_id", sa.Integer, nullable=False),
        sa.Column("entity", sa.String(16), nullable=False),
        sa.Column("row_id", sa.BigInteger, nullable=False),
        sa.Column("prior", JSONType, nullable=False),
        sa.Column("applied", JSONType, nullable=False),
        sa.Column("reverted_at", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_client_suspension_changes"),
    )
    op.create_index("ix_client_suspension_changes_request_id_id", "client_suspension_changes", ["request_id", "id"])
    with op.batch_alter_table("reminder_log") as batch:
        batch.add_column(sa.Column("entity_type", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("reminder_log") as batch:
        batch.drop_column("entity_type")
    op.drop_table("client_suspension_changes")
    op.drop_table("client_suspensions")
