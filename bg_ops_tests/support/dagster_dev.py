"""Start the README's run command (``make dev``) on a free port for end-to-end tests.

``make_dev(tmp_path)`` runs ``make dev`` against a throwaway embedded default under
``tmp_path`` (SQLite database, files root, outbox, cloud folder, Dagster home), waits for
the webserver and the code location, and stops the whole process group afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bg_ops_tests.support.postgres_server import free_port
from bg_ops_tests.support.waiting import WaitTimeout, group_members, wait_for, wait_group_gone

REPO = Path(__file__).resolve().parents[2]

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


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.loads(resp.read())
    assert "errors" not in body, body
    return body["data"]


def stop_process_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the whole group (make, dagster dev, webserver, daemon, code servers), wait for it
    to empty, then SIGKILL whatever is left: dagster may start a code server while stopping."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass

    if not wait_group_gone(proc.pid, grace):
        os.killpg(proc.pid, signal.SIGKILL)
        if not wait_group_gone(proc.pid, 10):
            raise WaitTimeout(f"process group {proc.pid} still has {group_members(proc.pid)} after SIGKILL")
    proc.wait(timeout=5)


@dataclass
class DevServer:
    port: int
    proc: subprocess.Popen
    log: Path
    home: Path  # the embedded default's folders live here
    dagster_home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def files(self) -> Path:
        return self.home / "files"

    @property
    def outbox(self) -> Path:
        return self.home / "outbox"

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        return graphql(self.port, query, variables)

    def wait_until(self, predicate: Callable, timeout: float, what: str):
        """Wait until ``predicate`` is truthy, checking it again whenever dagster dev writes to
        its log; fail the test with the log's tail if it never is or if ``make dev`` exits."""

        def alive():
            if self.proc.poll() is not None:
                return f"make dev exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}"
            return None

        try:
            return wait_for(predicate, timeout=timeout, what=what, wake_on=[self.log], alive=alive)
        except WaitTimeout as exc:
            pytest.fail(f"{exc}\n{self.log.read_text()[-4000:]}")

    def wait_for_location(self, timeout: float = 60) -> dict:
        """The loaded ``bg_ops`` location entry (after /server_info answers)."""
        self.wait_until(
            lambda: urllib.request.urlopen(f"{self.url}/server_info", timeout=5).status == 200,
            180, "/server_info",
        )
        data = self.wait_until(
            lambda: (d := self.graphql(WORKSPACE_QUERY))["workspaceOrError"]["locationEntries"][0]["loadStatus"]
            == "LOADED" and d,
            timeout, "the code location to load",
        )
        return data["workspaceOrError"]["locationEntries"][0]


def dev_env(home: Path) -> dict[str, str]:
    """The test's environment, minus the developer's bg_ops settings, pointed at ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BG_OPS_", "DROPBOX_", "DAGSTER_HOME"))}
    env.update(
        {
            "BG_OPS_DATABASE_URL": f"sqlite:///{home / 'app.db'}",
            "BG_OPS_FILES_ROOT": str(home / "files"),
            "BG_OPS_OUTBOX_DIR": str(home / "outbox"),
            "BG_OPS_STORAGE_DIR": str(home / "cloud"),
        }
    )
    return env


@contextmanager
def make_dev(tmp_path: Path, *, tenants: int = 3, skip_nux: bool = False) -> Iterator[DevServer]:
    """``make dev`` on a free port with everything under ``tmp_path``; stopped on exit.

    ``skip_nux`` writes ``$DAGSTER_HOME/.nux/nux.yaml`` so the UI's first-visit modal stays
    away (browser tests).
    """
    port = free_port()
    (tmp_path / "files").mkdir(exist_ok=True)
    dagster_home = tmp_path / "dagster_home"
    if skip_nux:
        (dagster_home / ".nux").mkdir(parents=True, exist_ok=True)
        (dagster_home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    venv = Path(sys.executable).parent.parent
    log = tmp_path / "make-dev.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "-C", str(REPO), "dev", f"PORT={port}", f"VENV={venv}", f"TENANTS={tenants}",
             f"DAGSTER_HOME_DIR={dagster_home}"],
            stdout=out, stderr=subprocess.STDOUT, env=dev_env(tmp_path), start_new_session=True,
        )
    try:
        yield DevServer(port=port, proc=proc, log=log, home=tmp_path, dagster_home=dagster_home)
    finally:
        stop_process_group(proc)
