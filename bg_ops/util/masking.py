"""Keep personal data out of logs (non-negotiable 7): addresses are masked, never printed."""

from __future__ import annotations

import re
from collections.abc import Iterable

_EMAIL_RE = re.compile(r"([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+)")


def mask_email(address: str) -> str:
    """``jane.doe@acme.com`` -> ``j***@acme.com``; anything not an address -> ``***``."""
    local, sep, domain = (address or "").strip().rpartition("@")
    if not sep or not local or not domain:
        return "***"
    return f"{local[0]}***@{domain}"


def mask_emails(addresses: Iterable[str]) -> str:
    return ", ".join(mask_email(a) for a in addresses)


def mask_emails_in_text(text: str) -> str:
    """Mask every address inside free text (error messages from servers quote them)."""
    return _EMAIL_RE.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text or "")


def mask_url_password(url: str) -> str:
    """``postgresql+psycopg2://u:secret@h/db`` -> ``postgresql+psycopg2://u:***@h/db``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
