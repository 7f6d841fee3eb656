"""Reminders: the right people, exactly once, at 08:00 local, in tenants on both sides of UTC."""

import threading
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import Approval, ApprovalStep, Company, Project, Task, User
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import email_queue as q
from bg_ops.db.own_schema import notifications, reminder_log, service_switches
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.reminders.engine import RuleContext, run_rule
from bg_ops.defs.reminders.rules import RULES_BY_NAME
from bg_ops.defs.tenants.logic import get_tenant, switched_off_services

DAY = date(2026, 11, 23)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ZONES = {"kiwi": "Pacific/Kiritimati", "aloha": "Pacific/Honolulu"}  # UTC+14 and UTC-10


def local(slug: str, d: date, hh: int = 0, mm: int = 0) -> datetime:
    return datetime.combine(d, time(hh, mm), tzinfo=ZoneInfo(ZONES[slug])).astimezone(UTC)


@pytest.fixture
def mail_settings(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    return MailSettings(mail_from="bg_ops <no-reply@bg-ops.example>", files_root=root)


@pytest.fixture
def world(db_engine):
    """Two tenants with the same shape of data; ids are offset by 1000 for the second."""
    with session_scope(db_engine) as s:
        for n, slug in enumerate(ZONES):
            cid, base = n + 1, n * 1000
            s.add(Company(id=cid, name=slug.title(), slug=slug, timezone=ZONES[slug]))
            s.flush()
            s.add_all([
                User(id=base + 1, company_id=cid, email=f"pm@{slug}.example", full_name="Pat PM", role="pm"),
                User(id=base + 2, company_id=cid, email=f"approver@{slug}.example", full_name="Ana Approver", role="approver"),
                User(id=base + 3, company_id=cid, email=f"gone@{slug}.example", full_name="Gone", role="approver", is_active=False),
                User(id=base + 4, company_id=cid, email=f"dev@{slug}.example", full_name="Dev", role="designer",
                     timezone="Europe/Berlin"),
                User(id=base + 5, company_id=cid, email=f"later@{slug}.example", full_name="Lou Later", role="approver"),
            ])
            s.flush()
            s.add(Project(id=base + 10, company_id=cid, name=f"{slug} brand", pm_id=base + 1, status="active"))
            s.flush()
            # Approvals: just overdue (due in the last minute of yesterday, local) / due at local midnight today.
            for aid, due, stage_created in [
                (base + 100, local(slug, DAY - timedelta(days=1), 23, 59), local(slug, DAY - timedelta(days=3))),
                (base + 101, local(slug, DAY), local(slug, DAY - timedelta(days=2), 23, 59)),
            ]:
                s.add(Approval(id=aid, company_id=cid, project_id=base + 10, title=f"Proof {aid}", status="in_review",
                               due_at=due, current_stage=1, created_at=stage_created))
                s.flush()
                s.add_all([
                    ApprovalStep(approval_id=aid, stage=1, approver_id=base + 2, status="pending"),
                    ApprovalStep(approval_id=aid, stage=1, approver_id=base + 3, status="pending"),  # inactive
                    ApprovalStep(approval_id=aid, stage=2, approver_id=base + 5, status="pending"),  # later stage
                ])
            # A completed approval long overdue: never reminded.
            s.add(Approval(id=base + 102, company_id=cid, project_id=base + 10, title="Done", status="completed",
                           due_at=local(slug, DAY - timedelta(days=9)), current_stage=1))
            # Tasks around the "due within 2 days" edge, local dates.
            for tid, due, status, assignee in [
                (base + 200, local(slug, DAY + timedelta(days=2), 23, 59), "open", base + 4),      # D+2: due soon
                (base + 201, local(slug, DAY + timedelta(days=3)), "open", base + 4),              # D+3: not yet
                (base + 202, local(slug, DAY - timedelta(days=1), 23, 0), "in_progress", base + 4),  # overdue
                (base + 203, local(slug, DAY), "done", base + 4),                                 # done: never
                (base + 204, local(slug, DAY), "open", base + 3),                                 # inactive assignee
            ]:
                s.add(Task(id=tid, company_id=cid, project_id=base + 10, title=f"Task {tid}", due_at=due,
                           status=status, assignee_id=assignee))
    return db_engine


def run(engine, slug, rule, mail_settings, day=DAY, dry_run=False):
    with session_scope(engine) as s:
        tenant = get_tenant(s, slug)
        return run_rule(s, RULES_BY_NAME[rule], RuleContext(tenant=tenant, day=day, now=NOW),
                        mail_settings=mail_settings, globally_off=switched_off_services(s), dry_run=dry_run)


def queued(engine):
    with engine.connect() as c:
        return c.execute(sa.select(q.c.company_id, q.c.to_addrs, q.c.subject, q.c.send_after).order_by(q.c.id)).all()


def test_approval_overdue_reaches_current_approvers_and_pm_only(world, mail_settings):
    result = run(world, "kiwi", "approval_overdue", mail_settings)
    assert (result.found, result.enqueued) == (2, 2)
    mails = queued(world)
    assert sorted(m.to_addrs[0] for m in mails) == ["approver@kiwi.example", "pm@kiwi.example"]
    assert {m.company_id for m in mails} == {1}
    assert all("Proof 100" in m.subject for m in mails)  # not 101 (due today), not the completed one


def test_a_pm_who_is_also_the_approver_hears_once_as_the_approver(world, mail_settings):
    """The same person found twice (PM of the project and approver of the stage): one mail, and
    always the approver's (the first row of a key counts, rows ordered by role), whatever order
    the database returns the union in."""
    with session_scope(world) as s:
        s.add(ApprovalStep(approval_id=100, stage=1, approver_id=1, status="pending"))  # the PM approves too
    result = run(world, "kiwi", "approval_overdue", mail_settings)
    assert (result.found, result.enqueued) == (2, 2)
    with world.connect() as c:
        rows = c.execute(sa.select(q.c.to_addrs, q.c.context).where(q.c.company_id == 1)).all()
    roles = {r.to_addrs[0]: r.context["role"] for r in rows}
    assert roles == {"pm@kiwi.example": "approver", "approver@kiwi.example": "approver"}
    assert queued_for(world, 2) == []  # the other tenant: nothing


def queued_for(engine, company_id):
    with engine.connect() as c:
        return c.execute(sa.select(q.c.id).where(q.c.company_id == company_id)).all()


def test_task_due_uses_local_calendar_days(world, mail_settings):
    for slug in ZONES:
        run(world, slug, "task_due", mail_settings)
    subjects = sorted((m.company_id, m.subject) for m in queued(world))
    assert subjects == [
        (1, "[Kiwi] Task 1 day(s) overdue: Task 202"),
        (1, "[Kiwi] Task due in 2 day(s): Task 200"),
        (2, "[Aloha] Task 1 day(s) overdue: Task 1202"),
        (2, "[Aloha] Task due in 2 day(s): Task 1200"),
    ]


def test_items_of_a_suspended_project_are_not_reminded_in_either_tenant(world, mail_settings):
    """Client suspension (O7) sets projects.status = 'suspended': its approvals and tasks get no
    reminder while the same items of an active project do, and items without a project still do."""
    overdue = DAY - timedelta(days=2)
    with session_scope(world) as s:
        for cid, base, slug, status in [(1, 0, "kiwi", "suspended"), (2, 1000, "aloha", "active"),
                                        (2, 2000, "aloha", "suspended")]:
            s.add(Project(id=base + 11, company_id=cid, name=f"{slug} {status}", pm_id=(cid - 1) * 1000 + 1,
                          status=status))
            s.flush()
            s.add(Approval(id=base + 110, company_id=cid, project_id=base + 11, title=f"Proof {base + 110}",
                           status="in_review", due_at=local(slug, overdue), current_stage=1,
                           created_at=local(slug, overdue - timedelta(days=5))))
            s.flush()
            s.add(ApprovalStep(approval_id=base + 110, stage=1, approver_id=(cid - 1) * 1000 + 2, status="pending"))
            s.add(Task(id=base + 210, company_id=cid, project_id=base + 11, title=f"Task {base + 210}",
                       due_at=local(slug, overdue), status="open", assignee_id=(cid - 1) * 1000 + 4))
        for cid, base, slug in [(1, 0, "kiwi"), (2, 1000, "aloha")]:
            s.add(Task(id=base + 211, company_id=cid, project_id=None, title=f"Task {base + 211}",
                       due_at=local(slug, overdue), status="open", assignee_id=base + 4))

    def reminded(rule):
        with world.connect() as c:
            return sorted(c.execute(sa.select(reminder_log.c.company_id, reminder_log.c.entity_id)
                                    .where(reminder_log.c.rule == rule).distinct()).all())

    for slug in ZONES:
        for rule in ("approval_overdue", "approval_stalled", "task_due"):
            run(world, slug, rule, mail_settings)
    # kiwi's project 11 and aloha's project 2011 are suspended; aloha's 1011 is active.
    assert reminded("approval_overdue") == [(1, 100), (2, 1100), (2, 1110)]
    assert reminded("approval_stalled") == [(1, 100), (2, 1100), (2, 1110)]
    assert reminded("task_due") == [(1, 200), (1, 202), (1, 211), (2, 1200), (2, 1202), (2, 1210), (2, 1211)]
    titles = {m.subject.rsplit(": ", 1)[-1] for m in queued(world)}
    assert titles.isdisjoint({"Proof 110", "Task 210", "Proof 2110", "Task 2210"})
    assert {"Proof 1110", "Task 1210", "Task 211", "Task 1211"} <= titles
    # Reinstated: kiwi's items are reminded again, aloha's suspended project still is not.
    with session_scope(world) as s:
        s.execute(sa.update(Project).where(Project.id == 11).values(status="active"))
    for rule in ("approval_overdue", "task_due"):
        run(world, "kiwi", rule, mail_settings)
        run(world, "aloha", rule, mail_settings)
    assert reminded("approval_overdue") == [(1, 100), (1, 110), (2, 1100), (2, 1110)]
    assert (1, 210) in reminded("task_due") and (2, 2210) not in reminded("task_due")
    assert (2, 2110) not in reminded("approval_overdue")


def test_approval_stalled_after_three_local_days(world, mail_settings):
    result = run(world, "aloha", "approval_stalled", mail_settings)
    # 1100 has waited since 3 local days ago (stalled), 1101 since 2 days ago 23:59 (not yet).
    assert [m.subject for m in queued(world)] == ["[Aloha] Waiting for your approval: Proof 1100"]
    assert result.found == 1
    with session_scope(world) as s:
        s.execute(sa.update(Company).where(Company.id == 2).values(settings={"reminders.approval_stalled.days": 2}))
    run(world, "aloha", "approval_stalled", mail_settings)
    assert len(queued(world)) == 2  # the threshold is a tenant setting


def test_mail_is_timed_for_eight_local_in_the_recipients_zone(world, mail_settings):
    run(world, "kiwi", "task_due", mail_settings)
    run(world, "kiwi", "approval_overdue", mail_settings)
    by_addr = {m.to_addrs[0]: m.send_after for m in queued(world)}
    berlin = datetime.combine(DAY, time(8), tzinfo=ZoneInfo("Europe/Berlin")).astimezone(UTC)
    assert by_addr["dev@kiwi.example"] == berlin  # the user's own zone
    assert by_addr["pm@kiwi.example"] == local("kiwi", DAY, 8)  # falls back to the tenant's


def test_running_again_and_concurrently_sends_nothing_twice(world, mail_settings, db_url):
    first = run(world, "kiwi", "approval_overdue", mail_settings)
    again = run(world, "kiwi", "approval_overdue", mail_settings)
    assert (first.enqueued, again.enqueued, again.already_sent) == (2, 0, 2)

    errors = []

    def worker():
        try:
            run(world, "aloha", "task_due", mail_settings)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    aloha = [m for m in queued(world) if m.company_id == 2]
    assert len(aloha) == 2
    with world.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(reminder_log)).scalar_one() == 4
        assert c.execute(sa.select(sa.func.count()).select_from(notifications)).scalar_one() == 4


def test_next_day_reminds_again_but_a_backfilled_day_does_not(world, mail_settings):
    run(world, "kiwi", "task_due", mail_settings)
    run(world, "kiwi", "task_due", mail_settings, day=DAY + timedelta(days=1))
    run(world, "kiwi", "task_due", mail_settings, day=DAY)  # backfill of a day already run
    assert len(queued(world)) == 2 + 3  # next day: 200 (D+1), 201 (now D+2), 202 (overdue)


def test_switched_off_per_tenant_and_globally(world, mail_settings):
    with session_scope(world) as s:
        s.execute(sa.update(Company).where(Company.id == 1).values(settings={"reminders.task_due": False}))
    assert run(world, "kiwi", "task_due", mail_settings).switched_off == "tenant: reminders.task_due"
    assert run(world, "aloha", "task_due", mail_settings).enqueued == 2
    with world.begin() as c:
        c.execute(sa.insert(service_switches).values(service="reminders", enabled=False))
    assert run(world, "aloha", "approval_overdue", mail_settings).switched_off == "global: reminders"
    assert [m.company_id for m in queued(world)] == [2, 2]


def test_dry_run_lists_without_enqueueing(world, mail_settings):
    result = run(world, "kiwi", "approval_overdue", mail_settings, dry_run=True)
    assert sorted(p["recipient"] for p in result.preview) == ["approver@kiwi.example", "pm@kiwi.example"]
    assert queued(world) == []
    with world.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(reminder_log)).scalar_one() == 0


def test_awkward_text_and_addresses_reach_queue_and_notifications_exactly(world, mail_settings):
    """Tabs, newlines, backslashes, quotes and non-Latin letters in titles, names and addresses
    come through the bulk write (COPY on PostgreSQL) unchanged."""
    from bg_ops.defs.email.message import message_id_for

    awkward = "tab\there, new\nline, back\\slash, \\N, quote \" ' ✓ Zoë 東京"
    address = '"Dev, \\Q" <dev@kiwi.example>'
    with session_scope(world) as s:
        s.execute(sa.update(Task).where(Task.id == 200).values(title=awkward))
        s.execute(sa.update(User).where(User.id == 4).values(full_name="Dev\t\"Zoë\"", email=address))
    assert run(world, "kiwi", "task_due", mail_settings).enqueued == 2
    with world.connect() as c:
        mails = c.execute(sa.select(q.c.to_addrs, q.c.context, q.c.subject, q.c.idempotency_key,
                                    q.c.message_id)).all()
        notes = c.execute(sa.select(notifications.c.title, notifications.c.body)).all()
    # The key and Message-ID (built by the server on PostgreSQL) are the ones enqueue would make.
    assert sorted(m.idempotency_key for m in mails) == [f"reminder:1:task_due:{t}:4:{DAY.isoformat()}"
                                                        for t in (200, 202)]
    assert all(m.message_id == message_id_for(m.idempotency_key, mail_settings.mail_from) for m in mails)
    mail = next(m for m in mails if m.context["title"] == awkward)
    assert mail.to_addrs == [address] and mail.context["recipient_name"] == "Dev\t\"Zoë\""
    assert mail.subject == "[Kiwi] Task due in 2 day(s): " + " ".join(awkward.split())
    assert (f"Task due in 2 day(s): {awkward}", None) not in notes  # the summary is the due date
    assert any(n.title == f"Task due in 2 day(s): {awkward}" and n.body.startswith("due ") for n in notes)


def test_a_bad_address_fails_the_rule_naming_the_user_unless_it_was_reminded_before(world, mail_settings):
    from bg_ops.defs.email.enqueue import EnqueueError

    run(world, "kiwi", "approval_overdue", mail_settings)  # the approver (2) and the PM (1)
    with session_scope(world) as s:
        s.execute(sa.update(User).where(User.id == 2).values(email="ana approver at kiwi"))
    again = run(world, "kiwi", "approval_overdue", mail_settings)  # sent before: nothing to fix today
    assert (again.enqueued, again.already_sent) == (0, 2)
    with pytest.raises(EnqueueError, match="for user 2 of tenant kiwi: .*fix users.email of user 2") as caught:
        run(world, "kiwi", "approval_overdue", mail_settings, day=DAY + timedelta(days=1))
    assert "ana approver" not in str(caught.value)  # the message names the user, not the address
    with world.connect() as c:  # nothing of the failed day was written, not even the PM's reminder
        assert c.execute(sa.select(sa.func.count()).select_from(reminder_log)).scalar_one() == 2
        assert c.execute(sa.select(sa.func.count()).select_from(notifications)).scalar_one() == 2
    assert len(queued(world)) == 2


def test_a_mail_queued_before_under_the_reminders_key_is_not_queued_again(world, mail_settings):
    """A reminder whose log row is gone but whose mail is still queued (same idempotency key):
    the log points at that mail and no second one is queued."""
    key = f"reminder:1:approval_overdue:100:1:{DAY.isoformat()}"
    with world.begin() as c:
        c.execute(sa.insert(q).values(company_id=1, to_addrs=["pm@kiwi.example"], subject="earlier", body_text="x",
                                      idempotency_key=key, status="sent"))
    result = run(world, "kiwi", "approval_overdue", mail_settings)
    assert (result.found, result.enqueued) == (2, 1)
    with world.connect() as c:
        mail_ids = dict(c.execute(sa.select(q.c.idempotency_key, q.c.id)).all())
        logged = dict(c.execute(sa.select(reminder_log.c.recipient_id, reminder_log.c.email_id)).all())
    assert len(mail_ids) == 2 and logged[1] == mail_ids[key]
    assert set(logged.values()) == set(mail_ids.values())


def test_digest_gathers_a_persons_reminders_into_one_mail(world, mail_settings):
    from bg_ops.defs.reminders.engine import send_digests

    with session_scope(world) as s:
        s.execute(sa.update(Company).where(Company.id == 1).values(settings={"digest": True}))
        s.add(Task(id=250, company_id=1, project_id=10, title="Extra", status="open", assignee_id=1,
                   due_at=local("kiwi", DAY, 12)))
    run(world, "kiwi", "approval_overdue", mail_settings)
    run(world, "kiwi", "task_due", mail_settings)
    assert queued(world) == []
    with world.connect() as c:  # each reminder keeps its own subject for the digest's lines
        subjects = c.execute(sa.select(reminder_log.c.recipient_id, reminder_log.c.subject)
                             .order_by(reminder_log.c.recipient_id, reminder_log.c.subject)).all()
    assert subjects == [(1, "[Kiwi] Approval overdue: Proof 100"), (1, "[Kiwi] Task due today: Extra"),
                        (2, "[Kiwi] Approval overdue: Proof 100"), (4, "[Kiwi] Task 1 day(s) overdue: Task 202"),
                        (4, "[Kiwi] Task due in 2 day(s): Task 200")]
    with session_scope(world) as s:
        tenant = get_tenant(s, "kiwi")
        assert send_digests(s, RuleContext(tenant=tenant, day=DAY, now=NOW), mail_settings=mail_settings) == 3
        assert send_digests(s, RuleContext(tenant=tenant, day=DAY, now=NOW), mail_settings=mail_settings) == 0
    mails = {m.to_addrs[0]: m.subject for m in queued(world)}
    assert mails == {
        "approver@kiwi.example": "[Kiwi] Your reminders for 2026-11-23 (1)",
        "pm@kiwi.example": "[Kiwi] Your reminders for 2026-11-23 (2)",
        "dev@kiwi.example": "[Kiwi] Your reminders for 2026-11-23 (2)",
    }


# -- the Dagster job ---------------------------------------------------------------------------


def _resources(db_url, mail_settings, tmp_path):
    from bg_ops.resources.database import DatabaseResource
    from bg_ops.resources.files import FilesResource
    from bg_ops.resources.mail import OutboxMailResource

    return {"database": DatabaseResource(url=db_url), "files": FilesResource(root=str(mail_settings.files_root)),
            "mail": OutboxMailResource(outbox_dir=str(tmp_path / "outbox"))}


def test_job_runs_one_tenant_day_and_a_failing_rule_fails_alone(world, mail_settings, db_url, tmp_path, monkeypatch):
    from bg_ops.defs.reminders import defs as reminder_defs

    key = dg.MultiPartitionKey({"date": DAY.isoformat(), "tenant": "kiwi"})
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", list(ZONES))
        # A broken template: the task reminder uses a variable no rule provides.
        import shutil

        from bg_ops.defs.email import rendering

        broken = tmp_path / "templates"
        shutil.copytree(rendering.TEMPLATES_DIR, broken)
        (broken / "reminder_task_due.txt").write_text("{{ no_such_variable }}")
        monkeypatch.setattr(rendering, "TEMPLATES_DIR", broken)
        rendering._environments.cache_clear()
        result = reminder_defs.daily_reminders_job.execute_in_process(
            instance=instance, partition_key=key, resources=_resources(db_url, mail_settings, tmp_path),
            raise_on_error=False,
        )
        assert not result.success
        failed = {e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"}
        assert failed == {"remind_task_due"}
        succeeded = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
        assert {"remind_approval_overdue", "remind_approval_stalled"} <= succeeded
        rendering._environments.cache_clear()
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert "no_such_variable" in failure.event_specific_data.error.message
    assert {m.company_id for m in queued(world)} == {1}
    assert len(queued(world)) == 3  # overdue (approver, PM) and stalled (approver) went out
    with world.connect() as c:  # the failed rule left nothing behind: a retry starts clean
        assert c.execute(sa.select(sa.func.count()).where(reminder_log.c.rule == "task_due")).scalar_one() == 0


def test_schedule_requests_today_for_each_tenant_in_its_own_zone(world, db_url):
    from bg_ops.defs.reminders.defs import daily_reminders_schedule
    from bg_ops.resources.database import DatabaseResource

    # 2026-11-23 11:05 UTC is already 24 Nov in Kiritimati (UTC+14), still 23 Nov in Honolulu.
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", list(ZONES))
        with dg.build_schedule_context(instance=instance, resources={"database": DatabaseResource(url=db_url)},
                                       scheduled_execution_time=datetime(2026, 11, 23, 11, 5, tzinfo=UTC)) as ctx:
            requests = daily_reminders_schedule(ctx)
    keys = sorted((r.partition_key.keys_by_dimension["tenant"], r.partition_key.keys_by_dimension["date"]) for r in requests)
    assert keys == [("aloha", "2026-11-23"), ("kiwi", "2026-11-24")]
    assert sorted(r.run_key for r in requests) == ["reminders|2026-11-23|aloha", "reminders|2026-11-24|kiwi"]


def test_a_tenant_already_in_tomorrow_gets_a_partition_that_exists(world, db_url):
    """Late in the UTC day, kiwi (UTC+14) is on UTC's tomorrow: the tick's request must name a
    partition Dagster knows (it failed as an unknown partition until UTC midnight)."""
    from bg_ops.defs.reminders.defs import daily_reminders_schedule, reminder_partitions
    from bg_ops.resources.database import DatabaseResource

    tick = datetime.now(UTC).replace(hour=23, minute=5, second=0, microsecond=0)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", list(ZONES))
        with dg.build_schedule_context(instance=instance, resources={"database": DatabaseResource(url=db_url)},
                                       scheduled_execution_time=tick) as ctx:
            requests = daily_reminders_schedule(ctx)
        keys = sorted((r.partition_key.keys_by_dimension["tenant"], r.partition_key.keys_by_dimension["date"])
                      for r in requests)
        assert keys == [("aloha", tick.date().isoformat()), ("kiwi", (tick.date() + timedelta(days=1)).isoformat())]
        for when in (tick, datetime.now(UTC)):  # at the tick, and whenever the daemon gets to it
            with dg.partition_loading_context(effective_dt=when, dynamic_partitions_store=instance):
                assert all(reminder_partitions.has_partition_key(r.partition_key) for r in requests), when


def test_a_week_backfilled_over_days_already_run_sends_each_reminder_once(world, mail_settings):
    from bg_ops.defs.reminders.rules import ALL_RULES

    week = [DAY - timedelta(days=n) for n in range(6, -1, -1)]
    # What a clean run of each day would send, taken as a dry run before anything is sent.
    expected = set()
    for day in week:
        for rule in ALL_RULES:
            for item in run(world, "kiwi", rule.name, mail_settings, day=day, dry_run=True).preview:
                expected.add((rule.name, item["entity_id"], item["recipient"], item["period"]))
    assert expected  # the world has reminders on these days

    for day in (week[1], week[4]):  # two days already ran before the outage was noticed
        for rule in ALL_RULES:
            run(world, "kiwi", rule.name, mail_settings, day=day)
    for _ in range(2):  # the backfill, and an operator launching it a second time
        for day in week:
            for rule in ALL_RULES:
                run(world, "kiwi", rule.name, mail_settings, day=day)
    mails = queued(world)
    assert len(mails) == len(expected)
    assert {m.company_id for m in mails} == {1}
    with world.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(reminder_log)).scalar_one() == len(expected)
