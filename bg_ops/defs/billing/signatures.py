"""Payment webhook signatures (B5, O8): Stripe-style HMAC-SHA256 with key rotation.

The provider sends ``Payment-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` where each
``v1`` is HMAC-SHA256, keyed with a signing secret, over ``b"<t>." + raw body``. A request is
authentic when one ``v1`` matches under the current or the next secret (both are accepted
while a secret is rotated), compared in constant time, and ``t`` is within five minutes of
our clock (a captured request cannot be replayed later). Nothing here logs or returns a
secret, a signature or the body: the reasons are fixed words.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

SIGNATURE_HEADER = "Payment-Signature"
TOLERANCE_SECONDS = 300
SCHEME = "v1"
MAX_HEADER_LENGTH = 2048
MAX_SIGNATURES = 8  # a provider rolling its own keys sends two or three

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# Reasons (a fixed vocabulary, safe to log and to answer with) and their HTTP statuses.
MISSING_HEADER = "missing signature header"
MALFORMED_HEADER = "malformed signature header"
STALE_TIMESTAMP = "stale timestamp"
BAD_SIGNATURE = "bad signature"
STATUS = {MISSING_HEADER: 400, MALFORMED_HEADER: 400, STALE_TIMESTAMP: 401, BAD_SIGNATURE: 401}


class SignatureError(Exception):
    """Why a request is not authentic; ``reason`` is one of the fixed reasons above."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    @property
    def status(self) -> int:
        return STATUS[self.reason]


@dataclass(frozen=True)
class ParsedHeader:
    timestamp: int
    signatures: tuple[str, ...]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex ``v1`` signature of ``body`` sent at ``timestamp`` under ``secret``."""
    message = str(int(timestamp)).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secrets: str | Sequence[str], timestamp: int, body: bytes) -> str:
    """The header value a provider would send (for tests and operators' tooling)."""
    if isinstance(secrets, str):
        secrets = [secrets]
    return ",".join([f"t={int(timestamp)}"] + [f"{SCHEME}={sign(s, timestamp, body)}" for s in secrets])


def parse_header(value: str | None) -> ParsedHeader:
    """Split the header into its timestamp and ``v1`` signatures; other schemes are ignored."""
    if value is None or not value.strip():
        raise SignatureError(MISSING_HEADER)
    if len(value) > MAX_HEADER_LENGTH:
        raise SignatureError(MALFORMED_HEADER)
    timestamp: int | None = None
    signatures: list[str] = []
    for part in value.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep:
            raise SignatureError(MALFORMED_HEADER)
        key, item = key.strip(), item.strip()
        if key == "t":
            if timestamp is not None or not item.isascii() or not item.isdigit() or len(item) > 12:
                raise SignatureError(MALFORMED_HEADER)
            timestamp = int(item)
        elif key == SCHEME:
            if not _HEX64.match(item.lower()):
                raise SignatureError(MALFORMED_HEADER)
            signatures.append(item.lower())
    if timestamp is None or not signatures or len(signatures) > MAX_SIGNATURES:
        raise SignatureError(MALFORMED_HEADER)
    return ParsedHeader(timestamp=timestamp, signatures=tuple(signatures))


def verify(
    header: str | None,
    body: bytes,
    secrets: Sequence[str | None],
    *,
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> int:
    """Check a request; return the index of the secret that signed it (0 current, 1 next).

    ``now`` is our clock in Unix seconds (passed in, so tests move it). The signature is
    checked before the timestamp, so "stale timestamp" is only ever said of an authentic
    request (a replay), and a forgery with an old timestamp is a bad signature. A timestamp
    too far in the future is stale as well. Raises ``SignatureError``."""
    parsed = parse_header(header)
    if not any(secrets):  # refuse everything rather than accept unsigned mail-in
        raise SignatureError(BAD_SIGNATURE)
    matched: int | None = None
    # Every candidate is compared under every key, so the time taken does not depend on
    # which (if any) matched.
    for index, secret in enumerate(secrets):
        if not secret:
            continue
        expected = sign(secret, parsed.timestamp, body)
        for candidate in parsed.signatures:
            if hmac.compare_digest(expected, candidate) and matched is None:
                matched = index
    if matched is None:
        raise SignatureError(BAD_SIGNATURE)
    if abs(now - parsed.timestamp) > tolerance:
        raise SignatureError(STALE_TIMESTAMP)
    return matched
