"""Pytest plugin: a real SMTP server on loopback and an ``SmtpMailResource`` pointed at it.

List ``"bg_ops_tests.fakes.smtp_fixtures"`` in ``pytest_plugins``. The server is
function-scoped (start and stop take a few milliseconds), so faults, messages and the
connection count never leak between tests. Servers with STARTTLS, implicit TLS or AUTH:
build a ``FakeSmtpServer(tls=..., username=..., password=...)`` in the test, or use
``smtp_server_factory``, which stops whatever it started.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bg_ops.resources.mail import SmtpMailResource
from bg_ops_tests.fakes.smtp_server import FakeSmtpServer


@pytest.fixture
def smtp_server_factory() -> Iterator[Callable[..., FakeSmtpServer]]:
    started: list[FakeSmtpServer] = []

    def make(**kwargs: Any) -> FakeSmtpServer:
        server = FakeSmtpServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()


@pytest.fixture
def smtp_server(smtp_server_factory: Callable[..., FakeSmtpServer]) -> FakeSmtpServer:
    """A plain (no TLS, no AUTH) SMTP server on 127.0.0.1, fresh for each test."""
    return smtp_server_factory()


@pytest.fixture
def smtp_mail(smtp_server: FakeSmtpServer) -> SmtpMailResource:
    """``SmtpMailResource`` delivering to ``smtp_server``."""
    return SmtpMailResource(
        host=smtp_server.host,
        port=smtp_server.port,
        security="none",
        timeout_seconds=5,
        mail_from="bg_ops <no-reply@bg-ops.test>",
    )
