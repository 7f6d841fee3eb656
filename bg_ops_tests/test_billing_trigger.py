"""B1 invoice trigger: one billing task and one finance mail per billable event, whatever the
sensor re-evaluates or the runs retry; tenants kept apart."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import Company, Project, Task, User
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import billing_triggers, notifications, reminder_log
from bg_ops.db.own_schema import email_queue as q
from bg_ops.defs.billing.invoice_trigger import create_billing_task
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.tenants.logic import get_tenant
from bg_ops_tests.support.mail_rows import queued_mails

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 10:00 in New York
FIRST = NOW - timedelta(minutes=10)  # project 10 became billable
SECOND = NOW + timedelta(minutes=1)  # project 11 becomes billable between two ticks
OP = "create_billing_task"


@pytest.fixture
def mail_settings(tmp_path):
    root = tmp_path / "files"
    root.mkdir(exist_ok=True)
    return MailSettings(mail_from="bg_ops <no-reply@bg-ops.example>", files_root=root)


def _resources(db_url, mail_settings, tmp_path):
    from bg_ops.resources.database import DatabaseResource
    from bg_ops.resources.files import FilesResource
    from bg_ops.resources.mail import OutboxMailResource

    return {"database": DatabaseResource(url=db_url), "files": FilesResource(root=str(mail_settings.files_root)),
            "mail": OutboxMailResource(outbox_dir=str(tmp_path / "outbox"))}


@pytest.fixture
def world(db_engine):
    with session_scope(db_engine) as s:
        s.add_all([Company(id=1, name="Acme", slug="acme", timezone="America/New_York"),
                   Company(id=2, name="Globex", slug="globex", timezone="Asia/Tokyo"),
                   Company(id=3, name="Initech", slug="initech")])
        s.flush()
        s.add_all([
            User(id=1, company_id=1, email="pat@acme.example", full_name="Pat PM", role="pm"),
            User(id=2, company_id=1, email="old@acme.example", full_name="Olde Finance", role="finance",
                 is_active=False),
            User(id=3, company_id=1, email="fiona@acme.example", full_name="Fiona Finance", role="finance"),
            User(id=4, company_id=1, email="ada@acme.example", full_name="Ada Admin", role="admin"),
            User(id=101, company_id=2, email="gina@globex.example", full_name="Gina Finance", role="finance"),
            User(id=102, company_id=2, email="gus@globex.example", full_name="Gus PM", role="pm"),
            User(id=201, company_id=3, email="ivan@initech.example", full_name="Ivan Admin", role="admin"),
            User(id=202, company_id=3, email="gone@initech.example", full_name="Gone Finance", role="finance",
                 is_active=False),
        ])
        s.flush()
        s.add_all([
            Project(id=10, company_id=1, name="Brand refresh", client_name="Umbrella", pm_id=1, status="billable",
                    billable_at=FIRST),
            Project(id=11, company_id=1, name="Website", pm_id=1, status="active"),
            Project(id=12, company_id=1, name="Old campaign", pm_id=1, status="invoiced",
                    billable_at=NOW - timedelta(days=20)),
            Project(id=20, company_id=2, name="Globex site", pm_id=102, status="active"),
            Project(id=30, company_id=3, name="TPS reports", status="active"),
        ])
    return db_engine


def _tick(db_url, instance, now, cursor, monkeypatch):
    from bg_ops.defs.billing import invoice_trigger_defs
    from bg_ops.resources.database import DatabaseResource

    monkeypatch.setattr(invoice_trigger_defs, "_now", lambda: now)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"database": DatabaseResource(url=db_url)})
    return invoice_trigger_defs.billable_project_sensor(ctx)


def _billing_tasks(engine):
    with engine.connect() as c:
        return c.execute(sa.select(Task.company_id, Task.project_id, Task.title, Task.assignee_id, Task.due_at,
                                   Task.status).where(Task.kind == "billing").order_by(Task.id)).all()


def _mails(engine):
    with engine.connect() as c:
        return c.execute(sa.select(q.c.company_id, q.c.to_addrs, q.c.subject).order_by(q.c.id)).all()


def test_two_billable_projects_three_ticks_and_a_retried_run_make_two_tasks_and_two_mails(
        world, db_url, mail_settings, tmp_path, monkeypatch):
    from bg_ops.defs.billing import invoice_trigger_defs

    requests = []
    # In memory: the same run machinery as instance_for_test, several times faster per run.
    instance = dg.DagsterInstance.ephemeral()
    with instance:
        instance.add_dynamic_partitions("tenants", ["acme", "globex", "initech"])
        first = _tick(db_url, instance, NOW, None, monkeypatch)
        assert [(r.partition_key, r.run_key) for r in first.run_requests] == [
            ("acme", f"billable|10|{FIRST.isoformat()}")]  # project 12 was billed long before the look-back
        assert first.run_requests[0].run_config == {"ops": {OP: {"config": {
            "project_id": 10, "billable_at": FIRST.isoformat()}}}}
        assert json.loads(first.cursor) == {"billable_at": FIRST.isoformat(), "id": 10}
        requests += first.run_requests

        with session_scope(world) as s:  # the platform marks the website billable
            s.execute(sa.update(Project).where(Project.id == 11).values(status="billable", billable_at=SECOND))
        second = _tick(db_url, instance, NOW + timedelta(minutes=5), first.cursor, monkeypatch)
        assert [(r.partition_key, r.run_key) for r in second.run_requests] == [
            ("acme", f"billable|11|{SECOND.isoformat()}")]
        requests += second.run_requests
        third = _tick(db_url, instance, NOW + timedelta(minutes=6), second.cursor, monkeypatch)
        assert isinstance(third, dg.SkipReason)

        # A tick whose cursor was lost re-requests both events under the same run keys.
        replay = _tick(db_url, instance, NOW + timedelta(minutes=6), None, monkeypatch)
        assert [r.run_key for r in replay.run_requests] == [r.run_key for r in requests]
        requests += replay.run_requests

        monkeypatch.setattr(invoice_trigger_defs, "_now", lambda: NOW + timedelta(minutes=7))
        # Every request is run (even the replayed ones Dagster would drop by run key), and the first
        # run is retried once more.
        for request in [*requests, requests[0]]:
            result = invoice_trigger_defs.billing_task_job.execute_in_process(
                instance=instance, partition_key=request.partition_key, run_config=request.run_config,
                resources=_resources(db_url, mail_settings, tmp_path))
            assert result.success

        # Globex's project named in Acme's partition: nothing happens (tenant scope).
        result = invoice_trigger_defs.billing_task_job.execute_in_process(
            instance=instance, partition_key="acme",
            run_config={"ops": {OP: {"config": {"project_id": 20, "billable_at": FIRST.isoformat()}}}},
            resources=_resources(db_url, mail_settings, tmp_path))
        assert result.success

    # Due 3 local days after creation (23 Nov in New York), at 17:00 EST = 22:00 UTC.
    due = datetime(2026, 11, 26, 22, 0, tzinfo=UTC)
    assert _billing_tasks(world) == [
        (1, 10, "Invoice: Brand refresh", 3, due, "open"),
        (1, 11, "Invoice: Website", 3, due, "open"),
    ]
    assert _mails(world) == [
        (1, ["fiona@acme.example"], "[Acme] Ready to invoice: Brand refresh"),
        (1, ["fiona@acme.example"], "[Acme] Ready to invoice: Website"),
    ]
    with world.connect() as c:
        triggers = c.execute(sa.select(billing_triggers.c.company_id, billing_triggers.c.project_id,
                                       billing_triggers.c.billable_at, billing_triggers.c.assignee_id)
                             .order_by(billing_triggers.c.id)).all()
        assert triggers == [(1, 10, FIRST, 3), (1, 11, SECOND, 3)]
        assert c.execute(sa.select(reminder_log.c.entity_id, reminder_log.c.recipient_id, reminder_log.c.period)
                         .where(reminder_log.c.rule == "billing_task_created")
                         .order_by(reminder_log.c.id)).all() == [(10, 3, FIRST.isoformat()), (11, 3, SECOND.isoformat())]
        assert c.execute(sa.select(sa.func.count()).select_from(notifications)
                         .where(notifications.c.user_id == 3)).scalar_one() == 2
        # The other tenants: no task, no mail, no trigger.
        assert c.execute(sa.select(sa.func.count()).select_from(Task).where(Task.company_id != 1)).scalar_one() == 0
    assert all(m.company_id == 1 for m in _mails(world))


def test_mail_says_who_is_assigned_and_when_it_is_due(world, mail_settings):
    with session_scope(world) as s:
        result = create_billing_task(s, get_tenant(s, "acme"), 10, FIRST, now=NOW, mail_settings=mail_settings)
    assert (result.created, result.assignee_id, result.notice.enqueued) == (True, 3, 1)
    [mail] = queued_mails(world)
    text = mail.body_text
    assert "became billable on 2026-11-23" in text and "Umbrella" in text
    assert "due 2026-11-26 17:00" in text and "You are assigned" in text


def test_without_an_active_finance_user_the_task_is_unassigned_and_admins_are_told(world, mail_settings):
    with session_scope(world) as s:
        s.execute(sa.update(Project).where(Project.id == 30).values(status="billable", billable_at=FIRST))
    for _ in range(2):
        with session_scope(world) as s:
            result = create_billing_task(s, get_tenant(s, "initech"), 30, FIRST, now=NOW,
                                         mail_settings=mail_settings)
    assert (result.created, result.notice.already_sent) == (False, 1)
    assert _billing_tasks(world) == [(3, 30, "Invoice: TPS reports", None,
                                      datetime(2026, 11, 26, 17, 0, tzinfo=UTC), "open")]
    mails = _mails(world)
    assert mails == [(3, ["ivan@initech.example"],
                      "[Initech] Ready to invoice: TPS reports (no finance user to assign)")]


def test_a_project_no_longer_billable_gets_no_task_and_billable_again_is_a_new_event(world, mail_settings):
    with session_scope(world) as s:  # back to active before the run
        s.execute(sa.update(Project).where(Project.id == 10).values(status="active"))
    with session_scope(world) as s:
        result = create_billing_task(s, get_tenant(s, "acme"), 10, FIRST, now=NOW, mail_settings=mail_settings)
    assert result.skipped and "no longer billable" in result.skipped
    assert _billing_tasks(world) == [] and _mails(world) == []

    later = NOW + timedelta(days=2)
    with session_scope(world) as s:
        s.execute(sa.update(Project).where(Project.id == 10).values(status="billable", billable_at=later))
    with session_scope(world) as s:
        acme = get_tenant(s, "acme")
        stale = create_billing_task(s, acme, 10, FIRST, now=later, mail_settings=mail_settings)
        fresh = create_billing_task(s, acme, 10, later, now=later, mail_settings=mail_settings)
    assert stale.skipped and fresh.created
    assert [t.project_id for t in _billing_tasks(world)] == [10]


def test_the_invoice_trigger_can_be_switched_off_per_tenant(world, mail_settings):
    with session_scope(world) as s:
        s.execute(sa.update(Company).where(Company.id == 1).values(settings={"billing": False}))
    with session_scope(world) as s:
        result = create_billing_task(s, get_tenant(s, "acme"), 10, FIRST, now=NOW, mail_settings=mail_settings)
    assert result.skipped == "switched off (tenant: billing)"
    assert _billing_tasks(world) == [] and _mails(world) == []


def test_billing_definitions_are_operator_ready():
    from bg_ops.defs.billing import invoice_trigger_defs

    sensor = invoice_trigger_defs.billable_project_sensor
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING and len(sensor.description) > 40
    job = invoice_trigger_defs.billing_task_job
    assert job.description and job.partitions_def.name == "tenants"
