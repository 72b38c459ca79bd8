"""email_message: parsing, addressing, thread ids, execution names (pure logic)."""

from __future__ import annotations

import hashlib
import re
from email.message import EmailMessage

import pytest

from handlers.job_claim.email_message import (
    BODY_LIMIT_BYTES,
    MalformedEmailError,
    UnroutableEmailError,
    attachment_part,
    execution_name,
    load,
    message_id_of,
    parse,
    payload_bytes,
)

NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def raw_email(body: bytes, content_type: str = "text/plain; charset=utf-8", **headers: str) -> bytes:
    lines = {
        "From": "Alice <alice@example.com>",
        "To": "acme+bob@jobs.example.com",
        "Subject": "Do it",
        "Message-ID": "<m1@example.com>",
        "MIME-Version": "1.0",
        "Content-Type": content_type,
        "Content-Transfer-Encoding": "8bit",
    }
    lines.update({name.replace("_", "-"): value for name, value in headers.items()})
    head = "".join(f"{name}: {value}\r\n" for name, value in lines.items() if value)
    return head.encode() + b"\r\n" + body


def test_a_plain_email_is_parsed() -> None:
    email = parse(raw_email(b"Please build it.\r\n"))
    assert (email.project, email.user, email.pair) == ("acme", "bob", "acme#bob")
    assert email.message_id == "m1@example.com" and email.thread_id == "m1@example.com"
    assert email.subject == "Do it" and "alice@example.com" in email.sender
    assert email.body_text.strip() == "Please build it." and email.attachments == ()


def test_an_html_only_email_becomes_text() -> None:
    html = (
        b"<html><head><style>p{}</style></head>"
        b"<body><p>Hello <b>team</b></p><p>Line&nbsp;2 &amp; more</p></body></html>"
    )
    email = parse(raw_email(html, "text/html; charset=utf-8"))
    assert "Hello team" in email.body_text and "Line\xa02 & more" in email.body_text
    assert "<" not in email.body_text and "p{}" not in email.body_text


def test_a_multipart_email_lists_its_attachments_and_parts_can_be_extracted() -> None:
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = "acme+bob@jobs.example.com"
    message["Subject"] = "With files"
    message["Message-ID"] = "<m2@example.com>"
    message.set_content("See attached.")
    message.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream", filename="data.bin")
    message.add_attachment("a,b\n1,2\n", subtype="csv", filename="table.csv")
    raw = message.as_bytes()
    email = parse(raw)
    assert email.body_text.strip() == "See attached."
    assert [(a.index, a.filename, a.content_type) for a in email.attachments] == [
        (0, "data.bin", "application/octet-stream"),
        (1, "table.csv", "text/csv"),
    ]
    assert email.attachments[0].size == len(b"\x00\x01binary")
    assert payload_bytes(attachment_part(load(raw), 0)) == b"\x00\x01binary"
    with pytest.raises(MalformedEmailError):
        attachment_part(load(raw), 2)


@pytest.mark.parametrize("charset", ["iso-8859-1", "windows-1252"])
def test_non_utf8_bodies_are_decoded(charset: str) -> None:
    text = "Café déjà vu – “quoted”" if charset == "windows-1252" else "Café déjà vu"
    email = parse(raw_email(text.encode(charset), f"text/plain; charset={charset}"))
    assert email.body_text.strip() == text


def test_an_unknown_charset_falls_back_to_replacement() -> None:
    email = parse(raw_email("naïve".encode(), "text/plain; charset=x-unknown-charset"))
    assert "na" in email.body_text


def test_the_body_is_truncated_to_32_kib() -> None:
    email = parse(raw_email(("é" * 40000).encode()))
    assert len(email.body_text.encode()) <= BODY_LIMIT_BYTES
    assert email.body_text == "é" * len(email.body_text)


def test_a_missing_message_id_is_a_hash_of_the_bytes() -> None:
    raw = raw_email(b"x", Message_ID="")
    expected = "sha256-" + hashlib.sha256(raw).hexdigest()[:32]
    assert parse(raw).message_id == expected == message_id_of(raw)
    assert parse(raw).thread_id == expected


def test_no_routable_recipient_is_unroutable() -> None:
    with pytest.raises(UnroutableEmailError, match="names no project\\+user recipient"):
        parse(raw_email(b"x", To="someone@example.com"))
    with pytest.raises(UnroutableEmailError):
        parse(raw_email(b"x", To="acme+bob@other.example.com"), domain="jobs.example.com")
    with pytest.raises(UnroutableEmailError):
        parse(raw_email(b"x", To="-acme+bob@jobs.example.com"))


def test_cc_routes_when_to_does_not_and_case_is_folded() -> None:
    email = parse(
        raw_email(b"x", To="someone@example.com", Cc="Team <ACME+Bob@Jobs.Example.com>"), domain="jobs.example.com"
    )
    assert email.pair == "acme#bob"


def test_delivered_to_is_the_last_resort() -> None:
    email = parse(raw_email(b"x", To="someone@example.com", Delivered_To="proj-1+u2@jobs.example.com"))
    assert email.pair == "proj-1#u2"


def test_the_thread_is_the_first_reference_then_in_reply_to() -> None:
    raw = raw_email(b"x", References="<root@x> <mid@x>", In_Reply_To="<mid@x>")
    assert parse(raw).thread_id == "root@x"
    assert parse(raw_email(b"x", In_Reply_To="<parent@x>")).thread_id == "parent@x"


def test_empty_objects_are_malformed() -> None:
    with pytest.raises(MalformedEmailError):
        parse(b"  ")


def test_execution_names_are_sanitised_bounded_and_collision_safe() -> None:
    assert execution_name("plain_id-1") == "plain_id-1"
    a, b = execution_name("abc@example.com"), execution_name("abc.example.com")
    assert a != b and NAME.match(a) and NAME.match(b)
    assert a.startswith("abc-example-com-")
    long_name = execution_name("x" * 200)
    assert len(long_name) == 80 and NAME.match(long_name)
    assert execution_name("x" * 80) == "x" * 80
    assert len(execution_name("é" * 100)) <= 80
