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
from dataclasses import dataclass
from typing import Any

from tests.support.http_stub import HttpStub, StubRequest, StubResponse, json_response

SEND_EMAIL_PATH = "/v2/email/outbound-emails"


@dataclass(frozen=True)
class SentMail:
    message_id: str
    sender: str
    to: tuple[str, ...]
    subject: str
    text: str


class SesStub(HttpStub[StubRequest]):
    """``requests`` holds every request as received, in arrival order."""

    def __init__(self, *, delay_seconds: float = 0.0) -> None:
        super().__init__(name="ses-stub", delay_seconds=delay_seconds)
        self.sent: list[SentMail] = []
        self.refused: list[tuple[int, str]] = []  # (status, error code) of every scripted answer given
        self._errors: list[list[Any]] = []  # [status, code, remaining]
        self._ids = itertools.count(1)

    def fail_next(self, status: int, code: str, *, times: int = 1) -> None:
        with self._lock:
            self._errors.append([status, code, times])

    def _respond(self, request: StubRequest) -> StubResponse:
        self._record(request)
        return json_response(*self._answer(request.path, json.loads(request.body or b"{}")))

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
