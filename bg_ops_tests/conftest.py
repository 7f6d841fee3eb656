"""Shared fixtures: real PostgreSQL beside SQLite, SMTP and Dropbox test servers."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Test-server plugins. dropbox_fixtures must load before anything imports `dropbox`: it
# points the SDK's hosts at the loopback test server through environment variables.
pytest_plugins = [
    name
    for name in ("bg_ops_tests.fakes.dropbox_fixtures", "bg_ops_tests.fakes.smtp_fixtures")
    if importlib.util.find_spec(name) is not None
]

from bg_ops_tests.support.postgres_server import serve_postgres  # noqa: E402

BG_OPS_ENV = [name for name in os.environ if name.startswith(("BG_OPS_", "DROPBOX_APP", "DROPBOX_REFRESH", "DROPBOX_ACCESS"))]


@pytest.fixture(autouse=True)
def _clean_bg_ops_env(monkeypatch):
    """Tests start from the embedded default, whatever the developer's shell exports."""
    for name in BG_OPS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def pg_server():
    if os.environ.get("BG_OPS_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("PostgreSQL tests skipped on request (BG_OPS_TEST_SKIP_POSTGRES=1)")
    yield from serve_postgres()


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty PostgreSQL database for one test."""
    from bg_ops.db.engine import dispose_engines

    name = pg_server.create_database()
    yield pg_server.url(name)
    dispose_engines()
    pg_server.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty application database, once on SQLite and once on PostgreSQL."""
    from bg_ops.db.engine import dispose_engines

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        dispose_engines()
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def db_engine(db_url):
    """An engine on a database with the application schema and bg_ops's migrations applied."""
    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine

    engine = get_engine(db_url)
    migrate.create_app_schema(engine)
    migrate.upgrade(engine)
    return engine
