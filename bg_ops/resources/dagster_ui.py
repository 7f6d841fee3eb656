"""The Dagster UI as seen by an operator's browser: links to runs in alert mails (O1)."""

from __future__ import annotations

import dagster as dg

from bg_ops.settings import DEFAULT_UI_BASE_URL


class DagsterUIResource(dg.ConfigurableResource):
    """Where the Dagster UI is reachable (``BG_OPS_UI_BASE_URL``); a run's page is
    ``<base_url>/runs/<run_id>``."""

    base_url: str = DEFAULT_UI_BASE_URL
