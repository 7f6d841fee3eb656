"""R13 recurring tasks: one task per occurrence, at local wall time across DST, exactly once."""

import threading
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import Company, Project, Task, TaskTemplate, User
from bg_ops.db.engine import session_scope
from bg_ops.defs.reminders.recurrence import RecurrenceError, normalize_rule, occurrences
from bg_ops.defs.reminders.recurring import generate_recurring_tasks
from bg_ops.defs.tenants.logic import get_tenant

BERLIN = ZoneInfo("Europe/Berlin")
# Berlin leaves summer time on Sunday 2026-10-25: 09:00 local is 07:00 UTC before, 08:00 UTC after.
DTSTART = datetime(2026, 10, 12, 9, 0, tzinfo=BERLIN)
NOW = datetime(2026, 10, 18, 12, 0, tzinfo=UTC)


@pytest.fixture
def world(db_engine):
    with session_scope(db_engine) as s:
        s.add_all([Company(id=1, name="Berlin", slug="berlin", timezone="Europe/Berlin"),
                   Company(id=2, name="Tokyo", slug="tokyo", timezone="Asia/Tokyo")])
        s.flush()
        s.add_all([
            User(id=1, company_id=1, email="ops@berlin.example", full_name="Olga Ops", role="employee"),
            User(id=2, company_id=1, email="gone@berlin.example", full_name="Gone", role="employee", is_active=False),
            User(id=11, company_id=2, email="ops@tokyo.example", full_name="Taro", role="employee"),
        ])
        s.flush()
        s.add_all([Project(id=10, company_id=1, name="Facilities", pm_id=1, status="active"),
                   Project(id=20, company_id=2, name="Tokyo office", pm_id=11, status="active")])
        s.flush()
        s.add_all([
            TaskTemplate(id=100, company_id=1, project_id=10, title="Weekly safety check", rrule="FREQ=WEEKLY;BYDAY=MO",
                         dtstart=DTSTART, assignee_id=1),
            TaskTemplate(id=101, company_id=1, project_id=10, title="Retired routine", rrule="FREQ=DAILY",
                         dtstart=DTSTART, assignee_id=1, is_active=False),
            TaskTemplate(id=102, company_id=1, project_id=None, title="Gone's monthly", rrule="RRULE:FREQ=MONTHLY;BYMONTHDAY=20",
                         dtstart=DTSTART, assignee_id=2),  # inactive assignee: the task is unassigned
            TaskTemplate(id=200, company_id=2, project_id=20, title="Tokyo daily", rrule="FREQ=DAILY",
                         dtstart=datetime(2026, 10, 1, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo")), assignee_id=11),
        ])
    return db_engine


def generate(engine, now=NOW, days=7, slug="berlin", errors=None):
    with session_scope(engine) as s:
        return generate_recurring_tasks(s, get_tenant(s, slug), now, lookahead_days=days, errors=errors)


def tasks(engine, template_id=None):
    with engine.connect() as c:
        stmt = sa.select(Task.__table__).order_by(Task.__table__.c.occurrence_at)
        if template_id is not None:
            stmt = stmt.where(Task.__table__.c.template_id == template_id)
        return c.execute(stmt).all()


def test_weekly_monday_stays_at_nine_local_across_the_end_of_dst(world):
    assert generate(world, days=21) == 3 + 1  # three Mondays, and the 20th of the month for template 102
    weekly = tasks(world, 100)
    assert [t.occurrence_at for t in weekly] == [
        datetime(2026, 10, 19, 7, 0, tzinfo=UTC),  # 09:00 CEST (UTC+2)
        datetime(2026, 10, 26, 8, 0, tzinfo=UTC),  # 09:00 CET (UTC+1)
        datetime(2026, 11, 2, 8, 0, tzinfo=UTC),
    ]
    assert {t.occurrence_at.astimezone(BERLIN).strftime("%a %H:%M") for t in weekly} == {"Mon 09:00"}
    first = weekly[0]
    assert (first.company_id, first.project_id, first.title, first.assignee_id, first.status, first.kind,
            first.due_at) == (1, 10, "Weekly safety check", 1, "open", "work", first.occurrence_at)
    monthly = tasks(world, 102)
    assert [(t.occurrence_at, t.assignee_id, t.project_id) for t in monthly] == [
        (datetime(2026, 10, 20, 7, 0, tzinfo=UTC), None, None)]


def test_repeated_and_sliding_runs_never_duplicate(world):
    assert generate(world) == 2  # Monday 19 Oct, and the 20th
    assert generate(world) == 0
    for day in range(25):  # a daily run for 25 days, each looking 7 days ahead
        generate(world, now=NOW + timedelta(days=day))
    weekly = tasks(world, 100)
    mondays = [t.occurrence_at.astimezone(BERLIN) for t in weekly]
    assert [d.date() for d in mondays] == [date(2026, 10, 19) + timedelta(weeks=w) for w in range(5)]
    assert len({t.occurrence_at for t in weekly}) == len(weekly)
    with world.connect() as c:
        count = c.execute(sa.select(sa.func.count()).select_from(Task.__table__).where(Task.template_id == 100))
        assert count.scalar_one() == 5


def test_concurrent_runs_never_duplicate(world):
    errors, results = [], []

    def worker():
        try:
            results.append(generate(world, days=28))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(tasks(world, 100)) == 4 and len(tasks(world, 102)) == 1
    assert sum(results) == 5  # each occurrence inserted by exactly one run


def test_inactive_templates_and_other_tenants_are_untouched(world):
    generate(world, days=21)
    assert tasks(world, 101) == []  # inactive
    assert tasks(world, 200) == []  # Tokyo's template: not in Berlin's run
    assert {t.company_id for t in tasks(world)} == {1}
    assert generate(world, slug="tokyo", days=2) == 2  # 19 and 20 Oct at 09:00 Tokyo (00:00 UTC)
    assert [t.occurrence_at for t in tasks(world, 200)] == [
        datetime(2026, 10, 19, 0, 0, tzinfo=UTC), datetime(2026, 10, 20, 0, 0, tzinfo=UTC)]
    assert len(tasks(world, 100)) == 3  # Berlin's untouched by Tokyo's run


def test_templates_of_a_suspended_project_generate_nothing_until_reinstated(world):
    with session_scope(world) as s:
        s.execute(sa.update(Project).where(Project.id == 10).values(status="suspended"))  # client suspension (O7)
    assert generate(world, days=21) == 1  # only template 102, which has no project
    assert tasks(world, 100) == [] and len(tasks(world, 102)) == 1
    # Tokyo's active project is untouched by Berlin's suspension.
    assert generate(world, slug="tokyo", days=2) == 2 and len(tasks(world, 200)) == 2
    with session_scope(world) as s:
        s.execute(sa.update(Project).where(Project.id == 10).values(status="active"))  # reinstated
    assert generate(world, days=21) == 3 and len(tasks(world, 100)) == 3


def test_a_bad_rule_is_skipped_and_reported_without_blocking_the_others(world):
    with session_scope(world) as s:
        s.add(TaskTemplate(id=103, company_id=1, title="Broken", rrule="FREQ=SOMETIMES", dtstart=DTSTART))
    errors: list[str] = []
    assert generate(world, errors=errors) == 2
    assert len(errors) == 1 and "template 103" in errors[0] and "FREQ=SOMETIMES" in errors[0]


def test_rule_text_forms():
    assert normalize_rule("RRULE:FREQ=WEEKLY;BYDAY=MO", BERLIN) == "FREQ=WEEKLY;BYDAY=MO"
    assert normalize_rule("DTSTART:20200101T000000\nRRULE:FREQ=DAILY", BERLIN) == "FREQ=DAILY"
    # A floating UNTIL is local wall time; a date UNTIL includes that whole local day.
    assert normalize_rule("FREQ=DAILY;UNTIL=20261026T090000", BERLIN) == "FREQ=DAILY;UNTIL=20261026T080000Z"
    assert normalize_rule("FREQ=DAILY;UNTIL=20261026", BERLIN) == "FREQ=DAILY;UNTIL=20261026T225959Z"
    found = occurrences("FREQ=WEEKLY;BYDAY=MO;UNTIL=20261026", DTSTART, BERLIN, NOW, NOW + timedelta(days=30))
    assert found == [datetime(2026, 10, 19, 7, tzinfo=UTC), datetime(2026, 10, 26, 8, tzinfo=UTC)]
    with pytest.raises(RecurrenceError):
        normalize_rule("", BERLIN)


# -- the op in the daily reminders job ---------------------------------------------------------


def test_daily_job_generates_before_reminding_task_due(world, db_url, tmp_path, monkeypatch):
    from bg_ops.defs.reminders import defs as reminder_defs
    from bg_ops.defs.reminders import recurring
    from bg_ops.db.own_schema import email_queue
    from bg_ops.resources.database import DatabaseResource
    from bg_ops.resources.files import FilesResource
    from bg_ops.resources.mail import OutboxMailResource

    run_at = datetime(2026, 10, 19, 4, 0, tzinfo=UTC)  # 06:00 in Berlin on Monday 19 October
    monkeypatch.setattr(recurring, "_now", lambda: run_at)
    monkeypatch.setattr(reminder_defs, "_now", lambda: run_at)
    (tmp_path / "files").mkdir()
    resources = {"database": DatabaseResource(url=db_url), "files": FilesResource(root=str(tmp_path / "files")),
                 "mail": OutboxMailResource(outbox_dir=str(tmp_path / "outbox"))}
    key = dg.MultiPartitionKey({"date": "2026-10-19", "tenant": "berlin"})
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", ["berlin", "tokyo"])
        result = reminder_defs.daily_reminders_job.execute_in_process(
            instance=instance, partition_key=key, resources=resources)
    assert result.success
    order = [e.step_key for e in result.all_events if e.event_type_value in ("STEP_START", "STEP_SUCCESS")]
    assert order.index("generate_recurring_tasks") < order.index("remind_task_due")
    done = next(e for e in result.all_events
                if e.event_type_value == "STEP_SUCCESS" and e.step_key == "generate_recurring_tasks")
    assert done is not None
    # From local midnight of the 19th, 7 days ahead: Monday 19th and the 20th.
    assert [t.template_id for t in tasks(world)] == [100, 102]
    with world.connect() as c:
        subjects = c.execute(sa.select(email_queue.c.subject)).scalars().all()
    assert subjects == ["[Berlin] Task due today: Weekly safety check"]  # the instance made this run
