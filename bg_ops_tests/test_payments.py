"""B5 payment events: processing rules, the inbox sensor and the job's retry-exhausted path."""

import json
from datetime import timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import PaymentEvent
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import reminder_log
from bg_ops.defs.billing.payments import load_event, process_payment_event
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops_tests.support.payments import (
    ACME_FINANCE,
    KIWI,
    NOW,
    PAID_AT,
    add_event,
    events,
    invoice,
    queued,
    seed_world,
    stripe_event,
)

ADMINS = ["ops@bg-ops.example"]


@pytest.fixture
def mail_settings(tmp_path):
    root = tmp_path / "files"
    root.mkdir(exist_ok=True)
    return MailSettings(mail_from="bg_ops <no-reply@bg-ops.example>", files_root=root)


@pytest.fixture
def world(db_engine):
    seed_world(db_engine)
    return db_engine


def process(engine, event_id, mail_settings, now=NOW):
    with session_scope(engine) as s:
        return process_payment_event(s, load_event(s, event_id), now=now, mail_settings=mail_settings)


def _resources(db_url, mail_settings, tmp_path, admins=ADMINS):
    from bg_ops.resources.database import DatabaseResource
    from bg_ops.resources.files import FilesResource
    from bg_ops.resources.mail import OutboxMailResource

    return {"database": DatabaseResource(url=db_url), "files": FilesResource(root=str(mail_settings.files_root)),
            "mail": OutboxMailResource(outbox_dir=str(tmp_path / "outbox"), admin_emails=list(admins))}


# -- the rules --------------------------------------------------------------------------------


def test_a_paid_event_marks_the_invoice_paid_once_and_tells_finance_once(world, mail_settings):
    add_event(world, stripe_event("evt_1", "INV-2026-0001"))
    first = process(world, "evt_1", mail_settings)
    assert (first.status, first.tenant, first.invoice_id, first.notified) == ("paid", "acme", 1, 2)
    assert invoice(world, 1).status == "paid" and invoice(world, 1).paid_at == PAID_AT  # the event's time
    # The same number in another tenant is untouched.
    assert invoice(world, 5).status == "sent" and invoice(world, 5).paid_at is None

    # The same row again (a re-run), then the provider's second event for the same invoice.
    assert process(world, "evt_1", mail_settings, NOW + timedelta(minutes=1)).status == "already_processed"
    add_event(world, stripe_event("evt_2", "INV-2026-0001", kind="payment_intent.succeeded",
                                  created=PAID_AT + timedelta(minutes=5)))
    second = process(world, "evt_2", mail_settings)
    assert second.status == "already_paid" and second.notified == 0
    assert invoice(world, 1).paid_at == PAID_AT

    mails = queued(world)
    assert sorted(m.to_addrs[0] for m in mails) == ACME_FINANCE  # the inactive finance user is not told
    assert {m.subject for m in mails} == {"[Acme Creative] Invoice INV-2026-0001 paid: 1,250.00 USD from Globex"}
    assert all(m.company_id == 1 and m.template == "payment_received" for m in mails)
    rows = {r.event_id: r for r in events(world)}
    assert rows["evt_1"].processed_at == NOW and rows["evt_1"].error is None
    assert rows["evt_2"].processed_at == NOW and rows["evt_2"].error is None
    with world.connect() as c:
        periods = set(c.execute(sa.select(reminder_log.c.period).where(reminder_log.c.rule == "payment_received"))
                      .scalars())
    assert periods == {"evt_1"}


def test_a_payment_intent_without_invoice_object_uses_its_metadata(world, mail_settings):
    add_event(world, stripe_event("pi_evt", "INV-2026-0002", kind="payment_intent.succeeded"))
    assert process(world, "pi_evt", mail_settings).status == "paid"
    assert invoice(world, 2).status == "paid"


@pytest.mark.parametrize(
    "payload, error",
    [
        (stripe_event("e_unknown", "INV-2099-9999"), "unknown invoice INV-2099-9999 for tenant acme"),
        ({**stripe_event("e_type", "INV-2026-0002"), "type": "customer.created"}, "unsupported event type"),
        (stripe_event("e_tenant", "INV-2026-0002", tenant="nope"), "unknown tenant 'nope'"),
        (stripe_event("e_ambiguous", "INV-2026-0001", tenant=None), "exists in several tenants"),
        (stripe_event("e_void", "INV-2026-0003"), "is void"),
        ({"id": "e_empty", "type": "invoice.paid", "data": {"object": {}}}, "names no invoice"),
    ],
)
def test_events_that_cannot_apply_are_closed_with_their_error(world, mail_settings, payload, error):
    add_event(world, payload)
    outcome = process(world, payload["id"], mail_settings)
    assert outcome.status == "error" and error in outcome.error
    (row,) = events(world)
    assert row.processed_at == NOW and error in row.error  # recorded, not left for a retry
    assert queued(world) == []
    assert {invoice(world, i).status for i in (1, 2, 4, 5)} == {"sent"}


def test_without_tenant_metadata_a_number_unique_across_tenants_decides(world, mail_settings):
    add_event(world, stripe_event("e_unique", "INV-ACME-ONLY", tenant=None))
    outcome = process(world, "e_unique", mail_settings)
    assert (outcome.status, outcome.tenant) == ("paid", "acme")
    # Kiwi's tenant slug in the metadata picks Kiwi's INV-2026-0001, never Acme's.
    add_event(world, stripe_event("e_kiwi", "INV-2026-0001", tenant="kiwi"))
    assert process(world, "e_kiwi", mail_settings).tenant == "kiwi"
    assert invoice(world, 5).status == "paid" and invoice(world, 1).status == "sent"
    kiwi_mail = [m for m in queued(world) if m.company_id == KIWI]
    assert [m.to_addrs for m in kiwi_mail] == [["fin@kiwi.example"]]


def test_rejected_attempts_are_never_processed(world, mail_settings):
    add_event(world, stripe_event("evt_forged", "INV-2026-0001"), event_id="rejected:abc", signature_valid=False)
    outcome = process(world, "rejected:abc", mail_settings)
    assert outcome.status == "already_processed"
    assert invoice(world, 1).status == "sent" and queued(world) == []


# -- the sensor -------------------------------------------------------------------------------


def _tick(db_url, instance, cursor):
    from bg_ops.defs.billing import payments_defs
    from bg_ops.resources.database import DatabaseResource

    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"database": DatabaseResource(url=db_url)})
    return payments_defs.payment_event_sensor(ctx)


def test_sensor_requests_one_priority_run_per_signed_unprocessed_event(world, db_url, mail_settings):
    add_event(world, stripe_event("evt_a", "INV-2026-0001"), row_id=10)
    add_event(world, stripe_event("evt_b", "INV-ACME-ONLY", tenant=None), row_id=12)
    add_event(world, stripe_event("evt_x", "INV-2026-0002"), event_id="rejected:1", signature_valid=False, row_id=13)
    add_event(world, stripe_event("evt_old", "INV-2026-0002"), row_id=14)
    with world.begin() as c:  # processed before, and failed for good: neither is requested
        c.execute(sa.update(PaymentEvent).where(PaymentEvent.id == 14).values(processed_at=NOW))
    add_event(world, stripe_event("evt_failed", "INV-2026-0002"), row_id=15)
    with world.begin() as c:
        c.execute(sa.update(PaymentEvent).where(PaymentEvent.id == 15).values(error="boom"))

    with dg.instance_for_test() as instance:
        first = _tick(db_url, instance, None)
        assert [r.run_key for r in first.run_requests] == ["evt_a", "evt_b"]
        a, b = first.run_requests
        assert a.run_config == {"ops": {"process_payment_event": {"config": {"event_id": "evt_a"}}}}
        assert a.tags["dagster/priority"] == "10" and a.tags["bg_ops/tenant"] == "acme"
        assert "bg_ops/tenant" not in b.tags  # not named by the payment: unknown until processed
        assert json.loads(first.cursor) == {"id": 12}

        # A row whose insert committed late, below the cursor, is still found; the ones already
        # requested come back with the same run keys, which Dagster never launches twice.
        add_event(world, stripe_event("evt_late", "INV-2026-0002"), row_id=11)
        second = _tick(db_url, instance, first.cursor)
        assert sorted(r.run_key for r in second.run_requests) == ["evt_a", "evt_b", "evt_late"]
        assert json.loads(second.cursor) == {"id": 12}

        for key in ("evt_a", "evt_b", "evt_late"):
            process(world, key, mail_settings)
        assert isinstance(_tick(db_url, instance, second.cursor), dg.SkipReason)


# -- the job ----------------------------------------------------------------------------------


def test_job_marks_paid_and_a_second_run_changes_nothing(world, db_url, mail_settings, tmp_path):
    from bg_ops.defs.billing import payments_defs

    add_event(world, stripe_event("evt_job", "INV-2026-0002"))
    config = {"ops": {"process_payment_event": {"config": {"event_id": "evt_job"}}}}
    with dg.instance_for_test() as instance:
        outcomes = []
        for _ in range(2):
            result = payments_defs.process_payment_event_job.execute_in_process(
                instance=instance, run_config=config, resources=_resources(db_url, mail_settings, tmp_path))
            assert result.success
            (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
            outcomes.append(output.event_specific_data.metadata["outcome"].value)
    assert outcomes == ["paid", "already_processed"]
    assert invoice(world, 2).status == "paid" and len(queued(world)) == 2


def _fast_job():
    from bg_ops.defs.billing import payments_defs

    fast = dg.RetryPolicy(max_retries=payments_defs.MAX_RETRIES, delay=0.01, backoff=dg.Backoff.EXPONENTIAL,
                          jitter=dg.Jitter.PLUS_MINUS)

    @dg.job(name="process_payment_event_fast_job", executor_def=dg.in_process_executor)
    def fast_job():
        payments_defs.process_payment_event_op.with_retry_policy(fast)()

    return fast_job


def test_transient_errors_are_retried_then_the_event_applies(world, db_url, mail_settings, tmp_path, monkeypatch):
    from bg_ops.defs.billing import payments_defs

    add_event(world, stripe_event("evt_flaky", "INV-2026-0002"))
    calls = []
    real = payments_defs.process_payment_event

    def flaky(session, row, **kw):
        calls.append(row.event_id)
        if len(calls) < 3:
            raise sa.exc.OperationalError("UPDATE invoices", {"to": "fran@acme.example"}, Exception("server gone"))
        return real(session, row, **kw)

    monkeypatch.setattr(payments_defs, "process_payment_event", flaky)
    config = {"ops": {"process_payment_event": {"config": {"event_id": "evt_flaky"}}}}
    with dg.instance_for_test() as instance:
        result = _fast_job().execute_in_process(instance=instance, run_config=config,
                                                resources=_resources(db_url, mail_settings, tmp_path))
    assert result.success and len(calls) == 3
    assert invoice(world, 2).status == "paid"
    assert [m.template for m in queued(world)] == ["payment_received", "payment_received"]  # no admin alert


def test_an_event_that_keeps_failing_stays_in_the_inbox_and_raises_one_admin_alert(
        world, db_url, mail_settings, tmp_path, monkeypatch):
    from bg_ops.defs.billing import payments_defs

    row_id = add_event(world, stripe_event("evt_doomed", "INV-2026-0002"))
    calls = []

    def broken(session, row, **kw):
        calls.append(row.event_id)
        raise sa.exc.OperationalError("UPDATE invoices", {"to": "fran@acme.example"}, Exception("lock timeout"))

    monkeypatch.setattr(payments_defs, "process_payment_event", broken)
    config = {"ops": {"process_payment_event": {"config": {"event_id": "evt_doomed"}}}}
    with dg.instance_for_test() as instance:
        for run in range(2):  # an operator re-executes it: still one alert for the event
            result = _fast_job().execute_in_process(instance=instance, run_config=config, raise_on_error=False,
                                                    resources=_resources(db_url, mail_settings, tmp_path))
            assert not result.success
            retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
            assert len(retries) == 3 and len(calls) == 4 * (run + 1)
            text = " ".join(str(e.message) for e in result.all_events)
            assert "fran@acme.example" not in text  # the statement's parameters never reach the logs

    (row,) = events(world)
    assert row.id == row_id and row.processed_at is None  # still in the inbox...
    assert row.error.startswith("OperationalError: ") and "lock timeout" in row.error  # ...with its error
    assert "fran@acme.example" not in row.error
    assert invoice(world, 2).status == "sent"
    (alert,) = queued(world)
    assert alert.company_id == 0 and alert.to_addrs == ADMINS and alert.template == "admin_payment_event_failed"
    assert alert.idempotency_key == f"payment-event-failed:{row_id}"
    assert alert.subject == "[bg_ops] Payment event evt_doomed could not be processed"
    assert alert.context["attempts"] == 4 and alert.context["tenant"] == "acme"


def test_a_mail_problem_fails_at_once_with_an_alert(world, db_url, mail_settings, tmp_path):
    from bg_ops.db.app_schema import User

    with world.begin() as c:
        c.execute(sa.update(User).where(User.id == 1).values(email="not an address"))
    add_event(world, stripe_event("evt_badaddr", "INV-2026-0002"))
    config = {"ops": {"process_payment_event": {"config": {"event_id": "evt_badaddr"}}}}
    with dg.instance_for_test() as instance:
        result = _fast_job().execute_in_process(instance=instance, run_config=config, raise_on_error=False,
                                                resources=_resources(db_url, mail_settings, tmp_path))
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    (row,) = events(world)
    assert row.processed_at is None and "EnqueueError" in row.error
    assert invoice(world, 2).status == "sent"  # all or nothing: not paid without its notice
    assert [m.template for m in queued(world)] == ["admin_payment_event_failed"]


def test_payment_definitions_are_operator_ready():
    from bg_ops.defs.billing import payments_defs

    job = payments_defs.process_payment_event_job
    assert job.partitions_def is None and job.tags["dagster/priority"] == "10"
    policy = payments_defs.process_payment_event_op.retry_policy
    assert policy.max_retries == 3 and policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter is not None
    sensor = payments_defs.payment_event_sensor
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING and len(sensor.description) > 40
