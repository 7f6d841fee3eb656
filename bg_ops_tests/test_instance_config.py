"""Dagster instance settings (P3): the shared dagster.yaml and the production file on PostgreSQL."""

import shutil
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = yaml.safe_load((REPO / "dagster.yaml").read_text())
PRODUCTION = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())


def _instance(home: Path, source: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, home / "dagster.yaml")
    return dg.DagsterInstance.from_config(str(home))


def test_shared_settings_load_into_an_instance(tmp_path):
    instance = _instance(tmp_path / "home", REPO / "dagster.yaml")
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    assert instance.run_monitoring_enabled
    limits = {item["key"]: item["limit"] for item in instance.get_concurrency_config().run_queue_config.tag_concurrency_limits}
    assert limits == {"bg_ops/singleton": 1, "bg_ops/tenant": 2}


def test_production_file_repeats_every_shared_setting():
    # DAGSTER_HOME replaces ./dagster.yaml entirely, so the production file must carry all of it.
    assert {k: v for k, v in PRODUCTION.items() if k != "storage"} == SHARED
    assert PRODUCTION["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"


def test_a_job_runs_on_an_instance_stored_in_postgresql(pg_server, pg_url, tmp_path, monkeypatch):
    from bg_ops.db import migrate
    from bg_ops.db.app_schema import Company
    from bg_ops.db.engine import get_engine, session_scope

    app = get_engine(pg_url)
    migrate.create_app_schema(app)
    migrate.upgrade(app)
    with session_scope(app) as s:
        s.add(Company(id=1, name="Acme", slug="acme"))

    dagster_db = pg_server.create_database("dagster_storage")
    for name, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(pg_server.port),
                        "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "unused-trust-auth",
                        "DAGSTER_PG_DB": dagster_db, "BG_OPS_DATABASE_URL": pg_url}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)

    from bg_ops.definitions import defs

    instance = _instance(tmp_path / "home", REPO / "deploy" / "dagster.yaml")
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        instance.add_dynamic_partitions("tenants", ["acme"])
        job = defs().resolve_job_def("tenant_summary_job")
        result = job.execute_in_process(instance=instance, partition_key="acme")
        assert result.success
        run_id = result.run_id
    finally:
        instance.dispose()

    # Read the run back from PostgreSQL itself, not through the instance that wrote it.
    engine = sa.create_engine(pg_server.url(dagster_db))
    with engine.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM runs WHERE run_id = :r"), {"r": run_id}).scalar_one()
        events = conn.execute(sa.text("SELECT count(*) FROM event_logs WHERE run_id = :r"), {"r": run_id}).scalar_one()
    engine.dispose()
    assert status == "SUCCESS" and events > 5
