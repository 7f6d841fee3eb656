"""Mail resources against a real SMTP server on loopback and a real outbox folder.

What matters to the email queue: every message reaches exactly its envelope recipients
(Bcc included, Bcc header not shown), a batch costs one connection, failures are classified
transient/permanent correctly, nothing is delivered twice, and no error text or traceback
carries a full address.
"""

from __future__ import annotations

import logging
import socket
import time
import traceback
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, make_msgid
from pathlib import Path

import pytest

from bg_ops.resources.mail import (
    MailPermanentError,
    MailTransientError,
    OutboxMailResource,
    SmtpMailResource,
    recipients_of,
)
from bg_ops_tests.fakes.smtp_server import FakeSmtpServer

SUBJECT = "Überfällig ✓"


def make_message(
    to: list[str],
    cc: list[str] | None = None,
    bcc: list[str] | None = None,
    subject: str = SUBJECT,
    sender: str = "Agentur Büro <office@agency.test>",
    with_id: bool = True,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if bcc:
        msg["Bcc"] = ", ".join(bcc)
    msg["Subject"] = subject
    if with_id:
        msg["Message-ID"] = make_msgid(domain="agency.test")
    msg.set_content("Grüße: die Rechnung ist überfällig ✓\n")
    msg.add_alternative("<p>Grüße: die Rechnung ist <b>überfällig</b> ✓</p>\n", subtype="html")
    return msg


def header_addresses(msg: EmailMessage, name: str) -> list[str]:
    return [addr for _, addr in getaddresses(msg.get_all(name, []))]


def chained_error_text(exc: BaseException) -> str:
    """Every message in the exception chain as a traceback (or Dagster) would show it."""
    parts = []
    current: BaseException | None = exc
    while current is not None:
        parts.append("".join(traceback.format_exception_only(current)) + repr(current.args))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\n".join(parts)


def wait_idle(server: FakeSmtpServer) -> None:
    assert server.wait_until(lambda s: s.active_connections == 0, timeout=3), "client left a connection open"


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def smtp_server(request, smtp_server_factory) -> FakeSmtpServer:
    """Every test here against a server that offers PIPELINING (RFC 2920), as production
    relays do, and one that does not: the client pipelines with the first, goes one command
    at a time with the second, and must behave the same with both."""
    return smtp_server_factory(pipelining=request.param)


# -- (a) a batch over one connection -------------------------------------------------


def test_batch_of_five_arrives_on_one_connection_with_cc_and_bcc(smtp_server, smtp_mail):
    batch = [
        make_message(to=[f"parent{i}@example.com"], cc=[f"teacher{i}@school.test"], bcc=["audit@agency.test"],
                     subject=f"{SUBJECT} #{i}")
        for i in range(5)
    ]
    with smtp_mail.connect() as conn:
        for msg in batch:
            conn.send(msg)

    received = smtp_server.messages
    assert len(received) == 5
    assert smtp_server.connections == 1
    assert {r.connection_id for r in received} == {1}
    for i, (sent, got) in enumerate(zip(batch, received, strict=True)):
        assert got.rcpt_tos == (f"parent{i}@example.com", f"teacher{i}@school.test", "audit@agency.test")
        assert got.mail_from == "office@agency.test"
        assert got.message["Subject"] == f"{SUBJECT} #{i}"
        assert got.message["Message-ID"] == sent["Message-ID"]
        assert header_addresses(got.message, "To") == [f"parent{i}@example.com"]
        assert header_addresses(got.message, "Cc") == [f"teacher{i}@school.test"]
        assert got.pipelined is smtp_server.pipelining
        # Bcc is an envelope recipient only: no header, no trace of the address in the data.
        assert got.message["Bcc"] is None
        assert b"audit@agency.test" not in got.data
        assert not got.tls
    # The message object the caller holds keeps its Bcc (send_message works on a copy).
    assert batch[0]["Bcc"] == "audit@agency.test"
    # QUIT at the end of the with-block: the connection is closed, not leaked.
    wait_idle(smtp_server)


@pytest.mark.parametrize("data", [
    b"Subject: built\r\nMIME-Version: 1.0\r\n\r\nQmFzZTY0IGxpbmU=\r\n",  # as bg_ops builds them: sent as it is
    b"Subject: dots\r\n\r\n.a line starting with a dot\r\n..and two\r\nend\r\n",  # dot-stuffed
    b".the first line a dot\r\nand no line end at the end",
    b"Subject: no end\r\n\r\nthe last line without its line end",
])
def test_the_lighter_smtp_client_delivers_what_smtplib_delivers(smtp_server, data):
    """The client the resource uses skips smtplib's address parser for bare addresses and its
    dot-stuffing for messages with no line starting with a dot: the server receives the same
    envelope and the same bytes as from plain smtplib (with SIZE; a named recipient and a
    quoted local part take smtplib's own way)."""
    import smtplib

    from bg_ops.resources.mail import _Smtp

    recipients = ["a@example.com", "b.c+tag@sub.example.org", "Named One <d@example.com>", "\"quoted local\"@example.com"]
    wire = []
    for client in (smtplib.SMTP, _Smtp):
        class Recording(client):
            def send(self, s):  # every byte the client writes: commands and data
                sent.append(s if isinstance(s, bytes) else s.encode("ascii"))
                super().send(s)

        sent: list[bytes] = []
        smtp = Recording(smtp_server.host, smtp_server.port, timeout=10)
        try:
            smtp.ehlo()
            assert smtp.has_extn("size")
            smtp.sendmail("office@agency.test", recipients, data)
        finally:
            smtp.quit()
        wire.append(b"".join(sent))
    assert wire[1] == wire[0]  # byte for byte what plain smtplib writes
    assert b"mail FROM:<office@agency.test> size=" in wire[0] and b"rcpt TO:<a@example.com>\r\n" in wire[0]
    plain, lighter = smtp_server.messages
    assert (lighter.mail_from, lighter.rcpt_tos, lighter.data) == (plain.mail_from, plain.rcpt_tos, plain.data)
    assert plain.rcpt_tos == ("a@example.com", "b.c+tag@sub.example.org", "d@example.com", "\"quoted local\"@example.com")
    assert plain.data.replace(b"\r\n", b"") == data.replace(b"\r\n", b"")


def _recording_client(host: str, port: int):
    """bg_ops's SMTP client class, keeping every write it makes (commands and data)."""
    from bg_ops.resources.mail import _Smtp

    class Recording(_Smtp):
        def send(self, s):
            self.writes.append(s if isinstance(s, bytes) else s.encode("ascii"))
            super().send(s)

    Recording.writes = []
    smtp = Recording(host, port, timeout=10)
    smtp.writes = []
    return smtp


def test_with_pipelining_the_envelope_and_data_leave_in_one_write_and_arrive_as_from_smtplib(smtp_server_factory):
    """RFC 2920: MAIL FROM, every RCPT TO and DATA in one write, the message and its dot in a
    second: the server receives the same envelope and bytes as from plain smtplib, which
    waits for a reply after each command."""
    import smtplib

    server = smtp_server_factory(pipelining=True)
    data = b"Subject: dots\r\n\r\n.a line starting with a dot\r\nend\r\n"
    recipients = ["a@example.com", "b.c+tag@sub.example.org"]
    plain = smtplib.SMTP(server.host, server.port, timeout=10)
    lighter = _recording_client(server.host, server.port)
    for smtp in (plain, lighter):
        try:
            smtp.ehlo()
            assert smtp.has_extn("pipelining") and smtp.has_extn("size")
            assert smtp.sendmail("office@agency.test", recipients, data) == {}
        finally:
            smtp.quit()
    assert lighter.writes[1:3] == [
        f"MAIL FROM:<office@agency.test> SIZE={len(data)}\r\n"
        "RCPT TO:<a@example.com>\r\nRCPT TO:<b.c+tag@sub.example.org>\r\nDATA\r\n".encode(),
        b"Subject: dots\r\n\r\n..a line starting with a dot\r\nend\r\n.\r\n",
    ]
    from_plain, from_lighter = server.messages
    assert (from_plain.pipelined, from_lighter.pipelined) == (False, True)
    assert (from_lighter.mail_from, from_lighter.rcpt_tos, from_lighter.data) == (
        from_plain.mail_from, from_plain.rcpt_tos, from_plain.data)


def test_pipelining_off_sends_one_command_at_a_time_to_a_server_that_offers_it(smtp_server_factory):
    server = smtp_server_factory(pipelining=True)
    resource = SmtpMailResource(host=server.host, port=server.port, security="none", timeout_seconds=5,
                                mail_from="office@agency.test", pipelining=False)
    with resource.connect() as conn:
        conn.send(make_message(to=["a@example.com"]))
    (got,) = server.messages
    assert got.pipelined is False
    assert "pipelining off" in resource.describe()


@pytest.mark.parametrize("refusals", [{"a@example.com": 550}, {"a@example.com": 451, "b@example.com": 550}])
def test_a_server_that_accepts_data_after_refusing_every_recipient_gets_an_empty_message(smtp_server_factory,
                                                                                         refusals):
    """RFC 2920 3.1: when DATA was pipelined behind recipients that were all refused and the
    server still answers 354, the client ends the empty message with a dot, nothing is
    delivered, the refusal is reported as smtplib reports it, and the session goes on."""
    server = smtp_server_factory(pipelining=True, data_without_recipients=True)
    server.refuse_recipients(refusals)
    resource = SmtpMailResource(host=server.host, port=server.port, security="none", timeout_seconds=5,
                                mail_from="office@agency.test")
    with resource.connect() as conn:
        with pytest.raises(MailPermanentError) as excinfo:  # a 5xx among the refusals
            conn.send(make_message(to=list(refusals)))
        conn.send(make_message(to=["ok@example.com"]))
    assert excinfo.value.smtp_code in refusals.values()
    assert server.bodies_without_recipients == [b""]  # the dot alone, not the message
    assert [r.rcpt_tos for r in server.messages] == [("ok@example.com",)]
    assert server.connections == 1


def test_default_sender_is_used_when_message_has_no_from(smtp_server, smtp_mail):
    msg = make_message(to=["a@example.com"])
    del msg["From"]
    smtp_mail.send(msg)
    (got,) = smtp_server.messages
    assert got.mail_from == "no-reply@bg-ops.test"


def test_message_without_recipients_is_permanent_and_opens_no_connection(smtp_server, smtp_mail):
    with smtp_mail.connect() as conn:
        with pytest.raises(MailPermanentError, match="no recipients") as excinfo:
            conn.send(make_message(to=[]))
    assert excinfo.value.transient is False
    assert smtp_server.messages == []
    assert smtp_server.connections == 0


# -- (b) SMTP reply codes --------------------------------------------------------------


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data_command", "data"])
def test_451_is_transient_and_the_batch_goes_on_on_the_same_connection(smtp_server, smtp_mail, stage):
    smtp_server.fail_next(1, code=451, stage=stage)
    first = make_message(to=["first@example.com"])
    second = make_message(to=["second@example.com"])
    with smtp_mail.connect() as conn:
        with pytest.raises(MailTransientError) as excinfo:
            conn.send(first)
        conn.send(second)

    assert excinfo.value.smtp_code == 451
    assert excinfo.value.transient is True
    received = smtp_server.messages
    assert [r.rcpt_tos for r in received] == [("second@example.com",)]
    assert received[0].message["Message-ID"] == second["Message-ID"]
    # 451 leaves the session usable: RSET, then the next message on the same connection.
    assert smtp_server.connections == 1


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data_command", "data"])
def test_421_is_transient_and_the_next_message_reconnects(smtp_server, smtp_mail, stage):
    smtp_server.fail_next(1, code=421, stage=stage)
    second = make_message(to=["second@example.com"])
    with smtp_mail.connect() as conn:
        with pytest.raises(MailTransientError) as excinfo:
            conn.send(make_message(to=["first@example.com"]))
        conn.send(second)

    assert excinfo.value.smtp_code == 421
    received = smtp_server.messages
    assert [r.message["Message-ID"] for r in received] == [second["Message-ID"]]
    # 421 closes the channel: the second message needed a new connection.
    assert smtp_server.connections == 2
    assert received[0].connection_id == 2


@pytest.mark.parametrize(("code", "stage"), [(550, "data"), (554, "data"), (550, "mail"), (554, "rcpt"),
                                             (554, "data_command")])
def test_5xx_is_permanent_and_the_batch_goes_on(smtp_server, smtp_mail, code, stage):
    smtp_server.fail_next(1, code=code, stage=stage)
    second = make_message(to=["second@example.com"])
    with smtp_mail.connect() as conn:
        with pytest.raises(MailPermanentError) as excinfo:
            conn.send(make_message(to=["first@example.com"]))
        conn.send(second)

    assert excinfo.value.smtp_code == code
    assert excinfo.value.transient is False
    assert [r.message["Message-ID"] for r in smtp_server.messages] == [second["Message-ID"]]
    assert smtp_server.connections == 1


def test_server_text_quoting_an_address_is_masked(smtp_server, smtp_mail):
    smtp_server.fail_next(1, code=550, message="5.7.1 <jane.doe@example.com> blocked by policy")
    with smtp_mail.connect() as conn:
        with pytest.raises(MailPermanentError) as excinfo:
            conn.send(make_message(to=["jane.doe@example.com"]))

    assert excinfo.value.smtp_code == 550
    text = str(excinfo.value)
    assert "j***@example.com" in text and "blocked by policy" in text
    assert "jane.doe@example.com" not in text
    # Dagster stores the whole chain of an op failure: no address in the causes either.
    assert "jane.doe@example.com" not in chained_error_text(excinfo.value)


# -- (c) dropped connections ---------------------------------------------------------


@pytest.mark.parametrize("rst", [True, False], ids=["reset", "fin"])
@pytest.mark.parametrize("stage", ["mail", "data_command", "data"])
def test_a_drop_mid_transaction_reconnects_once_and_delivers_exactly_once(smtp_server, smtp_mail, stage, rst):
    smtp_server.drop_next(1, stage=stage, rst=rst)
    msg = make_message(to=["parent@example.com"])
    with smtp_mail.connect() as conn:
        conn.send(msg)
        conn.send(make_message(to=["other@example.com"]))

    received = smtp_server.messages
    assert [r.rcpt_tos for r in received] == [("parent@example.com",), ("other@example.com",)]
    assert received[0].message["Message-ID"] == msg["Message-ID"]
    assert smtp_server.connections == 2
    # Both went over the second connection, which the batch kept using.
    assert [r.connection_id for r in received] == [2, 2]


def test_a_drop_on_both_attempts_is_transient_and_the_batch_recovers(smtp_server, smtp_mail):
    smtp_server.drop_next(2)
    later = make_message(to=["later@example.com"])
    with smtp_mail.connect() as conn:
        with pytest.raises(MailTransientError, match="closed the connection") as excinfo:
            conn.send(make_message(to=["parent@example.com"]))
        conn.send(later)

    assert excinfo.value.smtp_code is None
    assert smtp_server.pending_faults == 0  # exactly two attempts, no third
    assert [r.message["Message-ID"] for r in smtp_server.messages] == [later["Message-ID"]]
    assert smtp_server.connections == 3


def test_an_idle_connection_closed_by_the_server_is_reopened(smtp_server, smtp_mail):
    with smtp_mail.connect() as conn:
        conn.send(make_message(to=["one@example.com"]))
        smtp_server.close_connections()  # e.g. the relay's idle timeout
        wait_idle(smtp_server)
        conn.send(make_message(to=["two@example.com"]))

    assert [r.rcpt_tos for r in smtp_server.messages] == [("one@example.com",), ("two@example.com",)]
    assert [r.connection_id for r in smtp_server.messages] == [1, 2]


# -- (d) refused recipients -------------------------------------------------------------


def test_all_recipients_refused_is_permanent_and_masked(smtp_server, smtp_mail):
    smtp_server.refuse_recipients({"jane.doe@example.com": 550, "max.muster@example.org": 550})
    with smtp_mail.connect() as conn:
        with pytest.raises(MailPermanentError) as excinfo:
            conn.send(make_message(to=["jane.doe@example.com"], cc=["max.muster@example.org"]))
        # The refusal does not poison the session.
        conn.send(make_message(to=["ok@example.com"]))

    exc = excinfo.value
    assert exc.smtp_code == 550
    assert "2 recipient(s) refused" in str(exc)
    for address in ("jane.doe@example.com", "max.muster@example.org"):
        assert address not in str(exc)
        assert address not in chained_error_text(exc)
    assert [r.rcpt_tos for r in smtp_server.messages] == [("ok@example.com",)]
    assert smtp_server.connections == 1


def test_all_recipients_refused_with_4xx_is_transient(smtp_server, smtp_mail):
    smtp_server.refuse_recipients({"full.mailbox@example.com": 452})
    with pytest.raises(MailTransientError) as excinfo:
        smtp_mail.send(make_message(to=["full.mailbox@example.com"]))
    assert excinfo.value.smtp_code == 452
    assert smtp_server.messages == []


def test_a_recipient_in_to_and_cc_is_one_envelope_recipient_and_its_4xx_stays_transient(smtp_server, smtp_mail):
    """Listed twice, a refused address counted once passed for "one recipient accepted": the
    message went on to DATA and its 503 made a temporary refusal permanent."""
    smtp_server.refuse_recipients({"full.mailbox@example.com": 452})
    with pytest.raises(MailTransientError) as excinfo:
        smtp_mail.send(make_message(to=["full.mailbox@example.com"], cc=["full.mailbox@example.com"]))
    assert excinfo.value.smtp_code == 452
    smtp_mail.send(make_message(to=["twice@example.com"], bcc=["twice@example.com"]))
    (got,) = smtp_server.messages
    assert got.rcpt_tos == ("twice@example.com",)


def test_some_recipients_refused_delivers_to_the_others_once_and_logs_masked(smtp_server, smtp_mail, caplog):
    smtp_server.refuse_recipients({"gone@example.com": 550})
    caplog.set_level(logging.WARNING)
    smtp_mail.send(make_message(to=["parent@example.com", "gone@example.com"], bcc=["audit@agency.test"]))

    (got,) = smtp_server.messages
    assert got.rcpt_tos == ("parent@example.com", "audit@agency.test")
    assert smtp_server.connections == 1
    mail_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("bg_ops"))
    assert "refused g***@example.com" in mail_logs
    assert "gone@example.com" not in mail_logs


# -- (e) network failures ----------------------------------------------------------------


def test_nothing_listening_is_transient():
    # A bound socket that never listens: connecting to it is refused.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        mail = SmtpMailResource(host="127.0.0.1", port=port, security="none", timeout_seconds=2)
        with pytest.raises(MailTransientError, match="refused") as excinfo:
            mail.send(make_message(to=["a@example.com"]))
        with pytest.raises(MailTransientError):
            mail.check_connection()
    assert excinfo.value.smtp_code is None


def test_a_server_slower_than_the_timeout_is_transient(smtp_server):
    smtp_server.delay_next(2, seconds=2.0)  # the first attempt and the one reconnect
    mail = SmtpMailResource(host=smtp_server.host, port=smtp_server.port, security="none", timeout_seconds=0.25)
    started = time.monotonic()
    with pytest.raises(MailTransientError, match="timed out"):
        mail.send(make_message(to=["a@example.com"]))
    assert time.monotonic() - started < 1.5  # gave up on the timeout, did not wait the server out
    wait_idle(smtp_server)
    assert smtp_server.messages == []  # the abandoned transactions were not delivered


def test_a_slow_answer_within_the_timeout_is_fine(smtp_server):
    smtp_server.delay_next(1, seconds=0.2)
    mail = SmtpMailResource(host=smtp_server.host, port=smtp_server.port, security="none", timeout_seconds=3)
    mail.send(make_message(to=["a@example.com"]))
    assert len(smtp_server.messages) == 1
    assert smtp_server.connections == 1


# -- (f) TLS and AUTH ------------------------------------------------------------------


def test_starttls_with_private_ca_and_login(smtp_server_factory):
    server = smtp_server_factory(tls="starttls", username="bg-ops", password="s3cret-Pass")
    mail = SmtpMailResource(
        host="127.0.0.1", port=server.port, security="starttls", username="bg-ops",
        password="s3cret-Pass", ca_file=server.cert_path, timeout_seconds=5,
    )
    assert mail.check_connection() == f"SMTP 127.0.0.1:{server.port} (starttls, with login)"
    with mail.connect() as conn:
        conn.send(make_message(to=["a@example.com"]))
        conn.send(make_message(to=["b@example.com"]))

    received = server.messages
    assert [r.rcpt_tos for r in received] == [("a@example.com",), ("b@example.com",)]
    assert all(r.tls and r.auth_login == "bg-ops" for r in received)
    assert server.connections == 2  # check_connection + the batch
    assert [ok for _, ok in server.auth_attempts] == [True, True]


def test_wrong_password_is_permanent_names_the_setting_and_closes_the_socket(smtp_server_factory):
    server = smtp_server_factory(tls="starttls", username="bg-ops", password="s3cret-Pass")
    mail = SmtpMailResource(
        host="127.0.0.1", port=server.port, security="starttls", username="bg-ops",
        password="wrong-Pass", ca_file=server.cert_path, timeout_seconds=5,
    )
    with pytest.raises(MailPermanentError, match="BG_OPS_SMTP_PASSWORD") as excinfo:
        mail.send(make_message(to=["a@example.com"]))

    assert excinfo.value.smtp_code == 535
    assert "wrong-Pass" not in chained_error_text(excinfo.value)
    assert server.messages == []
    assert server.auth_attempts and not any(ok for _, ok in server.auth_attempts)
    # The failed handshake must not leave the socket open (excinfo still holds the frames).
    wait_idle(server)


def test_certificate_not_trusted_is_permanent(smtp_server_factory):
    server = smtp_server_factory(tls="starttls")
    mail = SmtpMailResource(host="127.0.0.1", port=server.port, security="starttls", timeout_seconds=5)
    with pytest.raises(MailPermanentError, match="TLS"):
        mail.send(make_message(to=["a@example.com"]))
    assert server.messages == []
    wait_idle(server)


def test_starttls_requested_but_not_offered_is_permanent(smtp_server):
    mail = SmtpMailResource(host=smtp_server.host, port=smtp_server.port, security="starttls", timeout_seconds=5)
    with pytest.raises(MailPermanentError, match="BG_OPS_SMTP_SECURITY"):
        mail.send(make_message(to=["a@example.com"]))
    assert smtp_server.messages == []


def test_login_required_but_not_configured_is_permanent(smtp_server_factory):
    server = smtp_server_factory(username="bg-ops", password="pw")
    mail = SmtpMailResource(host=server.host, port=server.port, security="none", timeout_seconds=5)
    with pytest.raises(MailPermanentError) as excinfo:
        mail.send(make_message(to=["a@example.com"]))
    assert excinfo.value.smtp_code == 530
    assert server.messages == []


def test_implicit_tls_with_login(smtp_server_factory):
    server = smtp_server_factory(tls="ssl", username="bg-ops", password="pw")
    mail = SmtpMailResource(
        host="localhost", port=server.port, security="ssl", username="bg-ops", password="pw",
        ca_file=server.cert_path, timeout_seconds=5,
    )
    msg = make_message(to=["a@example.com"], bcc=["b@example.com"])
    mail.send(msg)
    (got,) = server.messages
    assert got.tls and got.auth_login == "bg-ops"
    assert got.rcpt_tos == ("a@example.com", "b@example.com")
    assert got.message["Message-ID"] == msg["Message-ID"]


# -- (g) local outbox ------------------------------------------------------------------


def test_outbox_writes_one_parseable_eml_per_message(tmp_path: Path):
    outbox = tmp_path / "outbox"  # created on first use
    mail = OutboxMailResource(outbox_dir=str(outbox))
    batch = [
        make_message(to=[f"parent{i}@example.com"], cc=["teacher@school.test"], bcc=["audit@agency.test"])
        for i in range(3)
    ]
    with mail.connect() as conn:
        for msg in batch:
            conn.send(msg)

    assert sorted(p.name for p in outbox.iterdir() if not p.name.endswith(".eml")) == []
    assert [p.name for p in outbox.iterdir() if p.name.startswith(".tmp-")] == []
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == 3
    parsed = {}
    for path in files:
        with path.open("rb") as fh:
            msg = BytesParser(policy=policy.default).parse(fh)
        parsed[msg["Message-ID"]] = msg
    assert set(parsed) == {m["Message-ID"] for m in batch}

    for i, sent in enumerate(batch):
        got = parsed[sent["Message-ID"]]
        assert got["Subject"] == SUBJECT
        assert str(got["From"]) == "Agentur Büro <office@agency.test>"
        assert header_addresses(got, "To") == [f"parent{i}@example.com"]
        assert header_addresses(got, "Cc") == ["teacher@school.test"]
        assert header_addresses(got, "Bcc") == ["audit@agency.test"]  # kept for the developer
        assert recipients_of(got) == recipients_of(sent)
        assert got.get_content_type() == "multipart/alternative"
        plain = got.get_body(preferencelist=("plain",))
        html = got.get_body(preferencelist=("html",))
        assert plain is not None and html is not None
        assert plain.get_content() == "Grüße: die Rechnung ist überfällig ✓\n"
        assert html.get_content() == "<p>Grüße: die Rechnung ist <b>überfällig</b> ✓</p>\n"


def test_outbox_keeps_identical_messages_apart(tmp_path: Path):
    mail = OutboxMailResource(outbox_dir=str(tmp_path))
    msg = make_message(to=["parent@example.com"], with_id=False)
    with mail.connect() as conn:
        conn.send(msg)
        conn.send(msg)
    assert len(list(tmp_path.glob("*.eml"))) == 2


def test_outbox_message_without_recipients_is_permanent_and_writes_nothing(tmp_path: Path):
    mail = OutboxMailResource(outbox_dir=str(tmp_path))
    msg = make_message(to=[])
    with pytest.raises(MailPermanentError, match="no recipients") as excinfo:
        mail.send(msg)
    assert excinfo.value.transient is False
    assert list(tmp_path.iterdir()) == []


def test_outbox_folder_that_cannot_be_created_is_permanent(tmp_path: Path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    mail = OutboxMailResource(outbox_dir=str(blocker / "outbox"))
    with pytest.raises(MailPermanentError, match="BG_OPS_OUTBOX_DIR"):
        mail.send(make_message(to=["a@example.com"]))
