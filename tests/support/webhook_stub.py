"""A local webhook receiver on 127.0.0.1: records every POST and answers as scripted.

By default it answers ``204``. ``script(...)`` queues answers for the next requests, in order:
a status with headers (``429`` + ``Retry-After``, ``302`` + ``Location``...), a delay before
answering (a receiver slower than the sender's read timeout), or ``DROP`` (close the socket
without an answer). ``tls=`` serves HTTPS with the given server context (a certificate from
``tests/support/local_ca.py``). ``verify(request, secret)`` checks a recorded request's
Standard Webhooks signature the way a receiver would (written here independently of the
sender's code, so a test compares two implementations).

    with WebhookStub() as receiver:
        receiver.script(Answer(500), Answer(429, {"Retry-After": "3"}))
        deliver(...)  # to receiver.url
        [first, second, third] = receiver.received()
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from tests.support.http_stub import HttpStub, StubRequest, StubResponse


@dataclass(frozen=True)
class Answer:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0  # sleep before answering
    drop: bool = False  # close the connection without answering


DROP = Answer(drop=True)


@dataclass(frozen=True)
class ReceivedWebhook:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int | None  # what the stub answered (None: dropped)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class WebhookStub(HttpStub[ReceivedWebhook]):
    def __init__(self, *, tls: ssl.SSLContext | None = None, default: Answer | None = None) -> None:
        super().__init__(name="webhook-stub")
        self._script: deque[Answer] = deque()
        self._default = default or Answer()
        self._tls = tls is not None
        server, report = self._server, self._server.handle_error

        def handle_error(request: object, client_address: object) -> None:
            # a client that timed out before a scripted slow answer is the scenario, not an error
            if not isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
                report(request, client_address)  # type: ignore[arg-type]

        server.handle_error = handle_error  # type: ignore[method-assign]
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def script(self, *answers: Answer) -> None:
        with self._lock:
            self._script.extend(answers)

    def received(self) -> list[ReceivedWebhook]:
        return self._recorded()

    def _respond(self, request: StubRequest) -> StubResponse:
        with self._lock:
            answer = self._script.popleft() if self._script else self._default
            self._record(
                ReceivedWebhook(
                    method=request.method,
                    path=request.path,
                    headers={name.lower(): value for name, value in request.headers.items()},
                    body=request.body,
                    status=None if answer.drop else answer.status,
                )
            )
        if answer.delay_seconds:
            time.sleep(answer.delay_seconds)
        if answer.drop:
            return StubResponse(0, drop_connection=True)
        return StubResponse(answer.status, b"", answer.headers)


def verify(request: ReceivedWebhook, secret: str, *, now: float | None = None, tolerance: float = 300) -> bool:
    """A receiver's check: whsec_ key, HMAC-SHA256 of "id.timestamp.body", any v1 entry, timestamp fresh."""
    webhook_id, timestamp, signatures = (
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        request.header("webhook-signature"),
    )
    if not (webhook_id and timestamp and signatures and timestamp.isdigit()):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + request.body, hashlib.sha256).digest()
    for entry in signatures.split(" "):
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(value), expected):
            return True
    return False
