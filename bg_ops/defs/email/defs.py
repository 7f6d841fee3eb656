"""Email queue wiring: the delivery job, the sensor and schedule that launch it, the dashboard."""

import random
from datetime import UTC, datetime

import dagster as dg

from bg_ops.defs.email import admin
from bg_ops.defs.email.delivery import DeliveryPolicy, count_due, deliver_due
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.queue_workers import worker_run_request
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import MailResource
from bg_ops.util.masking import mask_emails

JOB_NAME = "send_due_emails_job"
STUCK_AFTER_SECONDS = 15 * 60
FAILURE_RATE_WARN = 0.2
FAILURE_RATE_MIN_VOLUME = 10


class SendDueEmailsConfig(dg.Config):
    batch_size: int = 20
    time_budget_seconds: float = 50.0
    lease_seconds: int = 300
    max_attempts: int = 5
    backoff_base_seconds: float = 60.0
    backoff_max_seconds: float = 3600.0
    max_batches: int | None = None

    def policy(self) -> DeliveryPolicy:
        return DeliveryPolicy(
            batch_size=self.batch_size, lease_seconds=self.lease_seconds, max_attempts=self.max_attempts,
            backoff_base_seconds=self.backoff_base_seconds, backoff_max_seconds=self.backoff_max_seconds,
            time_budget_seconds=self.time_budget_seconds,
        )


def _now() -> datetime:
    return datetime.now(UTC)


@dg.op(
    description=(
        "Sends the email that is due: claims batches in priority order under a lease, sends each "
        "batch over one SMTP connection, retries transient failures with backoff and fails "
        "permanent ones, then mails the admins one list of newly failed messages."
    ),
    tags={"domain": "email"},
    retry_policy=TRANSIENT_RETRY,
)
def send_due_emails(
    context: dg.OpExecutionContext,
    config: SendDueEmailsConfig,
    database: DatabaseResource,
    mail: MailResource,
    files: FilesResource,
) -> dg.Output:
    settings = MailSettings(mail_from=mail.mail_from, files_root=files.path)
    if database.dialect == "sqlite":
        context.log.info("SQLite: delivery workers take turns on the database's write lock (one at a time)")
    report = deliver_due(
        database.engine, mail, clock=_now, settings=settings, policy=config.policy(),
        rng=random.Random(), max_batches=config.max_batches,
    )
    with database.session() as session:
        alert_id = admin.alert_failed(session, now=_now(), settings=settings, admin_emails=list(mail.admin_emails))
    if report.failed and not mail.admin_emails:
        context.log.warning(
            f"{report.failed} message(s) failed for good and BG_OPS_ADMIN_EMAILS is empty: "
            "nobody was told; see `bg-ops emails failed`"
        )
    if alert_id is not None:
        context.log.info(f"admin alert #{alert_id} queued for {mask_emails(mail.admin_emails)}")
    context.log.info(
        f"sent {report.sent}, will retry {report.retried}, failed {report.failed} "
        f"in {report.batches} batch(es); stopped: {report.stopped_because}"
    )
    return dg.Output(None, metadata={**report.as_metadata(), "admin_alert_id": alert_id})


@dg.job(
    name=JOB_NAME,
    description=(
        "Email delivery worker: sends every message that is due (high, then normal, then low "
        "priority; customer mail first) within a time budget. Launched by email_delivery_sensor "
        "when mail is due, with a one-minute schedule as fallback. Safe to run as several copies "
        "on PostgreSQL."
    ),
    tags={"bg_ops/singleton": "email_delivery", "domain": "email", "dagster/max_runtime": "900"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)
def send_due_emails_job():
    send_due_emails()


def _delivery_request(context, database: DatabaseResource, now: datetime) -> dg.RunRequest | dg.SkipReason:
    def due() -> int:
        with database.engine.connect() as conn:
            return count_due(conn, now)

    return worker_run_request(context, job_name=JOB_NAME, count_due=due, now=now, what="mail delivery")


@dg.sensor(
    name="email_delivery_sensor",
    job=send_due_emails_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Launches the email delivery job when mail is due and no delivery run is going (one run "
        "at a time). The cursor keeps the time of the last launch."
    ),
    owners=["team:bg-ops"],
    tags={"domain": "email"},
)
def email_delivery_sensor(context: dg.SensorEvaluationContext, database: DatabaseResource):
    now = _now()
    result = _delivery_request(context, database, now)
    if isinstance(result, dg.RunRequest):
        context.update_cursor(now.isoformat())
    return result


@dg.schedule(
    name="email_delivery_schedule",
    job=send_due_emails_job,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Fallback for email_delivery_sensor: every minute, launches delivery when mail is due.",
    owners=["team:bg-ops"],
    tags={"domain": "email"},
)
def email_delivery_schedule(context: dg.ScheduleEvaluationContext, database: DatabaseResource):
    return _delivery_request(context, database, context.scheduled_execution_time.astimezone(UTC))


@dg.asset(
    name="email_queue_health",
    retry_policy=TRANSIENT_RETRY,
    group_name="email",
    owners=["team:bg-ops"],
    tags={"domain": "email"},
    kinds={"sql"},
    description=(
        "Email queue dashboard: messages per status, due now, age of the oldest due message and "
        "the error rate of the last hour. Refreshed every five minutes; the UI plots each figure."
    ),
    check_specs=[
        dg.AssetCheckSpec("email_queue_not_stuck", asset="email_queue_health",
                          description=f"Warns when the oldest due message waited over {STUCK_AFTER_SECONDS // 60} minutes."),
        dg.AssetCheckSpec("email_failure_rate", asset="email_queue_health",
                          description=f"Warns when over {FAILURE_RATE_WARN:.0%} of last hour's finished mail failed."),
    ],
)
def email_queue_health(database: DatabaseResource) -> dg.MaterializeResult:
    return queue_health_result(database, _now())


def queue_health_result(database: DatabaseResource, now: datetime) -> dg.MaterializeResult:
    with database.engine.connect() as conn:
        figures = admin.stats(conn, now=now)
    age = figures["oldest_due_age_seconds"]
    stuck = age is not None and age > STUCK_AFTER_SECONDS
    finished = figures["sent_last_hour"] + figures["failed_last_hour"]
    failing = finished >= FAILURE_RATE_MIN_VOLUME and figures["error_rate_last_hour"] > FAILURE_RATE_WARN
    metadata = {
        key: dg.MetadataValue.int(figures[key])
        for key in ("queued", "pending", "sending", "sent", "failed", "canceled", "due_now",
                    "sent_last_hour", "failed_last_hour")
    }
    metadata["error_rate_last_hour"] = dg.MetadataValue.float(float(figures["error_rate_last_hour"]))
    metadata["oldest_due_age_seconds"] = dg.MetadataValue.float(float(age or 0.0))
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="email_queue_not_stuck", passed=not stuck, severity=dg.AssetCheckSeverity.WARN,
                metadata={"oldest_due_age_seconds": float(age or 0.0), "due_now": figures["due_now"]},
            ),
            dg.AssetCheckResult(
                check_name="email_failure_rate", passed=not failing, severity=dg.AssetCheckSeverity.WARN,
                metadata={"error_rate_last_hour": float(figures["error_rate_last_hour"]), "finished_last_hour": finished},
            ),
        ],
    )


email_queue_health_job = dg.define_asset_job(
    name="email_queue_health_job",
    selection=[email_queue_health],
    description="Refreshes the email queue dashboard.",
    tags={"bg_ops/singleton": "email_queue_health", "domain": "email", "dagster/max_runtime": "300"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)

email_queue_health_schedule = dg.ScheduleDefinition(
    name="email_queue_health_schedule",
    job=email_queue_health_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Refreshes the email queue dashboard and its checks every five minutes.",
    owners=["team:bg-ops"],
    tags={"domain": "email"},
)
