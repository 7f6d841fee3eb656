"""Mail: SMTP in production, ``.eml`` files in a local outbox folder as the embedded default.

A job opens one connection for a batch (``with mail.connect() as conn: conn.send(msg)``) so a
batch of messages costs one SMTP handshake. Failures are classified once, here, so the
email queue only has to ask ``exc.transient``:

- transient: connection refused or dropped, timeouts, SMTP 4xx;
- permanent: SMTP 5xx, every recipient refused, a message without recipients.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import smtplib
import socket
import ssl
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Literal, NoReturn

import dagster as dg

from bg_ops.settings import BARE_ADDRESS
from bg_ops.util.masking import mask_emails, mask_emails_in_text

log = logging.getLogger(__name__)

SmtpSecurity = Literal["none", "starttls", "ssl"]


class MailError(Exception):
    transient = False

    def __init__(self, message: str, *, smtp_code: int | None = None):
        super().__init__(mask_emails_in_text(message))
        self.smtp_code = smtp_code


class MailTransientError(MailError):
    transient = True


class MailPermanentError(MailError):
    transient = False


def recipients_of(message: EmailMessage) -> list[str]:
    """Envelope recipients: To, Cc and Bcc (Bcc is stripped from the headers sent)."""
    fields = message.get_all("To", []) + message.get_all("Cc", []) + message.get_all("Bcc", [])
    return [addr for _, addr in getaddresses(fields) if addr]


class MailConnection:
    """One open channel for a batch; ``send`` raises ``MailError`` subclasses."""

    def send(self, message: EmailMessage) -> None:
        raise NotImplementedError

    def send_raw(self, envelope_from: str, recipients: list[str], data: bytes) -> None:
        """Send an already built RFC 5322 message (CRLF line ends, Bcc not in the headers)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class MailResource(dg.ConfigurableResource):
    """Sends mail. Subclasses choose the backend; ``mail_from`` is the default sender."""

    mail_from: str = "bg_ops <no-reply@localhost>"
    admin_emails: list[str] = []  # operators told about failures (BG_OPS_ADMIN_EMAILS)

    def describe(self) -> str:
        raise NotImplementedError

    def _open(self) -> MailConnection:
        raise NotImplementedError

    @contextmanager
    def connect(self) -> Iterator[MailConnection]:
        conn = self._open()
        try:
            yield conn
        finally:
            conn.close()

    def send(self, message: EmailMessage) -> None:
        with self.connect() as conn:
            conn.send(message)

    def check_connection(self) -> str:
        with self.connect():
            pass
        return self.describe()


# -- SMTP ------------------------------------------------------------------------------


def _classify_smtp(exc: BaseException, where: str) -> MailError:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        text = f"{where}: all {len(codes)} recipient(s) refused (codes {sorted(set(codes))})"
        if codes and all(400 <= c < 500 for c in codes):
            return MailTransientError(text, smtp_code=codes[0])
        return MailPermanentError(text, smtp_code=codes[0] if codes else None)
    if isinstance(exc, smtplib.SMTPResponseException):
        msg = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        text = f"{where}: SMTP {exc.smtp_code} {msg}".strip()
        if 400 <= exc.smtp_code < 500:
            return MailTransientError(text, smtp_code=exc.smtp_code)
        return MailPermanentError(text, smtp_code=exc.smtp_code)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        # smtplib reports a read timeout as "Connection unexpectedly closed: timed out".
        if "timed out" in str(exc):
            return MailTransientError(f"{where}: timed out waiting for the server")
        return MailTransientError(f"{where}: server closed the connection")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return MailTransientError(f"{where}: timed out")
    if isinstance(exc, ssl.SSLError):
        return MailPermanentError(f"{where}: TLS error {exc.reason or exc}")
    if isinstance(exc, OSError):
        return MailTransientError(f"{where}: {exc.strerror or exc.__class__.__name__}")
    return MailTransientError(f"{where}: {exc.__class__.__name__}: {exc}")


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _data_payload(msg: bytes) -> bytes:
    """``msg`` as DATA sends it: lines starting with "." doubled, ended by CRLF "." CRLF."""
    if msg.startswith(b".") or b"\n." in msg:
        msg = _LEADING_DOT.sub(b"..", msg)
    return msg + (b".\r\n" if msg.endswith(b"\r\n") else b"\r\n.\r\n")


class _LighterCommands:
    """smtplib's client without the costs it pays on every message where they change nothing.

    ``mail`` and ``rcpt`` quote each address with ``email.utils.parseaddr`` (~30 us an
    address); for a bare address (``BARE_ADDRESS``, all bg_ops sends: parsed when queued) that
    parser returns it as it is, so ``<address>`` is written at once. ``data`` dot-stuffs the
    message with a regular expression over every byte (~15 us a message); a message with no
    line starting with "." (a built message: headers and base64) is sent as it is
    (``_data_payload``). Everything else — SMTPUTF8, any other address, text messages — goes
    through smtplib's own code, as do the replies and their errors. B1 measured the client's
    Python as a third of the drain's work on the sending thread.

    ``sendmail`` pipelines (RFC 2920) when the server offers PIPELINING, as production relays
    do, and ``pipelining`` is on: MAIL FROM, every RCPT TO and DATA leave in one write and
    their replies are read together, then the message and its final dot: two round trips a
    message instead of three plus one a recipient. It raises what smtplib's ``sendmail``
    raises for the same replies (and returns the refused recipients the same way), so the
    caller cannot tell the two apart except by time; it reads every reply of the group
    before raising, so the connection stays in step for the RSET that follows.
    """

    pipelining = True

    def mail(self, sender, options=()):
        if not BARE_ADDRESS.fullmatch(sender) or any(o.lower() == "smtputf8" for o in options):
            return super().mail(sender, options)
        self.putcmd("mail", f"FROM:<{sender}>{' ' + ' '.join(options) if options and self.does_esmtp else ''}")
        return self.getreply()

    def rcpt(self, recip, options=()):
        if not BARE_ADDRESS.fullmatch(recip):
            return super().rcpt(recip, options)
        self.putcmd("rcpt", f"TO:<{recip}>{' ' + ' '.join(options) if options and self.does_esmtp else ''}")
        return self.getreply()

    def data(self, msg):
        if not isinstance(msg, bytes) or self.debuglevel:
            return super().data(msg)
        self.putcmd("data")
        code, reply = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        self.send(_data_payload(msg))
        return self.getreply()

    def sendmail(self, from_addr, to_addrs, msg, mail_options=(), rcpt_options=()):
        if isinstance(to_addrs, str):
            to_addrs = [to_addrs]
        if (
            not self.pipelining or mail_options or rcpt_options or self.debuglevel or not to_addrs
            or not isinstance(msg, bytes) or not self.does_esmtp or not self.has_extn("pipelining")
            or not BARE_ADDRESS.fullmatch(from_addr) or not all(BARE_ADDRESS.fullmatch(a) for a in to_addrs)
        ):
            return super().sendmail(from_addr, to_addrs, msg, mail_options, rcpt_options)
        return self._sendmail_pipelined(from_addr, list(to_addrs), msg)

    def _sendmail_pipelined(self, sender: str, recipients: list[str], msg: bytes) -> dict:
        size = f" SIZE={len(msg)}" if self.has_extn("size") else ""
        group = [f"MAIL FROM:<{sender}>{size}\r\n", *(f"RCPT TO:<{r}>\r\n" for r in recipients), "DATA\r\n"]
        self.send("".join(group))
        replies: list[tuple[int, bytes]] = []
        for _ in group:
            replies.append(self.getreply())
            if replies[-1][0] == 421:  # the server closes the connection after 421
                self.close()
                break
        mail, rcpts = replies[0], replies[1 : 1 + len(recipients)]
        refused = {r: reply for r, reply in zip(recipients, rcpts, strict=False) if reply[0] not in (250, 251)}
        none_accepted = not any(code in (250, 251) for code, _ in rcpts)
        closed = len(replies) < len(group)
        if not closed and replies[-1][0] == 354 and (mail[0] != 250 or none_accepted):
            # RFC 2920 3.1: DATA accepted with nothing to send: an empty message, never delivered.
            self.send(b".\r\n")
            self.getreply()
        if mail[0] != 250:
            raise smtplib.SMTPSenderRefused(mail[0], mail[1], sender)
        if closed or none_accepted:
            raise smtplib.SMTPRecipientsRefused(refused)
        data = replies[-1]
        if data[0] != 354:
            raise smtplib.SMTPDataError(*data)
        self.send(_data_payload(msg))
        code, reply = self.getreply()
        if code != 250:
            if code == 421:
                self.close()
            raise smtplib.SMTPDataError(code, reply)
        return refused


class _Smtp(_LighterCommands, smtplib.SMTP):
    pass


class _SmtpSsl(_LighterCommands, smtplib.SMTP_SSL):
    pass


class _SmtpConnection(MailConnection):
    def __init__(self, resource: SmtpMailResource):
        self._resource = resource
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        r = self._resource
        where = f"SMTP {r.host}:{r.port}"
        smtp: smtplib.SMTP | None = None
        try:
            if r.security == "ssl":
                smtp = _SmtpSsl(r.host, r.port, timeout=r.timeout_seconds, context=r._ssl_context())
            else:
                smtp = _Smtp(r.host, r.port, timeout=r.timeout_seconds)
            smtp.pipelining = r.pipelining
            smtp.ehlo()
            if r.security == "starttls":
                smtp.starttls(context=r._ssl_context())
                smtp.ehlo()
            if r.username:
                smtp.login(r.username, r.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            _close_quietly(smtp)
            raise MailPermanentError(
                f"{where}: login refused (SMTP {exc.smtp_code}): check BG_OPS_SMTP_USERNAME "
                "and BG_OPS_SMTP_PASSWORD",
                smtp_code=exc.smtp_code,
            ) from None  # the server's text may quote the login, often an address
        except smtplib.SMTPNotSupportedError as exc:
            _close_quietly(smtp)
            raise MailPermanentError(
                f"{where}: server does not support STARTTLS or AUTH: check BG_OPS_SMTP_SECURITY"
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            # A half-open session (greeting read, TLS or login failed) must not keep its
            # socket until garbage collection.
            _close_quietly(smtp)
            _raise_classified(exc, f"{where} connect")
        return smtp

    def send(self, message: EmailMessage) -> None:
        sender = _addr(message.get("Sender") or message.get("From") or self._resource.mail_from)
        self._transmit(lambda smtp, to: smtp.send_message(message, from_addr=sender, to_addrs=to),
                       recipients_of(message))

    def send_raw(self, envelope_from: str, recipients: list[str], data: bytes) -> None:
        self._transmit(lambda smtp, to: smtp.sendmail(envelope_from, to, data), recipients)

    def _transmit(self, do, recipients: list[str]) -> None:
        # An address in both To and Cc is one envelope recipient: listed twice, its refusal
        # counted once would pass for "some recipients accepted" (smtplib counts so too).
        recipients = list(dict.fromkeys(recipients))
        if not recipients:
            raise MailPermanentError("message has no recipients")
        # One reconnect when the server dropped the idle connection between two messages.
        for attempt in (1, 2):
            if self._smtp is None:
                self._smtp = self._connect()
            try:
                refused = do(self._smtp, recipients)
            except smtplib.SMTPServerDisconnected as exc:
                self._drop()
                if attempt == 1:
                    continue
                _raise_classified(exc, "SMTP send")
            except (smtplib.SMTPException, OSError) as exc:
                if not isinstance(exc, smtplib.SMTPResponseException | smtplib.SMTPRecipientsRefused):
                    self._drop()
                else:
                    self._reset()
                _raise_classified(exc, "SMTP send")
            if refused:
                # Some recipients were accepted: the message is delivered to them and the
                # refusals are reported, not retried (a retry would duplicate the mail).
                codes = sorted({code for code, _ in refused.values()})
                log.warning(
                    "SMTP accepted the message for %d of %d recipient(s); refused %s (codes %s)",
                    len(recipients) - len(refused),
                    len(recipients),
                    mask_emails(refused),
                    codes,
                )
            return

    def _reset(self) -> None:
        try:
            if self._smtp is not None:
                self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            except OSError:
                pass
        self._smtp = None

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self._drop()


def _close_quietly(smtp: smtplib.SMTP | None) -> None:
    if smtp is not None:
        try:
            smtp.close()
        except OSError:
            pass


def _raise_classified(exc: BaseException, where: str) -> NoReturn:
    """Raise the ``MailError`` for ``exc``.

    smtplib's exceptions carry recipient addresses (``SMTPRecipientsRefused`` is a dict of
    them) and server replies quoting them, so they are not chained: Dagster and logging
    print the whole chain. The masked text and ``smtp_code`` keep what matters.
    """
    error = _classify_smtp(exc, where)
    if isinstance(exc, smtplib.SMTPException):
        raise error from None
    raise error from exc


def _addr(header_value: str) -> str:
    pairs = getaddresses([str(header_value)])
    return pairs[0][1] if pairs and pairs[0][1] else str(header_value)


class SmtpMailResource(MailResource):
    """Production mail over SMTP (``BG_OPS_SMTP_*``): STARTTLS or implicit TLS, optional login."""

    host: str
    port: int = 587
    security: SmtpSecurity = "starttls"
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = 30.0
    # Pipeline MAIL/RCPT/DATA (RFC 2920) when the server offers it; off for a relay that
    # offers it and then mishandles it.
    pipelining: bool = True
    ca_file: str | None = None  # trust a private CA (tests, internal relays)

    def describe(self) -> str:
        auth = "with login" if self.username else "without login"
        pipelining = "" if self.pipelining else ", pipelining off"
        return f"SMTP {self.host}:{self.port} ({self.security}, {auth}{pipelining})"

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
        return ctx

    def _open(self) -> MailConnection:
        return _SmtpConnection(self)

    def check_connection(self) -> str:
        conn = _SmtpConnection(self)
        conn._smtp = conn._connect()
        conn.close()
        return self.describe()


# -- local outbox ----------------------------------------------------------------------


class _OutboxConnection(MailConnection):
    def __init__(self, folder: Path):
        self._folder = folder
        self._folder.mkdir(parents=True, exist_ok=True)

    def send_raw(self, envelope_from: str, recipients: list[str], data: bytes) -> None:
        if not recipients:
            raise MailPermanentError("message has no recipients")
        # Bcc is not in a raw message's headers: record the envelope so the file shows everyone.
        envelope = (
            f"X-Bg-Ops-Envelope-From: {envelope_from}\r\n"
            f"X-Bg-Ops-Envelope-To: {', '.join(recipients)}\r\n"
        ).encode()
        write_eml(self._folder, None, envelope + data)

    def send(self, message: EmailMessage) -> None:
        if not recipients_of(message):
            raise MailPermanentError("message has no recipients")
        # The file keeps any Bcc header (unlike SMTP, which strips it) so a developer
        # reading the outbox can see every recipient.
        write_eml(self._folder, message)

    def close(self) -> None:
        pass


def write_eml(folder: Path, message: EmailMessage | None, data: bytes | None = None) -> Path:
    """Write one message atomically (temporary file, then rename) and return its path."""
    if data is None:
        data = message.as_bytes()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    # Content digest for readers, random suffix so identical messages never overwrite each other.
    name = f"{stamp}-{hashlib.sha1(data).hexdigest()[:10]}-{uuid.uuid4().hex[:6]}.eml"
    final = folder / name
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".eml")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


class OutboxMailResource(MailResource):
    """Embedded default: each message becomes an RFC 5322 ``.eml`` file in ``outbox_dir``."""

    outbox_dir: str

    def describe(self) -> str:
        return f"local outbox {self.outbox_dir}"

    def _open(self) -> MailConnection:
        try:
            return _OutboxConnection(Path(self.outbox_dir))
        except OSError as exc:
            raise MailPermanentError(
                f"cannot write to the outbox folder {self.outbox_dir}: {exc.strerror or exc}; "
                "check BG_OPS_OUTBOX_DIR"
            ) from exc
