"""The bg_ops code location: ``bg_ops.definitions:defs``.

Configuration is read and validated here, when definitions load (never at import time); a
bad value stops the load with one line naming the variable and the fix.
"""

from __future__ import annotations

import warnings

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    import bg_ops.defs as domains
    from bg_ops.db.engine import check_database
    from bg_ops.resources.factory import build_resources
    from bg_ops.settings import load_settings

    settings = load_settings()
    check_database(settings.database_url)
    resources = build_resources(settings)
    # `owners` on jobs, schedules and sensors is marked beta, and operators need it (U1): keep
    # the warning out of every process that loads the code location (also when jobs resolve).
    warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)
    with warnings.catch_warnings():
        # Package-module loading is marked preview; the dagster version is pinned and
        # test_definitions pins what it finds.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.load_definitions_from_package_module(domains, resources=resources)
