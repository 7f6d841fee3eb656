"""billing and people: billing_triggers (one billing task per billable event), pto_ledger

Revision ID: 0005_people
Revises: 0004_files
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from bg_ops.db.types import UTCDateTime

revision = "0005_people"
down_revision = "0004_files"
branch_labels = None
depends_on = None

NOW = sa.func.now()
BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "billing_triggers",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("company_id", sa.Integer, nullable=False),
        sa.Column("project_id", sa.BigInteger, nullable=False),
        sa.Column("billable_at", UTCDateTime, nullable=False),
        sa.Column("task_id", sa.BigInteger),
        sa.Column("assignee_id", sa.Integer),
        sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_billing_triggers"),
        sa.UniqueConstraint("company_id", "project_id", "billable_at", name="uq_billing_triggers_event"),
    )
    op.create_table(
        "pto_ledger",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("company_id", sa.Integer, nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("tier_id", sa.Integer, nullable=False),
        sa.Column("tier_name", sa.Text, nullable=False),
        sa.Column("hours", sa.Numeric(6, 2), nullable=False),
        sa.Column("service_years", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_pto_ledger"),
        sa.UniqueConstraint("company_id", "user_id", "month", name="uq_pto_ledger_company_id_user_id_month"),
    )
    op.create_index("ix_pto_ledger_company_id_month", "pto_ledger", ["company_id", "month"])


def downgrade() -> None:
    op.drop_table("pto_ledger")
    op.drop_table("billing_triggers")
