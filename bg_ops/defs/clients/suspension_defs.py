"""Client suspension (O7) wiring: the request sensor and the job that carries out one request.

``client_suspension_sensor`` reads ``client_suspensions`` and asks for one
``client_suspension_job`` run per waiting request, run key = the request id, tagged with the
tenant (``bg_ops/tenant``, so the per-tenant run cap applies) and a ``bg_ops/singleton`` value
per client (two runs of one client never overlap). Requests of one client go one at a time,
in order. The job's op plans and applies the changes in batches with the progress
on the request row; on any error it rolls everything back (see ``suspension.py``) and fails,
so the failure alert goes out; a retry (or a re-execution) of the run starts over cleanly.
"""

import hashlib
from datetime import UTC, datetime

import dagster as dg

from bg_ops.defs.clients.suspension import (
    DEFAULT_BATCH_SIZE,
    ClientSuspensionError,
    ClientSuspensionFailed,
    RollbackIncomplete,
    execute_request,
    launchable_requests,
)
from bg_ops.defs.retries import TRANSIENT_RETRY
from bg_ops.resources.database import DatabaseResource

SUSPENSION_JOB_NAME = "client_suspension_job"
SUSPENSION_OP_NAME = "apply_client_suspension"


class ClientSuspensionConfig(dg.Config):
    request_id: int  # client_suspensions.id
    batch_size: int = DEFAULT_BATCH_SIZE  # rows per transaction, 50-100


@dg.op(
    name=SUSPENSION_OP_NAME,
    description=(
        "O7: carries out one client suspension request: suspend sets the client's open projects to suspended, "
        "cancels their approvals in review, skips their pending approval steps and cancels their queued mail; "
        "reinstate puts back exactly what the suspensions changed. Batches of 50-100 rows with progress on the "
        "request; any error rolls everything back (nothing is left half done) and a re-run starts over. A "
        "request already done changes nothing."
    ),
    tags={"domain": "clients"},
    retry_policy=TRANSIENT_RETRY,  # each attempt rolls back what an earlier one left, then starts over
)
def apply_client_suspension_op(context: dg.OpExecutionContext, config: ClientSuspensionConfig,
                               database: DatabaseResource) -> None:
    try:
        outcome = execute_request(database.engine, config.request_id, now=datetime.now(UTC),
                                  batch_size=config.batch_size, log=context.log.info)
    except ClientSuspensionError as exc:  # a bad request id or batch size: no retry fixes it
        raise dg.Failure(str(exc), allow_retries=False) from None
    except ClientSuspensionFailed as exc:
        context.log.error(str(exc))
        raise dg.Failure(str(exc), metadata={"request_id": config.request_id, "rolled_back": exc.rolled_back}) from None
    except RollbackIncomplete as exc:
        context.log.error(str(exc))
        raise dg.Failure(str(exc), metadata={"request_id": config.request_id}) from None
    if outcome.already_done:
        context.log.info(f"client suspension #{config.request_id} was already done: nothing changed")
    else:
        context.log.info(f"client suspension #{config.request_id} ({outcome.action}) done: "
                         + ", ".join(f"{k} {v}" for k, v in outcome.changed.items())
                         + f", {outcome.skipped} skipped, {outcome.batches} batch(es)")
    context.add_output_metadata(outcome.as_metadata())


@dg.job(
    name=SUSPENSION_JOB_NAME,
    description=(
        "Client suspension: suspends or reinstates one client of a tenant (the request named in the run config), "
        "all or nothing, in batches with progress kept on the request (bg-ops clients status). Launched by "
        "client_suspension_sensor with run key = the request id."
    ),
    # Seed 003: a ban completes within 5 minutes; run monitoring stops it at 15 (and it is alerted).
    tags={"domain": "clients", "dagster/max_runtime": "900"},
    owners=["team:bg-ops"],
    executor_def=dg.in_process_executor,
)
def client_suspension_job():
    apply_client_suspension_op()


def client_key(company_id: int, client_name: str) -> str:
    """One ``bg_ops/singleton`` value per client: two runs for one client (a re-execution from the UI
    beside the sensor's run) never run at the same time."""
    return f"client_suspension_{company_id}_{hashlib.sha256(client_name.encode()).hexdigest()[:12]}"


def run_request_for(request) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=str(request.id),
        run_config={"ops": {SUSPENSION_OP_NAME: {"config": {"request_id": int(request.id)}}}},
        tags={"bg_ops/tenant": request.tenant, "bg_ops/singleton": client_key(request.company_id, request.client_name),
              "bg_ops/client_suspension": str(request.id), "bg_ops/action": request.action},
    )


@dg.sensor(
    name="client_suspension_sensor",
    job=client_suspension_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches client_suspensions and requests one client_suspension_job run per waiting suspend/reinstate "
        "request (run key = the request id), tagged with its tenant; requests of one client run one after "
        "the other, in the order they were made."
    ),
    tags={"domain": "clients"},
    owners=["team:bg-ops"],
)
def client_suspension_sensor(context: dg.SensorEvaluationContext, database: DatabaseResource):
    with database.session() as session:
        requests = launchable_requests(session)
    if not requests:
        return dg.SkipReason("no client suspension request waiting")
    context.log.info(f"{len(requests)} client suspension request(s) to run")
    return dg.SensorResult(run_requests=[run_request_for(r) for r in requests])
