"""Failed and stuck runs, told to the admins in one mail per sensor tick (O1, O9).

``find_failures`` reads the Dagster instance: every run that failed, or was ended by run
monitoring for exceeding its maximum runtime (``dagster/max_runtime`` tag), since the
cursor, with its job, tenant, failing op, a one-line error (addresses masked) and how many
times in a row its job has failed. ``deliver`` queues one mail for the batch, or sends it
straight over the mail resource when the email queue is what is failing.

Run monitoring ends a run that exceeded its maximum runtime with a ``RUN_CANCELING`` event
"Canceling due to exceeding maximum runtime of N seconds." then ``RUN_FAILURE`` "Exceeded
maximum runtime of N seconds." (the run ends as failure, or canceled when the run worker
reports its own cancel last); both messages are recognised. A run canceled by a person is
not a failure and is not alerted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg
from sqlalchemy.orm import Session

from bg_ops.defs.email.enqueue import SYSTEM_COMPANY_ID, SYSTEM_NAME, Email, MailSettings, enqueue, prepare
from bg_ops.defs.email.message import envelope_from, with_date
from bg_ops.resources.mail import MailResource
from bg_ops.util.masking import mask_emails_in_text, mask_url_password

log = logging.getLogger(__name__)

# The job whose failure means queued mail may not go out: its alerts go over SMTP directly.
EMAIL_DELIVERY_JOB = "send_due_emails_job"
FIRST_LOOKBACK = timedelta(hours=1)  # a sensor with no cursor yet reports the last hour
OVERLAP = timedelta(minutes=2)  # re-read a little before the cursor: run updates commit late
BATCH_LIMIT = 200
STREAK_LIMIT = 100  # "100 failures in a row or more" is enough to know
ERROR_MAX_CHARS = 200
MAX_RUNTIME_RE = re.compile(r"maximum runtime of (\d+) seconds", re.IGNORECASE)
_QUALIFIED_RE = re.compile(r"^(?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*): ")
_WRAPPERS = {"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError", "DagsterMaxRetriesExceededError",
             "RetryRequestedFromPolicy"}
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
             "tenth", "eleventh", "twelfth")


@dataclass(frozen=True)
class RunFailure:
    run_id: str
    job_name: str
    tenant: str | None
    step: str | None  # the op that failed (or was running when the run was stopped)
    error: str  # one line, addresses masked
    ended_at: datetime
    in_a_row: int  # consecutive failures of this job, this one included
    max_runtime_seconds: int | None = None  # set when run monitoring ended the run
    url: str = ""

    @property
    def streak(self) -> str:
        return f"{ordinal(self.in_a_row)} failure in a row"


@dataclass
class AlertCursor:
    """Runs that ended up to ``after`` were looked at; ``seen`` holds the run ids of the last
    ``OVERLAP`` so re-reading that window never reports a run twice."""

    after: datetime
    seen: dict[str, float] = field(default_factory=dict)  # run_id -> ended (timestamp)

    @classmethod
    def parse(cls, raw: str | None, *, now: datetime) -> AlertCursor:
        if not raw:
            return cls(after=now - FIRST_LOOKBACK)
        data = json.loads(raw)
        return cls(after=datetime.fromtimestamp(data["after"], UTC), seen=dict(data.get("seen", {})))

    def serialize(self) -> str:
        return json.dumps({"after": self.after.timestamp(), "seen": self.seen}, sort_keys=True)


def ordinal(n: int) -> str:
    if n >= STREAK_LIMIT:
        return f"{STREAK_LIMIT}th or later"
    if 1 <= n <= len(_ORDINALS):
        return _ORDINALS[n - 1]
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def run_url(base_url: str, run_id: str) -> str:
    return f"{base_url.rstrip('/')}/runs/{run_id}"


def error_line(error) -> str:
    """One line for a ``SerializableErrorInfo``: the user's exception, not Dagster's wrapper."""
    while error is not None and error.cls_name in _WRAPPERS and error.cause is not None:
        error = error.cause
    if error is None:
        return "unknown error"
    lines = [line.strip() for line in (error.message or "").splitlines() if line.strip()]
    # "package.module.ValueError: text" -> "ValueError: text"
    return one_line(_QUALIFIED_RE.sub(r"\1: ", lines[0]) if lines else error.cls_name or "unknown error")


def one_line(text: str) -> str:
    text = mask_emails_in_text(" ".join((text or "").split()))
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"


def tenant_of(run: dg.DagsterRun) -> str | None:
    tags = run.tags
    return tags.get("bg_ops/tenant") or tags.get("dagster/partition/tenant") or tags.get("dagster/partition")


def _messages(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType) -> list:
    return [r.event_log_entry for r in instance.get_records_for_run(run_id, of_type=event_type).records]


def _max_runtime(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for event_type in (dg.DagsterEventType.RUN_CANCELING, dg.DagsterEventType.RUN_FAILURE):
        for entry in _messages(instance, run_id, event_type):
            match = MAX_RUNTIME_RE.search(entry.dagster_event.message or "")
            if match:
                return int(match.group(1))
    return None


def _step_and_error(instance: dg.DagsterInstance, run_id: str) -> tuple[str | None, str]:
    step_failures = _messages(instance, run_id, dg.DagsterEventType.STEP_FAILURE)
    if step_failures:
        event = step_failures[0].dagster_event
        return event.step_key, error_line(event.event_specific_data.error)
    for entry in _messages(instance, run_id, dg.DagsterEventType.RUN_FAILURE):
        data = entry.dagster_event.event_specific_data
        if data is not None and data.error is not None:
            return None, error_line(data.error)
        return None, one_line(entry.dagster_event.message or "run failed")
    return None, "run failed without an error message"


def _running_step(instance: dg.DagsterInstance, run_id: str) -> str | None:
    started = [e.step_key for e in _messages(instance, run_id, dg.DagsterEventType.STEP_START)]
    ended = {
        e.step_key
        for t in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.STEP_SKIPPED)
        for e in _messages(instance, run_id, t)
    }
    running = [s for s in started if s not in ended]
    return running[-1] if running else (started[-1] if started else None)


def consecutive_failures(instance: dg.DagsterInstance, job_name: str, run_id: str) -> int:
    """How many runs of ``job_name`` failed in a row up to this one (this one included),
    from the instance's run history; runs canceled by a person neither count nor break it."""
    earlier = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]),
        cursor=run_id, limit=STREAK_LIMIT,
    )
    count = 1
    for record in earlier:
        if record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            break
        count += 1
    return count


def _ended(record) -> float:
    return record.end_time if record.end_time is not None else record.update_timestamp.timestamp()


def find_failures(instance: dg.DagsterInstance, cursor: AlertCursor, *, ui_base_url: str,
                  limit: int = BATCH_LIMIT) -> tuple[list[RunFailure], AlertCursor]:
    """Failed (and max-runtime-exceeded) runs not yet reported, oldest first, and the cursor
    to store once they are told."""
    window_start = cursor.after - OVERLAP
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED],
                              updated_after=window_start),
        order_by="update_timestamp", ascending=True, limit=limit,
    )
    failures: list[RunFailure] = []
    seen = dict(cursor.seen)
    after = cursor.after
    for record in sorted(records, key=_ended):
        run = record.dagster_run
        ended = _ended(record)
        if run.run_id in seen or ended <= window_start.timestamp():
            continue  # told already, or ended long ago and only updated now (tags)
        seen[run.run_id] = ended
        after = max(after, datetime.fromtimestamp(ended, UTC))
        max_runtime = _max_runtime(instance, run.run_id)
        if run.status == dg.DagsterRunStatus.CANCELED and max_runtime is None:
            continue  # canceled by a person: not a failure
        if max_runtime is not None:
            step = _running_step(instance, run.run_id)
            error = f"exceeded its maximum runtime of {max_runtime} seconds and was stopped by run monitoring"
        else:
            step, error = _step_and_error(instance, run.run_id)
        failures.append(RunFailure(
            run_id=run.run_id, job_name=run.job_name, tenant=tenant_of(run), step=step, error=error,
            ended_at=datetime.fromtimestamp(ended, UTC),
            in_a_row=consecutive_failures(instance, run.job_name, run.run_id),
            max_runtime_seconds=max_runtime, url=run_url(ui_base_url, run.run_id),
        ))
    horizon = (after - OVERLAP).timestamp()
    return failures, AlertCursor(after=after, seen={k: v for k, v in seen.items() if v > horizon})


# -- the mail --------------------------------------------------------------------------


def compose(failures: list[RunFailure]) -> tuple[str, str]:
    """Subject and plain-text body of one alert for the batch (no addresses, no bodies)."""
    jobs = sorted({f.job_name for f in failures})
    stuck = sum(1 for f in failures if f.max_runtime_seconds is not None)
    what = f"{len(failures)} failed run" + ("s" if len(failures) != 1 else "")
    subject = f"[bg_ops] {what}: {', '.join(jobs[:3])}" + (f" and {len(jobs) - 3} more" if len(jobs) > 3 else "")
    lines = [f"{what} since the last alert" + (f", {stuck} of them over their maximum runtime" if stuck else "") + ".", ""]
    for f in failures:
        where = f"tenant {f.tenant}" if f.tenant else "no tenant"
        op = f"op {f.step}" if f.step else "no op"
        lines += [
            f"* {f.job_name} ({where}), {op}, ended {f.ended_at:%Y-%m-%d %H:%M:%S} UTC",
            f"  {f.streak}",
            f"  error: {f.error}",
            f"  {f.url}",
            "",
        ]
    lines.append("Each link opens the run in the Dagster UI, with its logs and a Re-execute button.")
    return subject, "\n".join(lines) + "\n"


def idempotency_key(failures: list[RunFailure]) -> str:
    listed = ",".join(sorted(f.run_id for f in failures))
    return "run-failures:" + hashlib.sha256(listed.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Delivery:
    how: str  # "queued" | "direct"
    message_id: int | None = None  # the email_queue id when queued
    reason: str | None = None  # why it went directly


def deliver(failures: list[RunFailure], *, open_session: Callable[[], AbstractContextManager[Session]],
            mail: MailResource, settings: MailSettings, admin_emails: list[str], now: datetime) -> Delivery:
    """Queue the alert; send it over ``mail`` directly when the email delivery job is among
    the failures or the queue cannot take it (database down). A direct send that fails
    raises, so the caller keeps its cursor and tries again."""
    subject, text = compose(failures)
    email = Email(company_id=SYSTEM_COMPANY_ID, to=list(admin_emails), subject=subject, text=text,
                  priority="high", idempotency_key=idempotency_key(failures))
    reason = None
    if any(f.job_name == EMAIL_DELIVERY_JOB for f in failures):
        reason = f"{EMAIL_DELIVERY_JOB} is failing"
    else:
        try:
            with open_session() as session:
                queued = enqueue(session, email, now=now, settings=settings)
            return Delivery(how="queued", message_id=queued.id)
        except Exception as exc:  # the database (or the queue) is down: the alert must still go
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = f"the email queue refused it ({one_line(mask_url_password(f'{type(exc).__name__}: {first}'))})"
    raw = prepare(email, company=(SYSTEM_NAME, ""), settings=settings, now=now).row["raw_message"]
    with mail.connect() as conn:
        conn.send_raw(envelope_from(settings.mail_from), list(admin_emails), with_date(raw, now))
    log.info("run failure alert sent directly over %s: %s", mail.describe(), reason)
    return Delivery(how="direct", reason=reason)
