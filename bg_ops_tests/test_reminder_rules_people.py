"""R10 birthdays and work anniversaries, R11 document expiry: the right people, once, at 08:00 local."""

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import Company, Document, User
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import email_queue as q
from bg_ops.db.own_schema import notifications, reminder_log
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.reminders.engine import RuleContext, run_rule
from bg_ops.defs.reminders.rules import ALL_RULES, RULES_BY_NAME
from bg_ops.defs.reminders.rules.people import celebrated_month_days
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
    """Two tenants, same people; ids offset by 1000 for the second. Birthdays on 23 November."""
    with session_scope(db_engine) as s:
        for n, slug in enumerate(ZONES):
            cid, b = n + 1, n * 1000
            s.add(Company(id=cid, name=slug.title(), slug=slug, timezone=ZONES[slug]))
            s.flush()
            s.add_all([
                User(id=b + 1, company_id=cid, email=f"hr@{slug}.example", full_name="Hana HR", role="hr"),
                User(id=b + 2, company_id=cid, email=f"boss@{slug}.example", full_name="Bo Boss", role="pm"),
                User(id=b + 4, company_id=cid, email=f"oldhr@{slug}.example", full_name="Old HR", role="hr",
                     is_active=False),
                User(id=b + 8, company_id=cid, email=f"admin@{slug}.example", full_name="Ada Admin", role="admin"),
                User(id=b + 11, company_id=cid, email=f"oldadmin@{slug}.example", full_name="Old Admin",
                     role="admin", is_active=False),
            ])
            s.flush()
            s.add_all([
                User(id=b + 3, company_id=cid, email=f"ann@{slug}.example", full_name=f"Ann {slug}", role="employee",
                     manager_id=b + 2, birth_date=date(1990, 11, 23), hire_date=date(2020, 11, 23)),
                User(id=b + 5, company_id=cid, email=f"gone@{slug}.example", full_name="Gone", role="employee",
                     manager_id=b + 2, birth_date=date(1985, 11, 23), hire_date=date(2019, 11, 23), is_active=False),
                User(id=b + 6, company_id=cid, email=f"newbie@{slug}.example", full_name="Nell New", role="employee",
                     manager_id=b + 2, birth_date=date(1999, 1, 1), hire_date=DAY),  # hired today: 0 years
                User(id=b + 7, company_id=cid, email=f"hr2@{slug}.example", full_name="Hal HR", role="hr",
                     manager_id=b + 2, birth_date=date(1992, 11, 23)),  # an HR person's own birthday
                User(id=b + 9, company_id=cid, email=f"leap@{slug}.example", full_name="Lea Leap", role="employee",
                     birth_date=date(2000, 2, 29), hire_date=date(2024, 2, 29)),
                User(id=b + 12, company_id=cid, email=f"yesterday@{slug}.example", full_name="Yan", role="employee",
                     manager_id=b + 2, birth_date=date(1990, 11, 22), hire_date=date(2021, 11, 24)),
            ])
    return db_engine


def run(engine, slug, rule, mail_settings, day=DAY, dry_run=False):
    with session_scope(engine) as s:
        tenant = get_tenant(s, slug)
        return run_rule(s, RULES_BY_NAME[rule], RuleContext(tenant=tenant, day=day, now=NOW),
                        mail_settings=mail_settings, globally_off=switched_off_services(s), dry_run=dry_run)


def queued(engine):
    with engine.connect() as c:
        return c.execute(sa.select(q.c.company_id, q.c.to_addrs, q.c.subject, q.c.send_after).order_by(q.c.id)).all()


def sent_pairs(engine, rule):
    with engine.connect() as c:
        return sorted(
            (r.entity_id, r.recipient_id, r.period)
            for r in c.execute(sa.select(reminder_log).where(reminder_log.c.rule == rule))
        )


def test_new_rules_are_registered():
    names = [r.name for r in ALL_RULES]
    assert {"birthdays", "work_anniversaries", "document_expiry"} <= set(names)
    assert len(names) == len(set(names))


def test_feb_29_is_celebrated_on_the_28th_in_common_years():
    assert celebrated_month_days(date(2027, 2, 28)) == ["02-28", "02-29"]
    assert celebrated_month_days(date(2028, 2, 28)) == ["02-28"]
    assert celebrated_month_days(date(2028, 2, 29)) == ["02-29"]
    assert celebrated_month_days(date(2027, 3, 1)) == ["03-01"]


# -- R10 ---------------------------------------------------------------------------------------


def test_birthday_tells_hr_and_manager_never_the_person_nor_inactive_people(world, mail_settings):
    result = run(world, "kiwi", "birthdays", mail_settings)
    # Ann (3): HR 1, HR 7 and her manager 2. Hal (7, an HR person): HR 1 and manager 2, not himself.
    # Gone (5) is inactive: not celebrated; Old HR (4) is inactive: never told; Yan's was yesterday.
    assert sent_pairs(world, "birthdays") == [
        (3, 1, "2026"), (3, 2, "2026"), (3, 7, "2026"), (7, 1, "2026"), (7, 2, "2026"),
    ]
    assert (result.found, result.enqueued) == (5, 5)
    mails = queued(world)
    assert {m.company_id for m in mails} == {1}
    assert sorted((m.to_addrs[0], m.subject) for m in mails) == [
        ("boss@kiwi.example", "[Kiwi] Birthday today: Ann kiwi"),
        ("boss@kiwi.example", "[Kiwi] Birthday today: Hal HR"),
        ("hr2@kiwi.example", "[Kiwi] Birthday today: Ann kiwi"),
        ("hr@kiwi.example", "[Kiwi] Birthday today: Ann kiwi"),
        ("hr@kiwi.example", "[Kiwi] Birthday today: Hal HR"),
    ]


@pytest.mark.parametrize("slug", ["kiwi", "aloha"])
def test_birthday_mail_is_due_at_eight_local_in_each_tenant(world, mail_settings, slug):
    run(world, slug, "birthdays", mail_settings)
    mails = queued(world)
    assert mails and {m.send_after for m in mails} == {local(slug, DAY, 8)}
    expected = {"kiwi": datetime(2026, 11, 22, 18, 0, tzinfo=UTC),   # 08:00 at UTC+14, the day before in UTC
                "aloha": datetime(2026, 11, 23, 18, 0, tzinfo=UTC)}  # 08:00 at UTC-10
    assert mails[0].send_after == expected[slug]


def test_birthday_runs_on_the_tenants_local_day(world, mail_settings):
    # At 2026-11-22 20:00 UTC it is already 23 Nov in Kiritimati but 22 Nov in Honolulu: the daily
    # job runs kiwi for the 23rd (Ann's birthday) and aloha for the 22nd (Yan's birthday).
    run(world, "kiwi", "birthdays", mail_settings, day=DAY)
    run(world, "aloha", "birthdays", mail_settings, day=DAY - timedelta(days=1))
    by_tenant = sorted({(m.company_id, m.subject) for m in queued(world)})
    assert by_tenant == [
        (1, "[Kiwi] Birthday today: Ann kiwi"), (1, "[Kiwi] Birthday today: Hal HR"),
        (2, "[Aloha] Birthday today: Yan"),
    ]
    yan = [m for m in queued(world) if m.company_id == 2]
    assert {m.send_after for m in yan} == {local("aloha", DAY - timedelta(days=1), 8)}


def test_birthday_once_a_year(world, mail_settings):
    assert run(world, "kiwi", "birthdays", mail_settings).enqueued == 5
    again = run(world, "kiwi", "birthdays", mail_settings)
    assert (again.enqueued, again.already_sent) == (0, 5)
    next_year = run(world, "kiwi", "birthdays", mail_settings, day=date(2027, 11, 23))
    assert next_year.enqueued == 5
    with world.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(notifications)).scalar_one() == 10


def test_leap_day_birthday(world, mail_settings):
    assert run(world, "kiwi", "birthdays", mail_settings, day=date(2027, 2, 28)).found == 2  # HR 1 and 7
    assert run(world, "kiwi", "birthdays", mail_settings, day=date(2028, 2, 28)).found == 0
    assert run(world, "kiwi", "birthdays", mail_settings, day=date(2028, 2, 29)).found == 2
    assert sent_pairs(world, "birthdays") == [(9, 1, "2027"), (9, 1, "2028"), (9, 7, "2027"), (9, 7, "2028")]


def test_work_anniversary_counts_whole_years_and_skips_new_hires(world, mail_settings):
    result = run(world, "aloha", "work_anniversaries", mail_settings)
    # Ann (1003), hired 2020-11-23: 6 years. Nell hired today (0 years), Gone inactive, Yan tomorrow.
    assert sent_pairs(world, "work_anniversaries") == [(1003, 1001, "2026"), (1003, 1002, "2026"),
                                                       (1003, 1007, "2026")]
    assert result.enqueued == 3
    assert {m.subject for m in queued(world)} == {"[Aloha] Work anniversary: Ann aloha, 6 years"}
    assert {m.send_after for m in queued(world)} == {local("aloha", DAY, 8)}
    # The leap-day hire's first anniversary falls on 28 Feb 2025.
    assert run(world, "aloha", "work_anniversaries", mail_settings, day=date(2025, 2, 28)).found == 2
    assert run(world, "aloha", "work_anniversaries", mail_settings, day=date(2024, 2, 29)).found == 0


def test_manager_in_another_tenant_or_inactive_is_not_told(world, mail_settings):
    with session_scope(world) as s:
        s.execute(sa.update(User).where(User.id == 3).values(manager_id=1002))  # aloha's boss
        s.execute(sa.update(User).where(User.id == 7).values(manager_id=11))    # inactive admin
    run(world, "kiwi", "birthdays", mail_settings)
    assert sent_pairs(world, "birthdays") == [(3, 1, "2026"), (3, 7, "2026"), (7, 1, "2026")]


# -- R11 ---------------------------------------------------------------------------------------


@pytest.fixture
def documents(world):
    """Kiwi documents owned by Ann (3, manager 2), by expiry relative to DAY."""
    docs = [
        (100, 30, "valid"), (101, 7, "valid"), (102, 1, "valid"), (103, 0, "valid"),
        (104, 2, "valid"), (105, 29, "valid"), (106, 7, "renewed"), (107, 31, "valid"),
        (110, -1, "valid"), (111, -3, "expired"), (112, -5, "renewed"),
    ]
    with session_scope(world) as s:
        for doc_id, offset, status in docs:
            s.add(Document(id=doc_id, company_id=1, owner_id=3, title=f"Doc {doc_id}", kind="insurance",
                           expires_on=DAY + timedelta(days=offset), status=status))
        # Aloha's document expiring in 7 days: never in kiwi's run.
        s.add(Document(id=1100, company_id=2, owner_id=1003, title="Doc 1100", kind="contract",
                       expires_on=DAY + timedelta(days=7), status="valid"))
    return world


def test_document_alerts_owner_at_30_7_1_and_0_days(documents, mail_settings):
    result = run(documents, "kiwi", "document_expiry", mail_settings)
    owner = [(e, p) for e, r, p in sent_pairs(documents, "document_expiry") if r == 3]
    assert owner == [(100, "30d"), (101, "7d"), (102, "1d"), (103, "0d")]  # not 2, 29, 31 days, not renewed
    subjects = sorted(m.subject for m in queued(documents) if m.to_addrs == ["ann@kiwi.example"])
    assert subjects == [
        "[Kiwi] Document expires in 1 day(s): Doc 102",
        "[Kiwi] Document expires in 30 day(s): Doc 100",
        "[Kiwi] Document expires in 7 day(s): Doc 101",
        "[Kiwi] Document expires today: Doc 103",
    ]
    assert result.found == 4 + 4  # and two expired documents, each to the manager and the admin
    assert {m.send_after for m in queued(documents)} == {local("kiwi", DAY, 8)}
    assert {m.company_id for m in queued(documents)} == {1}


def test_expired_document_escalates_to_manager_and_admins_daily(documents, mail_settings):
    run(documents, "kiwi", "document_expiry", mail_settings)
    escalations = [(e, r, p) for e, r, p in sent_pairs(documents, "document_expiry") if not p.endswith("d")]
    # Not the owner (3), not the inactive admin (11), not the renewed document 112.
    assert escalations == [(110, 2, "2026-11-23"), (110, 8, "2026-11-23"), (111, 2, "2026-11-23"),
                           (111, 8, "2026-11-23")]
    subjects = sorted(m.subject for m in queued(documents) if m.to_addrs[0] in {"boss@kiwi.example",
                                                                                "admin@kiwi.example"})
    assert subjects == ["[Kiwi] Expired, not renewed: Doc 110"] * 2 + ["[Kiwi] Expired, not renewed: Doc 111"] * 2

    again = run(documents, "kiwi", "document_expiry", mail_settings)
    assert again.enqueued == 0  # once per stage and day
    tomorrow = run(documents, "kiwi", "document_expiry", mail_settings, day=DAY + timedelta(days=1))
    # Escalations of 110 and 111 again (4), 103 expired yesterday (2 more), and the owner's
    # 0d for 102, 1d for 104 and 30d for 107.
    assert tomorrow.enqueued == 4 + 2 + 3
    with session_scope(documents) as s:
        s.execute(sa.update(Document).where(Document.id.in_((103, 110, 111))).values(status="renewed"))
    later = run(documents, "kiwi", "document_expiry", mail_settings, day=DAY + timedelta(days=2))
    # Renewed documents stop escalating; 102 (expired on D+1) escalates, 104 expires today.
    assert (later.found, later.enqueued) == (3, 3)
    assert sorted((e, r, p) for e, r, p in sent_pairs(documents, "document_expiry") if p == "2026-11-25") == [
        (102, 2, "2026-11-25"), (102, 8, "2026-11-25"),
    ]

def test_document_switched_off_per_tenant(documents, mail_settings):
    with session_scope(documents) as s:
        s.execute(sa.update(Company).where(Company.id == 1).values(settings={"reminders.document_expiry": False}))
    assert run(documents, "kiwi", "document_expiry", mail_settings).switched_off == "tenant: reminders.document_expiry"
    assert queued(documents) == []
