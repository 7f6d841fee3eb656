"""The platform's application tables (DATA_MODEL.md), the contract bg_ops reads.

In production the platform owns these tables; bg_ops defines them here so the demo and the
tests can create them (``bg-ops db init-app-schema``) and so queries have typed columns.
Every column a producer may leave out is nullable or has a server-side default, because
other programs insert rows with plain SQL. Indexes put ``company_id`` first, followed by
the columns the daily scans filter on.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bg_ops.db.types import JSONType, LocalDate, Money, UTCDateTime

NOW = sa.func.now()

USER_ROLES = (
    "admin",
    "pm",
    "finance",
    "designer",
    "translator",
    "account_manager",
    "approver",
    "hr",
    "employee",
    "client",
)


class AppBase(DeclarativeBase):
    metadata = sa.MetaData()


def _company_fk() -> Mapped[int]:
    return mapped_column(sa.ForeignKey("companies.id"), nullable=False)


def _user_fk(nullable: bool = True) -> Mapped[int | None]:
    return mapped_column(sa.ForeignKey("users.id"), nullable=nullable)


class Company(AppBase):
    __tablename__ = "companies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, nullable=False)
    slug: Mapped[str] = mapped_column(sa.String(100), nullable=False, unique=True)
    timezone: Mapped[str] = mapped_column(sa.String(64), nullable=False, server_default="UTC")
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.true())
    storage_quota_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    settings: Mapped[dict] = mapped_column(JSONType, nullable=False, server_default=sa.text("'{}'"))


class User(AppBase):
    __tablename__ = "users"
    __table_args__ = (
        sa.Index("ix_users_company_role", "company_id", "role", "is_active"),
        sa.Index("ix_users_company_birth", "company_id", "birth_date"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    email: Mapped[str] = mapped_column(sa.Text, nullable=False)
    full_name: Mapped[str] = mapped_column(sa.Text, nullable=False)
    role: Mapped[str] = mapped_column(sa.String(32), nullable=False, server_default="employee")
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.true())
    timezone: Mapped[str | None] = mapped_column(sa.String(64))
    manager_id: Mapped[int | None] = _user_fk()
    birth_date: Mapped[object | None] = mapped_column(LocalDate)
    hire_date: Mapped[object | None] = mapped_column(LocalDate)


class Project(AppBase):
    __tablename__ = "projects"
    __table_args__ = (
        sa.Index("ix_projects_company_status", "company_id", "status"),
        sa.Index("ix_projects_billable", "billable_at", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    name: Mapped[str] = mapped_column(sa.Text, nullable=False)
    client_name: Mapped[str | None] = mapped_column(sa.Text)
    pm_id: Mapped[int | None] = _user_fk()
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="active")
    billable_at: Mapped[object | None] = mapped_column(UTCDateTime)
    files_path: Mapped[str | None] = mapped_column(sa.Text)


class TaskTemplate(AppBase):
    __tablename__ = "task_templates"
    __table_args__ = (sa.Index("ix_task_templates_company_active", "company_id", "is_active"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    project_id: Mapped[int | None] = mapped_column(sa.ForeignKey("projects.id"))
    title: Mapped[str] = mapped_column(sa.Text, nullable=False)
    rrule: Mapped[str] = mapped_column(sa.Text, nullable=False)
    dtstart: Mapped[object] = mapped_column(UTCDateTime, nullable=False)
    assignee_id: Mapped[int | None] = _user_fk()
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.true())


class Task(AppBase):
    __tablename__ = "tasks"
    __table_args__ = (
        sa.Index("ix_tasks_company_status_due", "company_id", "status", "due_at"),
        sa.UniqueConstraint("template_id", "occurrence_at", name="uq_tasks_template_occurrence"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    project_id: Mapped[int | None] = mapped_column(sa.ForeignKey("projects.id"))
    title: Mapped[str] = mapped_column(sa.Text, nullable=False)
    assignee_id: Mapped[int | None] = _user_fk()
    due_at: Mapped[object | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="open")
    template_id: Mapped[int | None] = mapped_column(sa.ForeignKey("task_templates.id"))
    occurrence_at: Mapped[object | None] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="work")


class Approval(AppBase):
    __tablename__ = "approvals"
    __table_args__ = (
        sa.Index("ix_approvals_company_status_due", "company_id", "status", "due_at"),
        sa.Index("ix_approvals_completed", "completed_at", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"), nullable=False)
    title: Mapped[str] = mapped_column(sa.Text, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="draft")
    due_at: Mapped[object | None] = mapped_column(UTCDateTime)
    current_stage: Mapped[int | None] = mapped_column(sa.Integer, server_default="1")
    created_at: Mapped[object] = mapped_column(UTCDateTime, nullable=False, server_default=NOW)
    updated_at: Mapped[object] = mapped_column(UTCDateTime, nullable=False, server_default=NOW)
    completed_at: Mapped[object | None] = mapped_column(UTCDateTime)


class ApprovalStep(AppBase):
    __tablename__ = "approval_steps"
    __table_args__ = (
        sa.Index("ix_approval_steps_approval_status", "approval_id", "status"),
        sa.Index("ix_approval_steps_approver_status", "approver_id", "status"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    approval_id: Mapped[int] = mapped_column(sa.ForeignKey("approvals.id"), nullable=False)
    stage: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="1")
    approver_id: Mapped[int] = _user_fk(nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="pending")
    due_at: Mapped[object | None] = mapped_column(UTCDateTime)
    responded_at: Mapped[object | None] = mapped_column(UTCDateTime)
    comment: Mapped[str | None] = mapped_column(sa.Text)


class ApprovalFile(AppBase):
    __tablename__ = "approval_files"
    __table_args__ = (sa.Index("ix_approval_files_approval", "approval_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    approval_id: Mapped[int] = mapped_column(sa.ForeignKey("approvals.id"), nullable=False)
    path: Mapped[str] = mapped_column(sa.Text, nullable=False)
    uploaded_at: Mapped[object] = mapped_column(UTCDateTime, nullable=False, server_default=NOW)


class Translation(AppBase):
    __tablename__ = "translations"
    __table_args__ = (sa.Index("ix_translations_company_status_due", "company_id", "status", "due_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"), nullable=False)
    language: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    assignee_id: Mapped[int | None] = _user_fk()
    due_at: Mapped[object] = mapped_column(UTCDateTime, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="open")


class CoreRequest(AppBase):
    __tablename__ = "core_requests"
    __table_args__ = (
        sa.Index("ix_core_requests_company_status_submitted", "company_id", "status", "submitted_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    project_id: Mapped[int | None] = mapped_column(sa.ForeignKey("projects.id"))
    title: Mapped[str] = mapped_column(sa.Text, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(24), nullable=False, server_default="submitted")
    account_manager_id: Mapped[int | None] = _user_fk()
    submitted_at: Mapped[object] = mapped_column(UTCDateTime, nullable=False, server_default=NOW)
    accepted_at: Mapped[object | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[object] = mapped_column(UTCDateTime, nullable=False, server_default=NOW)


class DesignQueueItem(AppBase):
    __tablename__ = "design_queue_items"
    __table_args__ = (sa.Index("ix_design_queue_company_status", "company_id", "status", "queued_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"), nullable=False)
    title: Mapped[str] = mapped_column(sa.Text, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="queued")
    queued_at: Mapped[object] = mapped_column(UTCDateTime, nullable=False, server_default=NOW)


class PurchaseOrder(AppBase):
    __tablename__ = "purchase_orders"
    __table_args__ = (sa.Index("ix_purchase_orders_company_status_expires", "company_id", "status", "expires_on"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"), nullable=False)
    number: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    amount: Mapped[object] = mapped_column(Money, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False, server_default="USD")
    expires_on: Mapped[object] = mapped_column(LocalDate, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="open")


class Invoice(AppBase):
    __tablename__ = "invoices"
    __table_args__ = (sa.Index("ix_invoices_company_status_due", "company_id", "status", "due_on"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"), nullable=False)
    number: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    amount: Mapped[object] = mapped_column(Money, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False, server_default="USD")
    issued_on: Mapped[object | None] = mapped_column(LocalDate)
    due_on: Mapped[object | None] = mapped_column(LocalDate)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="draft")
    paid_at: Mapped[object | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[object] = mapped_column(UTCDateTime, nullable=False, server_default=NOW)


class Estimate(AppBase):
    __tablename__ = "estimates"
    __table_args__ = (sa.Index("ix_estimates_company_status", "company_id", "status", "updated_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"), nullable=False)
    number: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    amount: Mapped[object] = mapped_column(Money, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False, server_default="USD")
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="draft")
    updated_at: Mapped[object] = mapped_column(UTCDateTime, nullable=False, server_default=NOW)


class Document(AppBase):
    __tablename__ = "documents"
    __table_args__ = (sa.Index("ix_documents_company_status_expires", "company_id", "status", "expires_on"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    owner_id: Mapped[int] = _user_fk(nullable=False)
    title: Mapped[str] = mapped_column(sa.Text, nullable=False)
    kind: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="other")
    expires_on: Mapped[object] = mapped_column(LocalDate, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="valid")


class CalendarEvent(AppBase):
    __tablename__ = "calendar_events"
    __table_args__ = (sa.Index("ix_calendar_events_company_starts", "company_id", "starts_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    title: Mapped[str] = mapped_column(sa.Text, nullable=False)
    starts_at: Mapped[object] = mapped_column(UTCDateTime, nullable=False)
    ends_at: Mapped[object | None] = mapped_column(UTCDateTime)
    rrule: Mapped[str | None] = mapped_column(sa.Text)
    remind_minutes_before: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="15")
    organizer_id: Mapped[int] = _user_fk(nullable=False)


class CalendarEventAttendee(AppBase):
    __tablename__ = "calendar_event_attendees"
    __table_args__ = (sa.UniqueConstraint("event_id", "user_id", name="uq_calendar_attendee"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int] = mapped_column(sa.ForeignKey("calendar_events.id"), nullable=False)
    user_id: Mapped[int] = _user_fk(nullable=False)


class PtoTier(AppBase):
    __tablename__ = "pto_tiers"
    __table_args__ = (sa.Index("ix_pto_tiers_company_years", "company_id", "min_service_years"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = _company_fk()
    name: Mapped[str] = mapped_column(sa.Text, nullable=False)
    min_service_years: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0")
    hours_per_month: Mapped[object] = mapped_column(sa.Numeric(6, 2), nullable=False)


class PaymentEvent(AppBase):
    __tablename__ = "payment_events"
    __table_args__ = (sa.Index("ix_payment_events_unprocessed", "processed_at", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    event_id: Mapped[str] = mapped_column(sa.String(255), nullable=False, unique=True)
    received_at: Mapped[object] = mapped_column(UTCDateTime, nullable=False, server_default=NOW)
    payload: Mapped[dict] = mapped_column(JSONType, nullable=False)
    signature_valid: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.false())
    processed_at: Mapped[object | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(sa.Text)


APP_TABLES = tuple(AppBase.metadata.sorted_tables)
TENANT_TABLES = tuple(t for t in APP_TABLES if "company_id" in t.c)
