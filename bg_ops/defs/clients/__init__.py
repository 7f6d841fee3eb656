"""Clients of a tenant (``projects.client_name``): suspension and reinstatement (O7)."""
