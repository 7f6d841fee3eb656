"""End to end: the README's run command (`make dev`) brings up the UI, the code location and the
daemon on the embedded default with the demo loaded (P6, issue 2)."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bg_ops_tests.support.postgres_server import free_port
from bg_ops_tests.support.waiting import WaitTimeout, wait_for

REPO = Path(__file__).resolve().parents[1]

WORKSPACE_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
          ... on RepositoryLocation {
            repositories {
              name
              jobs { name }
              sensors { name sensorState { status } }
              schedules { name scheduleState { status } }
            }
          }
        }
      }
    }
  }
}
"""

PARTITIONS_QUERY = """
{ assetNodes { assetKey { path } partitionKeys } }
"""


def graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.loads(resp.read())
    assert "errors" not in body, body
    return body["data"]


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    def alive():
        if proc.poll() is not None:
            return f"make dev exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        return None

    try:
        return wait_for(predicate, timeout=timeout, what=what, interval=0.5, alive=alive)
    except WaitTimeout as exc:
        pytest.fail(f"{exc}\n{log.read_text()[-4000:]}")


def stop_process_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the whole group (make, dagster dev, webserver, daemon, code servers), wait for it
    to empty, then SIGKILL whatever is left: dagster may start a code server while stopping."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass

    def group_gone() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_for(group_gone, timeout=grace, what="dagster dev to stop")
    except WaitTimeout:
        os.killpg(proc.pid, signal.SIGKILL)
        wait_for(group_gone, timeout=10, what="the killed process group to go")
    proc.wait(timeout=5)


@pytest.mark.slow
def test_make_dev_serves_the_ui_with_demo_tenants_and_a_running_daemon(tmp_path):
    port = free_port()
    files = tmp_path / "files"
    files.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BG_OPS_", "DROPBOX_", "DAGSTER_HOME"))}
    env.update(
        {
            "BG_OPS_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
            "BG_OPS_FILES_ROOT": str(files),
            "BG_OPS_OUTBOX_DIR": str(tmp_path / "outbox"),
            "BG_OPS_STORAGE_DIR": str(tmp_path / "cloud"),
        }
    )
    venv = Path(sys.executable).parent.parent
    log = tmp_path / "make-dev.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "-C", str(REPO), "dev", f"PORT={port}", f"VENV={venv}", "TENANTS=3",
             f"DAGSTER_HOME_DIR={tmp_path / 'dagster_home'}"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        wait_until(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5).status == 200,
            180, "/server_info", proc, log,
        )
        data = wait_until(
            lambda: (d := graphql(port, WORKSPACE_QUERY))["workspaceOrError"]["locationEntries"][0]["loadStatus"] == "LOADED" and d,
            60, "the code location to load", proc, log,
        )
        entry = data["workspaceOrError"]["locationEntries"][0]
        location = entry["locationOrLoadError"]
        assert entry["name"] == "bg_ops"
        assert location["__typename"] == "RepositoryLocation", location
        repo = location["repositories"][0]
        sensors = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
        assert sensors["tenant_partitions_sensor"] == "RUNNING"
        assert "tenant_summary_job" in {j["name"] for j in repo["jobs"]}

        # The daemon evaluated the tenant sensor against the seeded demo: one partition per tenant.
        def tenant_partitions():
            nodes = graphql(port, PARTITIONS_QUERY)["assetNodes"]
            keys = next(n["partitionKeys"] for n in nodes if n["assetKey"]["path"] == ["tenant_summary"])
            return sorted(keys) if keys else None

        assert wait_until(tenant_partitions, 90, "the daemon to add tenant partitions", proc, log) == [
            "acme", "nordlicht", "sakura",
        ]
        assert (files / "acme" / "projects").is_dir()
        # Dagster's state went to the instance folder make dev set up, with the shared settings.
        assert (tmp_path / "dagster_home" / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()
    finally:
        stop_process_group(proc)
    # Nothing left listening once make dev is stopped.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
