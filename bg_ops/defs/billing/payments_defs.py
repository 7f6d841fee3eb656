"""Payment events (B5) wiring: the inbox sensor and the job that applies one event.

``payment_event_sensor`` reads the ``payment_events`` inbox (cursor: the highest row id it
has requested) and asks for one ``process_payment_event_job`` run per authentic,
unprocessed event, with run key = the event id, so an event is never run twice whatever the
sensor sees again. Each tick also looks again at the ``RESCAN_IDS`` ids below the cursor: a
row whose insert committed after a higher id was already seen is still picked up (the run
key makes the second look free). Runs carry ``dagster/priority`` 10 (payment jobs go first in
the run queue) and the tenant's ``bg_ops/tenant`` tag when the payment names it.

``process_payment_event`` retries transient errors 3 times with exponential backoff and
jitter; on its last attempt (or at once for a mail/template error that no retry fixes) the
event stays in the inbox with its ``error`` and one admin alert mail is queued for it.
"""

import json
from datetime import UTC, datetime

import dagster as dg

from bg_ops.defs.billing.payments import (
    alert_payment_event_failed,
    error_text,
    load_event,
    pending_events,
    process_payment_event,
    record_failure,
)
from bg_ops.defs.email.enqueue import EnqueueError, MailSettings
from bg_ops.defs.email.rendering import TemplateError
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.defs.tenants.logic import switched_off_services
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import MailResource

PAYMENT_JOB_NAME = "process_payment_event_job"
PAYMENT_OP_NAME = "process_payment_event"
PAYMENT_PRIORITY = "10"  # the highest run priority of bg_ops (B5)
BATCH = 200
RESCAN_IDS = 200
PAYMENT_RETRY_POLICY = TRANSIENT_RETRY
MAX_RETRIES = PAYMENT_RETRY_POLICY.max_retries


def _now() -> datetime:
    return datetime.now(UTC)


class PaymentEventConfig(dg.Config):
    event_id: str  # payment_events.event_id (the provider's event id)


class PaymentEventError(RuntimeError):
    """A (probably transient) error while applying an event, as one line; retried."""


class PaymentEventFailed(dg.Failure):
    """The event failed for good: it keeps its error in the inbox and the admins were told."""


def _give_up(context: dg.OpExecutionContext, event_id: str, error: str, attempts: int, database: DatabaseResource,
             mail: MailResource, settings: MailSettings) -> PaymentEventFailed:
    with database.session() as session:
        event = record_failure(session, event_id, error=error)
        alert_id = None
        if event is not None:
            alert_id = alert_payment_event_failed(
                session, event, error=error, attempts=attempts, now=_now(), mail_settings=settings,
                admin_emails=list(mail.admin_emails))
    if alert_id is None:
        context.log.error(f"payment event {event_id} failed for good and no admin is configured to be told "
                          "(set BG_OPS_ADMIN_EMAILS)")
    else:
        context.log.error(f"payment event {event_id} failed for good after {attempts} attempt(s): admin alert "
                          f"queued (email_queue id {alert_id})")
    return PaymentEventFailed(
        description=f"payment event {event_id} failed after {attempts} attempt(s): {error}",
        metadata={"event_id": event_id, "attempts": attempts, "error": error,
                  "admin_alert_email_id": alert_id if alert_id is not None else -1},
        allow_retries=False,
    )


@dg.op(
    name=PAYMENT_OP_NAME,
    description=(
        "B5: applies one payment event from the inbox: a succeeded payment marks its invoice paid (paid_at = "
        "the event time) and tells the tenant's finance users once; an event for an unknown invoice or of "
        "another type is closed with its error. Transient errors are retried 3 times with backoff; after "
        "that the event stays in the inbox with its error and the admins get one alert."
    ),
    tags={"domain": "billing"},
    retry_policy=PAYMENT_RETRY_POLICY,
)
def process_payment_event_op(context: dg.OpExecutionContext, config: PaymentEventConfig,
                             database: DatabaseResource, mail: MailResource, files: FilesResource) -> None:
    settings = MailSettings(mail_from=mail.mail_from, files_root=files.path)
    attempt = context.retry_number + 1
    try:
        with database.session() as session:
            event = load_event(session, config.event_id)
            if event is None or not event.signature_valid:
                raise dg.Failure(f"no authentic payment event {config.event_id!r} in payment_events: check the "
                                 "event id in the run config", allow_retries=False)
            outcome = process_payment_event(session, event, now=_now(), mail_settings=settings,
                                            globally_off=switched_off_services(session))
    except dg.Failure:
        raise
    except (TemplateError, EnqueueError) as exc:  # a finance address or a template: no retry fixes it
        raise _give_up(context, config.event_id, error_text(exc), attempt, database, mail, settings) from None
    except Exception as exc:
        # Re-raised as one line without the chain: a database error's text lists the statement's
        # parameters (addresses of a mail being queued), and Dagster logs what the op raises.
        error = error_text(exc)
        if context.retry_number < MAX_RETRIES:
            context.log.warning(f"payment event {config.event_id}: attempt {attempt} failed "
                                f"({exc.__class__.__name__}); retrying with backoff")
            raise PaymentEventError(error) from None
        raise _give_up(context, config.event_id, error, attempt, database, mail, settings) from None
    if outcome.status == "error":
        context.log.warning(f"payment event {config.event_id} closed without effect: {outcome.error}")
    else:
        context.log.info(f"payment event {config.event_id}: {outcome.status}"
                         + (f", invoice {outcome.invoice_number} of {outcome.tenant}" if outcome.invoice_id else ""))
    context.add_output_metadata({**outcome.as_metadata(), "attempt": attempt})


@dg.job(
    name=PAYMENT_JOB_NAME,
    description=(
        "Payment event: applies one signed payment event from the payment_events inbox (named in the run "
        "config): marks the invoice paid and tells finance, once. Launched by payment_event_sensor with run "
        "key = the event id, at the highest run priority."
    ),
    tags={"domain": "billing", "dagster/priority": PAYMENT_PRIORITY, "dagster/max_runtime": "600"},
    executor_def=dg.in_process_executor,
    owners=["team:bg-ops"],
)
def process_payment_event_job():
    process_payment_event_op()


def run_request_for(event) -> dg.RunRequest:
    tags = {"dagster/priority": PAYMENT_PRIORITY, "payment_event": event.event_id}
    if event.tenant:
        tags["bg_ops/tenant"] = event.tenant
    return dg.RunRequest(
        run_key=event.event_id,
        run_config={"ops": {PAYMENT_OP_NAME: {"config": {"event_id": event.event_id}}}},
        tags=tags,
    )


def _read_cursor(raw: str | None) -> int:
    if raw:
        try:
            return max(0, int(json.loads(raw)["id"]))
        except (ValueError, KeyError, TypeError):
            pass
    return 0


@dg.sensor(
    name="payment_event_sensor",
    job=process_payment_event_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches the payment_events inbox (cursor on the row id) and requests one process_payment_event_job "
        "run per signed, unprocessed payment event, with run key = the event id so each event is processed "
        "once; runs carry dagster/priority 10 and the tenant tag when known."
    ),
    tags={"domain": "billing"},
    owners=["team:bg-ops"],
)
def payment_event_sensor(context: dg.SensorEvaluationContext, database: DatabaseResource):
    cursor = _read_cursor(context.cursor)
    with database.session() as session:
        late = (pending_events(session, after_id=max(0, cursor - RESCAN_IDS), upto_id=cursor, limit=BATCH)
                if cursor else [])
        new = pending_events(session, after_id=cursor, limit=BATCH)
    if not late and not new:
        return dg.SkipReason("no new payment event in the inbox")
    seen: set[str] = set()
    requests = []
    for event in [*late, *new]:
        if event.event_id not in seen:
            seen.add(event.event_id)
            requests.append(run_request_for(event))
    new_cursor = max(cursor, new[-1].id) if new else cursor
    context.log.info(f"{len(new)} new payment event(s), {len(late)} earlier one(s) looked at again")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps({"id": new_cursor}))
