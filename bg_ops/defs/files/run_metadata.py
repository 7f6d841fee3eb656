"""Run metadata that links a files run to what it touched in the cloud (U1)."""

import dagster as dg

MAX_LISTED_PATHS = 50  # a run page stays readable; the count says how many were left off


def cloud_paths_metadata(paths: list[str], limit: int = MAX_LISTED_PATHS) -> dict:
    """The cloud paths a run wrote: ``cloud_path`` (a path value) when there is one, else
    ``cloud_paths`` (the first ``limit``, in order) and ``cloud_paths_not_listed`` when more."""
    if not paths:
        return {}
    if len(paths) == 1:
        return {"cloud_path": dg.MetadataValue.path(paths[0])}
    meta = {"cloud_paths": dg.MetadataValue.json(list(paths[:limit]))}
    if len(paths) > limit:
        meta["cloud_paths_not_listed"] = dg.MetadataValue.int(len(paths) - limit)
    return meta
