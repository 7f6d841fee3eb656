"""A real SMTP server on loopback for tests, with fault injection.

Built on aiosmtpd's threaded ``Controller``: the server runs its own event loop in a
background thread and speaks real SMTP over a real TCP socket, so ``smtplib`` (and
``SmtpMailResource``) exercise their whole stack: greeting, EHLO, STARTTLS or implicit TLS,
AUTH, MAIL/RCPT/DATA, RSET, QUIT and reconnects.

Faults are queued per *transaction* (one MAIL FROM ... DATA exchange, i.e. one message
attempt): each MAIL FROM takes the next queued fault, which then fires at its ``stage``
("mail", "rcpt", "data_command": the DATA command itself, before 354, or "data": the end of
the message). A transaction that ends before reaching that stage (for example
every recipient refused) still used the fault up. A client that retries a message therefore
meets the *next* fault on its retry, so ``drop_next(2)`` defeats one reconnect.

All public methods may be called from the test thread while the server runs; shared state
is guarded by one lock and a condition for the ``wait_*`` helpers.

The listening socket is bound by us (port 0, then the kernel's choice) and handed to the
event loop, because ``Controller(port=0)`` does not work (ENVIRONMENT.md, SMTP).
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import ssl
import struct
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from bg_ops_tests.support.tls import make_self_signed_cert

Stage = Literal["mail", "rcpt", "data_command", "data"]
TlsMode = Literal["none", "starttls", "ssl"]

_STAGES = ("mail", "rcpt", "data_command", "data")
_DEFAULT_TEXT = {
    421: "4.3.2 Service not available, closing transmission channel",
    450: "4.2.1 Mailbox unavailable, try again later",
    451: "4.3.0 Local error in processing, try again later",
    452: "4.3.1 Insufficient system storage",
    550: "5.7.1 Message rejected",
    552: "5.3.4 Message size exceeds fixed limit",
    553: "5.1.3 Mailbox name not allowed",
    554: "5.3.0 Transaction failed",
}


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the server accepted (answered 250 to its DATA)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # exactly the bytes received between DATA and the final dot (dot-unstuffed)
    message: EmailMessage  # ``data`` parsed with ``email.policy.default``
    connection_id: int  # 1-based number of the SMTP connection (session) that delivered it
    tls: bool  # delivered over STARTTLS or implicit TLS
    auth_login: str | None  # the AUTH user of that connection, if any
    # RCPT TO and DATA had already arrived when MAIL FROM was read: the client pipelined them.
    pipelined: bool = False

    @property
    def session(self) -> int:
        """Alias of ``connection_id``."""
        return self.connection_id


@dataclass
class _Fault:
    kind: Literal["fail", "drop", "delay"]
    stage: Stage
    code: int = 0
    text: str = ""
    seconds: float = 0.0
    rst: bool = True


# -- server-side protocol ------------------------------------------------------------


class _FakeSMTP(SMTP):
    """aiosmtpd's protocol, one instance per TCP connection, reporting open/close."""

    def __init__(self, fake: FakeSmtpServer, handler: Any, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.fake = fake
        self.fake_registered = False
        self.fake_connection_id = 0
        self.fake_fault: _Fault | None = None
        self.fake_pipelined = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Called a second time after STARTTLS: still the same connection.
        if not self.fake_registered:
            self.fake_registered = True
            self.fake_connection_id = self.fake._on_connect(self)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self.fake._on_disconnect(self)

    def raw_transport(self) -> asyncio.BaseTransport | None:
        """The TCP transport (below TLS when STARTTLS was issued)."""
        return self._original_transport or self.transport

    async def smtp_DATA(self, arg: str) -> None:
        if self.envelope is not None and self.envelope.rcpt_tos:
            status = await self.fake._apply_fault(self, "data_command")
            if status is not None:
                self.fake_fault = None
                await self.push(status)
                return
        if self.fake.data_without_recipients and self.envelope is not None and not self.envelope.rcpt_tos:
            # A server breaking RFC 2920's SHOULD: 354 although no recipient was accepted.
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            lines = []
            while (line := await self._reader.readuntil(b"\r\n")) != b".\r\n":
                lines.append(line)
            self.fake._data_without_recipients(b"".join(lines))
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        await super().smtp_DATA(arg)

    def input_waiting(self) -> bytes:
        """What the client sent that the server has not read yet (asyncio's reader buffer)."""
        return bytes(getattr(self._reader, "_buffer", b""))

    def uses_tls(self) -> bool:
        transport = self.transport
        return transport is not None and transport.get_extra_info("ssl_object") is not None


class _Handler:
    def __init__(self, fake: FakeSmtpServer):
        self._fake = fake

    async def handle_EHLO(self, server: _FakeSMTP, session, envelope, hostname: str, responses: list[str]):
        session.host_name = hostname
        if self._fake.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: _FakeSMTP, session, envelope, address: str, mail_options):
        server.fake_pipelined = b"\r\nDATA\r\n" in b"\r\n" + server.input_waiting().upper()  # a DATA line
        if self._fake.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        server.fake_fault = self._fake._take_fault()
        status = await self._fake._apply_fault(server, "mail")
        if status is not None:
            server.fake_fault = None
            return status
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: _FakeSMTP, session, envelope, address: str, rcpt_options):
        status = await self._fake._apply_fault(server, "rcpt")
        if status is not None:
            return status
        code = self._fake._refused_code(address)
        if code is not None:
            enhanced = "5.1.1" if code >= 500 else "4.2.1"
            return f"{code} {enhanced} <{address}>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: _FakeSMTP, session, envelope):
        status = await self._fake._apply_fault(server, "data")
        server.fake_fault = None
        if status is not None:
            return status
        record_id = self._fake._record(server, session, envelope)
        return f"250 2.0.0 OK queued as fake-{record_id}"

    async def handle_RSET(self, server: _FakeSMTP, session, envelope):
        server.fake_fault = None
        return "250 OK"


# -- the server ----------------------------------------------------------------------


class _Controller(Controller):
    """Controller that serves on a socket we bound, with our protocol class."""

    def __init__(self, fake: FakeSmtpServer, sock: socket.socket, handler: Any, **kwargs: Any):
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._fake = fake
        self._sock = sock

    def factory(self) -> SMTP:
        return _FakeSMTP(self._fake, self.handler, loop=self.loop, **self.SMTP_kwargs)

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


class FakeSmtpServer:
    """A real SMTP server on 127.0.0.1 recording what it receives.

    ``tls``: "none" (plain), "starttls" (offers STARTTLS, not required) or "ssl" (implicit
    TLS from the first byte). ``cert_path`` is a self-signed certificate for localhost and
    127.0.0.1 that a client can trust as its CA file. With ``username`` set the server offers
    AUTH LOGIN and PLAIN (over plain TCP too) and refuses MAIL FROM before a successful
    AUTH with 530. ``pipelining`` (default on, as production relays) offers PIPELINING
    (RFC 2920); aiosmtpd reads pipelined commands one after another as they come.
    ``data_without_recipients`` makes it answer 354 to a DATA after every recipient was
    refused (RFC 2920 says it SHOULD NOT), read what follows up to the dot, keep it in
    ``bodies_without_recipients`` and answer 554.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        tls: TlsMode = "none",
        username: str | None = None,
        password: str | None = None,
        server_hostname: str = "localhost",
        idle_timeout: float = 60.0,
        pipelining: bool = True,
        data_without_recipients: bool = False,
    ):
        if tls not in ("none", "starttls", "ssl"):
            raise ValueError(f"tls must be none, starttls or ssl, not {tls!r}")
        self._bind_host = host
        self.tls: TlsMode = tls
        self.username = username
        self.password = password if password is not None else ""
        self._server_hostname = server_hostname
        self._idle_timeout = idle_timeout
        self.pipelining = pipelining
        self.data_without_recipients = data_without_recipients
        self._bodies_without_recipients: list[bytes] = []

        # Re-entrant so wait_until's predicate can use the public properties.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[ReceivedMessage] = []
        self._faults: deque[_Fault] = deque()
        self._refused: dict[str, int] = {}
        self._connections = 0
        self._counting = False
        self._active: set[_FakeSMTP] = set()
        self._auth_attempts: list[tuple[str, bool]] = []
        self._ids = itertools.count(1)

        self._controller: _Controller | None = None
        self._port: int | None = None
        self._tmpdir: Path | None = None
        self.cert_path: str | None = None
        self.key_path: str | None = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> FakeSmtpServer:
        if self._controller is not None:
            raise RuntimeError("FakeSmtpServer already started")
        server_ctx: ssl.SSLContext | None = None
        if self.tls != "none":
            self._tmpdir = Path(tempfile.mkdtemp(prefix="fake-smtp-"))
            cert, key = make_self_signed_cert(self._tmpdir, "fake-smtp")
            self.cert_path, self.key_path = str(cert), str(key)
            server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server_ctx.load_cert_chain(cert, key)

        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
        # without it the second of two pipelined replies waits for the client's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._bind_host, 0))
        self._port = sock.getsockname()[1]

        kwargs: dict[str, Any] = {
            "server_hostname": self._server_hostname,
            "ready_timeout": 5.0,
            "timeout": self._idle_timeout,
            "enable_SMTPUTF8": True,
        }
        if self.tls == "ssl":
            kwargs["ssl_context"] = server_ctx
        elif self.tls == "starttls":
            kwargs["tls_context"] = server_ctx
        if self.username is not None:
            kwargs["authenticator"] = self._authenticate
            # Over implicit TLS aiosmtpd does not know the channel is encrypted, and in
            # plain mode the test wants AUTH anyway.
            kwargs["auth_require_tls"] = self.tls == "starttls"
        controller = _Controller(self, sock, _Handler(self), **kwargs)
        try:
            controller.start()
        except BaseException:
            sock.close()
            self._cleanup_tmp()
            raise
        self._controller = controller
        # The controller's start-up probe connection is not a client session.
        with self._lock:
            self._connections = 0
            self._counting = True
        return self

    def stop(self) -> None:
        controller = self._controller
        if controller is None:
            return
        self._controller = None
        with self._lock:
            self._counting = False
        try:
            # Close client connections still open, so their sockets do not outlive the
            # loop and clients blocked on a reply see the connection end.
            future = asyncio.run_coroutine_threadsafe(self._close_all(abort=True), controller.loop)
            future.result(timeout=5)
        except Exception:  # the loop may already be gone; stopping matters more
            pass
        controller.stop()
        self._cleanup_tmp()

    def __enter__(self) -> FakeSmtpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return self._bind_host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeSmtpServer not started")
        return self._port

    @property
    def running(self) -> bool:
        return self._controller is not None

    # -- what was received --------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def bodies_without_recipients(self) -> list[bytes]:
        with self._lock:
            return list(self._bodies_without_recipients)

    @property
    def connections(self) -> int:
        """SMTP connections (sessions) opened by clients since start or ``reset``."""
        with self._lock:
            return self._connections

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._active)

    @property
    def auth_attempts(self) -> list[tuple[str, bool]]:
        """``(mechanism, success)`` for every AUTH exchange that reached the check."""
        with self._lock:
            return list(self._auth_attempts)

    def wait_until(self, predicate: Callable[[FakeSmtpServer], bool], timeout: float = 5.0) -> bool:
        """Wait (without polling sleeps) until ``predicate(self)`` holds; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout=timeout)

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= count, timeout=timeout):
                raise TimeoutError(f"expected {count} message(s), got {len(self._messages)}")
            return list(self._messages)

    # -- fault injection ------------------------------------------------------------

    def fail_next(self, n: int = 1, code: int = 451, message: str | None = None, stage: Stage = "data") -> None:
        """Answer ``code`` at ``stage`` for the next ``n`` transactions.

        At "rcpt" every RCPT TO of the transaction gets the code. 421 also closes the
        connection after answering, as a real server does.
        """
        if not 400 <= code <= 599:
            raise ValueError("code must be an SMTP 4xx or 5xx reply code")
        text = message if message is not None else _DEFAULT_TEXT.get(code, f"{code // 100}.0.0 Injected failure")
        self._queue(n, _Fault("fail", _check_stage(stage), code=code, text=text))

    def drop_next(self, n: int = 1, stage: Stage = "data", rst: bool = True) -> None:
        """Drop the TCP connection at ``stage`` of the next ``n`` transactions, before answering.

        At "data" the whole message has been received but not acknowledged. ``rst`` sends
        a TCP reset instead of an orderly FIN.
        """
        self._queue(n, _Fault("drop", _check_stage(stage), rst=rst))

    def delay_next(self, n: int, seconds: float, stage: Stage = "data") -> None:
        """Wait ``seconds`` before answering ``stage`` of the next ``n`` transactions.

        If the client gives up (closes the connection) while the server waits, the
        transaction is abandoned and the message is not recorded.
        """
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._queue(n, _Fault("delay", _check_stage(stage), seconds=seconds))

    def refuse_recipients(self, refusals: Mapping[str, int]) -> None:
        """Refuse these recipients at RCPT TO with the given code, until ``reset``."""
        with self._lock:
            for addr, code in refusals.items():
                if not 400 <= code <= 599:
                    raise ValueError("code must be an SMTP 4xx or 5xx reply code")
                self._refused[addr.strip().lower()] = code

    def close_connections(self, abort: bool = False) -> None:
        """Close every client connection now, as a relay's idle timeout does."""
        controller = self._controller
        if controller is None:
            raise RuntimeError("FakeSmtpServer not started")
        asyncio.run_coroutine_threadsafe(self._close_all(abort=abort), controller.loop).result(timeout=5)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def reset(self) -> None:
        """Forget received messages, queued faults, refusals and the connection count."""
        with self._changed:
            self._messages.clear()
            self._faults.clear()
            self._refused.clear()
            self._auth_attempts.clear()
            self._connections = 0
            self._changed.notify_all()

    # -- called on the server's loop thread ---------------------------------------------

    def _queue(self, n: int, fault: _Fault) -> None:
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            for _ in range(n):
                self._faults.append(_Fault(**fault.__dict__))

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _refused_code(self, address: str) -> int | None:
        with self._lock:
            return self._refused.get(address.strip().lower())

    async def _apply_fault(self, server: _FakeSMTP, stage: Stage) -> str | None:
        """Run the transaction's fault if it belongs to ``stage``; a status string answers."""
        fault = server.fake_fault
        if fault is None or fault.stage != stage:
            return None
        if fault.kind == "delay":
            server.fake_fault = None  # once per transaction, then carry on normally
            await asyncio.sleep(fault.seconds)
            return None
        if fault.kind == "drop":
            server.fake_fault = None
            transport = server.raw_transport()
            if transport is not None:
                if fault.rst:
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            # connection_lost() cancels this handler; never answer.
            await asyncio.sleep(3600)
            return "421 4.4.2 connection dropped"  # pragma: no cover
        status = f"{fault.code} {fault.text}"
        if fault.code == 421 and server.transport is not None:
            # The reply is written before this callback runs (no await in between).
            asyncio.get_running_loop().call_soon(server.transport.close)
        return status

    def _record(self, server: _FakeSMTP, session: Any, envelope: Any) -> int:
        data = bytes(envelope.original_content or b"")
        parsed = BytesParser(policy=policy.default).parsebytes(data)
        auth = session.auth_data if session.authenticated else None
        record = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            message=parsed,  # type: ignore[arg-type]
            connection_id=server.fake_connection_id,
            tls=server.uses_tls(),
            auth_login=auth if isinstance(auth, str) else None,
            pipelined=server.fake_pipelined,
        )
        with self._changed:
            self._messages.append(record)
            self._changed.notify_all()
            return next(self._ids)

    def _data_without_recipients(self, body: bytes) -> None:
        with self._changed:
            self._bodies_without_recipients.append(body)
            self._changed.notify_all()

    def _on_connect(self, server: _FakeSMTP) -> int:
        with self._changed:
            self._active.add(server)
            if not self._counting:
                return 0
            self._connections += 1
            self._changed.notify_all()
            return self._connections

    def _on_disconnect(self, server: _FakeSMTP) -> None:
        with self._changed:
            self._active.discard(server)
            self._changed.notify_all()

    def _authenticate(self, server, session, envelope, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.username is not None
            and auth_data.login == self.username.encode()
            and auth_data.password == self.password.encode()
        )
        with self._changed:
            self._auth_attempts.append((mechanism, ok))
            self._changed.notify_all()
        if ok:
            return AuthResult(success=True, auth_data=self.username)
        return AuthResult(success=False, handled=False)

    async def _close_all(self, abort: bool) -> None:
        with self._lock:
            servers = list(self._active)
        for server in servers:
            transport = server.raw_transport() if abort else server.transport
            if transport is not None:
                if abort:
                    transport.abort()
                else:
                    transport.close()
        # Let connection_lost callbacks run before the loop is stopped.
        for _ in range(3):
            await asyncio.sleep(0)

    def _cleanup_tmp(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def _check_stage(stage: str) -> Stage:
    if stage not in _STAGES:
        raise ValueError(f"stage must be one of {_STAGES}, not {stage!r}")
    return stage  # type: ignore[return-value]


