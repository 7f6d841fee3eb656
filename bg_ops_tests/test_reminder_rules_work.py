"""R5-R9 and B2: translations, core requests, the design queue, POs and invoices.

Two tenants on both sides of UTC (Kiritimati UTC+14, Honolulu UTC-10) hold the same data
(ids offset by 1000 for the second), with items just inside and just outside every
threshold on tenant-local calendar days. Each test checks that exactly the right people get
exactly one mail, that inactive users and the other tenant's users never do, and that a
second run of the same day sends nothing new.
"""

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import sqlalchemy as sa


from bg_ops.db.app_schema import (
    Company,
    CoreRequest,
    DesignQueueItem,
    Invoice,
    Project,
    PurchaseOrder,
    Translation,
    User,
)
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import email_queue as q
from bg_ops.db.own_schema import notifications, reminder_log
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.reminders.engine import RuleContext, run_rule
from bg_ops.defs.reminders.rules import ALL_RULES, RULES_BY_NAME
from bg_ops.defs.reminders.rules.finance import po_period
from bg_ops.defs.tenants.logic import get_tenant, switched_off_services
from bg_ops_tests.support.mail_rows import queued_mails

# One of the last 3 days of October (so every rule of this file fires), and a day in the past
# so the job's date partition exists whatever the wall clock says.
DAY = date(2026, 10, 30)
NOW = datetime(2026, 10, 30, 12, 0, tzinfo=UTC)
ZONES = {"kiwi": "Pacific/Kiritimati", "aloha": "Pacific/Honolulu"}  # UTC+14 and UTC-10
BASES = {"kiwi": 0, "aloha": 1000}
CIDS = {"kiwi": 1, "aloha": 2}
MY_RULES = ("translation_due", "core_request_not_accepted", "core_request_ready", "design_queue", "po_expiring",
            "invoice_overdue")

# user number -> (local part, name, role, active)
USERS = {
    1: ("pm", "Pat PM", "pm", True),
    2: ("fin", "Fay Finance", "finance", True),
    3: ("fin-gone", "Gone Finance", "finance", False),
    4: ("tia", "Tia Translator", "translator", True),
    5: ("tom", "Tom Translator", "translator", True),
    6: ("tr-gone", "Gone Translator", "translator", False),
    7: ("amy", "Amy AM", "account_manager", True),
    8: ("abe", "Abe AM", "account_manager", True),
    9: ("am-gone", "Gone AM", "account_manager", False),
    10: ("ana", "Ana Approver", "approver", True),
    11: ("ap-gone", "Gone Approver", "approver", False),
    12: ("dee", "Dee Designer", "designer", True),
    13: ("dan", "Dan Designer", "designer", True),
    14: ("de-gone", "Gone Designer", "designer", False),
    15: ("eve", "Eve Employee", "employee", True),
    16: ("pm-gone", "Gone PM", "pm", False),
}


def local(slug: str, d: date, hh: int = 0, mm: int = 0) -> datetime:
    return datetime.combine(d, time(hh, mm), tzinfo=ZoneInfo(ZONES[slug])).astimezone(UTC)


def addr(slug: str, user: int) -> str:
    return f"{USERS[user][0]}@{slug}.example"


def days(n: int) -> timedelta:
    return timedelta(days=n)


@pytest.fixture
def mail_settings(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    return MailSettings(mail_from="bg_ops <no-reply@bg-ops.example>", files_root=root)


@pytest.fixture
def world(db_engine):
    with session_scope(db_engine) as s:
        for slug, base in BASES.items():
            s.add(Company(id=CIDS[slug], name=slug.title(), slug=slug, timezone=ZONES[slug]))
            s.flush()
            s.add_all([User(id=base + n, company_id=CIDS[slug], email=f"{local_part}@{slug}.example",
                            full_name=name, role=role, is_active=active)
                       for n, (local_part, name, role, active) in USERS.items()])
            s.flush()
        for slug, base in BASES.items():
            cid, other = CIDS[slug], 1000 - 2 * base  # base + other: the same id in the other tenant
            s.add_all([
                Project(id=base + 10, company_id=cid, name=f"{slug} brand", client_name="Client Co",
                        pm_id=base + 1, status="active"),
                Project(id=base + 11, company_id=cid, name=f"{slug} site", pm_id=base + 16, status="active"),  # PM left
                Project(id=base + 12, company_id=cid, name=f"{slug} books", pm_id=base + 2, status="active"),  # PM in finance
            ])
            s.flush()
            # R5 translations, due within 3 local days or overdue.
            s.add_all([
                Translation(id=base + 100, company_id=cid, project_id=base + 10, language="de", assignee_id=base + 15,
                            due_at=local(slug, DAY + days(3), 23, 59), status="open"),   # D+3: inside, assignee
                Translation(id=base + 101, company_id=cid, project_id=base + 10, language="fr", assignee_id=base + 15,
                            due_at=local(slug, DAY + days(4)), status="open"),           # D+4: outside
                Translation(id=base + 102, company_id=cid, project_id=base + 10, language="ja", assignee_id=None,
                            due_at=local(slug, DAY - days(1), 23, 59), status="open"),   # overdue, unassigned
                Translation(id=base + 103, company_id=cid, project_id=base + 10, language="es", assignee_id=base + 6,
                            due_at=local(slug, DAY), status="open"),                     # assignee left
                Translation(id=base + 104, company_id=cid, project_id=base + 10, language="it", assignee_id=base + 15,
                            due_at=local(slug, DAY), status="delivered"),                # done
                Translation(id=base + 105, company_id=cid, project_id=base + 10, language="pt",
                            assignee_id=base + 4 + other, due_at=local(slug, DAY + days(1)), status="open"),  # other tenant's
            ])
            # R6 / R7 core requests: not accepted after 2 local days; ready for approval.
            s.add_all([
                CoreRequest(id=base + 200, company_id=cid, project_id=base + 10, title=f"Core {base + 200}",
                            status="submitted", account_manager_id=base + 7,
                            submitted_at=local(slug, DAY - days(2), 23, 59)),            # D-2: inside
                CoreRequest(id=base + 201, company_id=cid, project_id=base + 10, title=f"Core {base + 201}",
                            status="submitted", account_manager_id=base + 7,
                            submitted_at=local(slug, DAY - days(1))),                    # D-1: outside
                CoreRequest(id=base + 202, company_id=cid, title=f"Core {base + 202}", status="submitted",
                            account_manager_id=None, submitted_at=local(slug, DAY - days(5))),      # nobody: all AMs
                CoreRequest(id=base + 203, company_id=cid, title=f"Core {base + 203}", status="submitted",
                            account_manager_id=base + 9, submitted_at=local(slug, DAY - days(5))),  # AM left
                CoreRequest(id=base + 204, company_id=cid, title=f"Core {base + 204}", status="submitted",
                            account_manager_id=base + 7, submitted_at=local(slug, DAY - days(5)),
                            accepted_at=local(slug, DAY - days(4))),                     # accepted already
                CoreRequest(id=base + 205, company_id=cid, title=f"Core {base + 205}", status="accepted",
                            account_manager_id=base + 7, submitted_at=local(slug, DAY - days(5)),
                            accepted_at=local(slug, DAY - days(4))),
                CoreRequest(id=base + 206, company_id=cid, project_id=base + 10, title=f"Core {base + 206}",
                            status="ready_for_approval", account_manager_id=base + 7,
                            submitted_at=local(slug, DAY - days(5)), updated_at=local(slug, DAY - days(1), 9)),
                CoreRequest(id=base + 207, company_id=cid, title=f"Core {base + 207}", status="approved",
                            account_manager_id=base + 7, submitted_at=local(slug, DAY - days(9))),
            ])
            # R8 design queue.
            s.add_all([
                DesignQueueItem(id=base + 300, company_id=cid, project_id=base + 10, title=f"Banner {base + 300}",
                                status="queued", queued_at=local(slug, DAY - days(6), 10)),
                DesignQueueItem(id=base + 301, company_id=cid, project_id=base + 11, title=f"Logo {base + 301}",
                                status="queued", queued_at=local(slug, DAY, 23, 59)),
                DesignQueueItem(id=base + 302, company_id=cid, project_id=base + 10, title=f"Flyer {base + 302}",
                                status="in_progress", queued_at=local(slug, DAY - days(2))),
                DesignQueueItem(id=base + 303, company_id=cid, project_id=base + 10, title=f"Poster {base + 303}",
                                status="done", queued_at=local(slug, DAY - days(9))),
                DesignQueueItem(id=base + 304, company_id=cid, project_id=base + 10, title=f"Later {base + 304}",
                                status="queued", queued_at=local(slug, DAY + days(1))),  # after the run day
            ])
            # R9 purchase orders (October 2026 has 31 days).
            for n, project, expires, status in [
                (400, 10, date(2026, 10, 31), "open"),     # last day of the month
                (401, 10, date(2026, 11, 1), "open"),      # next month
                (402, 10, date(2026, 10, 29), "open"),     # the first of the last 3 days
                (403, 10, date(2026, 10, 15), "open"),     # mid-month
                (404, 10, date(2026, 10, 31), "closed"),
                (405, 12, date(2026, 10, 30), "open"),     # the PM is a finance user: one mail
                (406, 11, date(2026, 10, 31), "open"),     # the PM left: finance only
            ]:
                s.add(PurchaseOrder(id=base + n, company_id=cid, project_id=base + project, number=f"PO-{base + n}",
                                    amount=Decimal("12500.50"), currency="EUR", expires_on=expires, status=status))
            # B2 invoices.
            for n, due, status in [(500, DAY - days(1), "sent"), (501, DAY, "sent"), (502, DAY - days(10), "paid"),
                                   (503, None, "draft"), (504, DAY - days(30), "sent"), (505, DAY - days(3), "void")]:
                s.add(Invoice(id=base + n, company_id=cid, project_id=base + 10, number=f"INV-{base + n}",
                              amount=Decimal("980.00"), currency="USD", issued_on=DAY - days(40), due_on=due,
                              status=status))
    return db_engine


def run(engine, slug, rule, mail_settings, day=DAY, dry_run=False):
    with session_scope(engine) as s:
        tenant = get_tenant(s, slug)
        return run_rule(s, RULES_BY_NAME[rule], RuleContext(tenant=tenant, day=day, now=NOW),
                        mail_settings=mail_settings, globally_off=switched_off_services(s), dry_run=dry_run)


def sent(engine, rule):
    """(company, entity, address, period) of every reminder of ``rule`` that queued a mail."""
    with engine.connect() as c:
        rows = c.execute(
            sa.select(reminder_log.c.company_id, reminder_log.c.entity_id, q.c.to_addrs, reminder_log.c.period)
            .join(q, q.c.id == reminder_log.c.email_id).where(reminder_log.c.rule == rule)
        ).all()
    return sorted((r.company_id, r.entity_id, r.to_addrs[0], r.period) for r in rows)


def mails(engine):
    """The queued mails with the bodies they will be sent with."""
    return queued_mails(engine)


def expect(pairs, period=DAY.isoformat()):
    """Both tenants: (entity number, user number) pairs -> the rows ``sent`` returns."""
    return sorted((CIDS[slug], BASES[slug] + e, addr(slug, u), period) for slug in ZONES for e, u in pairs)


def run_both(engine, rule, mail_settings, day=DAY):
    return [run(engine, slug, rule, mail_settings, day=day) for slug in ZONES]


def test_translation_due_assignee_or_every_active_translator(world, mail_settings):
    first = run(world, "kiwi", "translation_due", mail_settings)
    # Only kiwi so far: the other tenant is untouched.
    assert {m.company_id for m in mails(world)} == {1}
    second = run(world, "aloha", "translation_due", mail_settings)
    assert (first.found, first.enqueued, second.enqueued) == (7, 7, 7)
    assert sent(world, "translation_due") == expect([
        (100, 15),            # D+3 23:59 local: due in 3 days, its assignee only
        (102, 4), (102, 5),   # overdue and unassigned: the active translators
        (103, 4), (103, 5),   # its assignee left: the active translators
        (105, 4), (105, 5),   # "assigned" to the other tenant's translator: ours are told
    ])
    assert len(mails(world)) == 14  # one mail per reminder, nobody else
    subjects = {m.subject for m in mails(world) if m.company_id == 1}
    assert "[Kiwi] Translation due in 3 day(s): de for kiwi brand" in subjects
    assert "[Kiwi] Translation 1 day(s) overdue: ja for kiwi brand" in subjects
    # The same day again: nothing new.
    again = run_both(world, "translation_due", mail_settings)
    assert [(r.enqueued, r.already_sent) for r in again] == [(0, 7), (0, 7)]
    # The threshold is a tenant setting: 4 days takes in 101 (D+4) for kiwi only.
    with session_scope(world) as s:
        s.execute(sa.update(Company).where(Company.id == 1).values(settings={"reminders.translation_due.days": 4}))
    assert [r.enqueued for r in run_both(world, "translation_due", mail_settings)] == [1, 0]
    assert (1, 101, "eve@kiwi.example", DAY.isoformat()) in sent(world, "translation_due")


def test_core_request_not_accepted_after_two_local_days(world, mail_settings):
    results = run_both(world, "core_request_not_accepted", mail_settings)
    assert [(r.found, r.enqueued) for r in results] == [(5, 5), (5, 5)]
    assert sent(world, "core_request_not_accepted") == expect([
        (200, 7),             # submitted D-2 23:59 local: its account manager
        (202, 7), (202, 8),   # no account manager: every active one
        (203, 7), (203, 8),   # its account manager left: every active one
    ])  # not 201 (D-1), 204 (accepted_at set), 205 (accepted) nor 207
    subjects = {m.subject for m in mails(world) if m.company_id == 2}
    assert "[Aloha] Core request not accepted after 2 day(s): Core 1200" in subjects
    assert [r.enqueued for r in run_both(world, "core_request_not_accepted", mail_settings)] == [0, 0]
    # The next day 201 is due too (a new daily reminder for each of the others as well).
    nxt = run_both(world, "core_request_not_accepted", mail_settings, day=DAY + days(1))
    assert [r.enqueued for r in nxt] == [6, 6]
    # A tenant threshold of 5 days: only the requests submitted 5 days ago.
    with session_scope(world) as s:
        s.execute(sa.update(Company).where(Company.id == 2)
                  .values(settings={"reminders.core_request_not_accepted.days": 5}))
    assert run(world, "aloha", "core_request_not_accepted", mail_settings, dry_run=True).found == 4


def test_core_request_ready_tells_every_active_approver(world, mail_settings):
    results = run_both(world, "core_request_ready", mail_settings)
    assert [(r.found, r.enqueued) for r in results] == [(1, 1), (1, 1)]
    assert sent(world, "core_request_ready") == expect([(206, 10)])
    assert {m.subject for m in mails(world)} == {"[Kiwi] Core request ready for approval: Core 206",
                                                 "[Aloha] Core request ready for approval: Core 1206"}
    assert [r.enqueued for r in run_both(world, "core_request_ready", mail_settings)] == [0, 0]


def test_design_queue_one_digest_per_designer_listing_every_queued_item(world, mail_settings):
    results = run_both(world, "design_queue", mail_settings)
    assert [(r.found, r.enqueued) for r in results] == [(2, 2), (2, 2)]
    with world.connect() as c:
        logged = sorted(c.execute(sa.select(reminder_log.c.company_id, reminder_log.c.entity_id,
                                            reminder_log.c.recipient_id)).all())
    assert logged == [(1, 1, 12), (1, 1, 13), (2, 2, 1012), (2, 2, 1013)]  # entity: the tenant
    by_addr = {m.to_addrs[0]: m for m in mails(world)}
    assert sorted(by_addr) == ["dan@aloha.example", "dan@kiwi.example", "dee@aloha.example", "dee@kiwi.example"]
    for slug, base in BASES.items():
        mail = by_addr[f"dee@{slug}.example"]
        assert mail.subject == f"[{slug.title()}] Design queue: 2 item(s) waiting"
        for body in (mail.body_text, mail.body_html):
            assert f"Banner {base + 300}" in body and f"Logo {base + 301}" in body
            # in progress, done, queued after the run day, or the other tenant's: not listed
            assert all(f"{t} {b + n}" not in body for t, n in (("Flyer", 302), ("Poster", 303), ("Later", 304))
                       for b in BASES.values())
            assert f"Banner {1000 - base + 300}" not in body
        assert "the oldest for 6 day(s)" in mail.body_text
    with world.connect() as c:
        titles = c.execute(sa.select(notifications.c.title).where(notifications.c.kind == "design_queue")).scalars()
        assert set(titles) == {"Design queue: 2 item(s) waiting"}
    assert [r.enqueued for r in run_both(world, "design_queue", mail_settings)] == [0, 0]
    # A new day, a new digest (the item queued "later" is now listed too).
    assert [r.enqueued for r in run_both(world, "design_queue", mail_settings, day=DAY + days(1))] == [2, 2]
    assert "3 item(s)" in mails(world)[-1].subject


def test_po_expiring_on_the_first_and_the_last_three_days_once_per_period(world, mail_settings):
    assert po_period(date(2026, 10, 1)) == "2026-10"
    assert [po_period(date(2026, 10, d)) for d in (2, 15, 28, 29, 30, 31)] == [None] * 3 + ["2026-10-end"] * 3
    assert [po_period(date(2026, 11, d)) for d in (27, 28, 30)] == [None, "2026-11-end", "2026-11-end"]
    assert po_period(date(2028, 2, 27)) == "2028-02-end" and po_period(date(2028, 2, 26)) is None

    def on(d):
        return [(r.found, r.enqueued) for r in run_both(world, "po_expiring", mail_settings, day=d)]

    assert on(date(2026, 10, 15)) == [(0, 0), (0, 0)]  # mid-month: the rule does not run
    assert on(date(2026, 10, 28)) == [(0, 0), (0, 0)]  # not yet the last 3 days
    assert mails(world) == []
    # The 1st: every open PO expiring in October; finance (active only) and the PM.
    assert on(date(2026, 10, 1)) == [(8, 8), (8, 8)]
    assert sent(world, "po_expiring") == expect(
        [(400, 1), (400, 2), (402, 1), (402, 2), (403, 1), (403, 2), (405, 2), (406, 2)], period="2026-10")
    assert on(date(2026, 10, 1)) == [(8, 0), (8, 0)]   # the same day again: nothing new
    # The last 3 days: still open and not yet expired; one mail per PO and person for the period.
    assert on(date(2026, 10, 29)) == [(6, 6), (6, 6)]
    assert [s for s in sent(world, "po_expiring") if s[3] == "2026-10-end"] == expect(
        [(400, 1), (400, 2), (402, 1), (402, 2), (405, 2), (406, 2)], period="2026-10-end")
    assert on(date(2026, 10, 30)) == [(4, 0), (4, 0)]  # 400, 405, 406 again: already sent this period
    assert on(date(2026, 10, 31)) == [(3, 0), (3, 0)]
    assert len(mails(world)) == 2 * (8 + 6)
    # November 1st is a new period: 401 expires that day.
    assert on(date(2026, 11, 1)) == [(2, 2), (2, 2)]
    kiwi = {m.subject for m in mails(world) if m.company_id == 1}
    assert "[Kiwi] PO PO-401 expires today (2026-11-01)" in kiwi
    assert "[Kiwi] PO PO-400 expires in 30 day(s) (2026-10-31)" in kiwi
    assert any("12,500.50 EUR" in m.body_text for m in mails(world))


def test_invoice_overdue_tells_active_finance_daily(world, mail_settings):
    results = run_both(world, "invoice_overdue", mail_settings)
    assert [(r.found, r.enqueued) for r in results] == [(2, 2), (2, 2)]
    assert sent(world, "invoice_overdue") == expect([(500, 2), (504, 2)])  # not due today, paid, draft, void
    kiwi = {m.subject for m in mails(world) if m.company_id == 1}
    assert kiwi == {"[Kiwi] Invoice INV-500 overdue 1 day(s): Client Co",
                    "[Kiwi] Invoice INV-504 overdue 30 day(s): Client Co"}
    assert [r.enqueued for r in run_both(world, "invoice_overdue", mail_settings)] == [0, 0]
    assert [r.enqueued for r in run_both(world, "invoice_overdue", mail_settings, day=DAY + days(1))] == [3, 3]


def test_items_of_a_suspended_project_are_skipped_by_every_rule(world, mail_settings):
    """kiwi's project 10 is suspended (client suspension, O7): no rule reminds about its work
    items (overdue invoices excepted: finance still collects); items of its other projects or
    without a project still are; aloha (same data) is unaffected."""
    with session_scope(world) as s:
        s.execute(sa.update(Project).where(Project.id == 10).values(status="suspended"))
    expected = {  # rule: (kiwi found, aloha found)
        "translation_due": (0, 7),             # every translation is in project 10
        "core_request_not_accepted": (4, 5),   # 200 (project 10) skipped; 202 and 203 have no project
        "core_request_ready": (0, 1),          # 206 is in project 10
        "design_queue": (2, 2),                # both designers, but kiwi's digest lists only 301 (project 11)
        "po_expiring": (2, 4),                 # 400 (project 10) skipped; 405 and 406 remain
        "invoice_overdue": (2, 2),             # still chased: suspension stops the work, not the debt
    }
    for name, counts in expected.items():
        assert tuple(r.found for r in run_both(world, name, mail_settings)) == counts, name
    assert sent(world, "core_request_not_accepted")[:4] == [
        (1, 202, "abe@kiwi.example", DAY.isoformat()), (1, 202, "amy@kiwi.example", DAY.isoformat()),
        (1, 203, "abe@kiwi.example", DAY.isoformat()), (1, 203, "amy@kiwi.example", DAY.isoformat())]
    assert [s[1] for s in sent(world, "po_expiring") if s[0] == 1] == [405, 406]
    digest = next(m for m in mails(world) if m.to_addrs == ["dee@kiwi.example"])
    assert digest.subject == "[Kiwi] Design queue: 1 item(s) waiting"
    assert "Logo 301" in digest.body_text and "Banner 300" not in digest.body_text
    assert {m.company_id for m in mails(world) if "1300" in (m.body_text or "")} == {2}


def test_each_rule_switched_off_per_tenant_is_skipped(world, mail_settings):
    with session_scope(world) as s:
        s.execute(sa.update(Company).where(Company.id == 1)
                  .values(settings={f"reminders.{name}": False for name in MY_RULES}))
    for name in MY_RULES:
        off = run(world, "kiwi", name, mail_settings)
        assert off.switched_off == f"tenant: reminders.{name}" and off.found == 0
        assert run(world, "aloha", name, mail_settings).enqueued > 0, name
    assert {m.company_id for m in mails(world)} == {2}


# -- the Dagster job ---------------------------------------------------------------------------


def test_daily_job_runs_every_rule_and_records_its_counts(world, mail_settings, db_url, tmp_path):
    from bg_ops.defs.reminders import defs as reminder_defs
    from bg_ops.resources.database import DatabaseResource
    from bg_ops.resources.files import FilesResource
    from bg_ops.resources.mail import OutboxMailResource

    resources = {"database": DatabaseResource(url=db_url), "files": FilesResource(root=str(mail_settings.files_root)),
                 "mail": OutboxMailResource(outbox_dir=str(tmp_path / "outbox"))}
    key = dg.MultiPartitionKey({"date": DAY.isoformat(), "tenant": "aloha"})
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", list(ZONES))
        result = reminder_defs.daily_reminders_job.execute_in_process(
            instance=instance, partition_key=key, resources=resources)
        assert result.success
        succeeded = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
        assert {f"remind_{rule.name}" for rule in ALL_RULES} <= succeeded
        metadata = {
            e.step_key: {k: v.value for k, v in e.event_specific_data.metadata.items()}
            for e in result.all_events if e.event_type_value == "STEP_OUTPUT" and e.step_key.startswith("remind_")
        }
    expected = {"translation_due": 7, "core_request_not_accepted": 5, "core_request_ready": 1, "design_queue": 2,
                "po_expiring": 4, "invoice_overdue": 2}
    for name, count in expected.items():
        meta = metadata[f"remind_{name}"]
        assert (meta["tenant"], meta["day"], meta["found"], meta["enqueued"]) == ("aloha", DAY.isoformat(), count, count)
        assert meta["switched_off"] == "no"
    assert {rule.name for rule in ALL_RULES} == {k.removeprefix("remind_") for k in metadata}
    mine = [m for m in mails(world) if m.company_id == 2]
    assert len(mine) >= sum(expected.values())
    assert {m.company_id for m in mails(world)} == {2}
