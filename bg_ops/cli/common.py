"""Helpers the ``bg-ops`` command groups share: tenant lookup, tables, ages, retry reports."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from bg_ops.cli.main import EXIT_CONFIG, CliError

SYSTEM_TENANT = "bg_ops"  # company_id 0: mail that belongs to no tenant (operator alerts)

tenant_option = click.option(
    "--tenant", "tenant", metavar="SLUG", default=None, help="Only this tenant (company slug); default: all tenants."
)


def now_utc() -> datetime:
    return datetime.now(UTC)


def engine_for(settings):
    from bg_ops.db.engine import get_engine

    return get_engine(settings.database_url)


def company_id_for(engine, slug: str | None) -> int | None:
    """The company id for ``--tenant SLUG`` (None for all tenants); unknown slug: exit 2."""
    if slug is None:
        return None
    import sqlalchemy as sa

    from bg_ops.db.app_schema import Company

    with engine.connect() as conn:
        found = conn.execute(sa.select(Company.id).where(Company.slug == slug)).scalar_one_or_none()
    if found is None:
        raise CliError(f"--tenant {slug!r}: no tenant has that slug: see 'bg-ops tenants list'", EXIT_CONFIG)
    return int(found)


def tenant_slugs(conn, company_ids) -> dict[int, str]:
    import sqlalchemy as sa

    from bg_ops.db.app_schema import Company

    wanted = {int(c) for c in company_ids if c is not None}
    out = {0: SYSTEM_TENANT} if 0 in wanted else {}
    wanted.discard(0)
    if wanted:
        out.update(dict(conn.execute(sa.select(Company.id, Company.slug).where(Company.id.in_(wanted))).all()))
    return out


def iso(value):
    return value.isoformat() if isinstance(value, datetime) else value


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the last column is never padded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).ljust(widths[i]) if i < len(row) - 1 else str(c) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def id_list(ids) -> str:
    return ", ".join(f"#{i}" for i in ids)



def retry_report(done: list[int], ids: tuple[int, ...], all_failed: bool, tenant: str | None, noun: str,
                 nothing_failed: str) -> tuple[dict, str]:
    """What ``retry`` says: which rows went back, which named ones did not, and why."""
    skipped = sorted(set(ids) - set(done))
    data = {"retried": done, "count": len(done), "not_retried": skipped}
    if done:
        human = f"put {len(done)} {noun}(s) back in the queue: {id_list(done)}"
    elif all_failed:
        human = nothing_failed + (f" for tenant {tenant}" if tenant else "") + ": nothing to retry"
    else:
        human = f"no {noun} matched: nothing to retry"
    if skipped:
        human += ("\nnot retried (unknown, not failed or canceled"
                  + (f", or not of tenant {tenant}" if tenant else "") + f"): {id_list(skipped)}")
    return data, human


def figures_table(title: str, rows: list[list[str]]) -> str:
    """A titled two-column report: labels left-aligned, values right-aligned."""
    width = max(len(label) for label, _ in rows)
    vwidth = max(len(value) for _, value in rows)
    return "\n".join([title] + [f"  {label.ljust(width)}  {value.rjust(vwidth)}" for label, value in rows])
