"""The Dagster UI in a real headless browser (U1, P6, issue 8).

``make dev`` runs on the demo data; Debian's Chromium, driven by Playwright (never
``playwright install``), checks that the code location shows the jobs, schedules and sensors
of every domain, then an operator's hand delivery: automatic delivery switched off, three
messages queued, ``send_due_emails_job`` launched from its Launchpad, the run followed to
success, and the three messages found in the outbox. Screenshots of the overview, the jobs,
the automations, the Launchpad and the run go to ``$TEST_ARTIFACTS_DIR`` (default
``test-artifacts/ui/``, git-ignored).
"""

from __future__ import annotations

import email
import importlib.util
import os
import subprocess
import sys
from email.policy import default as default_policy
from pathlib import Path

import pytest

from bg_ops_tests.support.dagster_dev import REPO, dev_env, make_dev
from bg_ops_tests.test_definitions import EXPECTED_JOBS, EXPECTED_SCHEDULES, EXPECTED_SENSORS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DOMAINS = {"reminders", "email", "files", "billing", "people", "tenants"}
UI_TIMEOUT_MS = 60_000
RUN_TIMEOUT_S = 180

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install -y chromium (.ci/run does)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="the playwright package is missing: pip install -e '.[test]'"),
]

REPOSITORY_QUERY = """
{
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes {
        jobs { name tags { key value } }
        sensors { id name sensorState { status } }
        schedules { id name scheduleState { status } }
      }
    }
  }
}
"""
STOP_SENSOR = "mutation($id: String!) { stopSensor(id: $id) { __typename } }"
STOP_SCHEDULE = "mutation($id: String!) { stopRunningSchedule(id: $id) { __typename } }"
AUTOMATION_STATE = """
{
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes {
        sensors { name sensorState { status ticks(limit: 1) { status } } }
        schedules { name scheduleState { status ticks(limit: 1) { status } } }
      }
    }
  }
}
"""
ACTIVE_DELIVERY_RUNS = """
{
  runsOrError(filter: {pipelineName: "send_due_emails_job", statuses: [QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING]}) {
    ... on Runs { results { runId } }
  }
}
"""
RUN_QUERY = """
query($id: ID!) {
  runOrError(runId: $id) {
    __typename
    ... on Run {
      jobName status
      tags { key value }
      eventConnection {
        events {
          __typename
          ... on MessageEvent { message }
          ... on ExecutionStepOutputEvent { metadataEntries { label ... on IntMetadataEntry { intValue } } }
          ... on ExecutionStepFailureEvent { error { message } }
          ... on EngineEvent { error { message } }
        }
      }
    }
  }
}
"""
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


@pytest.fixture
def artifacts() -> Path:
    folder = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO / "test-artifacts") / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def bg_ops(home: Path, *args: str) -> str:
    proc = subprocess.run([str(Path(sys.executable).with_name("bg-ops")), *args], env=dev_env(home),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def subjects_in(outbox: Path) -> list[str]:
    if not outbox.is_dir():
        return []
    return sorted(str(email.message_from_bytes(p.read_bytes(), policy=default_policy)["Subject"])
                  for p in outbox.glob("*.eml"))


def show_everything(page, names) -> None:
    """Wait until every name is on the page (lists render progressively)."""
    for name in sorted(names):
        page.get_by_text(name, exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
    settle(page)


def settle(page) -> None:
    """Let the page's follow-up queries (run history, tick status) land before a screenshot."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_load_state("networkidle", timeout=15_000)
    except PlaywrightTimeout:
        pass  # the UI keeps polling on busy pages: the screenshot is still worth having


def test_operator_sees_every_domain_and_launches_email_delivery_from_the_ui(tmp_path, browser, artifacts):
    with make_dev(tmp_path, tenants=3, skip_nux=True) as dev:
        entry = dev.wait_for_location()
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry

        repo = dev.graphql(REPOSITORY_QUERY)["repositoriesOrError"]["nodes"][0]
        jobs = {j["name"]: {t["key"]: t["value"] for t in j["tags"]} for j in repo["jobs"] if not j["name"].startswith("__")}
        assert EXPECTED_JOBS <= set(jobs)
        assert {tags.get("domain") for tags in jobs.values()} >= DOMAINS
        assert set(EXPECTED_SENSORS) <= {s["name"] for s in repo["sensors"]}
        assert set(EXPECTED_SCHEDULES) <= {s["name"] for s in repo["schedules"]}

        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(UI_TIMEOUT_MS)

        # What an operator sees first: the overview timeline, then every job and automation.
        page.goto(f"{dev.url}/overview")
        page.get_by_role("link", name="send_due_emails_job").first.wait_for()
        settle(page)
        page.screenshot(path=str(artifacts / "overview.png"), full_page=True)

        page.goto(f"{dev.url}/jobs")
        show_everything(page, EXPECTED_JOBS)
        assert not page.get_by_text("Welcome to Dagster").count()  # the first-visit modal stayed away
        page.screenshot(path=str(artifacts / "jobs.png"), full_page=True)

        page.goto(f"{dev.url}/automation")
        show_everything(page, set(EXPECTED_SCHEDULES) | EXPECTED_SENSORS)
        page.screenshot(path=str(artifacts / "automation.png"), full_page=True)

        # Hand delivery: switch automatic delivery off, let running deliveries finish, queue mail.
        for sensor in repo["sensors"]:
            if sensor["name"] == "email_delivery_sensor":
                dev.graphql(STOP_SENSOR, {"id": sensor["id"]})
        for schedule in repo["schedules"]:
            if schedule["name"] == "email_delivery_schedule":
                dev.graphql(STOP_SCHEDULE, {"id": schedule["id"]})

        def delivery_quiet() -> bool:
            """Both stopped, no tick of theirs half-way, no delivery run queued or going."""
            node = dev.graphql(AUTOMATION_STATE)["repositoriesOrError"]["nodes"][0]
            states = [s["sensorState"] for s in node["sensors"] if s["name"] == "email_delivery_sensor"]
            states += [s["scheduleState"] for s in node["schedules"] if s["name"] == "email_delivery_schedule"]
            settled = all(st["status"] == "STOPPED" and all(t["status"] != "STARTED" for t in st["ticks"])
                          for st in states)
            return len(states) == 2 and settled and not dev.graphql(ACTIVE_DELIVERY_RUNS)["runsOrError"]["results"]

        dev.wait_until(delivery_quiet, RUN_TIMEOUT_S, "automatic email delivery to stop and its runs to finish")
        before = subjects_in(dev.outbox)
        wanted = [f"Browser test {n}" for n in (1, 2, 3)]
        for n, subject in enumerate(wanted, 1):
            bg_ops(tmp_path, "emails", "enqueue", "--tenant", "acme", "--to", f"ops{n}@acme.example",
                   "--subject", subject, "--text", "Sent from the Launchpad.")
        assert not set(wanted) & set(subjects_in(dev.outbox))

        page.goto(f"{dev.url}/locations/bg_ops/jobs/send_due_emails_job/playground")
        launch = page.get_by_role("button", name="Launch Run")
        launch.wait_for()
        page.get_by_text("No errors").first.wait_for()  # the default config validated
        page.screenshot(path=str(artifacts / "launchpad.png"))
        launch.click()
        page.wait_for_url("**/runs/*")
        run_id = page.url.rstrip("/").rsplit("/", 1)[-1]

        def finished():
            run = dev.graphql(RUN_QUERY, {"id": run_id})["runOrError"]
            return run if run.get("status") in TERMINAL else None

        run = dev.wait_until(finished, RUN_TIMEOUT_S, f"run {run_id} to finish")
        errors = [e["error"]["message"][:800] for e in run["eventConnection"]["events"] if e.get("error")]
        assert run["status"] == "SUCCESS", errors
        assert run["jobName"] == "send_due_emails_job"
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags.get("dagster/from_ui") == "true" and tags.get("domain") == "email"
        figures = {m["label"]: m.get("intValue") for e in run["eventConnection"]["events"]
                   if e["__typename"] == "ExecutionStepOutputEvent" for m in e["metadataEntries"]}
        assert figures["sent"] >= 3 and figures["failed"] == 0, figures

        # The run page tells the same story, and the mail is in the outbox, once each.
        page.get_by_text("RUN_SUCCESS").first.wait_for()
        page.get_by_text(f"sent {figures['sent']}, will retry 0, failed 0").first.wait_for()
        page.screenshot(path=str(artifacts / "run.png"), full_page=True)
        after = subjects_in(dev.outbox)
        assert [s for s in after if s in wanted] == wanted
        assert len(after) - len(before) == figures["sent"]
