"""Run failure alerts: one sensor that mails the admins about failed and stuck runs.

Why an interval sensor over the run history and not ``@dg.run_failure_sensor``: a
run-status sensor is called once per run, so batching would need a second store and a
sender; reading every run that ended failed since the cursor gives the batch for free (one
mail per tick), sees runs that run monitoring canceled for exceeding their maximum runtime
(a run-failure sensor misses the canceled ones), and the instance's run history gives the
consecutive-failure count. The cursor, plus an idempotency key per batch in the email
queue, means a tick evaluated twice never reports a run twice.
"""

from datetime import UTC, datetime

import dagster as dg

from bg_ops.defs.alerts.run_failures import AlertCursor, deliver, find_failures
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.resources.dagster_ui import DagsterUIResource
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import MailResource
from bg_ops.util.masking import mask_emails

ALERT_INTERVAL_SECONDS = 60


def _now() -> datetime:
    return datetime.now(UTC)


@dg.sensor(
    name="run_failure_alert_sensor",
    minimum_interval_seconds=ALERT_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    tags={"domain": "alerts"},
    owners=["team:bg-ops"],
    description=(
        "Mails the admins (BG_OPS_ADMIN_EMAILS) about every run that failed or exceeded its "
        "maximum runtime: job, tenant, failing op, a one-line error, how many times in a row "
        "the job failed, and a link to the run. All failures of one minute go in one mail, "
        "through the email queue, or straight over SMTP when the email queue is what fails."
    ),
)
def run_failure_alert_sensor(context: dg.SensorEvaluationContext, database: DatabaseResource,
                             mail: MailResource, files: FilesResource, dagster_ui: DagsterUIResource):
    now = _now()
    cursor = AlertCursor.parse(context.cursor, now=now)
    failures, next_cursor = find_failures(context.instance, cursor, ui_base_url=dagster_ui.base_url)
    if not failures:
        context.update_cursor(next_cursor.serialize())
        return dg.SkipReason("no run failed since the last alert")
    if not mail.admin_emails:
        context.log.warning(f"{len(failures)} run(s) failed and BG_OPS_ADMIN_EMAILS is empty: nobody was told")
        context.update_cursor(next_cursor.serialize())
        return dg.SkipReason(f"{len(failures)} failed run(s), no admin to tell (set BG_OPS_ADMIN_EMAILS)")
    delivery = deliver(
        failures, open_session=database.session, mail=mail,
        settings=MailSettings(mail_from=mail.mail_from, files_root=files.path),
        admin_emails=list(mail.admin_emails), now=now,
    )
    context.update_cursor(next_cursor.serialize())
    to = mask_emails(mail.admin_emails)
    if delivery.how == "queued":
        context.log.info(f"alert #{delivery.message_id} about {len(failures)} failed run(s) queued for {to}")
    else:
        context.log.warning(f"alert about {len(failures)} failed run(s) sent directly to {to}: {delivery.reason}")
    return dg.SkipReason(f"told the admins about {len(failures)} failed run(s) ({delivery.how})")
