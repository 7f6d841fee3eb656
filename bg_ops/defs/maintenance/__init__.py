"""Maintenance (O4, O5, O6): weekly cleanup, database backups, dashboard refresh."""
