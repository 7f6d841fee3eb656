"""The message builder against the standard library: every shape parses back to what was
given, header lines stay within RFC 5322's 78 characters (RFC 2047's 76 for encoded words),
and the address fast paths agree with ``email.utils.getaddresses``."""

from email import message_from_bytes, policy
from email.utils import getaddresses

import pytest

from bg_ops.defs.email.message import (
    AddressError,
    Attachment,
    _b64,
    build_message,
    parse_addresses,
)

SUBJECTS = [
    "Short",
    "Reminder #123: Creative review is waiting for you",
    "Reminder #4: Legal check is waiting for you — Ana's request",  # one non-ASCII character
    "A long ASCII subject " * 8,  # folds at spaces
    "x" * 120,  # one word longer than a line: encoded words
    "Überfällige Freigabe: Kampagne „Frühling“ wartet seit 3 Tagen auf Ihre Entscheidung ✓",
    "デザインレビューの承認をお願いします。期限は明日です。" * 3,  # three-byte characters only
    "Emoji 🎉🎉🎉 " * 12,  # four-byte characters
    "tabs\tand\nnew\r\nlines   collapse",
    "=?utf-8?q?looks_encoded?= ünd nicht",
    "Re: =?utf-8?q?Hi?= — an ASCII-looking encoded word stays text",
    "Re: =?utf-8?q?Hi?= plain ASCII",
    "y" * 1200,  # one ASCII word longer than RFC 5322's 998: encoded words instead
    "A subject with one " + "z" * 90 + " word longer than a line",
]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_subjects_parse_back_and_lines_stay_short(subject):
    raw = build_message(mail_from="bg_ops <ops@bg-ops.example>", to=[("", "a@x.example")], subject=subject,
                        text="t", html=None, message_id="<1@bg-ops.example>")
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert len(line) <= 78 and line.isascii(), line
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == " ".join(subject.split())
    assert all(len(line) <= 76 for line in head.split(b"\r\n") if b"=?utf-8?b?" in line)


@pytest.mark.parametrize("name", ["X-A", "X-" + "Long-Header-Name" * 3, "X-" + "N" * 70])
def test_encoded_words_fit_their_lines_whatever_the_header_name(name):
    raw = build_message(mail_from="ops@bg-ops.example", to=[("", "a@x.example")], subject="s", text="t", html=None,
                        message_id="<1@bg-ops.example>", extra_headers=[(name, "Überfällig ✓ " * 12)])
    lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    first = next(i for i, line in enumerate(lines) if line.startswith(name.encode()))
    assert all(len(line) <= 76 for line in lines[first + 1:] if b"=?utf-8?b?" in line)
    # Its own line too, unless the name itself leaves no room (then by the first word only).
    assert len(lines[first]) <= max(76, len(name) + 2 + 20)
    assert message_from_bytes(raw, policy=policy.default)[name] == ("Überfällig ✓ " * 12).strip()


def test_every_shape_parses_back_with_the_standard_parser():
    text, html = "Hallo José,\nÜberfällig ✓\n" * 40, "<p>Überfällig ✓ <b>bold</b></p>" * 40
    shapes = [
        dict(text=text, html=html),
        dict(text=text, html=None),
        dict(text=None, html=html),
        dict(text="", html=None),
        dict(text=text, html=html, attachments=[Attachment("brief.pdf", b"%PDF" + bytes(range(256)) * 9),
                                                Attachment("Überblick.txt", "ä".encode() * 100)]),
    ]
    for shape in shapes:
        raw = build_message(
            mail_from="bg_ops <ops@bg-ops.example>", to=[("José Müller", "jose@x.example"), ("", "b@x.example")],
            cc=[("Ann O'Brien", "ann@x.example")], reply_to=("", "pm@x.example"), subject="Ü",
            message_id="<k@bg-ops.example>", extra_headers=[("X-Tenant", "Nordlicht Ärzte")], **shape)
        msg = message_from_bytes(raw, policy=policy.default)
        assert msg["To"] == "José Müller <jose@x.example>, b@x.example"
        assert msg["Cc"] == "Ann O'Brien <ann@x.example>" and msg["X-Tenant"] == "Nordlicht Ärzte"
        if shape.get("text") is not None:
            assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == shape["text"]
        if shape.get("html") is not None:
            assert msg.get_body(("html",)).get_content().replace("\r\n", "\n") == shape["html"]
        got = [(a.get_filename(), a.get_payload(decode=True)) for a in msg.iter_attachments()]
        assert got == [(a.filename, a.content) for a in shape.get("attachments", [])]


@pytest.mark.parametrize("size", [0, 1, 56, 57, 58, 114, 1000, 4096])
def test_base64_lines_are_the_standard_ones(size):
    import base64

    data = bytes(range(256)) * (size // 256 + 1)
    assert _b64(data[:size]) == base64.encodebytes(data[:size]).replace(b"\n", b"\r\n")


ADDRESSES = [
    "ana@acme.example", "Ana Lopez <ana@acme.example>", "Ann O'Brien <ann@x.example>",
    "A  Two Spaces <a@x.example>", "Dr. Who <who@x.example>", '"Quoted, Name" <q@x.example>',
    "José Müller <jose@acme.example>", "Name <a@b@x.example>", "Name<a@x.example>", "<a@x.example>",
    "Name <not-an-address>", "ana@acme.example (comment)", "x <y@z.example> trailing",
    "Björn Ås <b@x.example>", "名前 太郎 <a@x.example>", "Zoë\u00a0X <a@x.example>", "Ünal  Ö <a@x.example>",
    "عربي <a@x.example>", "é <a@x.example>", "José <jose@x.example>, Ana <ana@x.example>",
    "Ana\t<ana@x.example>", "Ana <ana@x.example>\n",
]


@pytest.mark.parametrize("raw", ADDRESSES)
def test_address_fast_paths_agree_with_the_standard_parser(raw):
    from bg_ops.settings import is_valid_address

    pairs = getaddresses([raw])
    one_address = len(pairs) == 1 and is_valid_address(pairs[0][1])
    expected = pairs if one_address and "\n" not in raw and "\r" not in raw else None  # no header injection
    if expected is None:
        with pytest.raises(AddressError, match="not an email address"):
            parse_addresses([raw], "to")
    else:
        assert parse_addresses([raw], "to") == expected
