"""Build standard RFC 5322 messages as bytes, fast.

``email.message.EmailMessage`` costs about 1.4 ms a message, more than sending it over SMTP
(PERFORMANCE.md B1), so messages are assembled here from the same standard encoders
(RFC 2047 words for headers, base64 bodies) without the policy machinery. The result is
multipart/alternative (text + HTML), wrapped in multipart/mixed when there are attachments,
with UTF-8 headers and a ``Message-ID`` derived from the idempotency key. ``Date`` is not
built in: ``with_date`` prepends it at send time. Tests parse every shape back with the
standard library's parser.
"""

from __future__ import annotations

import base64
import email.quoprimime
import functools
import hashlib
import mimetypes
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.charset import RFC2047_CHROME_LEN, Charset
from email.header import Header
from email.utils import format_datetime, formataddr, getaddresses, parseaddr

from bg_ops.settings import is_valid_address

CRLF = b"\r\n"


class AddressError(ValueError):
    pass


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str | None = None


# A bare address in dot-atom form (no display name, comment, quote or space): the standard
# parser returns ("", raw) for exactly these, so they skip it (about 20 us each).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_BARE_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*")


def parse_addresses(values: Iterable[str] | None, field: str) -> list[tuple[str, str]]:
    """``["Ana <ana@x.example>", "b@x.example"]`` -> [(name, addr)]; raise ``AddressError``
    naming the field and the bad value."""
    out: list[tuple[str, str]] = []
    for raw in values or ():
        if isinstance(raw, str) and _BARE_ADDRESS.fullmatch(raw) and is_valid_address(raw):
            out.append(("", raw))
            continue
        if not isinstance(raw, str) or "\n" in raw or "\r" in raw:
            raise AddressError(f"{field} has {raw!r}, which is not an email address: fix or remove it")
        pairs = getaddresses([raw])
        if len(pairs) != 1 or not is_valid_address(pairs[0][1]):
            raise AddressError(f"{field} has {raw!r}, which is not an email address: fix or remove it")
        out.append(pairs[0])
    return out


@functools.lru_cache(maxsize=64)
def _parse_mail_from(mail_from: str) -> tuple[str, str]:
    """``parseaddr`` of the configured sender, parsed once per process (it never changes)."""
    return parseaddr(mail_from)


def message_id_domain(mail_from: str) -> str:
    """The domain of every Message-ID: the sender's."""
    return _parse_mail_from(mail_from)[1].rpartition("@")[2] or "bg-ops.invalid"


def message_id_for(idempotency_key: str | None, mail_from: str) -> str:
    """``<first 40 hex digits of the key's SHA-256@domain>``, the same for the same key; a random
    one without a key. (The daily reminder run builds the same in SQL: reminders/engine.py.)"""
    domain = message_id_domain(mail_from)
    if idempotency_key:
        token = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:40]
    else:
        token = uuid.uuid4().hex
    return f"<{token}@{domain}>"


_QP_HEADER_LENGTH = [email.quoprimime.header_length(bytes([octet])) for octet in range(256)]
_QP_WIDTH: dict[str, int] = {}


def _qp_width(character: str) -> int:
    """Width of one character in a Q-encoded word (UTF-8), remembered."""
    width = _QP_WIDTH[character] = sum(_QP_HEADER_LENGTH[o] for o in character.encode("utf-8"))
    return width


class _Utf8Charset(Charset):
    """utf-8 whose ``header_encode_lines`` returns exactly the standard library's lines.

    The standard one re-encodes the whole line for every character it adds (quadratic:
    about 250 us for one 60-character subject with a dash in it); this one adds up the same
    lengths as it goes. Encoder choice (shortest of Q and B), the line-length rule and the
    encoded words are the standard library's own.
    """

    def __init__(self) -> None:
        super().__init__("utf-8")

    def header_encode_lines(self, string, maxlengths):
        codec = self.output_codec or "us-ascii"
        charset = self.get_output_charset()
        if codec != charset:
            return super().header_encode_lines(string, maxlengths)
        encoder_module = self._get_encoder(string.encode(codec))
        quoted_printable = encoder_module is email.quoprimime
        extra = len(charset) + RFC2047_CHROME_LEN
        # Per character: its encoded width (Q) or its octets (B), from a cache.
        widths = [_QP_WIDTH.get(c) or _qp_width(c) for c in string] if quoted_printable else [
            1 if c < "\x80" else len(c.encode(codec)) for c in string]
        lines: list[str | None] = []
        start = 0  # first character of the line being filled
        used = 0  # its encoded size so far (Q) or its octets (B)
        maxlen = next(maxlengths) - extra
        for index, width in enumerate(widths):
            total = used + width
            length = total if quoted_printable else (total + 2) // 3 * 4
            if length > maxlen:
                if not lines and index == start:  # nothing fits on the first line
                    lines.append(None)
                else:
                    lines.append(encoder_module.header_encode(string[start:index].encode(codec), charset=codec))
                start = index
                used = width
                maxlen = next(maxlengths) - extra
            else:
                used = total
        lines.append(encoder_module.header_encode(string[start:].encode(codec), charset=codec))
        return lines


_UTF8 = _Utf8Charset()


def _header(name: str, value: str) -> bytes:
    value = " ".join(value.split())  # no CR/LF can reach the headers
    if value.isascii() and len(name) + len(value) < 76:
        return f"{name}: {value}".encode("ascii") + CRLF
    encoded = Header(value, _UTF8, header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}".encode("ascii") + CRLF


def _address_header(name: str, pairs: Sequence[tuple[str, str]]) -> bytes:
    formatted = ", ".join(formataddr(p, charset="utf-8") for p in pairs)
    # formataddr already applied RFC 2047 to non-ASCII names; fold long lists at commas.
    line = f"{name}: {formatted}"
    if len(line) <= 78:
        return line.encode("ascii") + CRLF
    return (f"{name}: " + ",\r\n ".join(formataddr(p, charset="utf-8") for p in pairs)).encode("ascii") + CRLF


@functools.lru_cache(maxsize=64)
def _from_header(mail_from: str) -> bytes:
    return _address_header("From", [_parse_mail_from(mail_from)])


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", CRLF)


def _text_part(subtype: str, body: str) -> bytes:
    return (
        f"Content-Type: text/{subtype}; charset=\"utf-8\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode("ascii") + _b64(body.encode("utf-8"))


def _attachment_part(att: Attachment) -> bytes:
    ctype = att.content_type or mimetypes.guess_type(att.filename)[0] or "application/octet-stream"
    if att.filename.isascii():
        disposition = f'attachment; filename="{att.filename.replace(chr(34), "")}"'
    else:
        from urllib.parse import quote

        disposition = f"attachment; filename*=utf-8''{quote(att.filename)}"
    return (
        f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: {disposition}\r\n\r\n"
    ).encode("ascii") + _b64(att.content)


def _multipart(subtype: str, boundary: str, parts: Sequence[bytes]) -> bytes:
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode("ascii")
    sep = f"--{boundary}\r\n".encode("ascii")
    body = b"".join(sep + part + CRLF for part in parts)
    return head + body + f"--{boundary}--\r\n".encode("ascii")


def build_message(
    *,
    mail_from: str,
    to: Sequence[tuple[str, str]],
    cc: Sequence[tuple[str, str]] = (),
    reply_to: tuple[str, str] | None = None,
    subject: str,
    text: str | None,
    html: str | None,
    message_id: str,
    attachments: Sequence[Attachment] = (),
    extra_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The message without ``Date`` (see ``with_date``); Bcc is never written into headers."""
    if text is None and html is None:
        raise ValueError("a message needs a text or an HTML body")
    seed = hashlib.sha1(message_id.encode()).hexdigest()[:24]
    headers = [
        _from_header(mail_from),
        _address_header("To", to),
    ]
    if cc:
        headers.append(_address_header("Cc", cc))
    if reply_to:
        headers.append(_address_header("Reply-To", [reply_to]))
    headers.append(_header("Subject", subject))
    headers.append(f"Message-ID: {message_id}\r\n".encode("ascii"))
    headers.append(b"MIME-Version: 1.0\r\n")
    for name, value in extra_headers:
        headers.append(_header(name, value))

    if text is not None and html is not None:
        body = _multipart("alternative", f"=_alt_{seed}", [_text_part("plain", text), _text_part("html", html)])
    elif html is not None:
        body = _text_part("html", html)
    else:
        body = _text_part("plain", text or "")
    if attachments:
        body = _multipart("mixed", f"=_mix_{seed}", [body, *(_attachment_part(a) for a in attachments)])
    return b"".join(headers) + body


def with_date(raw: bytes, when: datetime) -> bytes:
    """Prepend the ``Date`` header at the moment the message enters the mail system."""
    return b"Date: " + format_datetime(when).encode("ascii") + CRLF + raw


def envelope_from(mail_from: str) -> str:
    return _parse_mail_from(mail_from)[1]
