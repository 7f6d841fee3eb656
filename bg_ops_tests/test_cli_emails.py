"""``bg-ops emails``: the email queue from the operator's side (E5, E6, E8, E12, U2).

Every test runs on SQLite and on a real PostgreSQL, calls the CLI in-process and delivers to
a real SMTP server on loopback, so what is asserted is what an operator sees: exit codes,
one JSON document on stdout, one-line errors, messages and recipients at the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from bg_ops.cli.main import main
from bg_ops.db.own_schema import email_queue as q

ADMIN = "ops-admin@agency.example"
STATUSES = {"pending", "sending", "sent", "failed", "canceled"}


@dataclass
class Env:
    engine: sa.Engine
    smtp: object
    files: Path
    capsys: object

    def run(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str):
        code, out, err = self.run(*args, "--json")
        assert code == 0, err
        return json.loads(out)  # exactly one document, or this raises

    def enqueue(self, *args: str, tenant: str = "acme") -> int:
        data = self.json("emails", "enqueue", "--tenant", tenant, *args)
        assert data["created"] is True
        return data["id"]

    def insert_sql(self, company_id: int, to: list[str], **columns) -> int:
        """A row the platform queued with plain SQL: only producer columns, defaults for the rest."""
        values = {"company_id": company_id, "to_addrs": json.dumps(to), **columns}
        if isinstance(values.get("context"), dict):
            values["context"] = json.dumps(values["context"])
        names = ", ".join(values)
        params = ", ".join(f":{k}" for k in values)
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO email_queue ({names}) VALUES ({params})"), values)
            return conn.execute(sa.select(sa.func.max(q.c.id))).scalar_one()

    def statuses(self) -> dict[int, str]:
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(q.c.id, q.c.status)).all())

    def set(self, message_id: int, **values) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(q).where(q.c.id == message_id).values(**values))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def env(db_engine, db_url, smtp_server, tmp_path, monkeypatch, capsys) -> Env:
    from bg_ops.db.app_schema import Company

    files = tmp_path / "files"
    files.mkdir()
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "BG_OPS_DATABASE_URL": db_url,
        "BG_OPS_FILES_ROOT": str(files),
        "BG_OPS_MAIL_BACKEND": "smtp",
        "BG_OPS_SMTP_HOST": smtp_server.host,
        "BG_OPS_SMTP_PORT": str(smtp_server.port),
        "BG_OPS_SMTP_SECURITY": "none",
        "BG_OPS_SMTP_TIMEOUT": "5",
        "BG_OPS_MAIL_FROM": "Agency <no-reply@agency.example>",
        "BG_OPS_ADMIN_EMAILS": ADMIN,
    }.items():
        monkeypatch.setenv(name, value)
    with db_engine.begin() as conn:
        conn.execute(sa.insert(Company.__table__), [
            {"id": 1, "name": "Acme Creative", "slug": "acme", "timezone": "America/New_York"},
            {"id": 2, "name": "Beta Studio", "slug": "beta", "timezone": "Europe/Berlin"},
        ])
    return Env(engine=db_engine, smtp=smtp_server, files=files, capsys=capsys)


def test_stats_counts_mail_from_the_cli_and_from_plain_sql(env):
    env.enqueue("--to", "a1@client.example", "--subject", "One", "--text", "1")
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    env.enqueue("--to", "a2@client.example", "--subject", "Later", "--text", "2", "--send-after", later)
    env.insert_sql(1, ["a3@client.example"], subject="From SQL", body_text="3")
    env.insert_sql(2, ["b1@client.example"], subject="Beta", body_text="4")

    data = env.json("emails", "stats")
    assert STATUSES <= set(data)
    assert {k: data[k] for k in STATUSES} == {"pending": 4, "sending": 0, "sent": 0, "failed": 0, "canceled": 0}
    assert all(type(data[k]) is int for k in STATUSES)
    assert data["due_now"] == 3 and data["queued"] == 4  # scheduled mail is pending, not due
    assert data["oldest_due_age_seconds"] is not None

    acme = env.json("emails", "stats", "--tenant", "acme")
    assert (acme["pending"], acme["due_now"]) == (3, 2)
    assert env.json("emails", "stats", "--tenant", "beta")["pending"] == 1

    code, out, err = env.run("emails", "stats")
    assert code == 0 and "pending" in out and "due now" in out
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert len({len(line) for line in lines}) == 1  # an aligned table

    code, out, err = env.run("emails", "stats", "--tenant", "nope", "--json")
    assert code == 2 and out == "" and "'nope'" in one_error_line(err)


def test_drain_sends_due_mail_once_and_alerts_the_admins_about_failures(env):
    doomed = env.enqueue("--to", "doomed@client.example", "--subject", "Doomed", "--text", "x", "--priority", "high")
    multi = env.enqueue("--to", "Ana Lima <ana@client.example>", "--cc", "cc@client.example",
                        "--bcc", "bcc@client.example", "--subject", "Three recipients", "--text", "x")
    templated = env.insert_sql(1, ["sql@client.example"], template="test_message", context={"note": "from SQL"})
    plain = env.insert_sql(2, ["beta@client.example"], subject="Plain SQL", body_text="hello")
    later = env.enqueue("--to", "later@client.example", "--subject", "Later", "--text", "x",
                        "--send-after", (datetime.now(UTC) + timedelta(hours=3)).isoformat())
    env.smtp.fail_next(1, code=550)  # the first transaction: the high-priority message

    code, out, err = env.run("emails", "drain", "--batch-size", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["sent"], report["failed"], report["retried"]) == (3, 1, 0)
    assert report["failed_ids"] == [doomed] and report["due_at_start"] == 4 and report["batches"] >= 2
    assert report["admin_alert_id"] is not None
    received = env.smtp.messages
    assert len(received) == 3
    assert sorted(r for m in received for r in m.rcpt_tos) == sorted([
        "ana@client.example", "cc@client.example", "bcc@client.example", "sql@client.example", "beta@client.example",
    ])
    assert len({m.message["Message-ID"] for m in received}) == 3
    assert "from SQL" in next(m for m in received if m.rcpt_tos == ("sql@client.example",)).data.decode()
    assert "@client.example" not in out + err  # progress and summaries mask addresses

    states = env.statuses()
    assert (states[doomed], states[multi], states[templated], states[plain], states[later]) == (
        "failed", "sent", "sent", "sent", "pending")
    alert_id = report["admin_alert_id"]
    assert states[alert_id] == "pending"
    stats = env.json("emails", "stats")
    assert (stats["pending"], stats["sent"], stats["failed"]) == (2, 3, 1)

    failed = env.json("emails", "failed")
    assert [f["id"] for f in failed] == [doomed]
    assert failed[0]["tenant"] == "acme" and failed[0]["to"] == ["doomed@client.example"]
    assert "550" in failed[0]["last_error"] and failed[0]["attempts"] == 1
    assert datetime.fromisoformat(failed[0]["failed_at"]).tzinfo is not None

    # The next drain sends the one alert (to the admins) and nothing else; no second alert.
    code, out, err = env.run("emails", "drain")
    assert code == 0 and "sent 1," in out, err
    assert ADMIN not in out + err
    alert = env.smtp.messages[3]
    assert alert.rcpt_tos == (ADMIN,) and len(env.smtp.messages) == 4
    assert f"#{doomed}" in alert.message.get_body(("plain",)).get_content()
    assert env.json("emails", "drain")["sent"] == 0 and len(env.smtp.messages) == 4


def test_failed_retry_by_id_then_all_failed(env):
    first = env.enqueue("--to", "first@client.example", "--subject", "First", "--text", "x")
    second = env.enqueue("--to", "second@client.example", "--subject", "Second", "--text", "x", tenant="beta")
    env.smtp.fail_next(2, code=550, message="5.1.1 Mailbox does not exist")
    assert env.json("emails", "drain")["failed"] == 2

    failed = env.json("emails", "failed")
    assert sorted(f["id"] for f in failed) == [first, second]
    assert all("Mailbox does not exist" in f["last_error"] for f in failed)
    assert [f["id"] for f in env.json("emails", "failed", "--tenant", "beta")] == [second]
    code, out, _ = env.run("emails", "failed")
    assert code == 0 and "first@client.example" in out and "second@client.example" in out  # full addresses

    code, out, err = env.run("emails", "retry")
    assert code == 2 and "--all-failed" in one_error_line(err)
    data = env.json("emails", "retry", "--id", str(first), "--id", "9999")
    assert data["retried"] == [first] and data["not_retried"] == [9999]
    assert env.statuses()[first] == "pending"
    before = len(env.smtp.messages)
    env.json("emails", "drain")
    delivered = [m for m in env.smtp.messages[before:] if m.rcpt_tos == ("first@client.example",)]
    assert len(delivered) == 1 and env.statuses()[first] == "sent"

    assert env.json("emails", "retry", "--all-failed", "--tenant", "acme")["retried"] == []
    code, out, _ = env.run("emails", "retry", "--all-failed")
    assert code == 0 and "put 1 message(s) back" in out and f"#{second}" in out
    code, out, _ = env.run("emails", "retry", "--all-failed")
    assert code == 0 and "nothing to retry" in out
    assert env.json("emails", "failed") == []


def test_a_retried_message_that_fails_again_raises_a_new_alert(env):
    message = env.enqueue("--to", "x@client.example", "--subject", "S", "--text", "x")
    env.smtp.fail_next(1, code=550)
    assert env.json("emails", "drain")["failed"] == 1
    env.json("emails", "drain")  # sends the first alert
    assert [m.rcpt_tos for m in env.smtp.messages] == [(ADMIN,)]
    env.json("emails", "retry", "--id", str(message))
    env.smtp.fail_next(1, code=550)
    assert env.json("emails", "drain")["failed"] == 1
    env.json("emails", "drain")
    assert [m.rcpt_tos for m in env.smtp.messages] == [(ADMIN,), (ADMIN,)]

def test_cancel_keeps_mail_from_being_sent(env):
    keep = env.enqueue("--to", "keep@client.example", "--subject", "Keep", "--text", "x")
    drop = env.enqueue("--to", "drop@client.example", "--subject", "Drop", "--text", "x")
    data = env.json("emails", "cancel", str(drop), "9999")
    assert data == {"canceled": [drop], "count": 1, "not_canceled": [9999]}
    env.json("emails", "drain")
    assert [m.rcpt_tos for m in env.smtp.messages] == [("keep@client.example",)]
    assert env.statuses() == {keep: "sent", drop: "canceled"}
    code, out, _ = env.run("emails", "cancel", str(keep))  # already sent: left alone
    assert code == 0 and "left alone" in out and env.statuses()[keep] == "sent"


def test_cleanup_purges_old_sent_mail_but_never_failed_mail(env):
    now = datetime.now(UTC)
    ids = [env.enqueue("--to", f"m{i}@client.example", "--subject", f"M{i}", "--text", "x") for i in range(5)]
    old_sent, recent_sent, old_failed, old_canceled, pending = ids
    env.set(old_sent, status="sent", sent_at=now - timedelta(days=91))
    env.set(recent_sent, status="sent", sent_at=now - timedelta(days=10))
    env.set(old_failed, status="failed", failed_at=now - timedelta(days=400), last_error="SMTP 550")
    env.set(old_canceled, status="canceled", canceled_at=now - timedelta(days=120))

    data = env.json("emails", "cleanup", "--batch-size", "1")
    assert data["deleted"] == 2 and data["older_than_days"] == 90
    assert data["batches"] == 2  # the weekly cleanup's mail rule: one short transaction per batch
    assert env.statuses() == {recent_sent: "sent", old_failed: "failed", pending: "pending"}
    code, out, _ = env.run("emails", "cleanup", "--older-than", "5")
    assert code == 0 and "deleted 1 " in out
    assert env.statuses() == {old_failed: "failed", pending: "pending"}


def test_show_prints_every_field_with_full_addresses(env):
    message = env.enqueue("--to", "Ana Lima <ana.lima@client.example>", "--cc", "boss@client.example",
                          "--subject", "Proof ready", "--text", "Line one\nLine two", "--idempotency-key", "proof-7")
    code, out, err = env.run("emails", "show", str(message))
    assert code == 0, err
    assert "ana.lima@client.example" in out and "boss@client.example" in out
    assert "Proof ready" in out and "Line two" in out and "proof-7" in out and "acme" in out
    data = env.json("emails", "show", str(message))
    assert data["to_addrs"] == ["Ana Lima <ana.lima@client.example>"] and data["status"] == "pending"
    assert data["tenant"] == "acme" and data["prebuilt_bytes"] > 0
    datetime.fromisoformat(data["created_at"])
    # The same key again queues nothing.
    again = env.json("emails", "enqueue", "--tenant", "acme", "--to", "x@client.example", "--subject", "S",
                     "--text", "t", "--idempotency-key", "proof-7")
    assert again == {**again, "id": message, "created": False}

    code, out, err = env.run("emails", "show", "424242")
    assert code == 1 and out == "" and "424242" in one_error_line(err)


def test_show_previews_the_bodies_of_mail_rendered_at_delivery(env):
    """A reminder (or plain-SQL) row holds a template, not bodies: show renders what will be
    sent, and says when it would fail."""
    context = {"recipient_name": "Ana", "title": "Proof 7", "project": "Launch", "when": "due tomorrow",
               "due_on": "2026-11-24"}
    good = env.insert_sql(1, ["ana@client.example"], template="reminder_task_due", context=context)
    bad = env.insert_sql(1, ["ana@client.example"], template="reminder_task_due", context={"recipient_name": "Ana"})
    data = env.json("emails", "show", str(good))
    assert "Hello Ana" in data["body_text"] and "Proof 7" in data["body_text"]
    assert "Acme Creative" in data["body_html"] and data["prebuilt_bytes"] is None
    assert data["bodies"] == "rendered at delivery from template 'reminder_task_due' (preview)"
    code, out, err = env.run("emails", "show", str(bad))
    assert code == 0, err
    assert "will fail at delivery" in out and "undefined" in out


def test_enqueue_refusals_are_one_line_and_queue_nothing(env, tmp_path):
    (tmp_path / "secret.txt").write_text("outside the files root")
    (env.files / "brief.pdf").write_bytes(b"%PDF-1.4 demo")
    base = ("emails", "enqueue", "--tenant", "acme", "--subject", "S")
    cases = [
        (("--to", "not-an-address", "--text", "x"), "not-an-address"),
        (("--to", "a@client.example", "--template", "test_message", "--context", "{}"), "note"),
        (("--to", "a@client.example", "--text", "x", "--attach", "../secret.txt"), "files root"),
        (("--to", "a@client.example", "--text", "x", "--attach", str(tmp_path / "secret.txt")), "files root"),
    ]
    for args, named in cases:
        code, out, err = env.run(*base, *args)
        assert code == 1 and out == "", (args, err)
        assert named in one_error_line(err)
    assert env.statuses() == {}

    code, out, err = env.run("emails", "enqueue", "--tenant", "nope", "--to", "a@client.example",
                             "--subject", "S", "--text", "x")
    assert code == 2 and "'nope'" in one_error_line(err)
    assert env.statuses() == {}

    ok = env.enqueue("--to", "a@client.example", "--subject", "With file", "--text", "x", "--attach", "brief.pdf")
    env.json("emails", "drain")
    (received,) = env.smtp.messages
    assert [p.get_filename() for p in received.message.iter_attachments()] == ["brief.pdf"]
    assert env.statuses() == {ok: "sent"}


def test_preview_renders_without_queueing(env):
    data = env.json("emails", "preview", "test_message", "--tenant", "acme", "--context", '{"note": "<b>hi</b>"}')
    assert data["subject"] == "[Acme Creative] Test message: <b>hi</b>"
    assert "&lt;b&gt;hi&lt;/b&gt;" in data["html"] and "<b>hi</b>" in data["text"]
    code, out, err = env.run("emails", "preview", "test_message", "--tenant", "acme", "--context", "{}")
    assert code == 1 and "note" in one_error_line(err)
    code, out, err = env.run("emails", "preview", "no_such_template", "--context", "{}")
    assert code == 1 and "test_message" in one_error_line(err)  # names the templates that exist
    assert env.statuses() == {}


def test_drain_with_the_smtp_server_unreachable_is_one_line_and_claims_nothing(env, monkeypatch):
    from bg_ops_tests.support.postgres_server import free_port

    message = env.enqueue("--to", "a@client.example", "--subject", "S", "--text", "x")
    monkeypatch.setenv("BG_OPS_SMTP_PORT", str(free_port()))
    code, out, err = env.run("emails", "drain", "--json")
    assert code == 1 and out == ""
    line = one_error_line(err)
    assert "BG_OPS_SMTP_HOST" in line and "BG_OPS_SMTP_PORT" in line and "a@client.example" not in line
    with env.engine.connect() as conn:
        row = conn.execute(sa.select(q.c.status, q.c.attempts).where(q.c.id == message)).one()
    assert tuple(row) == ("pending", 0)


def test_every_emails_command_has_examples_and_json(capsys):
    for command in ("stats", "failed", "retry", "cancel", "drain", "cleanup", "show", "enqueue", "preview"):
        assert main(["emails", command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "Examples:" in out and "--json" in out, command
