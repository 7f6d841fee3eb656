"""email_queue: the bodies stored out of line, so the row each delivery rewrites twice is small (PostgreSQL)

A delivery updates its queue row twice (``pending`` -> ``sending`` -> ``sent``), and as
``status`` is indexed neither update is HOT: each writes a whole new copy of the row to the
heap and the WAL. The text and HTML bodies (~1 KB each) stayed in that row, compressed in
line, so every delivered mail wrote ~2 KB of heap twice (20,000 mails: 41 MB of heap and
as much WAL) for bodies the delivery of a built message never reads.

- ``body_text`` and ``body_html`` are ``STORAGE EXTERNAL`` (out of line, uncompressed, like
  ``raw_message`` since 0010): an update copies their 18-byte pointers, not the bodies;
- ``toast_tuple_target = 512``: a row over 2 KB is toasted until it fits in 512 bytes
  instead of 2 KB, so the bodies go out of line whenever a row is toasted at all; a row
  already under 512 bytes is never worked on again by an update.

Measured (B1, 2 workers, batch 20, 20,000 mails): the heap 41 MB -> 6 MB, PostgreSQL's CPU
86-109 -> 66-74 us a mail; B2 bulk enqueue unchanged within noise (best 25,969 -> 25,755
rows/s). Rows already queued keep their layout until rewritten (an update that toasts
them, or ``VACUUM FULL``); new rows get the new one. Reading a body costs one look-up in
the TOAST table, as ``raw_message`` already did. Other databases have no such setting.

Revision ID: 0013_email_row_storage
Revises: 0012_email_status_indexes
Create Date: 2026-12-06
"""

from alembic import op

revision = "0013_email_row_storage"
down_revision = "0012_email_status_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE email_queue ALTER COLUMN body_text SET STORAGE EXTERNAL, "
            "ALTER COLUMN body_html SET STORAGE EXTERNAL, SET (toast_tuple_target = 512)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE email_queue ALTER COLUMN body_text SET STORAGE EXTENDED, "
            "ALTER COLUMN body_html SET STORAGE EXTENDED, RESET (toast_tuple_target)"
        )
