"""A local SES v2 endpoint (127.0.0.1) for what moto cannot do: throttle, fail with 5xx, be slow.

moto's SES always accepts a mail from a verified sender; it has no way to answer
TooManyRequestsException. boto3 is pointed here with the standard service-specific variable
``AWS_ENDPOINT_URL_SESV2`` (no code path in the handler knows about it). The stub speaks the
SES v2 REST-JSON protocol for ``SendEmail`` (POST /v2/email/outbound-emails): success returns a
``MessageId``; a scripted error answers with the status, the ``x-amzn-ErrorType`` header and
``{"message": ...}`` body that botocore parses into a ClientError with that code.

    with SesStub() as ses:
        ses.fail_next(429, "TooManyRequestsException", times=3)
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SEND_EMAIL_PATH = "/v2/email/outbound-emails"


@dataclass(frozen=True)
class SentMail:
    message_id: str
    sender: str
    to: tuple[str, ...]
    subject: str
    text: str


class SesStub:
    def __init__(self, *, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds
        self.sent: list[SentMail] = []
        self.refused: list[tuple[int, str]] = []  # (status, error code) of every scripted answer given
        self._errors: list[list[Any]] = []  # [status, code, remaining]
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="ses-stub", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> SesStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SesStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, status: int, code: str, *, times: int = 1) -> None:
        with self._lock:
            self._errors.append([status, code, times])

    def _answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            if path != SEND_EMAIL_PATH:
                return (
                    404,
                    {"message": f"stub implements SendEmail only, not {path}"},
                    {"x-amzn-ErrorType": "NotFoundException"},
                )
            for error in self._errors:
                if error[2] > 0:
                    error[2] -= 1
                    self.refused.append((error[0], error[1]))
                    return error[0], {"message": f"scripted {error[1]}"}, {"x-amzn-ErrorType": error[1]}
            simple = body["Content"]["Simple"]
            mail = SentMail(
                message_id=f"stub-{next(self._ids)}",
                sender=body["FromEmailAddress"],
                to=tuple(body["Destination"]["ToAddresses"]),
                subject=simple["Subject"]["Data"],
                text=simple["Body"]["Text"]["Data"],
            )
            self.sent.append(mail)
            return 200, {"MessageId": mail.message_id}, {}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if stub.delay_seconds:
                    time.sleep(stub.delay_seconds)
                status, payload, headers = stub._answer(self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
