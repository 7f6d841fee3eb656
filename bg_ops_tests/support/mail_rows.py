"""The mail in the queue as it will be sent: bodies rendered for rows rendered at delivery."""

from __future__ import annotations

from types import SimpleNamespace

import sqlalchemy as sa

from bg_ops.db.app_schema import Company
from bg_ops.db.own_schema import email_queue as q
from bg_ops.defs.email.deferred import bodies_of
from bg_ops.defs.email.enqueue import SYSTEM_COMPANY_ID, SYSTEM_NAME


def queued_mails(engine: sa.Engine, *where) -> list[SimpleNamespace]:
    """Every queued row (in id order, filtered by ``where``) with ``body_text``/``body_html``
    as delivery will send them."""
    with engine.connect() as c:
        rows = c.execute(sa.select(q, Company.name.label("company_name"), Company.slug.label("company_slug"))
                         .outerjoin(Company, Company.id == q.c.company_id).where(*where).order_by(q.c.id)).all()
    out = []
    for r in rows:
        company = (SYSTEM_NAME, "") if r.company_id == SYSTEM_COMPANY_ID else (r.company_name, r.company_slug)
        text, html = bodies_of(r, company)
        out.append(SimpleNamespace(**{**r._mapping, "body_text": text, "body_html": html}))
    return out
