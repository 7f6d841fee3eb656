"""Tenants: partitions follow the companies table; tenant-scoped work touches one tenant only."""

import dagster as dg
import pytest
import sqlalchemy as sa

from bg_ops.db.app_schema import Approval, Company, Project, Task, User
from bg_ops.db.engine import session_scope
from bg_ops.defs.tenants.defs import tenant_partitions_sensor, tenant_summary_asset
from bg_ops.defs.tenants.logic import UnknownTenant, get_tenant
from bg_ops.resources.database import DatabaseResource


def _company(s, id_, slug, active=True, settings=None):
    s.add(Company(id=id_, name=slug.title(), slug=slug, timezone="Europe/Berlin", is_active=active,
                  settings=settings or {}))
    s.flush()


def _people_and_work(s, company_id, n_users, n_tasks, uid0):
    for i in range(n_users):
        s.add(User(id=uid0 + i, company_id=company_id, email=f"u{uid0 + i}@t{company_id}.example",
                   full_name=f"User {i}", role="pm", is_active=i != 0))
    s.flush()
    s.add(Project(id=company_id * 100, company_id=company_id, name="P", status="active", pm_id=uid0))
    s.flush()
    for i in range(n_tasks):
        s.add(Task(company_id=company_id, project_id=company_id * 100, title=f"T{i}",
                   status="open" if i % 2 == 0 else "done"))
    s.add(Approval(company_id=company_id, project_id=company_id * 100, title="A", status="in_review"))


def test_sensor_adds_active_tenants_and_removes_deactivated_ones(db_engine, db_url):
    with session_scope(db_engine) as s:
        _company(s, 1, "acme")
        _company(s, 2, "nordlicht")
        _company(s, 3, "dormant", active=False)
    database = DatabaseResource(url=db_url)
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources={"database": database})
        result = tenant_partitions_sensor(ctx)
        assert isinstance(result, dg.SensorResult)
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        assert sorted(instance.get_dynamic_partitions("tenants")) == ["acme", "nordlicht"]

        # Nothing changed: the sensor says so instead of issuing empty requests.
        again = tenant_partitions_sensor(dg.build_sensor_context(instance=instance, resources={"database": database}))
        assert isinstance(again, dg.SkipReason)

        with session_scope(db_engine) as s:
            s.execute(sa.update(Company).where(Company.slug == "acme").values(is_active=False))
            s.execute(sa.update(Company).where(Company.slug == "dormant").values(is_active=True))
        result = tenant_partitions_sensor(dg.build_sensor_context(instance=instance, resources={"database": database}))
        kinds = {type(r).__name__: sorted(r.partition_keys) for r in result.dynamic_partitions_requests}
        assert kinds == {"AddDynamicPartitionsRequest": ["dormant"], "DeleteDynamicPartitionsRequest": ["acme"]}


def test_tenant_summary_counts_one_tenant_and_leaves_the_other_alone(db_engine, db_url):
    with session_scope(db_engine) as s:
        _company(s, 1, "acme")
        _company(s, 2, "nordlicht")
        _people_and_work(s, 1, n_users=3, n_tasks=4, uid0=10)
        _people_and_work(s, 2, n_users=5, n_tasks=10, uid0=20)

    def snapshot():
        with db_engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.select(Task.__table__).where(Task.company_id == 2).order_by(Task.id))]

    before = snapshot()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", ["acme", "nordlicht"])
        result = dg.materialize([tenant_summary_asset], instance=instance, partition_key="acme",
                                resources={"database": DatabaseResource(url=db_url)})
        assert result.success
        meta = result.asset_materializations_for_node("tenant_summary")[0].metadata
    assert meta["tenant"].value == "acme"
    assert meta["active_users"].value == 2  # one of three is inactive
    assert meta["open_tasks"].value == 2  # not nordlicht's five
    assert meta["approvals_in_review"].value == 1
    assert snapshot() == before


def test_unknown_tenant_is_one_clear_error(db_engine):
    with session_scope(db_engine) as s:
        _company(s, 1, "acme")
        with pytest.raises(UnknownTenant, match=r"unknown tenant 'acne'.*known tenants: acme"):
            get_tenant(s, "acne")


def test_service_switches_per_tenant(db_engine):
    with session_scope(db_engine) as s:
        _company(s, 1, "acme", settings={"reminders.task_due": False, "backup": False})
        tenant = get_tenant(s, "acme")
    assert tenant.service_enabled("reminders.approval_overdue") is True
    assert tenant.service_enabled("reminders.task_due") is False
    assert tenant.service_enabled("backup.nightly") is False
    assert tenant.zone.key == "Europe/Berlin"
