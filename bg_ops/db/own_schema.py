"""Tables bg_ops owns, created by the Alembic migrations in ``bg_ops/db/migrations``.

They live in the application's database and default schema but carry no foreign keys to
the application tables, so ``bg-ops db upgrade`` works on an empty database. The two queue
tables' names and producer columns are fixed by DATA_MODEL.md ("Queue tables the platform
writes too"); every column bg_ops adds has a server-side default or is nullable.
A test checks that these definitions and the migrations agree.
"""

from __future__ import annotations

import sqlalchemy as sa

from bg_ops.db.types import JSONType, UTCDateTime

own_metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)
NOW = sa.func.now()

EMAIL_STATUSES = ("pending", "sending", "sent", "failed", "canceled")
EMAIL_PRIORITIES = ("high", "normal", "low")
EMAIL_KINDS = ("customer", "internal")
UPLOAD_STATUSES = ("queued", "uploading", "uploaded", "failed", "canceled")

email_queue = sa.Table(
    "email_queue",
    own_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("company_id", sa.Integer, nullable=False),
    sa.Column("to_addrs", JSONType, nullable=False),
    sa.Column("cc_addrs", JSONType),
    sa.Column("bcc_addrs", JSONType),
    sa.Column("reply_to", sa.Text),
    sa.Column("subject", sa.Text),
    # 0013: on PostgreSQL both bodies are stored out of line uncompressed (STORAGE EXTERNAL) and
    # rows toasted down to 512 bytes (toast_tuple_target): each delivery rewrites the row twice,
    # and it carried ~2 KB of bodies every time.
    sa.Column("body_text", sa.Text),
    sa.Column("body_html", sa.Text),
    sa.Column("template", sa.Text),
    sa.Column("context", JSONType),
    sa.Column("attachments", JSONType),
    sa.Column("priority", sa.String(8), nullable=False, server_default="normal"),
    sa.Column("send_after", UTCDateTime),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("kind", sa.String(16), server_default="internal"),  # NULL reads as internal
    # bg_ops's own bookkeeping
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
    # 0002: the message built once at enqueue (RFC 5322 bytes without Date, which is added
    # when it is sent); NULL for rows the platform inserted, which are built at delivery.
    # 0010: on PostgreSQL stored out of line uncompressed (STORAGE EXTERNAL): base64 barely
    # compresses, and trying cost more than writing it.
    sa.Column("raw_message", sa.LargeBinary),
    sa.Column("last_attempt_at", UTCDateTime),
    sa.Column("alerted_at", UTCDateTime),
    sa.CheckConstraint(f"priority IN {EMAIL_PRIORITIES}", name="priority"),
    sa.CheckConstraint(f"status IN {EMAIL_STATUSES}", name="status"),
    sa.CheckConstraint(f"kind IN {EMAIL_KINDS}", name="kind"),
    sa.Index("ix_email_queue_idempotency_key", "idempotency_key", unique=True),
    # (0009 dropped the (status, next_attempt_at) and (status, send_after) indexes of 0001: the
    # claim reads ix_email_queue_claim_order, and each index holding status is written twice
    # per delivered mail.)
    sa.Index("ix_email_queue_company_id_status", "company_id", "status"),
    # (0012 replaced (status, failed_at) by the two partial indexes below.)
)

# 0006: the delivery claim's send order within one priority (customer before internal, NULL
# kind reads as internal; earliest due first), over the contract columns only, so plain-SQL
# rows need nothing more. The partial index holds only pending rows: a claim reads the first
# rows of each priority instead of sorting the whole queue (PERFORMANCE.md B1).
EMAIL_KIND_KEY = sa.func.coalesce(email_queue.c.kind, "internal")
EMAIL_DUE_AT = sa.func.coalesce(email_queue.c.next_attempt_at, email_queue.c.send_after, email_queue.c.created_at)
sa.Index(
    "ix_email_queue_claim_order", email_queue.c.priority, EMAIL_KIND_KEY, EMAIL_DUE_AT, email_queue.c.id,
    postgresql_where=email_queue.c.status == "pending", sqlite_where=email_queue.c.status == "pending",
)
# 0011: messages in ``sending`` by the end of their lease: the claim finds the expired ones
# without reading the entries every delivered message leaves behind (B1).
sa.Index(
    "ix_email_queue_lease", email_queue.c.locked_until,
    postgresql_where=email_queue.c.status == "sending", sqlite_where=email_queue.c.status == "sending",
)

# 0012: failed mail by when it failed (the failed list), and sent or canceled mail by status and
# sent_at (the cleanup past the retention). Neither holds ``sending`` or ``pending`` rows, so a
# delivery writes no entry here but the one for ``sent``, and no status query of the drain
# reads one (B1).
sa.Index(
    "ix_email_queue_failed", email_queue.c.failed_at,
    postgresql_where=email_queue.c.status == "failed", sqlite_where=email_queue.c.status == "failed",
)
sa.Index(
    "ix_email_queue_retention", email_queue.c.status, email_queue.c.sent_at,
    postgresql_where=email_queue.c.status.in_(("sent", "canceled")),
    sqlite_where=email_queue.c.status.in_(("sent", "canceled")),
)

upload_queue = sa.Table(
    "upload_queue",
    own_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("company_id", sa.Integer, nullable=False),
    sa.Column("source_path", sa.Text, nullable=False),
    sa.Column("dest_path", sa.Text, nullable=False),
    sa.Column("delete_after_upload", sa.Boolean, nullable=False, server_default=sa.false()),
    # bg_ops's own bookkeeping
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
    # 0004: per-row conflict policy (NULL: the configured one) and what queued it.
    sa.Column("on_conflict", sa.String(16)),
    sa.Column("kind", sa.String(16)),
    sa.CheckConstraint(f"status IN {UPLOAD_STATUSES}", name="status"),
    sa.Index("ix_upload_queue_status_next_attempt_at", "status", "next_attempt_at"),
    sa.Index("ix_upload_queue_company_id_status", "company_id", "status"),
    sa.Index("ix_upload_queue_company_id_source_path", "company_id", "source_path"),
)

# 0008: the upload claim's order over the rows still to upload. After a backup scan queues
# thousands of files, a claim reads its first rows in order instead of sorting them all (B5).
UPLOAD_ACTIVE_STATUSES = ("queued", "failed", "uploading")
sa.Index(
    "ix_upload_queue_claim_order", upload_queue.c.created_at, upload_queue.c.id,
    postgresql_where=upload_queue.c.status.in_(UPLOAD_ACTIVE_STATUSES),
    sqlite_where=upload_queue.c.status.in_(UPLOAD_ACTIVE_STATUSES),
)

# 0003: reminders. One row per (rule, entity, recipient, period): the unique key that makes a
# reminder go out at most once whatever runs, retries or backfills happen (R14).
reminder_log = sa.Table(
    "reminder_log",
    own_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
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
    # 0007: what entity_id names ('approval', 'task', 'project' …), so a client suspension finds
    # the queued mail about its projects; NULL on rows logged before 0007.
    sa.Column("entity_type", sa.String(32)),
    sa.UniqueConstraint("company_id", "rule", "entity_id", "recipient_id", "period", name="uq_reminder_log_key"),
    sa.Index("ix_reminder_log_company_id_run_date_digest", "company_id", "run_date", "digest"),
)

# In-app notifications (the push analogue): one row per reminder for the recipient.
notifications = sa.Table(
    "notifications",
    own_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("company_id", sa.Integer, nullable=False),
    sa.Column("user_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("entity_type", sa.String(32)),
    sa.Column("entity_id", sa.BigInteger),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
    sa.Column("read_at", UTCDateTime),
    sa.Index("ix_notifications_company_id_user_id_read_at", "company_id", "user_id", "read_at"),
)

# Global service switches (P7): a row with enabled = false turns a service off for every
# tenant ("reminders" all reminders, "reminders.birthdays" one rule). No row means on.
service_switches = sa.Table(
    "service_switches",
    own_metadata,
    sa.Column("service", sa.String(128), primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("note", sa.Text),
    sa.Column("changed_at", UTCDateTime, nullable=False, server_default=NOW),
)

# 0004: files. What the nightly backup last saw of each file (F4): a rescan compares size and
# mtime and hashes only what moved.
backup_manifest = sa.Table(
    "backup_manifest",
    own_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("company_id", sa.Integer, nullable=False),
    sa.Column("source_path", sa.Text, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("dest_path", sa.Text, nullable=False),
    sa.Column("upload_id", sa.BigInteger),
    sa.Column("updated_at", UTCDateTime, nullable=False, server_default=NOW),
    sa.UniqueConstraint("company_id", "source_path", name="uq_backup_manifest_company_id_source_path"),
)

# One row per archived document version (F5): the unique key makes a re-run a no-op and a
# changed document a new version.
archives = sa.Table(
    "archives",
    own_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("company_id", sa.Integer, nullable=False),
    sa.Column("doc_type", sa.String(32), nullable=False),
    sa.Column("doc_id", sa.BigInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("version_key", sa.String(128), nullable=False),
    sa.Column("cloud_path", sa.Text),
    sa.Column("content_hash", sa.String(64)),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
    sa.UniqueConstraint("company_id", "doc_type", "doc_id", "version_key", name="uq_archives_version_key"),
)

# Thumbnails of approval attachments (F6), one per attachment content.
renditions = sa.Table(
    "renditions",
    own_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("company_id", sa.Integer, nullable=False),
    sa.Column("approval_file_id", sa.BigInteger, nullable=False),
    sa.Column("source_hash", sa.String(64), nullable=False),
    sa.Column("cloud_path", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
    sa.UniqueConstraint("approval_file_id", "source_hash", name="uq_renditions_file_hash"),
)

# 0005: billing and people. One row per billable event of a project (B1): inserted with ON
# CONFLICT DO NOTHING in the transaction that creates the billing task, so a re-evaluated
# sensor or a retried run never creates a second task for the same event.
billing_triggers = sa.Table(
    "billing_triggers",
    own_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("company_id", sa.Integer, nullable=False),
    sa.Column("project_id", sa.BigInteger, nullable=False),
    sa.Column("billable_at", UTCDateTime, nullable=False),
    sa.Column("task_id", sa.BigInteger),
    sa.Column("assignee_id", sa.Integer),
    sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
    sa.UniqueConstraint("company_id", "project_id", "billable_at", name="uq_billing_triggers_event"),
)

# The PTO ledger (B3): one accrual per employee and month ('YYYY-MM'), with the tenure tier it
# was credited under, so re-running or backfilling a month changes nothing.
pto_ledger = sa.Table(
    "pto_ledger",
    own_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("company_id", sa.Integer, nullable=False),
    sa.Column("user_id", sa.Integer, nullable=False),
    sa.Column("month", sa.String(7), nullable=False),
    sa.Column("tier_id", sa.Integer, nullable=False),
    sa.Column("tier_name", sa.Text, nullable=False),
    sa.Column("hours", sa.Numeric(6, 2), nullable=False),
    sa.Column("service_years", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
    sa.UniqueConstraint("company_id", "user_id", "month", name="uq_pto_ledger_company_id_user_id_month"),
    sa.Index("ix_pto_ledger_company_id_month", "company_id", "month"),
)

# 0007: client suspension (O7). One row per request (suspend or reinstate a client of a tenant)
# with its progress, and a journal of the exact prior values of every row a request changed, so
# a failure is rolled back and a reinstatement reverses exactly what the suspension did.
SUSPENSION_ACTIONS = ("suspend", "reinstate")
SUSPENSION_STATUSES = ("requested", "running", "done", "failed")

client_suspensions = sa.Table(
    "client_suspensions",
    own_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
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
    sa.CheckConstraint(f"action IN {SUSPENSION_ACTIONS}", name="action"),
    sa.CheckConstraint(f"status IN {SUSPENSION_STATUSES}", name="status"),
    sa.Index("ix_client_suspensions_status_id", "status", "id"),
    sa.Index("ix_client_suspensions_company_id_client_name", "company_id", "client_name"),
)

client_suspension_changes = sa.Table(
    "client_suspension_changes",
    own_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("request_id", sa.BigInteger, nullable=False),
    sa.Column("company_id", sa.Integer, nullable=False),
    sa.Column("entity", sa.String(16), nullable=False),
    sa.Column("row_id", sa.BigInteger, nullable=False),
    sa.Column("prior", JSONType, nullable=False),
    sa.Column("applied", JSONType, nullable=False),
    sa.Column("reverted_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
    sa.Index("ix_client_suspension_changes_request_id_id", "request_id", "id"),
)

OWN_TABLES = (email_queue, upload_queue, reminder_log, notifications, service_switches, backup_manifest,
              archives, renditions, billing_triggers, pto_ledger,
              client_suspensions, client_suspension_changes)
