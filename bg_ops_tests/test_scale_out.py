"""Scale-out (PRODUCT.md P8): the deploy/ examples validate, and the webserver, the daemon and a
code server run as separate processes sharing an instance on PostgreSQL."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from bg_ops_tests.support.postgres_server import free_port
from bg_ops_tests.support.waiting import WaitTimeout, wait_for
from bg_ops_tests.support.dagster_dev import graphql, stop_process_group

REPO = Path(__file__).resolve().parents[1]
SHARED = yaml.safe_load((REPO / "dagster.yaml").read_text())
K8S = yaml.safe_load((REPO / "deploy" / "dagster-k8s.yaml").read_text())
HELM = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
HAS_DAGSTER_K8S = importlib.util.find_spec("dagster_k8s") is not None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _camel_keys(value):
    if isinstance(value, dict):
        return {_camel(k) if "_" in k else k: _camel_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return value


def test_k8s_instance_file_repeats_every_shared_setting():
    # DAGSTER_HOME replaces ./dagster.yaml entirely, so the Kubernetes file must carry all of it.
    assert {k: v for k, v in K8S.items() if k not in ("storage", "run_launcher")} == SHARED
    assert K8S["storage"] == yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())["storage"]
    assert K8S["run_launcher"]["class"] == "K8sRunLauncher"


def test_helm_values_carry_the_shared_settings_the_charts_way():
    """The chart writes the instance's dagster.yaml from its values: same limits, retries,
    monitoring and retention as ../dagster.yaml, spelled in camelCase."""
    assert HELM["concurrency"]["enabled"] is True
    assert HELM["concurrency"]["runs"] == _camel_keys(SHARED["concurrency"]["runs"])
    assert HELM["concurrency"]["pools"] == _camel_keys(SHARED["concurrency"]["pools"])
    # Limits in both places are an error in the chart and in Dagster.
    assert not HELM["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    daemon = HELM["dagsterDaemon"]
    assert daemon["runRetries"] == _camel_keys(SHARED["run_retries"])
    assert daemon["runMonitoring"] == _camel_keys(SHARED["run_monitoring"])
    assert HELM["retention"] == {"enabled": True, **_camel_keys(SHARED["retention"])}
    assert HELM["telemetry"] == SHARED["telemetry"]
    assert HELM["runLauncher"]["type"] == "K8sRunLauncher"
    assert HELM["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    (deployment,) = HELM["dagster-user-deployments"]["deployments"]
    assert deployment["codeServerArgs"] == ["--module-name", "bg_ops.definitions", "--attribute", "defs"]


@pytest.mark.skipif(not HAS_DAGSTER_K8S, reason="dagster-k8s is not installed: pip install '.[deploy]' to validate "
                                                 "deploy/dagster-k8s.yaml")
def test_k8s_instance_file_passes_dagsters_validation_on_postgresql(pg_server, tmp_path, monkeypatch):
    dagster_db = pg_server.create_database()
    for name, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(pg_server.port),
                        "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "unused-trust-auth",
                        "DAGSTER_PG_DB": dagster_db, "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "bg-ops-instance",
                        "DAGSTER_K8S_JOB_NAMESPACE": "bg-ops", "DAGSTER_K8S_SERVICE_ACCOUNT": "bg-ops-runs"}.items():
        monkeypatch.setenv(name, value)
    # Outside a cluster the launcher reads a kubeconfig instead (parsed, never contacted).
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "test", "user": {"token": "unused"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    config = json.loads(json.dumps(K8S))
    config["run_launcher"]["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        launcher = instance.run_launcher
        assert type(launcher).__name__ == "K8sRunLauncher"
        assert (launcher.job_namespace, launcher.instance_config_map) == ("bg-ops", "bg-ops-instance")
        assert launcher.env_secrets == ["bg-ops-secrets"] and launcher.env_config_maps == ["bg-ops-config"]
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        limits = {i["key"]: i["limit"] for i in instance.get_concurrency_config().run_queue_config.tag_concurrency_limits}
        assert limits == {"bg_ops/singleton": 1, "bg_ops/tenant": 2}
        assert instance.run_retries_enabled and instance.run_monitoring_enabled
    finally:
        instance.dispose()

    # A mistake in the launcher's section is refused by the same validation.
    config["run_launcher"]["config"]["job_namespac"] = "typo"
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(Exception, match="job_namespac"):
        dg.DagsterInstance.from_config(str(home)).run_launcher


def test_operations_guide_documents_every_setting():
    from bg_ops.settings import ENV_VARS

    guide = (REPO / "docs" / "operations.md").read_text()
    reference = guide[guide.index("## Configuration reference"):]
    missing = [name for name in ENV_VARS if f"`{name}`" not in reference]
    assert not missing, f"docs/operations.md configuration reference lacks {missing}"


# -- webserver, daemon and code server as separate processes on PostgreSQL -----------------------

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}
"""

WORKSPACE = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""

RELOAD = """
mutation { reloadRepositoryLocation(repositoryLocationName: "bg_ops") { __typename } }
"""

RUN_STATUS = """
query Status($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }
"""


@pytest.mark.slow
def test_webserver_daemon_and_code_server_as_separate_processes_share_postgresql(pg_server, pg_url, tmp_path):
    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine

    app = get_engine(pg_url)
    migrate.create_app_schema(app)
    migrate.upgrade(app)
    dagster_db = pg_server.create_database()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    grpc_port, web_port = free_port(), free_port()
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(
        {"load_from": [{"grpc_server": {"host": "127.0.0.1", "port": grpc_port, "location_name": "bg_ops"}}]}))
    for folder in ("files", "outbox", "cloud"):
        (tmp_path / folder).mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BG_OPS_", "DROPBOX_APP", "DROPBOX_REFRESH",
                                                                     "DROPBOX_ACCESS", "DAGSTER_"))}
    env.update({
        "DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(pg_server.port),
        "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "unused-trust-auth", "DAGSTER_PG_DB": dagster_db,
        "BG_OPS_DATABASE_URL": pg_url, "BG_OPS_FILES_ROOT": str(tmp_path / "files"),
        "BG_OPS_OUTBOX_DIR": str(tmp_path / "outbox"), "BG_OPS_STORAGE_DIR": str(tmp_path / "cloud"),
    })
    bin_dir = Path(sys.executable).parent
    commands = {
        "code server": [str(bin_dir / "dagster"), "code-server", "start", "-m", "bg_ops.definitions",
                        "-h", "127.0.0.1", "-p", str(grpc_port), "--location-name", "bg_ops"],
        "daemon": [str(bin_dir / "dagster-daemon"), "run", "-w", str(tmp_path / "workspace.yaml")],
        "webserver": [str(bin_dir / "dagster-webserver"), "-w", str(tmp_path / "workspace.yaml"),
                      "-h", "127.0.0.1", "-p", str(web_port)],
    }
    procs: dict[str, subprocess.Popen] = {}
    logs = {name: tmp_path / f"{name.replace(' ', '_')}.log" for name in commands}

    def dead() -> str | None:
        for name, proc in procs.items():
            if proc.poll() is not None:
                return f"the {name} exited with {proc.returncode}:\n{logs[name].read_text()[-3000:]}"
        return None

    def wait(predicate, timeout: float, what: str):
        try:
            return wait_for(predicate, timeout=timeout, what=what, wake_on=list(logs.values()), alive=dead)
        except WaitTimeout as exc:
            tails = "\n".join(f"--- {n}\n{p.read_text()[-1500:]}" for n, p in logs.items() if p.exists())
            pytest.fail(f"{exc}\n{tails}")

    def start(name: str) -> None:
        with open(logs[name], "wb") as out:
            # Own process group each, so the whole tree (run workers too) can be stopped.
            procs[name] = subprocess.Popen(commands[name], stdout=out, stderr=subprocess.STDOUT, env=env,
                                           cwd=tmp_path, start_new_session=True)

    def code_server_serving() -> bool:
        check = [str(bin_dir / "dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(grpc_port)]
        return subprocess.run(check, env=env, capture_output=True, timeout=60).returncode == 0

    def location_loaded():
        entry = graphql(web_port, WORKSPACE)["workspaceOrError"]["locationEntries"][0]
        if entry["loadStatus"] != "LOADED":
            return None
        if entry["locationOrLoadError"]["__typename"] != "RepositoryLocation":
            graphql(web_port, RELOAD)  # loaded before the code server answered: ask again
            return None
        return entry

    try:
        start("code server")
        wait(code_server_serving, 120, "the code server to serve")
        start("daemon")
        start("webserver")
        wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{web_port}/server_info", timeout=5).status == 200,
             180, "the webserver")
        entry = wait(location_loaded, 120, "the webserver to load the code location from the code server")
        assert entry["name"] == "bg_ops"

        launched = graphql(web_port, LAUNCH, {"params": {
            "selector": {"repositoryLocationName": "bg_ops", "repositoryName": "__repository__",
                         "jobName": "send_due_emails_job"},
            "runConfigData": {},
        }})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        status = wait(lambda: (s := graphql(web_port, RUN_STATUS, {"runId": run_id})["runOrError"]["status"])
                      in ("SUCCESS", "FAILURE", "CANCELED") and s, 180, "the daemon to dequeue and finish the run")
        assert status == "SUCCESS"
    finally:
        for proc in procs.values():
            stop_process_group(proc)

    # Read the run back from PostgreSQL itself: queued by the webserver, dequeued by the daemon,
    # executed from the code server's code, every event stored there.
    engine = sa.create_engine(pg_server.url(dagster_db))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT status FROM runs WHERE run_id = :r"), {"r": run_id}).scalar_one() == "SUCCESS"
            kinds = set(conn.execute(sa.text("SELECT dagster_event_type FROM event_logs WHERE run_id = :r"),
                                     {"r": run_id}).scalars())
            daemons = set(conn.execute(sa.text("SELECT daemon_type FROM daemon_heartbeats")).scalars())
    finally:
        engine.dispose()
    # ENQUEUED: the webserver handed it to the queued run coordinator; STARTING: the daemon's
    # queue took it off and launched it; START/STEP_SUCCESS: the run worker executed it.
    assert {"PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_START", "STEP_SUCCESS", "PIPELINE_SUCCESS"} <= kinds, kinds
    assert {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR"} <= daemons
