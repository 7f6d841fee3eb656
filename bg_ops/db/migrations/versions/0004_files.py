"""files: upload_queue policy columns, backup_manifest, archives, renditions

Revision ID: 0004_files
Revises: 0003_reminders
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from bg_ops.db.types import UTCDateTime

revision = "0004_files"
down_revision = "0003_reminders"
branch_labels = None
depends_on = None

NOW = sa.func.now()
BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("upload_queue") as batch:
        batch.add_column(sa.Column("on_conflict", sa.String(16)))
        batch.add_column(sa.Column("kind", sa.String(16)))
    op.create_table(
        "backup_manifest",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("company_id", sa.Integer, nullable=False),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("dest_path", sa.Text, nullable=False),
        sa.Column("upload_id", sa.BigInteger),
        sa.Column("updated_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_backup_manifest"),
        sa.UniqueConstraint("company_id", "source_path", name="uq_backup_manifest_company_id_source_path"),
    )
    op.create_table(
        "archives",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("company_id", sa.Integer, nullable=False),
        sa.Column("doc_type", sa.String(32), nullable=False),
        sa.Column("doc_id", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("version_key", sa.String(128), nullable=False),
        sa.Column("cloud_path", sa.Text),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_archives"),
        sa.UniqueConstraint("company_id", "doc_type", "doc_id", "version_key", name="uq_archives_version_key"),
    )
    op.create_table(
        "renditions",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("company_id", sa.Integer, nullable=False),
        sa.Column("approval_file_id", sa.BigInteger, nullable=False),
        sa.Column("source_hash", sa.String(64), nullable=False),
        sa.Column("cloud_path", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_renditions"),
        sa.UniqueConstraint("approval_file_id", "source_hash", name="uq_renditions_file_hash"),
    )


def downgrade() -> None:
    op.drop_table("renditions")
    op.drop_table("archives")
    op.drop_table("backup_manifest")
    with op.batch_alter_table("upload_queue") as batch:
        batch.drop_column("kind")
        batch.drop_column("on_conflict")
