"""Choose each resource's backend from the settings: the one place where that happens."""

from __future__ import annotations

import dagster as dg

from bg_ops.resources.dagster_ui import DagsterUIResource
from bg_ops.resources.database import DatabaseResource
from bg_ops.resources.files import FilesResource
from bg_ops.resources.mail import MailResource, OutboxMailResource, SmtpMailResource
from bg_ops.resources.storage import CloudStorageResource, LocalStorageResource
from bg_ops.settings import Settings


def _secret(settings: Settings, name: str):
    """Secrets reach resources as ``dg.EnvVar`` so their values never appear in the UI."""
    return dg.EnvVar(name) if name in settings.secrets_set else None


def mail_resource(settings: Settings) -> MailResource:
    if settings.mail_backend == "smtp":
        return SmtpMailResource(
            host=settings.smtp_host or "",
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=_secret(settings, "BG_OPS_SMTP_PASSWORD"),
            timeout_seconds=settings.smtp_timeout,
            pipelining=settings.smtp_pipelining,
            mail_from=settings.mail_from,
            admin_emails=list(settings.admin_emails),
        )
    return OutboxMailResource(
        outbox_dir=str(settings.outbox_dir), mail_from=settings.mail_from, admin_emails=list(settings.admin_emails)
    )


def storage_resource(settings: Settings) -> CloudStorageResource:
    if settings.storage_backend == "dropbox":
        from bg_ops.resources.dropbox_storage import DropboxStorageResource

        return DropboxStorageResource(
            root=settings.dropbox_root,
            app_key=settings.dropbox_app_key,
            app_secret=_secret(settings, "DROPBOX_APP_SECRET"),
            refresh_token=_secret(settings, "DROPBOX_REFRESH_TOKEN"),
            access_token=_secret(settings, "DROPBOX_ACCESS_TOKEN"),
        )
    return LocalStorageResource(storage_dir=str(settings.storage_dir))


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "database": DatabaseResource(url=settings.database_url),
        "files": FilesResource(root=str(settings.files_root)),
        "mail": mail_resource(settings),
        "storage": storage_resource(settings),
        "dagster_ui": DagsterUIResource(base_url=settings.ui_base_url),
    }


def plain_resources(settings: Settings) -> dict:
    """The same resources for use outside Dagster (the CLI): secrets resolved from settings."""
    resources = build_resources(settings)
    out = {}
    for key, res in resources.items():
        updates = {}
        for field, value in res.__dict__.items():
            if isinstance(value, dg.EnvVar):
                updates[field] = settings.secret(value.env_var_name)
        out[key] = res.model_copy(update=updates) if updates else res
    return out
