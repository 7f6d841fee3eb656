"""Where things go in the cloud (F3): one folder per tenant, six folders inside it.

Paths are relative to the storage backend's root (``BG_OPS_DROPBOX_ROOT`` on Dropbox,
``BG_OPS_STORAGE_DIR`` locally): ``/<tenant slug>/<folder>/…``.
"""

from __future__ import annotations

from bg_ops.resources.storage import CloudStorageResource, join_cloud_path

APPROVALS = "Approvals"
CORES = "Cores"
INVOICES = "Invoices"
ESTIMATES = "Estimates"
PROJECT_BACKUPS = "Project Backups"
APPROVAL_BACKUPS = "Approval Backups"
TENANT_FOLDERS = (APPROVALS, CORES, INVOICES, ESTIMATES, PROJECT_BACKUPS, APPROVAL_BACKUPS)


def tenant_path(slug: str, folder: str, *parts: str) -> str:
    """``/acme/Project Backups/p0001/brief.pdf`` from ("acme", PROJECT_BACKUPS, "p0001", "brief.pdf")."""
    if folder not in TENANT_FOLDERS:
        raise ValueError(f"{folder!r} is not a tenant folder: use one of {', '.join(TENANT_FOLDERS)}")
    return join_cloud_path(slug, folder, *parts)


def ensure_tenant_folders(storage: CloudStorageResource, slug: str) -> list[str]:
    """Create the tenant's six folders where missing (idempotent); return their paths."""
    paths = [join_cloud_path(slug, folder) for folder in TENANT_FOLDERS]
    for path in paths:
        storage.create_folder(path)
    return paths
