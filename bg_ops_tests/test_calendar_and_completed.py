"""R12 calendar reminders (one-off and recurring, at most once, cleanup, sensor) and R3 approval completed."""

import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import (
    Approval,
    ApprovalStep,
    CalendarEvent,
    CalendarEventAttendee,
    Company,
    Project,
    User,
)
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import email_queue as q
from bg_ops.db.own_schema import notifications, reminder_log
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.reminders.calendar import calendar_reminders_due, cleanup_expired_events, send_calendar_reminders
from bg_ops.defs.reminders.completed import notify_approval_completed
from bg_ops.defs.tenants.logic import get_tenant

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY = date(2026, 11, 23)
T = datetime(2026, 11, 23, 9, 45, tzinfo=UTC)  # the one-off kickoff's reminder time


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


def queued(engine):
    with engine.connect() as c:
        return c.execute(sa.select(q.c.company_id, q.c.to_addrs, q.c.subject, q.c.send_after).order_by(q.c.id)).all()


@pytest.fixture
def people(db_engine):
    with session_scope(db_engine) as s:
        s.add_all([Company(id=1, name="Berlin", slug="berlin", timezone="Europe/Berlin"),
                   Company(id=2, name="Aloha", slug="aloha", timezone="Pacific/Honolulu")])
        s.flush()
        s.add_all([
            User(id=1, company_id=1, email="olga@berlin.example", full_name="Olga Organizer", role="pm"),
            User(id=2, company_id=1, email="ann@berlin.example", full_name="Ann Attendee", role="employee"),
            User(id=3, company_id=1, email="gone@berlin.example", full_name="Gone", role="approver", is_active=False),
            User(id=4, company_id=1, email="nyc@berlin.example", full_name="Nia NYC", role="approver",
                 timezone="America/New_York"),
            User(id=5, company_id=1, email="skip@berlin.example", full_name="Sam Skipped", role="approver"),
            User(id=1001, company_id=2, email="kai@aloha.example", full_name="Kai", role="pm"),
        ])
    return db_engine


# -- R12 calendar ------------------------------------------------------------------------------


@pytest.fixture
def calendar(people):
    with session_scope(people) as s:
        s.add_all([
            CalendarEvent(id=10, company_id=1, title="Kickoff", starts_at=datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
                          ends_at=datetime(2026, 11, 23, 11, 0, tzinfo=UTC), remind_minutes_before=15, organizer_id=1),
            # Every Monday 09:00 Berlin from 19 Oct (CEST): 07:00 UTC then, 08:00 UTC after 25 Oct.
            CalendarEvent(id=11, company_id=1, title="Standup", starts_at=datetime(2026, 10, 19, 9, 0, tzinfo=BERLIN),
                          ends_at=datetime(2026, 10, 19, 9, 15, tzinfo=BERLIN), rrule="FREQ=WEEKLY;BYDAY=MO",
                          remind_minutes_before=10, organizer_id=1),
            CalendarEvent(id=12, company_id=1, title="Old review", starts_at=T - timedelta(days=3),
                          ends_at=T - timedelta(days=2), remind_minutes_before=15, organizer_id=1),
            CalendarEvent(id=13, company_id=1, title="Yesterday's lunch", starts_at=T - timedelta(hours=13),
                          ends_at=T - timedelta(hours=12), remind_minutes_before=15, organizer_id=1),
            CalendarEvent(id=14, company_id=1, title="Old series", starts_at=T - timedelta(days=300),
                          ends_at=T - timedelta(days=300, hours=-1), rrule="FREQ=MONTHLY", remind_minutes_before=15,
                          organizer_id=1),
            CalendarEvent(id=20, company_id=2, title="Aloha sync", starts_at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
                          remind_minutes_before=30, organizer_id=1001),
            CalendarEvent(id=21, company_id=2, title="Aloha old", starts_at=T - timedelta(days=5),
                          ends_at=T - timedelta(days=5), organizer_id=1001),
        ])
        s.flush()
        s.add_all([CalendarEventAttendee(event_id=10, user_id=u) for u in (1, 2, 3, 4, 1001)]
                  + [CalendarEventAttendee(event_id=11, user_id=2), CalendarEventAttendee(event_id=12, user_id=2),
                     CalendarEventAttendee(event_id=21, user_id=1001)])
    return people


def due(engine, now, slug="berlin", window=5):
    with session_scope(engine) as s:
        return calendar_reminders_due(s, get_tenant(s, slug), now, window)


def send(engine, now, mail_settings, slug="berlin", window=5):
    with session_scope(engine) as s:
        return send_calendar_reminders(s, get_tenant(s, slug), now, mail_settings=mail_settings, window_minutes=window)


def test_one_off_event_reminds_organizer_and_active_attendees_of_the_tenant(calendar):
    found = due(calendar, T)
    # Olga (organizer, also listed as attendee: once), Ann, Nia; not the inactive attendee nor Kai of Aloha.
    assert sorted((d.entity_id, d.recipient_id, d.context["role"]) for d in found) == [
        (10, 1, "organizer"), (10, 2, "attendee"), (10, 4, "attendee")]
    assert {d.period for d in found} == {"2026-11-23T10:00:00+00:00"}
    # The window is (now - 5 min, now]: 09:45 is in it from 09:45:00 to 09:49:59.
    assert due(calendar, T - timedelta(seconds=1)) == []
    assert len(due(calendar, T + timedelta(minutes=4, seconds=59))) == 3
    assert due(calendar, T + timedelta(minutes=5)) == []


def test_reminders_are_queued_at_once_and_only_once(calendar, mail_settings):
    first = send(calendar, T + timedelta(minutes=1), mail_settings)
    assert (first.found, first.enqueued) == (3, 3)
    again = send(calendar, T + timedelta(minutes=3), mail_settings)  # overlapping window
    assert (again.enqueued, again.already_sent) == (0, 3)
    mails = queued(calendar)
    assert {m.send_after for m in mails} == {T + timedelta(minutes=1)}
    by_addr = {m.to_addrs[0]: m.subject for m in mails}
    assert by_addr == {
        "olga@berlin.example": "[Berlin] Starting at 2026-11-23 11:00: Kickoff",
        "ann@berlin.example": "[Berlin] Starting at 2026-11-23 11:00: Kickoff",
        "nyc@berlin.example": "[Berlin] Starting at 2026-11-23 05:00: Kickoff",  # her own zone
    }
    with calendar.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(notifications)).scalar_one() == 3
        assert c.execute(sa.select(sa.func.count()).select_from(reminder_log)
                         .where(reminder_log.c.rule == "calendar_event")).scalar_one() == 3


def test_weekly_event_each_occurrence_at_local_time_once(calendar, mail_settings):
    # 19 Oct: 09:00 CEST = 07:00 UTC, reminder 06:50 UTC; 23 Nov: 09:00 CET = 08:00 UTC, reminder 07:50.
    october = datetime(2026, 10, 19, 6, 50, tzinfo=UTC)
    november = datetime(2026, 11, 23, 7, 50, tzinfo=UTC)
    assert {(d.entity_id, d.period) for d in due(calendar, october)} == {(11, "2026-10-19T07:00:00+00:00")}
    assert due(calendar, november - timedelta(hours=1)) == []  # an hour early: the DST shift is honoured
    assert sorted(d.recipient_id for d in due(calendar, november)) == [1, 2]
    assert send(calendar, november, mail_settings).enqueued == 2
    assert send(calendar, november + timedelta(minutes=2), mail_settings).enqueued == 0
    assert send(calendar, november + timedelta(weeks=1), mail_settings).enqueued == 2  # next occurrence
    subjects = [m.subject for m in queued(calendar)]
    assert subjects.count("[Berlin] Starting at 2026-11-23 09:00: Standup") == 2
    assert subjects.count("[Berlin] Starting at 2026-11-30 09:00: Standup") == 2


def test_cleanup_deletes_one_off_events_ended_over_a_day_ago(calendar):
    with session_scope(calendar) as s:
        assert cleanup_expired_events(s, get_tenant(s, "berlin"), T) == 1
    with calendar.connect() as c:
        ids = set(c.execute(sa.select(CalendarEvent.id)).scalars())
        attendees = set(c.execute(sa.select(CalendarEventAttendee.event_id)).scalars())
    assert ids == {10, 11, 13, 14, 20, 21}  # 12 gone; recurring 14 and Aloha's 21 kept
    assert 12 not in attendees and 21 in attendees
    with session_scope(calendar) as s:
        assert cleanup_expired_events(s, get_tenant(s, "berlin"), T) == 0


def _sensor_tick(db_url, instance, now, cursor, monkeypatch):
    from bg_ops.defs.reminders import calendar_defs
    from bg_ops.resources.database import DatabaseResource

    monkeypatch.setattr(calendar_defs, "_now", lambda: now)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"database": DatabaseResource(url=db_url)})
    return calendar_defs.calendar_reminder_sensor(ctx)


def test_calendar_sensor_requests_only_tenants_with_a_reminder_in_the_window(calendar, db_url, monkeypatch,
                                                                           mail_settings, tmp_path):
    with session_scope(calendar) as s:
        s.execute(sa.delete(CalendarEventAttendee).where(CalendarEventAttendee.event_id.in_((12, 21))))
        s.execute(sa.delete(CalendarEvent).where(CalendarEvent.id.in_((12, 21))))  # nothing to clean yet
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", ["berlin"])
        first = _sensor_tick(db_url, instance, T + timedelta(minutes=2), None, monkeypatch)
        assert isinstance(first, dg.SensorResult)
        assert [(r.partition_key, r.run_key) for r in first.run_requests] == [
            ("berlin", "calendar|berlin|2026-11-23T09:42:00+00:00")]
        assert first.run_requests[0].run_config == {"ops": {"send_calendar_reminders": {"config": {
            "window_start": "2026-11-23T09:42:00+00:00", "window_end": "2026-11-23T09:47:00+00:00"}}}}
        assert first.cursor == "2026-11-23T09:47:00+00:00"
        # The next tick looks at (09:47, 09:48] only: the kickoff is not requested again.
        second = _sensor_tick(db_url, instance, T + timedelta(minutes=3), first.cursor, monkeypatch)
        assert second.run_requests == [] and second.cursor == "2026-11-23T09:48:00+00:00"
        # Aloha's 11:30 reminder: Aloha has no partition yet, so the sensor adds it with the request.
        aloha = _sensor_tick(db_url, instance, datetime(2026, 11, 23, 11, 31, tzinfo=UTC),
                             "2026-11-23T11:29:30+00:00", monkeypatch)
        assert [(r.partition_key, r.run_key) for r in aloha.run_requests] == [
            ("aloha", "calendar|aloha|2026-11-23T11:29:30+00:00")]
        assert [list(r.partition_keys) for r in aloha.dynamic_partitions_requests] == [["aloha"]]

        # The requested run, starting a minute after the tick, sends the kickoff's reminders at once.
        from bg_ops.defs.reminders import calendar_defs

        monkeypatch.setattr(calendar_defs, "_now", lambda: T + timedelta(minutes=3))
        result = calendar_defs.calendar_reminders_job.execute_in_process(
            instance=instance, partition_key="berlin", run_config=first.run_requests[0].run_config,
            resources=_resources(db_url, mail_settings, tmp_path))
        assert result.success
    assert sorted(m.to_addrs[0] for m in queued(calendar)) == [
        "ann@berlin.example", "nyc@berlin.example", "olga@berlin.example"]
    assert {m.send_after for m in queued(calendar)} == {T + timedelta(minutes=3)}


def test_calendar_sensor_requests_a_daily_cleanup_and_skips_quiet_tenants(calendar, db_url, monkeypatch):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", ["berlin", "aloha"])
        quiet = T + timedelta(minutes=30)  # nothing due at 10:15
        tick = _sensor_tick(db_url, instance, quiet, (quiet - timedelta(minutes=1)).isoformat(), monkeypatch)
        assert sorted(r.run_key for r in tick.run_requests) == [
            "calendar-cleanup|aloha|2026-11-23",  # 00:15 in Honolulu: its date too
            "calendar-cleanup|berlin|2026-11-23",
        ]
        assert all(r.run_config == {"ops": {"send_calendar_reminders": {"config": {}}}} for r in tick.run_requests)
        with session_scope(calendar) as s:
            for slug in ("berlin", "aloha"):
                cleanup_expired_events(s, get_tenant(s, slug), quiet)
        tick = _sensor_tick(db_url, instance, quiet + timedelta(minutes=1), tick.cursor, monkeypatch)
        assert tick.run_requests == [] and tick.skip_reason is not None


def test_calendar_definitions_are_operator_ready():
    from bg_ops.defs.reminders import calendar_defs

    sensor = calendar_defs.calendar_reminder_sensor
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 60 and len(sensor.description) > 40
    job = calendar_defs.calendar_reminders_job
    assert job.description and job.partitions_def.name == "tenants"


# -- R3 approval completed ---------------------------------------------------------------------

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DONE = NOW - timedelta(minutes=10)


@pytest.fixture
def approvals(people):
    with session_scope(people) as s:
        s.add_all([Project(id=10, company_id=1, name="Brand", pm_id=1, status="active"),
                   Project(id=20, company_id=2, name="Aloha site", pm_id=1001, status="active")])
        s.flush()
        for aid, cid, pid, status, completed in [
            (100, 1, 10, "completed", DONE),
            (101, 1, 10, "completed", DONE + timedelta(seconds=1)),
            (102, 1, 10, "in_review", None),
            (103, 1, 10, "completed", NOW - timedelta(seconds=5)),  # not settled yet
            (104, 2, 20, "completed", DONE + timedelta(seconds=2)),
            (105, 1, 10, "completed", DONE - timedelta(days=3)),  # before the sensor's first look-back
        ]:
            s.add(Approval(id=aid, company_id=cid, project_id=pid, title=f"Proof {aid}", status=status,
                           current_stage=2, completed_at=completed, created_at=DONE - timedelta(days=5)))
        s.flush()
        s.add_all([
            ApprovalStep(approval_id=100, stage=1, approver_id=2, status="approved", responded_at=DONE - timedelta(days=1)),
            ApprovalStep(approval_id=100, stage=2, approver_id=4, status="approved", responded_at=DONE),
            ApprovalStep(approval_id=100, stage=2, approver_id=5, status="skipped"),  # did not take part
            ApprovalStep(approval_id=100, stage=1, approver_id=3, status="approved", responded_at=DONE),  # inactive
            ApprovalStep(approval_id=100, stage=1, approver_id=1, status="approved", responded_at=DONE),  # also the PM
            ApprovalStep(approval_id=104, stage=1, approver_id=1001, status="approved", responded_at=DONE),
        ])
    return people


def _completed_tick(db_url, instance, now, cursor, monkeypatch):
    from bg_ops.defs.reminders import completed_defs
    from bg_ops.resources.database import DatabaseResource

    monkeypatch.setattr(completed_defs, "_now", lambda: now)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"database": DatabaseResource(url=db_url)})
    return completed_defs.approval_completed_sensor(ctx)


def test_completed_sensor_advances_its_cursor_and_never_requests_twice(approvals, db_url, monkeypatch):
    seen = []
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", ["berlin"])
        first = _completed_tick(db_url, instance, NOW, None, monkeypatch)
        seen += [(r.partition_key, r.run_config["ops"]["notify_approval_completed"]["config"]["approval_id"])
                 for r in first.run_requests]
        assert seen == [("berlin", 100), ("berlin", 101), ("aloha", 104)]  # oldest first; 105 predates the look-back
        assert first.run_requests[0].run_key == f"approval-completed|100|{DONE.isoformat()}"
        assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [["aloha"]]
        assert json.loads(first.cursor) == {"completed_at": (DONE + timedelta(seconds=2)).isoformat(), "id": 104}

        again = _completed_tick(db_url, instance, NOW, first.cursor, monkeypatch)
        assert isinstance(again, dg.SkipReason)  # nothing new: 103 is not settled yet

        # Another approval completed at the very same instant as the cursor, with a higher id.
        with session_scope(approvals) as s:
            s.add(Approval(id=106, company_id=1, project_id=10, title="Proof 106", status="completed",
                           completed_at=DONE + timedelta(seconds=2)))
        later = _completed_tick(db_url, instance, NOW + timedelta(minutes=1), first.cursor, monkeypatch)
        ids = [r.run_config["ops"]["notify_approval_completed"]["config"]["approval_id"] for r in later.run_requests]
        assert ids == [106, 103]
        seen += [(r.partition_key, i) for r, i in zip(later.run_requests, ids, strict=True)]
        last = _completed_tick(db_url, instance, NOW + timedelta(minutes=2), later.cursor, monkeypatch)
        assert isinstance(last, dg.SkipReason)
    assert len({i for _, i in seen}) == len(seen) == 5


def test_completed_job_mails_pm_and_approvers_who_took_part_once(approvals, db_url, mail_settings, tmp_path):
    from bg_ops.defs.reminders import completed_defs

    config = {"ops": {"notify_approval_completed": {"config": {"approval_id": 100}}}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", ["berlin", "aloha"])
        for _ in range(2):  # a re-run sends nothing more
            result = completed_defs.approval_completed_job.execute_in_process(
                instance=instance, partition_key="berlin", run_config=config,
                resources=_resources(db_url, mail_settings, tmp_path))
            assert result.success
        # The approval of another tenant, asked for in Berlin's partition: nothing.
        result = completed_defs.approval_completed_job.execute_in_process(
            instance=instance, partition_key="berlin",
            run_config={"ops": {"notify_approval_completed": {"config": {"approval_id": 104}}}},
            resources=_resources(db_url, mail_settings, tmp_path))
        assert result.success
    mails = queued(approvals)
    # Olga (PM, also an approver: once), Ann and Nia approved; Sam skipped, Gone is inactive.
    assert sorted(m.to_addrs[0] for m in mails) == ["ann@berlin.example", "nyc@berlin.example", "olga@berlin.example"]
    assert {m.subject for m in mails} == {"[Berlin] Approval completed: Proof 100"}
    with approvals.connect() as c:
        periods = set(c.execute(sa.select(reminder_log.c.period).where(reminder_log.c.rule == "approval_completed"))
                      .scalars())
    assert periods == {DONE.isoformat()}


def test_completed_notice_is_per_completion(approvals, mail_settings):
    with session_scope(approvals) as s:
        tenant = get_tenant(s, "berlin")
        assert notify_approval_completed(s, tenant, 100, now=NOW, mail_settings=mail_settings).enqueued == 3
        assert notify_approval_completed(s, tenant, 100, now=NOW, mail_settings=mail_settings).enqueued == 0
        assert notify_approval_completed(s, tenant, 102, now=NOW, mail_settings=mail_settings).found == 0  # in review
    with session_scope(approvals) as s:  # reopened and completed again later: a new announcement
        s.execute(sa.update(Approval).where(Approval.id == 100).values(completed_at=NOW))
    with session_scope(approvals) as s:
        result = notify_approval_completed(s, get_tenant(s, "berlin"), 100, now=NOW, mail_settings=mail_settings)
    assert result.enqueued == 3
    assert {m.send_after for m in queued(approvals)} == {NOW}


def test_completed_definitions_are_operator_ready():
    from bg_ops.defs.reminders import completed_defs

    sensor = completed_defs.approval_completed_sensor
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING and len(sensor.description) > 40
    assert completed_defs.approval_completed_job.partitions_def.name == "tenants"
