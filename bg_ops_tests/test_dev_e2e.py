"""End to end: the README's run command (`make dev`) brings up the UI, the code location and the
daemon on the embedded default with the demo loaded (P6, issue 2)."""

import urllib.request

import pytest

from bg_ops_tests.support.dagster_dev import REPO, make_dev

PARTITIONS_QUERY = """
{ assetNodes { assetKey { path } partitionKeys } }
"""


@pytest.mark.slow
def test_make_dev_serves_the_ui_with_demo_tenants_and_a_running_daemon(tmp_path):
    with make_dev(tmp_path, tenants=3) as dev:
        entry = dev.wait_for_location()
        location = entry["locationOrLoadError"]
        assert entry["name"] == "bg_ops"
        assert location["__typename"] == "RepositoryLocation", location
        repo = location["repositories"][0]
        sensors = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
        assert sensors["tenant_partitions_sensor"] == "RUNNING"
        assert "tenant_summary_job" in {j["name"] for j in repo["jobs"]}

        # The daemon evaluated the tenant sensor against the seeded demo: one partition per tenant.
        def tenant_partitions():
            nodes = dev.graphql(PARTITIONS_QUERY)["assetNodes"]
            keys = next(n["partitionKeys"] for n in nodes if n["assetKey"]["path"] == ["tenant_summary"])
            return sorted(keys) if keys else None

        assert dev.wait_until(tenant_partitions, 90, "the daemon to add tenant partitions") == [
            "acme", "nordlicht", "sakura",
        ]
        assert (dev.files / "acme" / "projects").is_dir()
        # Dagster's state went to the instance folder make dev set up, with the shared settings.
        assert (dev.dagster_home / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()
    # Nothing left listening once make dev is stopped.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{dev.url}/server_info", timeout=2)
