"""The MIME message of one email (stdlib ``email``, ``policy.default``): who it is for, what it says.

Addressing rule (decided here, documented in the README by the lead): an email names its pair
by its recipient address ``<project>+<user>@<domain>``. The first recipient -- To, then Cc, then
Delivered-To, in header order -- whose local part (case-folded) is ``project+user`` with each
part ``[a-z0-9][a-z0-9-]{0,62}`` and, when ``JOB_CLAIM_EMAIL_DOMAIN`` is set, whose domain is
that domain, names the pair. No such recipient: ``UnroutableEmailError`` (the state machine sends
the email to the DLQ path with the reason).

thread id: the first id in References, else In-Reply-To, else the message's own Message-ID.
A message without Message-ID gets ``sha256-<first 32 hex of sha256(raw bytes)>`` (stable, so a
duplicate notification of the same object maps to the same execution name).

Pure logic, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import getaddresses
from html.parser import HTMLParser

from handlers.job_claim.schema import pair_key

BODY_LIMIT_BYTES = 32 * 1024
EXECUTION_NAME_LIMIT = 80
_HASH_SUFFIX_HEX = 16
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PART = r"[a-z0-9][a-z0-9-]{0,62}"
_LOCAL_PART = re.compile(rf"^({_PART})\+({_PART})$")
_ANGLE_ID = re.compile(r"<([^<>\s]+)>")
ROUTING_HEADERS = ("To", "Cc", "Delivered-To")


class UnroutableEmailError(Exception):
    """The email names no project+user recipient (the Step Functions error name is the class name)."""


class MalformedEmailError(Exception):
    """The object is not a MIME message we can read."""


@dataclass(frozen=True)
class AttachmentInfo:
    index: int
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class ParsedEmail:
    message_id: str
    project: str
    user: str
    pair: str
    thread_id: str
    subject: str
    sender: str
    body_text: str
    attachments: tuple[AttachmentInfo, ...]


def _strip_id(value: str) -> str:
    value = value.strip()
    match = _ANGLE_ID.search(value)
    if match:
        return match.group(1)
    return value.split()[0] if value.split() else ""


def fallback_message_id(raw: bytes) -> str:
    return "sha256-" + hashlib.sha256(raw).hexdigest()[:32]


def _message_id_of(message: Message, raw: bytes) -> str:
    value = message.get("Message-ID")
    stripped = _strip_id(str(value)) if value is not None else ""
    return stripped or fallback_message_id(raw)


def message_id_of(raw: bytes) -> str:
    """The message id from the headers only (the intake needs nothing else)."""
    if not raw.strip():
        raise MalformedEmailError("the object is empty")
    headers = BytesHeaderParser(policy=policy.default).parsebytes(raw)
    return _message_id_of(headers, raw)


def execution_name(message_id: str) -> str:
    """A Step Functions execution name for ``message_id``: [A-Za-z0-9_-], at most 80 characters.

    Characters outside the set become '-'. When that changed anything (two ids differing only
    in a replaced character would otherwise collide) or the result is too long, it is cut to
    63 characters and '-' + 16 hex of sha256(message_id) is appended.
    """
    sanitised = _NAME_UNSAFE.sub("-", message_id)
    if sanitised == message_id and 0 < len(sanitised) <= EXECUTION_NAME_LIMIT:
        return sanitised
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_SUFFIX_HEX]
    return f"{sanitised[: EXECUTION_NAME_LIMIT - _HASH_SUFFIX_HEX - 1]}-{digest}"


def route(message: Message, *, domain: str | None) -> tuple[str, str]:
    """(project, user) from the first matching recipient (the addressing rule above)."""
    wanted = domain.casefold() if domain else None
    seen: list[str] = []
    for header in ROUTING_HEADERS:
        values = [str(value) for value in message.get_all(header, [])]
        for _, address in getaddresses(values):
            if "@" not in address:
                continue
            local, _, address_domain = address.rpartition("@")
            seen.append(address)
            match = _LOCAL_PART.match(local.casefold())
            if match is None:
                continue
            if wanted is not None and address_domain.casefold() != wanted:
                continue
            return match.group(1), match.group(2)
    where = f" at {domain}" if domain else ""
    raise UnroutableEmailError(
        f"the email names no project+user recipient{where} in {', '.join(ROUTING_HEADERS)} (saw {seen or 'none'})"
    )


def thread_id_of(message: Message, message_id: str) -> str:
    references = message.get("References")
    if references is not None:
        first = _ANGLE_ID.search(str(references))
        if first:
            return first.group(1)
        if str(references).split():
            return str(references).split()[0]
    in_reply_to = message.get("In-Reply-To")
    if in_reply_to is not None and _strip_id(str(in_reply_to)):
        return _strip_id(str(in_reply_to))
    return message_id


class _TextExtractor(HTMLParser):
    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"})
    _SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCKS:
            self._parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCKS:
            self._parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._parts.append(data)

    def text(self) -> str:
        joined = "".join(self._parts)
        lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in joined.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(html: str) -> str:
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    return extractor.text()


def _text_of(part: EmailMessage) -> str:
    try:
        return str(part.get_content())
    except (LookupError, UnicodeError):
        # An unknown or wrong charset: decode the bytes as UTF-8, replacing what does not fit.
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else str(payload or "")


def truncate_utf8(text: str, limit: int = BODY_LIMIT_BYTES) -> str:
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore")


def body_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    assert isinstance(part, EmailMessage)
    text = _text_of(part)
    if part.get_content_subtype() == "html":
        text = html_to_text(text)
    return truncate_utf8(text)


def attachment_parts(message: Message) -> Iterator[EmailMessage]:
    """The attachment parts, in message order (their position is the attachment's index)."""
    for part in message.walk():
        if part.is_multipart():
            continue
        if part.get_content_disposition() == "attachment" or part.get_filename():
            assert isinstance(part, EmailMessage)
            yield part


def payload_bytes(part: EmailMessage) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def attachment_part(message: Message, index: int) -> EmailMessage:
    for position, part in enumerate(attachment_parts(message)):
        if position == index:
            return part
    raise MalformedEmailError(f"the email has no attachment {index}")


def load(raw: bytes) -> EmailMessage:
    if not raw.strip():
        raise MalformedEmailError("the object is empty")
    try:
        message = BytesParser(policy=policy.default).parsebytes(raw)
    except Exception as exc:  # the parser is lenient; anything it raises means unreadable input
        raise MalformedEmailError(f"the object is not a MIME message: {exc}") from exc
    assert isinstance(message, EmailMessage)
    if not message.keys():
        raise MalformedEmailError("the object has no email headers")
    return message


def parse(raw: bytes, *, domain: str | None = None) -> ParsedEmail:
    message = load(raw)
    project, user = route(message, domain=domain)
    message_id = _message_id_of(message, raw)
    attachments = tuple(
        AttachmentInfo(
            index=index,
            filename=str(part.get_filename() or f"attachment-{index}"),
            content_type=part.get_content_type(),
            size=len(payload_bytes(part)),
        )
        for index, part in enumerate(attachment_parts(message))
    )
    return ParsedEmail(
        message_id=message_id,
        project=project,
        user=user,
        pair=pair_key(project, user),
        thread_id=thread_id_of(message, message_id),
        subject=str(message.get("Subject", "")),
        sender=str(message.get("From", "")),
        body_text=body_of(message),
        attachments=attachments,
    )
