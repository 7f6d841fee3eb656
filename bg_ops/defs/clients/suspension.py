"""Suspending a client of a tenant, and reinstating it (O7, seed 003 "company ban / unban").

A client is the ``projects.client_name`` of one tenant (``company_id``). Suspending it:

- sets its open projects (active, on_hold, billable) to ``suspended`` — closed and invoiced
  projects are finished work and keep their status;
- cancels the approvals of its projects that are ``in_review`` and skips their ``pending``
  approval steps (``approval_steps`` has no canceled status; ``skipped`` is the one that
  means "no answer expected");
- cancels the ``pending`` mail about its projects: mail whose ``reminder_log`` entry names an
  entity of those projects (the project, an approval, task, translation, core request,
  purchase order or invoice of it — ``reminder_log.entity_type``, added by 0007 and set by the
  reminder engine) and mail whose every recipient is one of the client's own users (role
  ``client``, approver on the client's projects and on no other client's). Mail already
  being sent is left alone. Mail logged before 0007 (no entity type) is found only by the
  second test.

Reinstating the client reverses exactly what its suspensions changed and nothing else:
every row goes back to the values it had before (projects to their previous status,
approvals to in_review, steps to pending, mail to pending), and only where the row still
holds what the suspension set; a row someone changed since is left as it is and counted in
``skipped``.

How it is all-or-nothing (the design choice). ``request_client_suspension`` only inserts a
``client_suspensions`` row and returns (the API answer is immediate); a sensor launches one
run per request. The run plans the rows, then changes them in batches of 50-100, one short
transaction per batch, so the queues and the platform are never locked for long and the
progress counters on the request row are visible while it runs (``bg-ops clients status``).
Every batch writes, in its own transaction, a ``client_suspension_changes`` journal row per
changed row with the exact prior values of the columns it changed. If anything fails —
a batch, the plan, the final step — the journal of the request is replayed backwards in one
transaction (each row restored only where it still holds what the request set), the request
is marked ``failed`` with the error, and the database is as it was before the request (a run
canceled by an operator or by run monitoring rolls back the same way). A run that could not
roll back (the database went away, the process was killed) leaves the request ``running``;
running the request again first rolls back what the journal holds, then starts over. A ``done`` request
run again changes nothing, and a second suspension of a suspended client finds nothing to
change. This works the same on SQLite, where a long transaction beside a progress
connection would lock the database, and on PostgreSQL (where ``SELECT … FOR UPDATE`` also
keeps a delivery worker from claiming a row between the snapshot and the update).

Requests of one client run in order: the sensor launches a request only when no earlier one
of the same client is still requested or running.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import (
    Approval,
    ApprovalStep,
    Company,
    CoreRequest,
    Invoice,
    Project,
    PurchaseOrder,
    Task,
    Translation,
    User,
)
from bg_ops.db.own_schema import (
    SUSPENSION_ACTIONS,
    client_suspension_changes,
    client_suspensions,
    email_queue,
    reminder_log,
)
from bg_ops.defs.tenants.logic import UnknownTenant, get_tenant

DEFAULT_BATCH_SIZE = 100
MIN_BATCH_SIZE, MAX_BATCH_SIZE = 50, 100  # seed 003 BR-3
SUSPENDABLE_PROJECT_STATUSES = ("active", "on_hold", "billable")
UNFINISHED = ("requested", "running")

# Entity types whose rows carry a project_id: mail logged against one of them is about that project.
PROJECT_ENTITIES = {"approval": Approval, "task": Task, "translation": Translation, "core_request": CoreRequest,
                    "purchase_order": PurchaseOrder, "invoice": Invoice}


class ClientSuspensionError(ValueError):
    """A request that cannot be made or run, with what to do about it."""


class ClientSuspensionFailed(RuntimeError):
    """The run failed; everything it had changed was rolled back (``rolled_back`` rows)."""

    def __init__(self, message: str, rolled_back: int):
        super().__init__(message)
        self.rolled_back = rolled_back


class RollbackIncomplete(RuntimeError):
    """The run failed and so did its rollback: the request stays running; run it again."""


@dataclass(frozen=True)
class Entity:
    """A table a suspension changes: the columns it writes (and journals) and its tenant scope."""

    name: str
    table: sa.Table
    columns: tuple[str, ...]
    datetimes: tuple[str, ...] = ()

    def scope(self, company_id: int):
        if self.name == "approval_step":
            return self.table.c.approval_id.in_(sa.select(Approval.id).where(Approval.company_id == company_id))
        return self.table.c.company_id == company_id

    def encode(self, values: dict) -> dict:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in values.items()}

    def decode(self, values: dict) -> dict:
        return {k: (datetime.fromisoformat(v) if k in self.datetimes and v is not None else v)
                for k, v in values.items()}


ENTITIES = {
    e.name: e for e in (
        Entity("project", Project.__table__, ("status",)),
        Entity("approval", Approval.__table__, ("status", "updated_at"), ("updated_at",)),
        Entity("approval_step", ApprovalStep.__table__, ("status",)),
        Entity("email", email_queue, ("status", "canceled_at", "updated_at", "last_error"),
               ("canceled_at", "updated_at")),
    )
}
COUNTERS = {"project": "projects", "approval": "approvals", "approval_step": "approval_steps", "email": "emails"}


@dataclass(frozen=True)
class Change:
    """Set ``values`` on one row, if its status is still one of ``expected``."""

    entity: str
    row_id: int
    expected: tuple[str, ...]
    values: dict


@dataclass
class Outcome:
    request_id: int
    action: str
    status: str
    already_done: bool = False
    batches: int = 0
    changed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    skipped: int = 0
    planned: int = 0

    def as_metadata(self) -> dict:
        return {"request_id": self.request_id, "action": self.action, "status": self.status,
                "already_done": self.already_done, "batches": self.batches, "planned": self.planned,
                "skipped": self.skipped, **{COUNTERS[k]: v for k, v in self.changed.items()}}


@dataclass(frozen=True)
class RequestResult:
    id: int
    created: bool  # False: the same request was already waiting or running
    tenant: str
    company_id: int
    client_name: str
    action: str
    status: str
    projects: int


# -- the request (the API call: insert and return) ----------------------------------------------


def request_client_suspension(session: Session, *, tenant_slug: str, client_name: str, action: str,
                              now: datetime) -> RequestResult:
    """Ask for a client of a tenant to be suspended or reinstated; returns at once.

    The work is done by ``client_suspension_job`` (launched by ``client_suspension_sensor``).
    The same request while one is waiting or running returns that one (``created`` False).
    Raises ``ClientSuspensionError`` naming the problem and the fix."""
    if action not in SUSPENSION_ACTIONS:
        raise ClientSuspensionError(f"action {action!r} is not one of {', '.join(SUSPENSION_ACTIONS)}")
    client = (client_name or "").strip()
    if not client:
        raise ClientSuspensionError("no client name: give the client as written in projects.client_name")
    try:
        tenant = get_tenant(session, tenant_slug)
    except UnknownTenant as exc:
        raise ClientSuspensionError(str(exc)) from None
    projects = session.scalar(sa.select(sa.func.count()).select_from(Project).where(
        Project.company_id == tenant.id, Project.client_name == client))
    if not projects:
        known = list(session.scalars(
            sa.select(Project.client_name).where(Project.company_id == tenant.id, Project.client_name.is_not(None))
            .distinct().order_by(Project.client_name).limit(10)))
        hint = f"clients of {tenant.slug}: {', '.join(known)}" if known else f"{tenant.slug} has no project with a client"
        raise ClientSuspensionError(
            f"tenant {tenant.slug} has no project of client {client!r} (projects.client_name, exact spelling): "
            f"check the name ({hint})")
    r = client_suspensions.c
    same = session.execute(
        sa.select(r.id, r.status).where(r.company_id == tenant.id, r.client_name == client, r.action == action,
                                        r.status.in_(UNFINISHED)).order_by(r.id).limit(1)).first()
    if same is not None:
        return RequestResult(same.id, False, tenant.slug, tenant.id, client, action, same.status, projects)
    if action == "reinstate":
        to_reverse = session.scalar(sa.select(sa.func.count()).where(
            r.company_id == tenant.id, r.client_name == client, r.action == "suspend",
            r.status.in_(("requested", "running", "done")), r.reinstated_by.is_(None)))
        if not to_reverse:
            raise ClientSuspensionError(
                f"client {client!r} of tenant {tenant.slug} has no suspension to reverse: nothing to reinstate "
                "(see 'bg-ops clients status')")
    new_id = session.execute(
        sa.insert(client_suspensions).values(company_id=tenant.id, client_name=client, action=action,
                                             status="requested", requested_at=now, updated_at=now)
        .returning(r.id)).scalar_one()
    return RequestResult(new_id, True, tenant.slug, tenant.id, client, action, "requested", projects)


def launchable_requests(session: Session, limit: int = 50) -> list:
    """Requests to launch now, oldest first, with their tenant slug: at most one per client,
    and none while an earlier request of the same client is still waiting or running."""
    r = client_suspensions.c
    rows = session.execute(
        sa.select(r.id, r.company_id, r.client_name, r.action, r.status, Company.slug.label("tenant"))
        .join(Company, Company.id == r.company_id)
        .where(r.status.in_(UNFINISHED)).order_by(r.id).limit(limit * 4)).all()
    busy, out = set(), []
    for row in rows:
        key = (row.company_id, row.client_name)
        if row.status == "requested" and key not in busy and len(out) < limit:
            out.append(row)
        busy.add(key)
    return out


def list_requests(session: Session, *, company_id: int | None = None, limit: int = 50) -> list[dict]:
    """The latest requests, newest first, with their progress (for ``bg-ops clients status``)."""
    r = client_suspensions.c
    query = (sa.select(client_suspensions, Company.slug.label("tenant"))
             .join(Company, Company.id == r.company_id, isouter=True).order_by(r.id.desc()).limit(limit))
    if company_id is not None:
        query = query.where(r.company_id == company_id)
    return [dict(row._mapping) for row in session.execute(query)]


# -- planning -----------------------------------------------------------------------------------


def _client_projects(company_id: int, client: str):
    return sa.select(Project.id).where(Project.company_id == company_id, Project.client_name == client)


def _client_user_emails(session: Session, company_id: int, client: str) -> set[str]:
    """Addresses of the client's own users: role 'client', approver on a project of this client
    and on none of another client (an external approver shared by two clients is not theirs)."""
    def steps_on(projects):
        return (sa.select(ApprovalStep.approver_id).join(Approval, Approval.id == ApprovalStep.approval_id)
                .where(Approval.company_id == company_id, Approval.project_id.in_(projects)))

    others = sa.select(Project.id).where(Project.company_id == company_id,
                                         sa.or_(Project.client_name != client, Project.client_name.is_(None)))
    rows = session.scalars(
        sa.select(User.email).where(User.company_id == company_id, User.role == "client",
                                    User.id.in_(steps_on(_client_projects(company_id, client))),
                                    User.id.not_in(steps_on(others))))
    return {e.strip().lower() for e in rows if e}


def _mail_about_projects(company_id: int, projects):
    """email_queue ids that reminder_log ties to an entity of ``projects``."""
    log = reminder_log.c
    links = [sa.and_(log.entity_type == "project", log.entity_id.in_(projects))]
    for entity_type, model in PROJECT_ENTITIES.items():
        links.append(sa.and_(log.entity_type == entity_type, log.entity_id.in_(
            sa.select(model.id).where(model.company_id == company_id, model.project_id.in_(projects)))))
    return sa.select(log.email_id).where(log.company_id == company_id, log.email_id.is_not(None), sa.or_(*links))


def _recipients(row) -> set[str]:
    out = set()
    for column in (row.to_addrs, row.cc_addrs, row.bcc_addrs):
        if isinstance(column, str):
            try:
                column = json.loads(column)
            except ValueError:
                column = [column]
        out.update(str(a).strip().lower() for a in column or () if a)
    return out


def plan_suspension(session: Session, request_id: int, company_id: int, client: str, now: datetime) -> list[Change]:
    """Every change a suspension of ``client`` makes now, in the order they are applied."""
    projects = _client_projects(company_id, client)
    project_ids = session.scalars(
        projects.where(Project.status.in_(SUSPENDABLE_PROJECT_STATUSES)).order_by(Project.id)).all()
    approval_ids = session.scalars(
        sa.select(Approval.id).where(Approval.company_id == company_id, Approval.project_id.in_(projects),
                                     Approval.status == "in_review").order_by(Approval.id)).all()
    step_ids = session.scalars(
        sa.select(ApprovalStep.id).join(Approval, Approval.id == ApprovalStep.approval_id)
        .where(Approval.company_id == company_id, Approval.project_id.in_(projects),
               ApprovalStep.status == "pending").order_by(ApprovalStep.id)).all()
    q = email_queue.c
    mail_ids = set(session.scalars(
        sa.select(q.id).where(q.company_id == company_id, q.status == "pending",
                              q.id.in_(_mail_about_projects(company_id, projects)))))
    client_users = _client_user_emails(session, company_id, client)
    if client_users:
        for row in session.execute(sa.select(q.id, q.to_addrs, q.cc_addrs, q.bcc_addrs).where(
                q.company_id == company_id, q.status == "pending")):
            recipients = _recipients(row)
            if recipients and recipients <= client_users:
                mail_ids.add(row.id)
    reason = f"canceled: client suspended (client suspension #{request_id})"
    return (
        [Change("project", i, SUSPENDABLE_PROJECT_STATUSES, {"status": "suspended"}) for i in project_ids]
        + [Change("approval", i, ("in_review",), {"status": "canceled", "updated_at": now}) for i in approval_ids]
        + [Change("approval_step", i, ("pending",), {"status": "skipped"}) for i in step_ids]
        + [Change("email", i, ("pending",), {"status": "canceled", "canceled_at": now, "updated_at": now,
                                             "last_error": reason}) for i in sorted(mail_ids)]
    )


def _suspensions_to_reverse(session: Session, company_id: int, client: str) -> list[int]:
    r = client_suspensions.c
    return list(session.scalars(sa.select(r.id).where(
        r.company_id == company_id, r.client_name == client, r.action == "suspend", r.status == "done",
        r.reinstated_by.is_(None)).order_by(r.id)))


def plan_reinstatement(session: Session, suspension_ids: list[int]) -> list[Change]:
    """The journal of the suspensions, newest change first, turned back into changes."""
    if not suspension_ids:
        return []
    j = client_suspension_changes.c
    rows = session.execute(sa.select(j.entity, j.row_id, j.prior, j.applied).where(
        j.request_id.in_(suspension_ids), j.reverted_at.is_(None)).order_by(j.id.desc()))
    return [Change(row.entity, row.row_id, (row.applied["status"],), ENTITIES[row.entity].decode(row.prior))
            for row in rows]


# -- applying, journaling, rolling back ---------------------------------------------------------


def _apply(conn: sa.Connection, request_id: int, company_id: int, changes: list[Change], now: datetime) -> dict:
    """Apply one batch in the caller's transaction; journal each changed row; return counts."""
    counts: dict[str, int] = defaultdict(int)
    by_entity: dict[str, list[Change]] = defaultdict(list)
    for change in changes:
        by_entity[change.entity].append(change)
    journal = []
    for name, items in by_entity.items():
        entity = ENTITIES[name]
        t = entity.table
        ids = [c.row_id for c in items]
        snapshot = {row.id: row for row in conn.execute(
            sa.select(t.c.id, *(t.c[col] for col in entity.columns))
            .where(t.c.id.in_(ids), entity.scope(company_id)).with_for_update())}
        groups: dict[tuple, list[Change]] = defaultdict(list)
        for c in items:
            groups[(c.expected, json.dumps(entity.encode(c.values), sort_keys=True))].append(c)
        for (expected, _key), group in groups.items():
            changed = conn.execute(
                sa.update(t).where(t.c.id.in_([c.row_id for c in group]), t.c.status.in_(expected),
                                   entity.scope(company_id))
                .values(group[0].values).returning(t.c.id)).scalars().all()
            counts[name] += len(changed)
            counts["skipped"] += len(group) - len(changed)
            for row_id in changed:
                prior = {col: snapshot[row_id]._mapping[col] for col in entity.columns}
                journal.append({"request_id": request_id, "company_id": company_id, "entity": name,
                                "row_id": row_id, "prior": entity.encode(prior),
                                "applied": entity.encode(group[0].values), "created_at": now})
    if journal:
        conn.execute(sa.insert(client_suspension_changes), journal)
    return counts


def roll_back(engine: sa.Engine, request_id: int, company_id: int, now: datetime) -> int:
    """Undo every journaled change of the request not undone yet, newest first, in one
    transaction; a row someone changed since keeps its new value. Returns the rows restored."""
    j = client_suspension_changes.c
    restored = 0
    with engine.begin() as conn:
        rows = conn.execute(sa.select(j.id, j.entity, j.row_id, j.prior, j.applied).where(
            j.request_id == request_id, j.reverted_at.is_(None)).order_by(j.id.desc())).all()
        for row in rows:
            entity = ENTITIES[row.entity]
            t = entity.table
            restored += conn.execute(
                sa.update(t).where(t.c.id == row.row_id, t.c.status == row.applied["status"], entity.scope(company_id))
                .values(entity.decode(row.prior))).rowcount
        if rows:
            conn.execute(sa.update(client_suspension_changes).where(
                j.request_id == request_id, j.reverted_at.is_(None)).values(reverted_at=now))
    return restored


def _set_request(conn: sa.Connection, request_id: int, **values) -> None:
    conn.execute(sa.update(client_suspensions).where(client_suspensions.c.id == request_id).values(**values))


def _has_journal(engine: sa.Engine, request_id: int) -> bool:
    j = client_suspension_changes.c
    with engine.connect() as conn:
        return conn.execute(sa.select(j.id).where(j.request_id == request_id, j.reverted_at.is_(None))
                            .limit(1)).first() is not None


def execute_request(
    engine: sa.Engine,
    request_id: int,
    *,
    now: datetime,
    batch_size: int = DEFAULT_BATCH_SIZE,
    after_batch: Callable[[int], None] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> Outcome:
    """Run one request: plan, apply in batches of ``batch_size`` (50-100) with progress on the
    request row, and finish — or roll everything back and raise ``ClientSuspensionFailed``.

    Takes an engine, not a session: each batch is its own transaction. ``after_batch(n)`` is
    called after batch ``n`` has committed (progress reporting; tests inject faults there)."""
    if not MIN_BATCH_SIZE <= batch_size <= MAX_BATCH_SIZE:
        raise ClientSuspensionError(f"batch_size {batch_size} is outside {MIN_BATCH_SIZE}-{MAX_BATCH_SIZE}: "
                                    "pick a batch size in that range")
    r = client_suspensions.c
    with engine.connect() as conn:
        request = conn.execute(sa.select(client_suspensions).where(r.id == request_id)).first()
    if request is None:
        raise ClientSuspensionError(f"no client suspension request #{request_id}: check the id "
                                    "('bg-ops clients status' lists them)")
    outcome = Outcome(request_id=request_id, action=request.action, status=request.status)
    if request.status == "done":
        outcome.already_done = True
        return outcome
    company_id, client = request.company_id, request.client_name
    if _has_journal(engine, request_id):  # an earlier attempt died without rolling back
        restored = roll_back(engine, request_id, company_id, now)
        log(f"request #{request_id}: rolled back {restored} change(s) left by an earlier attempt")
    with engine.begin() as conn:
        _set_request(conn, request_id, status="running", attempts=r.attempts + 1, started_at=now, finished_at=None,
                     error=None, batches=0, skipped=0, planned=0, updated_at=now, **dict.fromkeys(COUNTERS.values(), 0))
    try:
        with Session(engine) as session:
            if request.action == "suspend":
                reversing: list[int] = []
                changes = plan_suspension(session, request_id, company_id, client, now)
            else:
                reversing = _suspensions_to_reverse(session, company_id, client)
                changes = plan_reinstatement(session, reversing)
        outcome.planned = len(changes)
        with engine.begin() as conn:
            _set_request(conn, request_id, planned=len(changes), updated_at=now)
        for start in range(0, len(changes), batch_size):
            with engine.begin() as conn:
                counts = _apply(conn, request_id, company_id, changes[start:start + batch_size], now)
                outcome.batches += 1
                outcome.skipped += counts.pop("skipped", 0)
                for name, n in counts.items():
                    outcome.changed[name] += n
                _set_request(conn, request_id, batches=outcome.batches, skipped=outcome.skipped, updated_at=now,
                             **{COUNTERS[k]: v for k, v in outcome.changed.items()})
            log(f"request #{request_id}: batch {outcome.batches} done "
                f"({min(start + batch_size, len(changes))}/{len(changes)} row(s))")
            if after_batch is not None:
                after_batch(outcome.batches)
        with engine.begin() as conn:
            if reversing:
                conn.execute(sa.update(client_suspensions).where(r.id.in_(reversing)).values(
                    reinstated_by=request_id, updated_at=now))
            _set_request(conn, request_id, status="done", finished_at=now, updated_at=now)
    except BaseException as exc:  # also a run canceled by an operator or by run monitoring
        error = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        where = f"after batch {outcome.batches}" if outcome.batches else "before the first batch"
        try:
            restored = roll_back(engine, request_id, company_id, now)
        except Exception as again:  # noqa: BLE001 - reported, and the request stays 'running'
            message = (f"client suspension #{request_id} failed {where} ({error}) and its rollback did not finish "
                       f"({again.__class__.__name__}): run the request again to finish the rollback")
            try:
                with engine.begin() as conn:
                    _set_request(conn, request_id, error=message[:2000], updated_at=now)
            except Exception:  # noqa: BLE001, S110 - the database is what failed; the run says why
                pass
            raise RollbackIncomplete(message) from None
        message = (f"client suspension #{request_id} ({request.action} {client!r}) failed {where}: {error}; "
                   f"rolled back {restored} change(s), nothing is left changed")
        with engine.begin() as conn:
            _set_request(conn, request_id, status="failed", finished_at=now, error=message[:2000], updated_at=now,
                         batches=0, skipped=0, **dict.fromkeys(COUNTERS.values(), 0))
        if not isinstance(exc, Exception):
            raise  # an interrupt stays an interrupt, after the rollback
        raise ClientSuspensionFailed(message, restored) from None
    outcome.status = "done"
    return outcome

