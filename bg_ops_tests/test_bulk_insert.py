"""Bulk inserts (COPY on PostgreSQL) and mail queued for rendering at delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest
import sqlalchemy as sa
from markupsafe import Markup

from bg_ops.db.app_schema import Company
from bg_ops.db.bulk import COPY_THRESHOLD, insert_rows
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import email_queue, reminder_log
from bg_ops.defs.email.enqueue import Email, EnqueueError, MailSettings, enqueue_many

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
AWKWARD = "tab\there, new\nline, back\\slash, \\N, quote \" ' ✓ Zoë 東京 \r end"


@pytest.fixture
def tenants(db_engine):
    with session_scope(db_engine) as s:
        s.add_all([Company(id=1, name="Kiwi & Co", slug="kiwi", timezone="Pacific/Auckland"),
                   Company(id=2, name="Aloha", slug="aloha", timezone="Pacific/Honolulu")])
    return db_engine


@pytest.mark.parametrize("count", [3, COPY_THRESHOLD * 3])
def test_insert_rows_round_trips_every_type_and_skips_conflicts(tenants, count):
    """Below and above the COPY threshold: text with tabs, newlines, backslashes and non-Latin
    letters, JSON, bytes, NULLs and aware timestamps come back exactly as written."""
    rows = [{
        "company_id": 1 + i % 2, "to_addrs": [f"p{i}@kiwi.example"], "subject": f"{AWKWARD} {i}",
        "context": {"text": AWKWARD, "n": i, "nested": [1, None, {"ok": True}]}, "priority": "normal",
        "send_after": NOW + timedelta(minutes=i), "idempotency_key": f"k{i}", "kind": "internal",
        "status": "pending", "attempts": 0, "raw_message": bytes([i % 256, 0, 255]) + AWKWARD.encode(),
        "body_text": None, "created_at": NOW, "updated_at": NOW,
    } for i in range(count)]
    with session_scope(tenants) as s:
        first = insert_rows(s, email_queue, rows, returning=("id", "idempotency_key"), conflict_columns=("idempotency_key",))
    assert sorted(r.idempotency_key for r in first) == sorted(f"k{i}" for i in range(count))
    # The same keys again, plus one new: only the new one is inserted.
    again = rows[:2] + [{**rows[0], "idempotency_key": "fresh"}]
    with session_scope(tenants) as s:
        second = insert_rows(s, email_queue, again, returning=("idempotency_key",), conflict_columns=("idempotency_key",))
    assert [r.idempotency_key for r in second] == ["fresh"]
    with tenants.connect() as c:
        stored = {r.idempotency_key: r for r in c.execute(sa.select(email_queue))}
    assert len(stored) == count + 1
    for i, row in enumerate(rows):
        got = stored[f"k{i}"]
        assert got.subject == row["subject"] and got.context == row["context"]
        assert bytes(got.raw_message) == row["raw_message"] and got.body_text is None
        assert got.send_after == row["send_after"] and got.company_id == row["company_id"]
        assert got.created_at == NOW and got.status == "pending"


def test_insert_rows_rolls_back_with_the_transaction(tenants):
    rows = [{"company_id": 1, "rule": "task_due", "entity_id": i, "recipient_id": 7, "period": "2026-11-23",
             "run_date": "2026-11-23", "digest": False, "created_at": NOW} for i in range(COPY_THRESHOLD * 2)]
    with pytest.raises(RuntimeError):
        with session_scope(tenants) as s:
            insert_rows(s, reminder_log, rows)
            raise RuntimeError("the rest of the work failed")
    with tenants.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(reminder_log)).scalar() == 0


def _settings(tmp_path):
    return MailSettings(mail_from="bg_ops <ops@agency.example>", files_root=tmp_path)


def _reminder(i, **overrides):
    values = dict(company_id=1, to=[f"pat{i}@kiwi.example"], template="reminder_task_due",
                  context={"recipient_name": f"Pat {i}", "title": f"Proof {i}", "project": "Launch",
                           "when": "due tomorrow", "due_on": "2026-11-24"},
                  send_after=NOW + timedelta(hours=2), idempotency_key=f"reminder:1:task_due:{i}:7:2026-11-23")
    values.update(overrides)
    return Email(**values)


def test_copy_from_streamed_lines_raises_the_lines_own_error_and_keeps_the_transaction(tenants):
    """Lines made while COPY runs: an error in making them is raised as it was (not the
    driver's "COPY failed"), the COPY is undone to its savepoint, the transaction goes on."""
    if tenants.dialect.name != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    from bg_ops.db.bulk import copy_from

    def lines():
        for i in range(5000):  # several chunks reach the server before the error
            if i == 4000:
                raise LookupError("made-up failure while making line 4000")
            yield f"{i}\t1\t[\"a{i}@kiwi.example\"]\tsubject {i}\t{'x' * 100}\n"

    with session_scope(tenants) as s:
        with pytest.raises(LookupError, match="line 4000"):
            with s.begin_nested():  # the savepoint is taken with the connection, inside
                copy_from(s.connection(), "COPY email_queue (id, company_id, to_addrs, subject, body_text) "
                          "FROM STDIN", lines())
        assert s.execute(sa.select(sa.func.count()).select_from(email_queue)).scalar_one() == 0
        copy_from(s.connection(), "COPY email_queue (id, company_id, to_addrs, subject, body_text) FROM STDIN",
                  iter(["1\t1\t[\"a@kiwi.example\"]\ts\tb\n"]))
    with tenants.connect() as c:
        assert c.execute(sa.select(email_queue.c.id, email_queue.c.subject)).all() == [(1, "s")]


def test_deferred_mail_has_its_subject_now_and_its_bodies_at_delivery(tenants, tmp_path, smtp_server, smtp_mail):
    """The queue row holds the subject (operators see it) and the template; the delivered
    mail has both bodies, branded for the tenant, sent once."""
    from bg_ops.defs.email.delivery import DeliveryPolicy, deliver_due

    settings = _settings(tmp_path)
    emails = [_reminder(i) for i in range(COPY_THRESHOLD + 10)]
    with session_scope(tenants) as s:
        queued = enqueue_many(s, emails, now=NOW, settings=settings, bodies_at_delivery=True)
        again = enqueue_many(s, emails[:3], now=NOW, settings=settings, bodies_at_delivery=True)
    assert all(q.created for q in queued) and len({q.id for q in queued}) == len(emails)
    assert [a.id for a in again] == [q.id for q in queued[:3]] and not any(a.created for a in again)
    with tenants.connect() as c:
        rows = c.execute(sa.select(email_queue).order_by(email_queue.c.id)).all()
    assert [r.subject for r in rows[:2]] == ["[Kiwi & Co] Task due tomorrow: Proof 0",
                                            "[Kiwi & Co] Task due tomorrow: Proof 1"]
    assert all(r.body_text is None and r.raw_message is None and r.template == "reminder_task_due" for r in rows)

    deliver_due(tenants, smtp_mail, clock=lambda: NOW + timedelta(hours=3), settings=settings,
                policy=DeliveryPolicy())
    received = smtp_server.messages
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(f"pat{i}@kiwi.example" for i in range(len(emails)))
    one = next(message_from_bytes(m.data, policy=policy.default) for m in received
               if m.rcpt_tos == ("pat5@kiwi.example",))
    assert one["Subject"] == "[Kiwi & Co] Task due tomorrow: Proof 5"
    text = one.get_body(("plain",)).get_content()
    html = one.get_body(("html",)).get_content()
    assert "Hello Pat 5" in text and "Kiwi &amp; Co" in html and "Kiwi & Co" in text


@pytest.mark.parametrize("bad, says", [
    (dict(context={"recipient_name": "Pat"}), "undefined: add it to the context"),
    (dict(template="reminder_does_not_exist"), "reminder_does_not_exist"),
    (dict(to=["not an address"]), "not an email address"),
    (dict(company_id=99), "unknown tenant company_id 99"),
    (dict(send_after=datetime(2026, 11, 23, 9, 0)), "has no time zone"),
])
def test_deferred_mail_refuses_bad_input_and_queues_nothing(tenants, tmp_path, bad, says):
    emails = [_reminder(i) for i in range(5)] + [_reminder(5, **bad)]
    with pytest.raises(EnqueueError, match=says):
        with session_scope(tenants) as s:
            enqueue_many(s, emails, now=NOW, settings=_settings(tmp_path), bodies_at_delivery=True)
    with tenants.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(email_queue)).scalar() == 0


def test_deferred_check_shares_a_subject_only_between_messages_that_agree_on_its_variables():
    """The daily run renders each distinct subject once: the subject line of work
    anniversaries uses person_name and years, so recipient and role do not matter, a value of
    another type does, and an unhashable value is rendered every time."""
    from bg_ops.defs.email.deferred import DeferredCheck
    from bg_ops.defs.email.rendering import TemplateError

    check = DeferredCheck("reminder_work_anniversaries", ("Acme", "acme"))
    base = {"recipient_name": "Ana", "day": "2026-11-23", "person_name": "Lena", "years": 1, "role": "hr"}
    assert check.subject(base) == "[Acme] Work anniversary: Lena, 1 year"
    assert check.subject({**base, "recipient_name": "Bo", "role": "manager"}) == "[Acme] Work anniversary: Lena, 1 year"
    assert check.subject({**base, "years": 2}) == "[Acme] Work anniversary: Lena, 2 years"
    assert check.subject({**base, "years": True}) == "[Acme] Work anniversary: Lena, True year"  # True == 1
    assert check.subject({**base, "person_name": ["Lena", "Jo"]}) == "[Acme] Work anniversary: ['Lena', 'Jo'], 1 year"
    with pytest.raises(TemplateError, match="years undefined: add it to the context"):
        check.subject({k: v for k, v in base.items() if k != "years"})
    with pytest.raises(TemplateError, match="reminder_nope"):
        DeferredCheck("reminder_nope", ("Acme", "acme")).subject(base)


def test_subject_renderer_matches_render_subject_also_for_a_line_using_jinja_globals(tmp_path, monkeypatch):
    from bg_ops.defs.email import rendering

    (tmp_path / "n.subject.txt").write_text("{% for i in range(2) %}x{% endfor %} {{ title }}  {{ company.name }}")
    (tmp_path / "m.subject.txt").write_text("Hello\t{{ title }}\n")
    monkeypatch.setattr(rendering, "TEMPLATES_DIR", tmp_path)
    rendering._environments.cache_clear()
    try:
        for name, expected in (("n", "xx T Acme"), ("m", "Hello T")):
            fast = rendering.subject_renderer(name, company_name="Acme")
            assert fast({"title": "T"}) == expected
            assert rendering.render_subject(name, {"title": "T"}, company_name="Acme") == expected
            with pytest.raises(rendering.TemplateError, match="'title' is undefined: add it to the context"):
                fast({})
    finally:
        rendering._environments.cache_clear()


@pytest.mark.parametrize("value", ["Spring <b>campaign</b> & co", 7, 0, None, 2.5, True, "", "  two\nlines ",
                                   Markup("<i>marked</i>"), ["a", 1], {"name": "inner"}])
def test_subject_renderer_agrees_with_jinja_for_every_subject_line(value):
    """Plain subject lines (text and ``{{ name }}``) are joined without Jinja: every subject
    template, with every variable set to values of each type, renders as ``render_subject``
    renders it, and at least the reminder lines take that path."""
    from bg_ops.defs.email import rendering
    from bg_ops.defs.email.deferred import required_variables

    text_env = rendering._environments()[1]
    plain = []
    for name in rendering.template_names():
        context = dict.fromkeys(required_variables(name), value)
        fast = rendering.subject_renderer(name, company_name="Acme & Söhne", company_slug="acme")
        assert _outcome(fast, context) == _outcome(
            lambda c: rendering.render_subject(name, c, company_name="Acme & Söhne", company_slug="acme"), context)
        if rendering._plain_parts(text_env, f"{name}.subject.txt") is not None:
            plain.append(name)
    assert {"reminder_approval_overdue", "reminder_task_due", "reminder_design_queue"} <= set(plain)


def _outcome(render, context):
    """What rendering gives: the subject, or the error's type and text (a line that needs a
    number fails in Jinja with any other value, and must fail the same way)."""
    try:
        return render(context)
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return type(exc).__name__, str(exc)


def test_subject_renderer_plain_line_looks_attributes_up_as_jinja_does(tmp_path, monkeypatch):
    from bg_ops.defs.email import rendering

    (tmp_path / "a.subject.txt").write_text("{{ item.title }} / {{ item.keys }} / {{ company.slug }}\n")
    monkeypatch.setattr(rendering, "TEMPLATES_DIR", tmp_path)
    rendering._environments.cache_clear()
    try:
        fast = rendering.subject_renderer("a", company_name="Acme", company_slug="acme")
        assert rendering._plain_parts(rendering._environments()[1], "a.subject.txt") is not None
        item = {"title": "T", "keys": "K"}  # Jinja's getattr: the dict's method before its key
        assert fast({"item": item}) == rendering.render_subject("a", {"item": item}, company_name="Acme",
                                                                company_slug="acme")
        assert fast({"item": item}).startswith("T / <built-in method keys")
        with pytest.raises(rendering.TemplateError, match="has no attribute 'title': add it to the context"):
            fast({"item": {}})
        with pytest.raises(rendering.TemplateError, match="'item' is undefined: add it to the context"):
            fast({})
    finally:
        rendering._environments.cache_clear()


def test_driver_statement_returns_driver_values_and_raises_sqlalchemy_errors(tenants):
    """What the drain relies on: literals fixed at compile time, the caller's values, rows with
    named fields as the driver decodes them, and driver errors raised as SQLAlchemy's."""
    if tenants.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL path")
    from bg_ops.db.driver import DriverStatement

    insert = sa.insert(email_queue).values(
        company_id=1, to_addrs=["a@kiwi.example"], subject=sa.bindparam("subject"), body_text="b",
        idempotency_key=sa.bindparam("key"), raw_message=b"\x00\xffraw",
    ).returning(email_queue.c.id, email_queue.c.to_addrs, email_queue.c.raw_message, email_queue.c.status)
    with tenants.connect() as conn:
        statement = DriverStatement(insert, conn.dialect, ("subject", "key"))
        with conn.begin():
            (row,) = statement.rows(conn, {"subject": AWKWARD, "key": "k-1"})
        assert (row.to_addrs, bytes(row.raw_message), row.status) == (["a@kiwi.example"], b"\x00\xffraw", "pending")
        with pytest.raises(sa.exc.IntegrityError, match="ix_email_queue_idempotency_key"):
            with conn.begin():
                statement.rows(conn, {"subject": "again", "key": "k-1"})
        assert not conn.invalidated  # a constraint error is not a lost connection
        assert conn.execute(sa.select(email_queue.c.subject)).scalars().all() == [AWKWARD]


def _prepared_here(conn) -> dict[str, tuple[int, int]]:
    """The prepared statements of this connection's server session: {name: (generic, custom plans)}."""
    return {name: (generic, custom) for name, generic, custom in conn.exec_driver_sql(
        "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements")}


def test_a_prepared_driver_statement_runs_prepared_and_outlives_a_server_that_forgets_it(tenants, caplog):
    """Prepared once per connection, literals written into it as their type binds them (quotes,
    percent signs, JSON); the same rows as unprepared. When the server forgets it (DISCARD ALL,
    a pooler's other session) the run in autocommit goes on unprepared, the next prepares anew;
    forgotten twice, that connection stops preparing and says so. In a transaction the error is
    the caller's: it is raised, and the retry prepares anew."""
    if tenants.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL path")
    from bg_ops.db.driver import DriverStatement

    odd = "50% off, it's \"quoted\" ✓"
    select = (
        sa.select(email_queue.c.id, sa.literal(odd).label("odd"), email_queue.c.subject)
        .where(email_queue.c.subject.like(sa.literal("%") + sa.bindparam("word") + "%"),
               email_queue.c.to_addrs == sa.literal(["a@kiwi.example"], type_=email_queue.c.to_addrs.type))
        .order_by(email_queue.c.id)
    )
    with tenants.begin() as conn:
        conn.execute(sa.insert(email_queue), [
            {"company_id": 1, "to_addrs": ["a@kiwi.example"], "subject": s, "body_text": "b"}
            for s in ("apple pie", "apple tart", "pear")])
    plain = DriverStatement(select, tenants.dialect, ("word",))
    prepared = DriverStatement(select, tenants.dialect, ("word",), prepare="bg_ops_test_select")
    assert prepared.name.startswith("bg_ops_test_select_") and plain.name is None
    with tenants.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        expected = [tuple(r) for r in plain.rows(conn, {"word": "apple"})]
        assert [r.odd for r in plain.rows(conn, {"word": "apple"})] == [odd, odd]
        for word in ("apple", "apple", "pear"):
            got = [tuple(r) for r in prepared.rows(conn, {"word": word})]
            assert got == [tuple(r) for r in plain.rows(conn, {"word": word})]
        assert got and got[0][2] == "pear" and len(expected) == 2
        assert list(_prepared_here(conn)) == [prepared.name]

        conn.exec_driver_sql("DEALLOCATE ALL")  # as DISCARD ALL or another server session would
        assert [tuple(r) for r in prepared.rows(conn, {"word": "apple"})] == expected  # unprepared, this once
        assert _prepared_here(conn) == {}
        assert [tuple(r) for r in prepared.rows(conn, {"word": "apple"})] == expected  # and prepared anew
        assert list(_prepared_here(conn)) == [prepared.name]

        conn.exec_driver_sql("DEALLOCATE ALL")
        with caplog.at_level("WARNING", logger="bg_ops.db"):
            assert [tuple(r) for r in prepared.rows(conn, {"word": "apple"})] == expected
            assert [tuple(r) for r in prepared.rows(conn, {"word": "apple"})] == expected
        assert _prepared_here(conn) == {}  # that connection runs it unprepared from now on
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warned == [f"prepared statements do not last on this database connection (a pooler in transaction "
                          f"mode?): running {prepared.name} and the others unprepared on it from now on"]

    with tenants.connect() as conn:  # a new connection prepares again; in a transaction the error is raised
        conn.invalidate()  # (the pool's connection above stopped preparing: take a new one)
    with tenants.connect() as conn:
        with conn.begin():
            assert [tuple(r) for r in prepared.rows(conn, {"word": "apple"})] == expected
        conn.exec_driver_sql("DEALLOCATE ALL")
        conn.commit()
        with pytest.raises(sa.exc.DBAPIError, match=prepared.name):
            with conn.begin():
                prepared.rows(conn, {"word": "apple"})
        with conn.begin():
            assert [tuple(r) for r in prepared.rows(conn, {"word": "apple"})] == expected
        assert list(_prepared_here(conn)) == [prepared.name]
