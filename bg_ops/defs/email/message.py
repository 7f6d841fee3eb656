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

import binascii
import functools
import hashlib
import mimetypes
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime, formataddr, getaddresses, parseaddr

from bg_ops.settings import BARE_ADDRESS, is_valid_address

CRLF = b"\r\n"


class AddressError(ValueError):
    pass


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str | None = None


# A bare address in dot-atom form (``BARE_ADDRESS``) skips the standard parser (about 20 us each).
# ``Display Name <bare address>`` with a name of atoms (ASCII atext or any non-ASCII text)
# between single spaces: the standard parser returns (name, address) for these as they are
# (about 25 us), so they skip it too.
_NAME_ATOM = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"
_NAMED_ADDRESS = re.compile(
    rf"({_NAME_ATOM}(?: {_NAME_ATOM})*) <({BARE_ADDRESS.pattern})>")


def parse_addresses(values: Iterable[str] | None, field: str) -> list[tuple[str, str]]:
    """``["Ana <ana@x.example>", "b@x.example"]`` -> [(name, addr)]; raise ``AddressError``
    naming the field and the bad value."""
    out: list[tuple[str, str]] = []
    for raw in values or ():
        if isinstance(raw, str) and BARE_ADDRESS.fullmatch(raw) and is_valid_address(raw):
            out.append(("", raw))
            continue
        named = _NAMED_ADDRESS.fullmatch(raw) if isinstance(raw, str) else None
        if named and is_valid_address(named[2]):
            out.append((named[1], named[2]))
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


# RFC 2047 (2.): an encoded word is at most 75 characters, a line holding one at most 76.
_WORD_CHROME = len("=?utf-8?b??=")


def _encoded_words(data: bytes, first_room: int) -> list[str]:
    """UTF-8 ``data`` as B-encoded words, the first fitting ``first_room`` characters (at
    least ``_MIN_WORD_ROOM``), the others a folded line of their own; never splitting a
    character between words."""
    words: list[str] = []
    start, end_of_data = 0, len(data)
    room = first_room
    while start < end_of_data:
        end = min(start + (room - _WORD_CHROME) // 4 * 3, end_of_data)
        while end < end_of_data and 0x80 <= data[end] < 0xC0:  # inside a character: back off
            end -= 1
        words.append("=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False).decode("ascii") + "?=")
        start, room = end, 75
    return words


# Room for one encoded word holding at least one character of up to four bytes.
_MIN_WORD_ROOM = _WORD_CHROME + 8


def _fold_ascii(name: str, value: str) -> str:
    """``name: value`` folded at spaces into lines of at most 78 characters (every word fits
    one: ``_header`` checks)."""
    lines: list[str] = []
    line = f"{name}:"
    for word in value.split(" "):
        if len(line) + 1 + len(word) > 78 and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines)


def _header(name: str, value: str) -> bytes:
    """One header line, folded within 78 characters; non-ASCII text, an ASCII word too long for
    a line and text that reads like an encoded word (``=?``) as RFC 2047 encoded words (UTF-8,
    base64), so readers show exactly the value.

    Built here rather than by ``email.header.Header``: its encoder costs ~20 us a subject
    (B2); readers decode both alike (tests parse the results with the standard parser)."""
    value = " ".join(value.split())  # no CR/LF can reach the headers
    if value.isascii() and "=?" not in value:
        if len(name) + 2 + len(value) <= 78:
            return f"{name}: {value}".encode("ascii") + CRLF
        if len(name) + 2 + max(map(len, value.split(" "))) <= 78:
            return _fold_ascii(name, value).encode("ascii") + CRLF
    # A name of more than 54 characters leaves no room on its line: that one line runs over 76
    # by what its first word needs (folding before the first word makes readers keep a space).
    first_room = max(76 - len(name) - 2, _MIN_WORD_ROOM)
    return (f"{name}: " + "\r\n ".join(_encoded_words(value.encode("utf-8"), first_room))).encode("ascii") + CRLF


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
    """Base64 in lines of 76 characters ending in CRLF (``base64.encodebytes``'s lines, made
    in one call to the encoder instead of one per line)."""
    encoded = binascii.b2a_base64(data, newline=False)
    if not encoded:
        return b""
    return CRLF.join([encoded[i:i + 76] for i in range(0, len(encoded), 76)]) + CRLF


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


def date_header(when: datetime) -> bytes:
    """The ``Date`` header line for ``when`` (one per batch: the batch's messages share it)."""
    return b"Date: " + format_datetime(when).encode("ascii") + CRLF


def with_date(raw: bytes | memoryview, when: datetime) -> bytes:
    """Prepend the ``Date`` header at the moment the message enters the mail system."""
    return date_header(when) + raw


def envelope_from(mail_from: str) -> str:
    return _parse_mail_from(mail_from)[1]
