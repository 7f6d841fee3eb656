"""A delivery worker in its own process, for concurrency and crash tests.

    python -m bg_ops_tests.support.email_worker URL SMTP_HOST SMTP_PORT WORKER_ID BATCH_SIZE LEASE_SECONDS

Prints the DeliveryReport as JSON when the queue is empty.
"""

from __future__ import annotations

import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path


def main(argv: list[str]) -> int:
    url, host, port, worker_id, batch_size, lease = argv
    from bg_ops.db.engine import get_engine
    from bg_ops.defs.email.delivery import DeliveryPolicy, deliver_due
    from bg_ops.defs.email.enqueue import MailSettings
    from bg_ops.resources.mail import SmtpMailResource

    report = deliver_due(
        get_engine(url),
        SmtpMailResource(host=host, port=int(port), security="none", timeout_seconds=10),
        clock=lambda: datetime.now(UTC),
        settings=MailSettings(mail_from="bg_ops <no-reply@bg-ops.example>", files_root=Path(tempfile.gettempdir())),
        policy=DeliveryPolicy(batch_size=int(batch_size), lease_seconds=int(lease), time_budget_seconds=600),
        worker_id=worker_id,
    )
    print(json.dumps(report.as_metadata()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
