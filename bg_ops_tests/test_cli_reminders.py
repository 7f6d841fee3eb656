"""bg-ops reminders preview and bg-ops services on the demo data (R17, P7)."""

import json

import pytest
import sqlalchemy as sa

from bg_ops.cli.main import main
from bg_ops.db.engine import get_engine


@pytest.fixture
def demo(db_url, tmp_path, monkeypatch, capsys):
    files = tmp_path / "files"
    files.mkdir()
    monkeypatch.setenv("BG_OPS_DATABASE_URL", db_url)
    monkeypatch.setenv("BG_OPS_FILES_ROOT", str(files))
    assert main(["demo", "seed", "--tenants", "2", "--today", "2026-11-23"]) == 0
    capsys.readouterr()
    return get_engine(db_url)


def counts(engine):
    with engine.connect() as c:
        return {t: c.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("email_queue", "reminder_log", "notifications")}


def test_preview_lists_reminders_per_rule_and_sends_nothing(demo, capsys):
    code = main(["reminders", "preview", "--tenant", "acme", "--date", "2026-11-23", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["tenant"] == "acme" and out["date"] == "2026-11-23"
    rules = out["rules"]
    assert {"approval_overdue", "approval_stalled", "task_due"} <= set(rules)
    for name in ("approval_overdue", "task_due"):
        assert rules[name]["found"] > 0
        item = rules[name]["items"][0]
        assert item["recipient"].endswith("acme.example") and item["what"] and not item["already_sent"]
    assert counts(demo) == {"email_queue": 0, "reminder_log": 0, "notifications": 0}

    code = main(["reminders", "preview", "--tenant", "acme", "--date", "2026-11-23"])
    text = capsys.readouterr().out
    assert code == 0 and "preview, nothing sent" in text and "task_due (R4):" in text and "@" in text


def test_preview_marks_what_a_run_already_sent(demo, capsys):
    from bg_ops.db.engine import session_scope
    from bg_ops.defs.email.enqueue import MailSettings
    from bg_ops.defs.reminders.engine import RuleContext, run_rule
    from bg_ops.defs.reminders.rules import RULES_BY_NAME
    from bg_ops.defs.tenants.logic import get_tenant
    from datetime import UTC, date, datetime
    from pathlib import Path

    with session_scope(demo) as s:
        tenant = get_tenant(s, "acme")
        sent = run_rule(s, RULES_BY_NAME["task_due"], RuleContext(tenant, date(2026, 11, 23), datetime.now(UTC)),
                        mail_settings=MailSettings("bg_ops <no-reply@bg-ops.example>", Path(".")))
    main(["reminders", "preview", "--tenant", "acme", "--date", "2026-11-23", "--rule", "task_due", "--json"])
    rule = json.loads(capsys.readouterr().out)["rules"]["task_due"]
    assert rule["already_sent"] == sent.enqueued > 0
    assert all(item["already_sent"] for item in rule["items"])


def test_services_switch_off_globally_and_back(demo, capsys):
    assert main(["services", "disable", "reminders.task_due", "--note", "paused"]) == 0
    assert "off for every tenant" in capsys.readouterr().out
    main(["reminders", "preview", "--tenant", "nordlicht", "--date", "2026-11-23", "--json"])
    rules = json.loads(capsys.readouterr().out)["rules"]
    assert rules["task_due"]["switched_off"] == "global: reminders.task_due"
    assert rules["approval_overdue"]["switched_off"] is None
    main(["services", "list", "--json"])
    assert json.loads(capsys.readouterr().out)[0] | {"changed_at": None} == {
        "service": "reminders.task_due", "enabled": False, "note": "paused", "changed_at": None}
    assert main(["services", "enable", "reminders.task_due"]) == 0
    capsys.readouterr()
    main(["reminders", "preview", "--tenant", "nordlicht", "--date", "2026-11-23", "--json"])
    assert json.loads(capsys.readouterr().out)["rules"]["task_due"]["switched_off"] is None


def test_unknown_tenant_rule_or_date_is_one_line(demo, capsys):
    for args, needle in [
        (["--tenant", "nope"], "unknown tenant 'nope'"),
        (["--tenant", "acme", "--rule", "nope"], "--rule 'nope' is not a rule"),
        (["--tenant", "acme", "--date", "23/11/2026"], "--date '23/11/2026' is not a date"),
    ]:
        code = main(["reminders", "preview", *args])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err
