"""Pytest plugin: the fake Dropbox server on loopback and a ``DropboxStorageResource`` on it.

List ``"bg_ops_tests.fakes.dropbox_fixtures"`` in ``pytest_plugins``. The SDK reads its API
hosts from ``DROPBOX_*_HOST`` when ``dropbox`` is first imported, so this module reserves a
loopback port and sets those variables *at import time*, before anything imports ``dropbox``
(it refuses to load afterwards). Subprocesses started by tests inherit the variables and
reach the same server.

Fixtures:

- ``dropbox_server``: the session-wide ``FakeDropboxServer``;
- ``dropbox_fake``: the same server, reset to empty for this test (use this one);
- ``dropbox_sleep``: a ``RecordingSleep`` — ``.calls`` lists the waits asked for;
- ``dropbox_storage``: ``DropboxStorageResource(root="/bg_ops")`` with refresh-token
  credentials, trusting the fake's certificate, sleeping through ``dropbox_sleep``;
- ``make_dropbox_storage(**overrides)``: the same with other settings
  (``single_upload_limit=...``, ``max_rate_limit_retries=...``, ``refresh_token=None`` …).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bg_ops_tests.fakes.dropbox_server import FakeDropboxServer

_HOST_VARS = (
    "DROPBOX_API_HOST",
    "DROPBOX_API_CONTENT_HOST",
    "DROPBOX_API_NOTIFY_HOST",
    "DROPBOX_WEB_HOST",
)


def _reserve_port() -> socket.socket:
    """A bound loopback socket: the server takes it over later, so nobody else can."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


if "dropbox" in sys.modules:
    raise RuntimeError(
        "bg_ops_tests.fakes.dropbox_fixtures must be loaded before anything imports `dropbox`: "
        "the SDK reads DROPBOX_API_HOST and friends once, at import. List the plugin first "
        "in pytest_plugins (root conftest) and keep `import dropbox` out of module level."
    )

_RESERVED = _reserve_port()
DROPBOX_PORT = _RESERVED.getsockname()[1]
DROPBOX_HOST = f"127.0.0.1:{DROPBOX_PORT}"
for _name in _HOST_VARS:
    os.environ[_name] = DROPBOX_HOST


class RecordingSleep:
    """Stands in for ``time.sleep``: remembers how long it was asked to wait, never waits."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)

    @property
    def total(self) -> float:
        return sum(self.calls)


@pytest.fixture(scope="session")
def dropbox_server() -> Iterator[FakeDropboxServer]:
    server = FakeDropboxServer(sock=_RESERVED).start()
    yield server
    server.stop()


@pytest.fixture
def dropbox_fake(dropbox_server: FakeDropboxServer) -> Iterator[FakeDropboxServer]:
    """The fake Dropbox server, empty: no files, tokens, failures or recorded requests."""
    dropbox_server.reset()
    yield dropbox_server
    dropbox_server.reset()


@pytest.fixture
def dropbox_sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def make_dropbox_storage(
    dropbox_fake: FakeDropboxServer, dropbox_sleep: RecordingSleep
) -> Callable[..., Any]:
    from bg_ops.resources.dropbox_storage import DropboxStorageResource

    def make(**overrides: Any) -> DropboxStorageResource:
        settings: dict[str, Any] = {
            "root": "/bg_ops",
            "app_key": dropbox_fake.app_key,
            "app_secret": dropbox_fake.app_secret,
            "refresh_token": dropbox_fake.refresh_token,
            "ca_certs": dropbox_fake.cert_path,
            "timeout_seconds": 10,
        }
        settings.update(overrides)
        resource = DropboxStorageResource(**settings)
        resource.set_sleep(dropbox_sleep)
        return resource

    return make


@pytest.fixture
def dropbox_storage(make_dropbox_storage: Callable[..., Any]):
    """``DropboxStorageResource`` under ``/bg_ops`` on the fake server (refresh-token auth)."""
    return make_dropbox_storage()
