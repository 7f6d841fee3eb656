"""The code location loads, validates, and has the jobs, schedules and sensors operators rely on."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

REPO = Path(__file__).resolve().parents[1]

# What operators rely on. A change here is a change of contract: update it on purpose.
EXPECTED_JOBS = {"tenant_summary_job", "send_due_emails_job", "email_queue_health_job", "daily_reminders_job",
                 "calendar_reminders_job", "approval_completed_job",
                 "upload_files_job", "nightly_backup_job", "storage_health_job", "restore_drill_job",
                 "archive_document_job", "approval_thumbnails_job",
                 "billing_task_job", "pto_accrual_job",
                 "process_payment_event_job",
                 "weekly_cleanup_job", "db_backup_job", "db_restore_test_job",
                 "client_suspension_job"}
EXPECTED_SCHEDULES: dict[str, str] = {
    "daily_reminders_schedule": "5 * * * *",
    "email_delivery_schedule": "* * * * *",
    "email_queue_health_schedule": "*/5 * * * *",
    "upload_queue_schedule": "*/5 * * * *",
    "nightly_backup_schedule": "15 * * * *",
    "storage_health_schedule": "*/10 * * * *",
    "restore_drill_schedule": "0 4 * * 0",
    "approval_thumbnails_schedule": "40 2 * * *",
    "pto_accrual_schedule": "10 * * * *",
    "weekly_cleanup_schedule": "0 3 * * 0",
    "db_backup_schedule": "* * * * *",  # fires at BG_OPS_DB_BACKUP_CRON, read at tick time
    "db_restore_test_schedule": "0 5 * * 0",
    "tenant_summary_schedule": "*/15 * * * *",
}
EXPECTED_SENSORS = {"tenant_partitions_sensor", "email_delivery_sensor", "calendar_reminder_sensor", "approval_completed_sensor",
                    "upload_queue_sensor", "document_archival_sensor",
                    "billable_project_sensor",
                    "payment_event_sensor",
                    "run_failure_alert_sensor",
                    "client_suspension_sensor"}
EXPECTED_ASSETS = {"tenant_summary", "email_queue_health", "upload_queue_health", "storage_quota",
                   "pto_accrual"}
EXPECTED_RESOURCES = {"database", "files", "mail", "storage", "dagster_ui"}


@pytest.fixture
def loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from bg_ops.definitions import defs

    return defs()


def test_code_location_loads_and_validates(loaded):
    dg.Definitions.validate_loadable(loaded)
    repo = loaded.get_repository_def()
    jobs = {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")}
    assert jobs == EXPECTED_JOBS
    assert {s.name: s.cron_schedule for s in repo.schedule_defs} == EXPECTED_SCHEDULES
    assert {s.name for s in repo.sensor_defs} == EXPECTED_SENSORS
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} == EXPECTED_ASSETS
    assert EXPECTED_RESOURCES <= set(loaded.resources)


def test_every_job_sensor_and_asset_explains_itself(loaded):
    repo = loaded.get_repository_def()
    for job in repo.get_all_jobs():
        if not job.name.startswith("__"):
            assert job.description, job.name
    for sensor in repo.sensor_defs:
        assert sensor.description and len(sensor.description) > 40, sensor.name
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING, sensor.name
    for schedule in repo.schedule_defs:
        assert schedule.description, schedule.name
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING, schedule.name
    for key in repo.asset_graph.get_all_asset_keys():
        node = repo.asset_graph.get(key)
        assert node.description and node.group_name != "default" and node.owners, key


def test_embedded_default_backends_are_chosen_without_configuration(loaded, tmp_path):
    from bg_ops.resources.mail import OutboxMailResource
    from bg_ops.resources.storage import LocalStorageResource

    assert isinstance(loaded.resources["mail"], OutboxMailResource)
    assert isinstance(loaded.resources["storage"], LocalStorageResource)
    assert loaded.resources["database"].url.startswith("sqlite:///") and str(tmp_path) in loaded.resources["database"].url


def test_production_backends_are_chosen_by_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BG_OPS_MAIL_BACKEND", "smtp")
    monkeypatch.setenv("BG_OPS_SMTP_HOST", "mail.example.com")
    monkeypatch.setenv("BG_OPS_SMTP_USERNAME", "bg")
    monkeypatch.setenv("BG_OPS_SMTP_PASSWORD", "s3cret-pw")
    monkeypatch.setenv("BG_OPS_STORAGE_BACKEND", "dropbox")
    monkeypatch.setenv("DROPBOX_APP_KEY", "appkey")
    monkeypatch.setenv("DROPBOX_REFRESH_TOKEN", "r3fresh")
    from bg_ops.definitions import defs
    from bg_ops.resources.mail import SmtpMailResource

    loaded = defs()
    mail = loaded.resources["mail"]
    assert isinstance(mail, SmtpMailResource) and mail.host == "mail.example.com"
    assert type(loaded.resources["storage"]).__name__ == "DropboxStorageResource"
    # Secrets are bound as environment-variable references, not copied into the definitions.
    assert isinstance(mail.password, dg.EnvVar) and mail.password.env_var_name == "BG_OPS_SMTP_PASSWORD"


def _validate(env_overrides: dict, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BG_OPS_", "DROPBOX_", "DAGSTER_HOME"))}
    env.update(env_overrides)
    dagster = Path(sys.executable).with_name("dagster")
    return subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.slow
def test_dagster_cli_validates_the_workspace_with_no_secrets_set(tmp_path):
    proc = _validate({}, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_bad_configuration_stops_the_code_location_naming_the_variable(tmp_path):
    proc = _validate({"BG_OPS_MAIL_BACKEND": "carrier-pigeon"}, tmp_path)
    assert proc.returncode != 0
    assert "BG_OPS_MAIL_BACKEND='carrier-pigeon' is not a mail backend" in proc.stdout + proc.stderr


def test_cli_gets_the_same_resources_with_secrets_resolved(tmp_path, monkeypatch):
    from bg_ops.resources.factory import build_resources, plain_resources
    from bg_ops.settings import load_settings

    env = {"BG_OPS_MAIL_BACKEND": "smtp", "BG_OPS_SMTP_HOST": "mail.example.com",
           "BG_OPS_SMTP_USERNAME": "bg", "BG_OPS_SMTP_PASSWORD": "pw-123"}
    settings = load_settings(env, cwd=tmp_path)
    for_dagster = build_resources(settings)["mail"]
    for_cli = plain_resources(settings)["mail"]
    assert isinstance(for_dagster.password, dg.EnvVar)
    assert for_cli.password == "pw-123" and not isinstance(for_cli.password, dg.EnvVar)
    assert (for_cli.host, for_cli.username) == ("mail.example.com", "bg")


def test_every_job_schedule_sensor_and_asset_has_a_description_an_owner_and_a_domain(loaded):
    """U1: what an operator reads in the UI. A domain is the asset's group, or the `domain` tag
    of jobs, schedules and sensors (Dagster groups only assets); owners like "team:bg-ops"."""
    repo = loaded.get_repository_def()
    problems: list[str] = []

    def check(kind: str, name: str, description: str | None, owners, domain: str | None) -> None:
        if not description or len(description.split()) < 5:
            problems.append(f"{kind} {name}: needs a description of a sentence or more")
        if not owners:
            problems.append(f"{kind} {name}: needs owners=['team:bg-ops']")
        if not domain or domain == "default":
            problems.append(f"{kind} {name}: needs its domain (tags={{'domain': ...}} / group_name)")

    for job in repo.get_all_jobs():
        if not job.name.startswith("__"):
            check("job", job.name, job.description, job.owners, job.tags.get("domain"))
    for schedule in repo.schedule_defs:
        check("schedule", schedule.name, schedule.description, schedule.owners, schedule.tags.get("domain"))
    for sensor in repo.sensor_defs:
        check("sensor", sensor.name, sensor.description, sensor.owners, sensor.tags.get("domain"))
    for key in repo.asset_graph.get_all_asset_keys():
        node = repo.asset_graph.get(key)
        check("asset", key.to_user_string(), node.description, node.owners, node.group_name)
    assert not problems, "\n".join(problems)
