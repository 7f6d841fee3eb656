"""O7 client suspension: all or nothing in batches, harmless to repeat, exactly reversible.

Every test runs on SQLite and on a real PostgreSQL. The world: tenant acme has client Globex
with 160 projects (so several batches of 50 run), approvals in review and in draft with
pending steps, and queued mail tied to those projects; acme's other client Initech and tenant
kiwi's own client named Globex must never change.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import Approval, ApprovalStep, Company, Project, Task, User
from bg_ops.db.engine import session_scope
from bg_ops.db.own_schema import client_suspension_changes, client_suspensions, email_queue, reminder_log
from bg_ops.defs.clients.suspension import (
    ClientSuspensionError,
    ClientSuspensionFailed,
    execute_request,
    request_client_suspension,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CREATED = NOW - timedelta(days=3)
ACME, KIWI = 1, 2
GINA = "gina@globex.example"  # Globex's own approver at acme (and a kiwi user with the same address)
SAM = "sam@shared.example"  # an external approver of Globex and of Initech: not Globex's own
GLOBEX = range(1, 161)
INITECH = range(201, 206)
KIWI_GLOBEX = range(301, 306)
WATCHED = {"projects": Project.__table__, "approvals": Approval.__table__,
           "approval_steps": ApprovalStep.__table__, "email_queue": email_queue, "tasks": Task.__table__}


def _project_status(p: int) -> str:
    if p in GLOBEX:
        return {0: "closed", 1: "invoiced", 2: "suspended"}.get(p % 40) or {3: "on_hold", 4: "billable"}.get(
            p % 10, "active")
    return "active"


def _mail(conn, company_id: int, to: list[str], *, status: str = "pending", log: tuple | None = None) -> int:
    """A queued message (plain producer columns), optionally logged by a reminder: (entity_type, entity_id)."""
    mail_id = conn.execute(sa.insert(email_queue).values(
        company_id=company_id, to_addrs=to, subject="s", body_text="b", status=status, created_at=CREATED,
        updated_at=CREATED).returning(email_queue.c.id)).scalar_one()
    if log is not None:
        conn.execute(sa.insert(reminder_log).values(
            company_id=company_id, rule="r", entity_type=log[0], entity_id=log[1], recipient_id=10,
            period=f"p{mail_id}", run_date="2026-12-01", email_id=mail_id))
    return mail_id


def build_world(engine) -> dict:
    """Rows of three clients; returns the ids of the mail the Globex suspension must cancel."""
    canceled = set()
    with engine.begin() as conn:
        conn.execute(sa.insert(Company.__table__), [
            {"id": ACME, "name": "Acme", "slug": "acme"}, {"id": KIWI, "name": "Kiwi", "slug": "kiwi"}])
        conn.execute(sa.insert(User.__table__), [
            {"id": 10, "company_id": ACME, "email": "pm@acme.example", "full_name": "Pat PM", "role": "pm"},
            {"id": 11, "company_id": ACME, "email": "al@acme.example", "full_name": "Al Approver", "role": "approver"},
            {"id": 12, "company_id": ACME, "email": GINA, "full_name": "Gina Globex", "role": "client"},
            {"id": 13, "company_id": ACME, "email": "ian@initech.example", "full_name": "Ian", "role": "client"},
            {"id": 14, "company_id": ACME, "email": SAM, "full_name": "Sam Shared", "role": "client"},
            {"id": 20, "company_id": KIWI, "email": "pm@kiwi.example", "full_name": "Kim PM", "role": "pm"},
            {"id": 21, "company_id": KIWI, "email": GINA, "full_name": "Gina at Kiwi", "role": "client"},
        ])
        projects, approvals, steps = [], [], []
        for p in [*GLOBEX, *INITECH, *KIWI_GLOBEX]:
            company = KIWI if p in KIWI_GLOBEX else ACME
            client = "Initech" if p in INITECH else "Globex"
            projects.append({"id": p, "company_id": company, "name": f"Project {p}", "client_name": client,
                             "pm_id": 20 if company == KIWI else 10, "status": _project_status(p)})
            own = 21 if company == KIWI else (13 if p in INITECH else 12)
            a = p * 10 + 1  # in review: stage 1 the client, stage 2 an internal approver
            approvals.append({"id": a, "company_id": company, "project_id": p, "title": f"Artwork {p}",
                              "status": "in_review", "current_stage": 1, "created_at": CREATED, "updated_at": CREATED})
            steps += [{"id": a * 10 + 1, "approval_id": a, "stage": 1, "approver_id": own, "status": "pending"},
                      {"id": a * 10 + 2, "approval_id": a, "stage": 2, "approver_id": 20 if company == KIWI else 11,
                       "status": "pending"}]
            if p in INITECH or p in (1, 2, 3):
                steps.append({"id": a * 10 + 3, "approval_id": a, "stage": 2, "approver_id": 14, "status": "pending"})
            if p % 5 == 0:  # a draft with a pending step
                approvals.append({"id": p * 10 + 2, "company_id": company, "project_id": p, "title": "Draft",
                                  "status": "draft", "created_at": CREATED, "updated_at": CREATED})
                steps.append({"id": (p * 10 + 2) * 10 + 1, "approval_id": p * 10 + 2, "stage": 1,
                              "approver_id": own, "status": "pending"})
            if p % 7 == 0:  # completed long ago: nothing to cancel
                approvals.append({"id": p * 10 + 3, "company_id": company, "project_id": p, "title": "Done",
                                  "status": "completed", "created_at": CREATED, "updated_at": CREATED,
                                  "completed_at": CREATED})
                steps.append({"id": (p * 10 + 3) * 10 + 1, "approval_id": p * 10 + 3, "stage": 1,
                              "approver_id": own, "status": "approved", "responded_at": CREATED})
        conn.execute(sa.insert(Project.__table__), projects)
        conn.execute(sa.insert(Approval.__table__), [{"current_stage": 1, "completed_at": None, **a} for a in approvals])
        conn.execute(sa.insert(ApprovalStep.__table__), [{"responded_at": None, **st} for st in steps])
        conn.execute(sa.insert(Task.__table__), [
            {"id": 1, "company_id": ACME, "project_id": 5, "title": "Proof", "status": "open", "kind": "work"},
            {"id": 2, "company_id": ACME, "project_id": 201, "title": "Proof", "status": "open", "kind": "work"},
        ])
        for p in GLOBEX:  # reminders about Globex approvals and projects: canceled
            if p % 2 == 0:
                canceled.add(_mail(conn, ACME, ["al@acme.example"], log=("approval", p * 10 + 1)))
            if p % 3 == 0:
                canceled.add(_mail(conn, ACME, ["pm@acme.example"], log=("project", p)))
        canceled.add(_mail(conn, ACME, ["pm@acme.example"], log=("task", 1)))
        for _ in range(5):  # to Globex's own user only: canceled
            canceled.add(_mail(conn, ACME, [GINA.upper()]))
        # Kept: also to someone else; to a shared approver; already sent; logged before 0007;
        # Initech's; kiwi's mail to the same address and about kiwi's own Globex.
        _mail(conn, ACME, [GINA, "pm@acme.example"])
        _mail(conn, ACME, [SAM])
        _mail(conn, ACME, ["al@acme.example"], status="sent", log=("approval", 41))
        _mail(conn, ACME, ["al@acme.example"], log=(None, 61))
        _mail(conn, ACME, ["al@acme.example"], log=("approval", 2011))
        _mail(conn, ACME, ["pm@acme.example"], log=("task", 2))
        _mail(conn, KIWI, [GINA])
        _mail(conn, KIWI, ["pm@kiwi.example"], log=("approval", 3011))
        _mail(conn, KIWI, ["pm@kiwi.example"], log=("project", 301))
    return {"canceled_mail": canceled}


def snapshot(engine) -> dict[str, list[dict]]:
    """Every row of every table a suspension may touch, all columns."""
    with engine.connect() as conn:
        return {name: [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(t.c.id))]
                for name, t in WATCHED.items()}


def request(engine, action="suspend", tenant="acme", client="Globex"):
    with session_scope(engine) as s:
        return request_client_suspension(s, tenant_slug=tenant, client_name=client, action=action, now=NOW)


def request_row(engine, request_id):
    with engine.connect() as conn:
        return conn.execute(sa.select(client_suspensions).where(client_suspensions.c.id == request_id)).one()


def expected_after_suspension(before: dict, canceled_mail: set[int]) -> dict:
    """``before`` with exactly what suspending acme's Globex must change."""
    after = json.loads(json.dumps(before, default=str))  # a deep copy, compared as text
    globex_approvals = {p * 10 + k for p in GLOBEX for k in (1, 2, 3)}
    for row in after["projects"]:
        if row["id"] in GLOBEX and row["status"] in ("active", "on_hold", "billable"):
            row["status"] = "suspended"
    for row in after["approvals"]:
        if row["id"] in globex_approvals and row["status"] == "in_review":
            row["status"], row["updated_at"] = "canceled", str(NOW)
    for row in after["approval_steps"]:
        if row["approval_id"] in globex_approvals and row["status"] == "pending":
            row["status"] = "skipped"
    for row in after["email_queue"]:
        if row["id"] in canceled_mail:
            row.update(status="canceled", canceled_at=str(NOW), updated_at=str(NOW))
    return after


def as_text(snap: dict) -> dict:
    text = json.loads(json.dumps(snap, default=str))
    for row in text["email_queue"]:
        row.pop("last_error")
    return text


@pytest.fixture
def world(db_engine):
    return db_engine, build_world(db_engine)


def fail_after(batch: int):
    def hook(n: int) -> None:
        if n == batch:
            raise RuntimeError(f"fault injected after batch {n}")
    return hook


# -- all or nothing, repeatable, reversible ----------------------------------------------------


def test_a_fault_mid_run_leaves_nothing_changed_then_a_clean_run_suspends_everything(world):
    engine, facts = world
    before = snapshot(engine)
    req = request(engine)
    assert req.created and req.status == "requested" and req.projects == 160

    with pytest.raises(ClientSuspensionFailed) as failed:
        execute_request(engine, req.id, now=NOW, batch_size=50, after_batch=fail_after(14))
    # 14 of 17 batches had committed (projects, approvals, steps and some mail), and were undone.
    assert failed.value.rolled_back == 700
    assert snapshot(engine) == before
    row = request_row(engine, req.id)
    assert row.status == "failed" and "after batch 14" in row.error and "rolled back 700 change(s)" in row.error
    with engine.connect() as conn:
        journal = conn.execute(sa.select(client_suspension_changes.c.reverted_at)).scalars().all()
    assert len(journal) == 700 and all(j is not None for j in journal)

    outcome = execute_request(engine, req.id, now=NOW, batch_size=50)
    expected = expected_after_suspension(before, facts["canceled_mail"])
    after = snapshot(engine)
    assert as_text(after) == as_text(expected)
    suspended = [r for r in after["projects"] if r["id"] in GLOBEX and r["status"] == "suspended"]
    assert outcome.changed == {"project": 148, "approval": 160, "approval_step": 355,
                               "email": len(facts["canceled_mail"])}
    assert len(suspended) == 152 and outcome.skipped == 0  # 148 now + 4 suspended before
    assert outcome.batches == -(-outcome.planned // 50) >= 10
    row = request_row(engine, req.id)
    assert (row.status, row.attempts, row.batches, row.projects, row.emails, row.error) == (
        "done", 2, outcome.batches, 148, len(facts["canceled_mail"]), None)
    reasons = {r["last_error"] for r in after["email_queue"] if r["id"] in facts["canceled_mail"]}
    assert reasons == {f"canceled: client suspended (client suspension #{req.id})"}

    # Running it again, or asking again, changes nothing and raises nothing.
    again = execute_request(engine, req.id, now=NOW + timedelta(hours=1), batch_size=50)
    assert again.already_done and snapshot(engine) == after
    second = request(engine)
    assert second.created and second.id != req.id
    repeat = execute_request(engine, second.id, now=NOW + timedelta(hours=1), batch_size=50)
    assert repeat.status == "done" and sum(repeat.changed.values()) == 0 and snapshot(engine) == after

    # Reinstating puts back exactly what was there (timestamps and all) and nothing else.
    back = request(engine, "reinstate")
    outcome = execute_request(engine, back.id, now=NOW + timedelta(days=1), batch_size=100)
    assert outcome.status == "done" and outcome.skipped == 0 and outcome.batches >= 7
    assert snapshot(engine) == before
    assert request_row(engine, req.id).reinstated_by == back.id
    assert request_row(engine, second.id).reinstated_by == back.id
    with pytest.raises(ClientSuspensionError, match="no suspension to reverse"):
        request(engine, "reinstate")


def test_reinstatement_leaves_rows_changed_since_as_they_are(world):
    engine, facts = world
    before = snapshot(engine)
    execute_request(engine, request(engine).id, now=NOW, batch_size=100)
    some_mail = min(facts["canceled_mail"])
    with engine.begin() as conn:  # meanwhile the platform closes a project and retries a message
        conn.execute(sa.update(Project.__table__).where(Project.id == 5).values(status="closed"))
        conn.execute(sa.update(email_queue).where(email_queue.c.id == some_mail).values(status="pending"))
    outcome = execute_request(engine, request(engine, "reinstate").id, now=NOW, batch_size=100)
    assert outcome.skipped == 2
    after = snapshot(engine)
    projects = {r["id"]: r["status"] for r in after["projects"]}
    assert projects[5] == "closed" and projects[6] == _project_status(6) == "active"
    changed = {name: [r for r, b in zip(after[name], before[name], strict=True) if r != b] for name in WATCHED}
    assert [r["id"] for r in changed["projects"]] == [5]
    assert [(r["id"], r["status"]) for r in changed["email_queue"]] == [(some_mail, "pending")]
    assert not changed["approvals"] and not changed["approval_steps"]


def test_a_database_error_in_a_later_batch_rolls_back_the_earlier_ones(world):
    engine, _facts = world
    before = snapshot(engine)
    _break_row(engine, max(_pending_globex_steps(engine)))
    req = request(engine)
    with pytest.raises(ClientSuspensionFailed, match="broken row"):
        execute_request(engine, req.id, now=NOW, batch_size=50)
    assert snapshot(engine) == before
    assert request_row(engine, req.id).status == "failed"


def _pending_globex_steps(engine) -> list[int]:
    with engine.connect() as conn:
        return conn.execute(sa.select(ApprovalStep.id).join(Approval, Approval.id == ApprovalStep.approval_id)
                            .where(Approval.company_id == ACME, Approval.project_id.in_(list(GLOBEX)),
                                   ApprovalStep.status == "pending")).scalars().all()


def _break_row(engine, step_id: int) -> None:
    """A trigger that refuses any update of one approval step: a real database error mid-run."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("CREATE FUNCTION broken_row() RETURNS trigger AS $$ BEGIN "
                                 "RAISE EXCEPTION 'broken row %', OLD.id; END $$ LANGUAGE plpgsql"))
            conn.execute(sa.text(f"CREATE TRIGGER broken BEFORE UPDATE ON approval_steps FOR EACH ROW "
                                 f"WHEN (OLD.id = {step_id}) EXECUTE FUNCTION broken_row()"))
        else:
            conn.execute(sa.text(f"CREATE TRIGGER broken BEFORE UPDATE ON approval_steps WHEN OLD.id = {step_id} "
                                 "BEGIN SELECT RAISE(ABORT, 'broken row'); END"))


def _mend_row(engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER broken ON approval_steps" if engine.dialect.name == "postgresql"
                             else "DROP TRIGGER broken"))


def test_a_run_whose_rollback_failed_is_rolled_back_before_it_starts_over(world, monkeypatch):
    from bg_ops.defs.clients import suspension

    engine, facts = world
    before = snapshot(engine)
    req = request(engine)
    real_roll_back = suspension.roll_back

    def database_gone(*_args, **_kwargs):
        raise sa.exc.OperationalError("UPDATE projects", {}, Exception("server closed the connection"))

    monkeypatch.setattr(suspension, "roll_back", database_gone)
    with pytest.raises(suspension.RollbackIncomplete, match="run the request again to finish the rollback"):
        execute_request(engine, req.id, now=NOW, batch_size=50, after_batch=fail_after(3))
    row = request_row(engine, req.id)
    assert row.status == "running" and "rollback did not finish" in row.error
    assert snapshot(engine) != before  # three batches are still applied: the request says so

    monkeypatch.setattr(suspension, "roll_back", real_roll_back)
    with pytest.raises(ClientSuspensionFailed):  # the next attempt rolls back first; then fails again
        execute_request(engine, req.id, now=NOW, batch_size=50, after_batch=fail_after(1))
    assert snapshot(engine) == before
    outcome = execute_request(engine, req.id, now=NOW, batch_size=50)
    assert outcome.status == "done" and request_row(engine, req.id).attempts == 3
    assert as_text(snapshot(engine)) == as_text(expected_after_suspension(before, facts["canceled_mail"]))


def test_an_interrupted_run_rolls_back_and_stays_an_interrupt(world):
    engine, _facts = world
    before = snapshot(engine)
    req = request(engine)

    class Interrupted(BaseException):  # what Dagster raises in an op when the run is canceled
        pass

    def cancel(n):
        if n == 2:
            raise Interrupted()

    with pytest.raises(Interrupted):
        execute_request(engine, req.id, now=NOW, batch_size=50, after_batch=cancel)
    assert snapshot(engine) == before and request_row(engine, req.id).status == "failed"


def test_mail_the_reminder_engine_queues_about_a_project_is_canceled_with_it(world, tmp_path):
    from bg_ops.defs.email.enqueue import MailSettings
    from bg_ops.defs.reminders.completed import notify_approval_completed
    from bg_ops.defs.tenants.logic import get_tenant

    engine, _facts = world
    settings = MailSettings(mail_from="Agency <no-reply@agency.example>", files_root=tmp_path)
    with session_scope(engine) as s:
        s.execute(sa.update(Approval.__table__).where(Approval.id.in_([71, 2011])).values(
            status="completed", completed_at=NOW))
        acme = get_tenant(s, "acme")
        queued = [notify_approval_completed(s, acme, a, now=NOW, mail_settings=settings).enqueued for a in (71, 2011)]
    assert queued == [1, 1]  # the PM of each project
    with engine.connect() as conn:
        logged = dict(conn.execute(sa.select(reminder_log.c.entity_id, reminder_log.c.email_id).where(
            reminder_log.c.rule == "approval_completed", reminder_log.c.entity_type == "approval")).all())
    assert set(logged) == {71, 2011}
    execute_request(engine, request(engine).id, now=NOW, batch_size=100)
    with engine.connect() as conn:
        status = dict(conn.execute(sa.select(email_queue.c.id, email_queue.c.status)).all())
    assert status[logged[71]] == "canceled" and status[logged[2011]] == "pending"  # Initech's stays


def test_requests_that_cannot_be_made_say_why_and_repeats_return_the_waiting_one(world):
    engine, _facts = world
    with pytest.raises(ClientSuspensionError, match="unknown tenant 'nope'"):
        request(engine, tenant="nope")
    with pytest.raises(ClientSuspensionError, match=r"no project of client 'Globx'.*clients of acme: Globex, Initech"):
        request(engine, client="Globx")
    with pytest.raises(ClientSuspensionError, match="action 'ban' is not one of suspend, reinstate"):
        request(engine, action="ban")
    with pytest.raises(ClientSuspensionError, match="no suspension to reverse"):
        request(engine, action="reinstate")
    first = request(engine)
    assert request(engine) == type(first)(**{**first.__dict__, "created": False})
    assert request(engine, tenant="kiwi").id != first.id
    with pytest.raises(ClientSuspensionError, match="batch_size 500 is outside 50-100"):
        execute_request(engine, first.id, now=NOW, batch_size=500)


# -- Dagster: the sensor launches one run per request; the job does the work --------------------


def _resources(db_url):
    from bg_ops.resources.database import DatabaseResource

    return {"database": DatabaseResource(url=db_url)}


def _tick(db_url, instance):
    from bg_ops.defs.clients.suspension_defs import client_suspension_sensor

    ctx = dg.build_sensor_context(instance=instance, resources=_resources(db_url))
    return client_suspension_sensor(ctx)


def _fast_job():
    from bg_ops.defs.clients import suspension_defs

    fast = dg.RetryPolicy(max_retries=1, delay=0.01)

    @dg.job(name="client_suspension_fast_job", executor_def=dg.in_process_executor)
    def fast_job():
        suspension_defs.apply_client_suspension_op.with_retry_policy(fast)()

    return fast_job


def test_sensor_requests_one_tenant_tagged_run_per_request_in_order_and_the_job_runs_it(world, db_url):
    from bg_ops.defs.clients.suspension_defs import client_suspension_job

    engine, _facts = world
    before = snapshot(engine)
    suspend, reinstate, kiwi = request(engine), request(engine, "reinstate"), request(engine, tenant="kiwi")
    with dg.instance_for_test() as instance:
        result = _tick(db_url, instance)
        runs = {r.run_key: r for r in result.run_requests}
        assert set(runs) == {str(suspend.id), str(kiwi.id)}  # the reinstatement waits for the suspension
        assert runs[str(suspend.id)].tags["bg_ops/tenant"] == "acme"
        assert runs[str(kiwi.id)].tags["bg_ops/tenant"] == "kiwi"
        singletons = {k: r.tags["bg_ops/singleton"] for k, r in runs.items()}
        assert len(set(singletons.values())) == 2 and all(v.startswith("client_suspension_") for v in singletons.values())
        assert {r.run_key for r in _tick(db_url, instance).run_requests} == set(runs)  # same keys: one run each

        run = client_suspension_job.execute_in_process(
            instance=instance, run_config=runs[str(suspend.id)].run_config, resources=_resources(db_url),
            tags=runs[str(suspend.id)].tags)
        assert run.success
        assert request_row(engine, suspend.id).status == "done"
        kiwi_rows = [r for r in snapshot(engine)["projects"] if r["company_id"] == KIWI]
        assert kiwi_rows == [r for r in before["projects"] if r["company_id"] == KIWI]

        runs = {r.run_key: r for r in _tick(db_url, instance).run_requests}
        assert set(runs) == {str(reinstate.id), str(kiwi.id)}
        assert runs[str(reinstate.id)].tags["bg_ops/singleton"] == singletons[str(suspend.id)]  # same client
        assert client_suspension_job.execute_in_process(
            instance=instance, run_config=runs[str(reinstate.id)].run_config, resources=_resources(db_url)).success
        assert snapshot(engine)["projects"] == before["projects"]
        assert {r.run_key for r in _tick(db_url, instance).run_requests} == {str(kiwi.id)}


def test_a_broken_row_fails_the_run_with_nothing_changed_and_a_rerun_completes(world, db_url):
    engine, facts = world
    before = snapshot(engine)
    _break_row(engine, max(_pending_globex_steps(engine)))
    req = request(engine)
    config = {"ops": {"apply_client_suspension": {"config": {"request_id": req.id, "batch_size": 50}}}}
    with dg.instance_for_test() as instance:
        run = _fast_job().execute_in_process(instance=instance, run_config=config, resources=_resources(db_url),
                                             raise_on_error=False)
        assert not run.success
        failure = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"][-1]
        rolled_back = failure.step_failure_data.user_failure_data.metadata["rolled_back"].value
        assert snapshot(engine) == before
        row = request_row(engine, req.id)
        assert row.status == "failed" and row.attempts == 2  # the retry rolled back too
        assert rolled_back >= 600 and "broken row" in row.error and f"rolled back {rolled_back} change(s)" in row.error
        _mend_row(engine)
        assert _fast_job().execute_in_process(instance=instance, run_config=config,
                                              resources=_resources(db_url)).success
    # The job stamps the real time: compare what changed, statuses, row by row.
    assert statuses(snapshot(engine)) == statuses(expected_after_suspension(before, facts["canceled_mail"]))


def statuses(snap: dict) -> dict:
    return {name: [(r["id"], r["status"]) for r in rows] for name, rows in snap.items()}


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_requests_return_at_once_and_status_shows_progress(world, db_url, monkeypatch, tmp_path, capsys):
    from bg_ops.cli.main import main

    engine, _facts = world
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BG_OPS_DATABASE_URL", db_url)
    before = snapshot(engine)

    def run(*args):
        capsys.readouterr()
        code = main(list(args))
        return code, *capsys.readouterr()

    code, out, _err = run("clients", "suspend", "--tenant", "acme", "--client", "Globex", "--json")
    data = json.loads(out)
    assert code == 0 and data["created"] is True and data["status"] == "requested" and data["projects"] == 160
    assert snapshot(engine) == before  # only the request was recorded
    code, out, _err = run("clients", "suspend", "--tenant", "acme", "--client", "Globex", "--json")
    assert json.loads(out)["id"] == data["id"] and json.loads(out)["created"] is False
    code, _out, err = run("clients", "suspend", "--tenant", "acme", "--client", "Nobody")
    assert code == 1 and err.strip().startswith("error: tenant acme has no project of client 'Nobody'")
    assert len(err.strip().splitlines()) == 1

    execute_request(engine, data["id"], now=NOW, batch_size=50)
    code, out, _err = run("clients", "status", "--tenant", "acme", "--json")
    listed = json.loads(out)
    assert code == 0 and [(r["id"], r["status"], r["projects"]) for r in listed] == [(data["id"], "done", 148)]
    code, out, _err = run("clients", "status")
    assert code == 0 and "Globex" in out and "done" in out
    code, out, _err = run("clients", "reinstate", "--tenant", "acme", "--client", "Globex")
    assert code == 0 and "requested the reinstatement of client 'Globex' of acme" in out
