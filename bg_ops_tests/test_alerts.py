"""Run failure alerts (O1, O9): who gets which mail, how many times, and by which road.

Runs are real (``execute_in_process`` on ``dg.instance_for_test``), the sensor is evaluated
with ``build_sensor_context``; queued alerts are read back from the email queue, direct ones
from the aiosmtpd server.
"""

import shutil
import socket
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from bg_ops.db.own_schema import email_queue as q
from bg_ops.defs.alerts.defs import run_failure_alert_sensor
from bg_ops.defs.alerts.run_failures import EMAIL_DELIVERY_JOB
from bg_ops.defs.email.enqueue import SYSTEM_COMPANY_ID
from bg_ops.resources.dagster_ui import DagsterUIResource
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import SmtpMailResource

REPO = Path(__file__).resolve().parents[1]
ADMINS = ["ops@bg-ops.test", "cto@bg-ops.test"]
UI = "https://dagster.bg-ops.test"


class Boom(RuntimeError):
    pass


@dg.op
def load_ledger():
    return 1


@dg.op
def post_ledger(n):
    raise Boom(f"ledger {n} refused for jane.doe@acme.example: constraint failed\nsecond line of detail")


@dg.job(executor_def=dg.in_process_executor, tags={"bg_ops/tenant": "acme"})
def ledger_job():
    post_ledger(load_ledger())


@dg.op
def fine():
    return None


@dg.job(name="ledger_job", executor_def=dg.in_process_executor, tags={"bg_ops/tenant": "acme"})
def ledger_job_fixed():
    fine()


def _fail(instance, job=ledger_job) -> str:
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return result.run_id


def _admin_mail(smtp_server) -> SmtpMailResource:
    return SmtpMailResource(host=smtp_server.host, port=smtp_server.port, security="none", timeout_seconds=5,
                            mail_from="bg_ops <no-reply@bg-ops.test>", admin_emails=ADMINS)


def _evaluate(instance, resources, cursor=None):
    # As context managers: a context holding resources enters the instance and must leave it.
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = run_failure_alert_sensor(context)
        return result, context.cursor


def _queued(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(q).order_by(q.c.id)).all()


@pytest.fixture
def app_engine(sqlite_url):
    """The email queue on SQLite; the first test runs on PostgreSQL too (``db_engine``)."""
    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine

    engine = get_engine(sqlite_url)
    migrate.create_app_schema(engine)
    migrate.upgrade(engine)
    return engine


def _resources(engine, smtp_server, tmp_path) -> dict:
    (tmp_path / "files").mkdir(exist_ok=True)
    return {
        "database": DatabaseResource(url=engine.url.render_as_string(hide_password=False)),
        "mail": _admin_mail(smtp_server),
        "files": FilesResource(root=str(tmp_path / "files")),
        "dagster_ui": DagsterUIResource(base_url=UI + "/"),
    }


@pytest.fixture
def resources(app_engine, smtp_server, tmp_path):
    return _resources(app_engine, smtp_server, tmp_path)


def test_a_run_that_raises_is_one_queued_alert_with_the_run_link_job_and_op(db_engine, smtp_server, tmp_path):
    resources = _resources(db_engine, smtp_server, tmp_path)
    with dg.instance_for_test() as instance:
        run_id = _fail(instance)
        result, cursor = _evaluate(instance, resources)
        assert isinstance(result, dg.SkipReason) and "1 failed run" in result.skip_message

        (row,) = _queued(db_engine)
        assert row.company_id == SYSTEM_COMPANY_ID and row.to_addrs == ADMINS and row.priority == "high"
        assert row.subject == "[bg_ops] 1 failed run: ledger_job"
        body = row.body_text
        assert f"{UI}/runs/{run_id}" in body  # the configured base URL, one slash
        assert "ledger_job (tenant acme), op post_ledger" in body
        assert "first failure in a row" in body
        assert "error: Boom: ledger 1 refused for j***@acme.example: constraint failed" in body
        assert "jane.doe" not in body and "second line" not in body  # no addresses, one line
        assert smtp_server.messages == []  # queued, not sent behind the queue's back

        # The next tick, and the same tick evaluated again (cursor not stored), send nothing more.
        again, cursor2 = _evaluate(instance, resources, cursor)
        assert isinstance(again, dg.SkipReason) and "no run failed" in again.skip_message
        _evaluate(instance, resources, None)
        assert len(_queued(db_engine)) == 1
        _evaluate(instance, resources, cursor2)
        assert len(_queued(db_engine)) == 1


def test_three_failures_in_one_interval_are_one_mail_saying_third_in_a_row(resources, app_engine):
    with dg.instance_for_test() as instance:
        run_ids = [_fail(instance) for _ in range(3)]
        _, cursor = _evaluate(instance, resources)

        (row,) = _queued(app_engine)
        assert row.subject == "[bg_ops] 3 failed runs: ledger_job"
        body = row.body_text
        assert all(f"{UI}/runs/{run_id}" in body for run_id in run_ids)
        assert body.count("op post_ledger") == 3
        assert ["first failure in a row" in body, "second failure in a row" in body,
                "third failure in a row" in body] == [True, True, True]
        # Oldest first: the third failure is the last one listed, with the newest run's link.
        assert body.index("third failure in a row") > body.index("second failure in a row")
        assert body.index(f"/runs/{run_ids[2]}") > body.index("third failure in a row")

        # Evaluating again sends nothing more.
        _, cursor = _evaluate(instance, resources, cursor)
        assert len(_queued(app_engine)) == 1

        # A fourth failure keeps counting; a success in between starts the count again.
        _fail(instance)
        _, cursor = _evaluate(instance, resources, cursor)
        assert "fourth failure in a row" in _queued(app_engine)[-1].body_text
        assert ledger_job_fixed.execute_in_process(instance=instance).success
        _fail(instance)
        _evaluate(instance, resources, cursor)
        rows = _queued(app_engine)
        assert len(rows) == 3 and "first failure in a row" in rows[-1].body_text
        assert "1 failed run:" in rows[-1].subject


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql+psycopg2://postgres:pw@127.0.0.1:{port}/bg_ops?connect_timeout=2"


def _direct_mails(smtp_server):
    return [(m.rcpt_tos, BytesParser(policy=policy.default).parsebytes(m.data)) for m in smtp_server.messages]


def test_when_the_email_delivery_job_fails_the_alert_goes_over_smtp_directly(resources, app_engine, smtp_server):
    from bg_ops.defs.email.defs import send_due_emails

    # The real delivery op, with its database down (no retries, to keep the test quick).
    @dg.job(name=EMAIL_DELIVERY_JOB, executor_def=dg.in_process_executor)
    def delivery_job():
        send_due_emails.with_retry_policy(dg.RetryPolicy(max_retries=0))()

    down = {**resources, "database": DatabaseResource(url=_closed_port_url())}
    with dg.instance_for_test() as instance:
        result = delivery_job.execute_in_process(instance=instance, raise_on_error=False, resources=down)
        assert not result.success
        _, cursor = _evaluate(instance, resources)  # the queue's database is up, yet it is bypassed

        ((rcpts, message),) = _direct_mails(smtp_server)
        assert sorted(rcpts) == sorted(ADMINS)
        assert message["Subject"] == f"[bg_ops] 1 failed run: {EMAIL_DELIVERY_JOB}"
        text = message.get_content()
        assert f"{UI}/runs/{result.run_id}" in text and "op send_due_emails" in text and "OperationalError" in text
        assert _queued(app_engine) == []

        _evaluate(instance, resources, cursor)
        assert len(smtp_server.messages) == 1


def test_when_the_queue_database_is_down_the_alert_goes_over_smtp_directly(resources, smtp_server):
    down = {**resources, "database": DatabaseResource(url=_closed_port_url())}
    with dg.instance_for_test() as instance:
        run_id = _fail(instance)
        _, cursor = _evaluate(instance, down)

        ((rcpts, message),) = _direct_mails(smtp_server)
        assert sorted(rcpts) == sorted(ADMINS)
        text = message.get_content()
        assert f"{UI}/runs/{run_id}" in text and "ledger_job (tenant acme), op post_ledger" in text
        assert "jane.doe" not in message.as_string()

        _evaluate(instance, down, cursor)
        assert len(smtp_server.messages) == 1


def test_a_direct_send_that_fails_keeps_the_failure_for_the_next_tick(resources, smtp_server):
    down = {**resources, "database": DatabaseResource(url=_closed_port_url())}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    nowhere = SmtpMailResource(host="127.0.0.1", port=closed, security="none", timeout_seconds=2, admin_emails=ADMINS)
    with dg.instance_for_test() as instance:
        run_id = _fail(instance)
        with pytest.raises(Exception, match="SMTP 127.0.0.1"):
            _evaluate(instance, {**down, "mail": nowhere})
        # The tick failed, so its cursor was not stored: the next tick, SMTP back, tells it once.
        _, cursor = _evaluate(instance, down)
        _evaluate(instance, down, cursor)
        ((_, message),) = _direct_mails(smtp_server)
        assert f"/runs/{run_id}" in message.get_content()


@pytest.mark.parametrize("ended_as", ["failure", "canceled"])
def test_a_run_stopped_for_exceeding_its_maximum_runtime_is_alerted(resources, app_engine, ended_as):
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(ledger_job, tags={"dagster/max_runtime": "900"})
        instance.report_run_canceling(run, message="Canceling due to exceeding maximum runtime of 900 seconds.")
        # What run monitoring reports next (dagster/_daemon/monitoring/run_monitoring.py):
        # failure once the worker is terminated; a run worker that reports its own cancel
        # last leaves the run canceled.
        if ended_as == "failure":
            instance.report_run_failed(run, "Exceeded maximum runtime of 900 seconds.")
        else:
            instance.report_run_canceled(run, "Execution was interrupted unexpectedly.")
        # A run canceled by a person is not a failure.
        other = instance.create_run_for_job(ledger_job)
        instance.report_run_canceling(other)
        instance.report_run_canceled(other)

        _evaluate(instance, resources)
        (row,) = _queued(app_engine)
        assert row.subject == "[bg_ops] 1 failed run: ledger_job"
        body = row.body_text
        assert "1 of them over their maximum runtime" in body
        assert "exceeded its maximum runtime of 900 seconds" in body
        assert f"/runs/{run.run_id}" in body and other.run_id not in body


# -- what every job carries: retries (O2), concurrency tags (O3), maximum runtime (O9) -----

# Runs of these jobs are neither singletons nor per tenant, on purpose.
PARALLEL_JOBS = {"process_payment_event_job"}  # one run per payment event, highest priority (B5)
# Per tenant but not partitioned: the sensor that launches them sets bg_ops/tenant.
TENANT_TAGGED_JOBS = {"client_suspension_job"}
OUTSIDE_SYSTEMS = {"database", "mail", "storage"}


@pytest.fixture
def loaded_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from bg_ops.definitions import defs

    return defs().get_repository_def()


def _jobs(repo):
    return [job for job in repo.get_all_jobs() if not job.name.startswith("__")]


def _tenant_partitioned(job) -> bool:
    from bg_ops.defs.tenants.defs import TENANT_PARTITIONS_NAME

    partitions = job.partitions_def
    if isinstance(partitions, dg.MultiPartitionsDefinition):
        partitions = next((d.partitions_def for d in partitions.partitions_defs if d.name == "tenant"), None)
    return isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name == TENANT_PARTITIONS_NAME


def test_every_op_that_talks_to_smtp_dropbox_or_the_database_uses_the_one_retry_policy(loaded_repo):
    from bg_ops.defs.retries import TRANSIENT_RETRY

    assert TRANSIENT_RETRY.max_retries == 3 and TRANSIENT_RETRY.backoff == dg.Backoff.EXPONENTIAL
    assert TRANSIENT_RETRY.jitter == dg.Jitter.PLUS_MINUS
    without = set()
    for job in _jobs(loaded_repo):
        for node in job.graph.node_defs:
            if OUTSIDE_SYSTEMS & set(node.required_resource_keys) and node.retry_policy != TRANSIENT_RETRY:
                without.add(f"{job.name}/{node.name}: {node.retry_policy}")
    assert not without, "use bg_ops.defs.retries.TRANSIENT_RETRY on: " + "; ".join(sorted(without))


def test_queue_and_maintenance_jobs_are_singletons_and_tenant_runs_are_capped(loaded_repo, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        queue = instance.get_concurrency_config().run_queue_config
    limits = {item["key"]: item for item in queue.tag_concurrency_limits}
    assert limits["bg_ops/singleton"]["limit"] == 1 and limits["bg_ops/tenant"]["limit"] >= 1
    # The tag's value names the job's queue: one run per value (two jobs sharing a value,
    # such as a backup and its restore test, exclude each other on purpose).
    assert all(limits[k]["value"] == {"applyLimitPerUniqueValue": True} for k in ("bg_ops/singleton", "bg_ops/tenant"))

    uncapped = []
    for job in _jobs(loaded_repo):
        if job.name in PARALLEL_JOBS or job.name in TENANT_TAGGED_JOBS:
            continue
        if _tenant_partitioned(job):
            # Per-tenant runs get their bg_ops/tenant tag from the sensor or schedule that
            # launches them (tested per launcher); a job-wide singleton would serialise tenants.
            assert "bg_ops/singleton" not in job.tags, job.name
        elif not job.tags.get("bg_ops/singleton"):
            uncapped.append(job.name)
    assert not uncapped, f"jobs neither per tenant nor tagged bg_ops/singleton: {uncapped}"


def test_every_job_has_a_maximum_runtime_that_run_monitoring_enforces(loaded_repo):
    settings = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert settings["run_monitoring"]["enabled"] is True
    missing = [job.name for job in _jobs(loaded_repo) if "dagster/max_runtime" not in job.tags]
    assert not missing, f"jobs without a dagster/max_runtime tag: {missing}"
    for job in _jobs(loaded_repo):
        seconds = int(job.tags["dagster/max_runtime"])
        assert 60 <= seconds <= 4 * 3600, (job.name, seconds)
    # The delivery worker stops itself after its time budget; its limit is well above that.
    from bg_ops.defs.email.defs import SendDueEmailsConfig, send_due_emails_job

    assert int(send_due_emails_job.tags["dagster/max_runtime"]) > 10 * SendDueEmailsConfig().time_budget_seconds


def _requests(result) -> list:
    """The run requests of a sensor or schedule result, whatever shape it came in."""
    if result is None or isinstance(result, dg.SkipReason):
        return []
    if isinstance(result, dg.RunRequest):
        return [result]
    if isinstance(result, dg.SensorResult):
        return list(result.run_requests or [])
    return [r for item in result for r in _requests(item)]


def test_every_sensor_and_schedule_tags_per_tenant_runs_with_their_tenant(tmp_path, monkeypatch):
    """Launch-time pin of O3: every run request for a tenant-partitioned job carries
    ``bg_ops/tenant`` equal to the partition's tenant, over the demo data of two tenants."""
    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine
    from bg_ops.demo.seed import seed_demo

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = get_engine(url)
    migrate.create_app_schema(engine)
    migrate.upgrade(engine)
    tenants = seed_demo(engine, tmp_path / "files", tenants=2, today=now.date()).tenants
    monkeypatch.setenv("BG_OPS_DATABASE_URL", url)
    monkeypatch.setenv("BG_OPS_FILES_ROOT", str(tmp_path / "files"))
    monkeypatch.chdir(tmp_path)
    from bg_ops.definitions import defs

    loaded = defs()
    repo = loaded.get_repository_def()
    per_tenant = {job.name: job for job in _jobs(repo) if _tenant_partitioned(job)}
    seen: dict[str, int] = {}
    wrong = []

    def check(job_name, request):
        if job_name not in per_tenant:
            return
        job = per_tenant[job_name]
        key = request.partition_key
        tenant = (job.partitions_def.get_partition_key_from_str(key).keys_by_dimension["tenant"]
                  if isinstance(job.partitions_def, dg.MultiPartitionsDefinition) else key)
        seen[job_name] = seen.get(job_name, 0) + 1
        if request.tags.get("bg_ops/tenant") != tenant:
            wrong.append(f"{job_name} {key}: bg_ops/tenant={request.tags.get('bg_ops/tenant')!r}")

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", tenants)
        for sensor in repo.sensor_defs:
            targets = [t.job_name for t in sensor.targets] if sensor.targets else []
            if not set(targets) & set(per_tenant):
                continue
            with dg.build_sensor_context(instance=instance, resources=loaded.resources, repository_def=repo) as context:
                for request in _requests(sensor(context)):
                    check(request.job_name or targets[0], request)
        for schedule in repo.schedule_defs:
            if schedule.job_name not in per_tenant:
                continue
            minute = schedule.cron_schedule.split()[0]
            for hours_ago in range(24):  # every hour of a day: each tenant's local 02:00 is in it
                when = now - timedelta(hours=hours_ago) + timedelta(minutes=int(minute) if minute.isdigit() else 0)
                if when > datetime.now(UTC):
                    when -= timedelta(hours=1)
                with dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                               resources=loaded.resources, repository_def=repo) as context:
                    for request in schedule.evaluate_tick(context).run_requests or []:
                        check(schedule.job_name, request)
    assert not wrong, wrong
    # The demo data makes the main per-tenant launchers ask for runs (the pin is not vacuous).
    assert {"daily_reminders_job", "nightly_backup_job", "approval_thumbnails_job", "archive_document_job",
            "approval_completed_job"} <= set(seen), seen


def test_the_ui_base_url_is_configured_and_checked(tmp_path):
    from bg_ops.resources.factory import build_resources
    from bg_ops.settings import ConfigError, load_settings

    assert build_resources(load_settings({}, cwd=tmp_path))["dagster_ui"].base_url == "http://127.0.0.1:3000"
    given = load_settings({"BG_OPS_UI_BASE_URL": "https://ops.example.com/dagster/"}, cwd=tmp_path)
    assert given.ui_base_url == "https://ops.example.com/dagster"
    with pytest.raises(ConfigError) as bad:
        load_settings({"BG_OPS_UI_BASE_URL": "ops.example.com"}, cwd=tmp_path)
    (line,) = bad.value.problems
    assert line.startswith("BG_OPS_UI_BASE_URL='ops.example.com' is not a web address: use")
