"""Email dispatcher: SES v2 ``SendEmail`` for the subscribed events, to the task's recipients.

Recipients come from ``notifications.email.recipients`` in the task row (none -> SKIPPED); the
sender is ``EMAIL_SENDER``, a verified SES identity.

Errors:
- throttling (TooManyRequestsException, LimitExceededException, Throttling...) and 5xx ->
  ``RetryableError`` (boto3 already retried a few times inside the call);
- rejections (MessageRejected, MailFromDomainNotVerifiedException, AccountSuspendedException,
  SendingPausedException, any other 4xx) -> ``TERMINAL_FAILURE``: no retry makes SES accept it;
- access/credential errors (AccessDenied...) are a broken deployment, not a rejection: the
  ClientError fails the record, so it reaches the DLQ and can be redriven once IAM is fixed.

Dedup: SES has no idempotency key, so a redelivered record (a sibling channel failed, the same
batch delivered twice) must not mail twice. Each (task, event_id) gets a marker in the task row,
``channel_metadata["email:<event_id>"]``, moved through a claim protocol:

1. claim: conditionally write ``{state: pending, token, lease_until}`` if there is no marker,
   or the existing one is a pending claim whose lease has expired;
2. send;
3. confirm: ``{state: sent, message_id}`` conditionally on our token still being the claim.

Windows:
- crash after the claim, before the send: nothing was sent; the claim expires with its lease
  and a retry sends the mail once;
- marker already ``sent`` (or ``rejected``): SKIPPED -- the duplicate delivery is absorbed;
- marker ``pending`` under a live lease (another invocation is sending, or crashed moments
  ago): ``RetryableError`` with the remaining lease as Retry-After; once the lease expires a
  retry re-claims and sends. If the retries run out first, the record lands in the DLQ (not
  lost) -- the lease is kept short for that reason;
- SES answered with an error (throttle, 5xx, rejection): nothing was sent, so the claim is
  released (throttle/5xx) or turned into ``rejected`` (terminal) -- a retry is not held up;
- SES call timed out or the connection broke: SES may or may not have sent it. The claim stays
  pending and the lease decides: a retry after the lease sends again (at-least-once);
- crash (or timeout of the function) after SES accepted the mail but before the confirm: the
  same -- a retry after the lease re-sends. This is the one at-least-once edge SES leaves
  open: a mail may be sent twice, never lost;
- confirm finds our claim taken over (we were slower than the lease): the other claimant may
  have sent too; logged as a possible duplicate (FANOUT_EMAIL_LEASE_LOST);
- the confirm write itself fails after SES accepted the mail: the record still succeeds (a
  retry would only wait out the lease and send again); the pending marker stays, so only a
  later redelivery of this record after the lease could re-send (FANOUT_EMAIL_CONFIRM_FAILED).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from handlers.common.aws import client
from handlers.fanout.model import Outcome, RetryableError, TaskEvent
from handlers.fanout.router import TaskNotFoundError
from handlers.fanout.routing import EMAIL, TASK_COMPLETED, TASK_FAILED, email_recipients
from handlers.fanout.settings import child_logger
from handlers.fanout.task_row import (
    channel_metadata,
    deserialize_item,
    ensure_channel_metadata,
    is_conditional_check_failure,
)

logger = child_logger()

# Longer than one SES call can take with boto3's retries (3 attempts x 10 s read timeout),
# short enough that Lambda's bounded stream retries reach a re-claim after a crash.
CLAIM_LEASE_SECONDS = 45
PENDING, SENT, REJECTED = "pending", "sent", "rejected"

THROTTLING_CODES = frozenset(
    {
        "TooManyRequestsException",
        "LimitExceededException",
        "Throttling",
        "ThrottlingException",
        "ServiceUnavailable",
        "InternalFailure",
    }
)
# The deployment is broken (IAM, credentials): a failure of the record, so it reaches the DLQ
# and is redriven once fixed -- not a terminal drop.
DEPLOYMENT_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "InvalidSignatureException",
    }
)
REJECTION_CODES = frozenset(
    {
        "MessageRejected",
        "MailFromDomainNotVerifiedException",
        "AccountSuspendedException",
        "SendingPausedException",
        "NotFoundException",
        "BadRequestException",
    }
)


def marker_name(event_id: str) -> str:
    return f"email:{event_id}"


# ---------------------------------------------------------------------------------------------
# Rendering: (subject, plain-text body) per event type this channel can show.


def _task_line(task: Mapping[str, Any]) -> str:
    repo = task.get("repo")
    return f"Task {task['task_id']}" + (f" on {repo}" if isinstance(repo, str) and repo else "")


def _render_completed(event: TaskEvent, task: Mapping[str, Any]) -> tuple[str, str]:
    lines = [f"{_task_line(task)} completed at {event.timestamp}."]
    pr_url = event.metadata.get("pr_url")
    if isinstance(pr_url, str) and pr_url:
        lines.append(f"Pull request: {pr_url}")
    return f"[bgagent] Task {task['task_id']} completed", "\n".join(lines)


def _render_failed(event: TaskEvent, task: Mapping[str, Any]) -> tuple[str, str]:
    lines = [f"{_task_line(task)} failed at {event.timestamp}."]
    error = event.metadata.get("error_message") or event.metadata.get("message_preview")
    if isinstance(error, str) and error.strip():
        lines += ["", "Error:", error.strip()[:2000]]
    return f"[bgagent] Task {task['task_id']} failed", "\n".join(lines)


RENDERERS: Mapping[str, Callable[[TaskEvent, Mapping[str, Any]], tuple[str, str]]] = {
    TASK_COMPLETED: _render_completed,
    TASK_FAILED: _render_failed,
}
RENDERABLE_EVENTS: frozenset[str] = frozenset(RENDERERS)


class EmailDispatcher:
    channel = EMAIL

    def __init__(self, *, task_table_name: str, sender: str) -> None:
        self._task_table = task_table_name
        self._sender = sender

    def dispatch(self, event: TaskEvent, task: Mapping[str, Any]) -> Outcome:
        if event.event_type not in RENDERERS:
            return Outcome.SKIPPED
        recipients = email_recipients(task.get("notifications"))
        if not recipients:
            return Outcome.SKIPPED
        name = marker_name(event.event_id)
        if _state(channel_metadata(task).get(name)) in (SENT, REJECTED):
            return Outcome.SKIPPED  # fast path; the claim below is the authoritative check

        ensure_channel_metadata(self._task_table, task)
        token = uuid.uuid4().hex
        if not self._claim(event, name, token):
            return Outcome.SKIPPED
        subject, text = RENDERERS[event.event_type](event, task)
        try:
            response = client("sesv2").send_email(
                FromEmailAddress=self._sender,
                Destination={"ToAddresses": recipients},
                Content={
                    "Simple": {
                        "Subject": {"Data": subject, "Charset": "UTF-8"},
                        "Body": {"Text": {"Data": text, "Charset": "UTF-8"}},
                    }
                },
            )
        except ClientError as exc:
            return self._after_error_response(event, name, token, exc)
        except (ReadTimeoutError, ConnectionClosedError) as exc:
            # Unknown whether SES sent it: the pending claim stays, its lease decides (see above).
            raise RetryableError(f"SES send for event {event.event_id} got no answer: {exc}") from exc
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            self._settle(event, name, token, None)  # never connected: nothing was sent
            raise RetryableError(f"SES could not be reached for event {event.event_id}: {exc}") from exc
        except BotoCoreError:
            self._settle(event, name, token, None)  # failed before the request left (credentials...)
            raise
        self._confirm(event, name, token, str(response.get("MessageId", "")))
        return Outcome.DELIVERED

    # -- claim protocol ---------------------------------------------------------------------

    def _claim(self, event: TaskEvent, name: str, token: str) -> bool:
        """True when we own the claim; False when the mail is already settled (sent/rejected)."""
        now = int(time.time())
        try:
            client("dynamodb").update_item(
                TableName=self._task_table,
                Key={"task_id": {"S": event.task_id}},
                UpdateExpression="SET #cm.#m = :claim",
                ConditionExpression=(
                    "attribute_exists(task_id) AND (attribute_not_exists(#cm.#m) OR "
                    "(#cm.#m.#state = :pending AND #cm.#m.#lease < :now))"
                ),
                ExpressionAttributeNames={
                    "#cm": "channel_metadata",
                    "#m": name,
                    "#state": "state",
                    "#lease": "lease_until",
                },
                ExpressionAttributeValues={
                    ":claim": {
                        "M": {
                            "state": {"S": PENDING},
                            "token": {"S": token},
                            "lease_until": {"N": str(now + CLAIM_LEASE_SECONDS)},
                            "claimed_at": {"N": str(now)},
                        }
                    },
                    ":pending": {"S": PENDING},
                    ":now": {"N": str(now)},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return True
        except ClientError as exc:
            if not is_conditional_check_failure(exc):
                raise
            old_item = exc.response.get("Item")
        if not old_item:
            raise TaskNotFoundError(f"task {event.task_id} disappeared before its email could be claimed")
        current = channel_metadata(deserialize_item(old_item)).get(name)
        state = _state(current)
        if state in (SENT, REJECTED):
            logger.info(
                "Email already settled for this event; not sending again",
                extra={
                    "channel": EMAIL,
                    "state": state,
                },
            )
            return False
        lease_until = float(current.get("lease_until", now)) if isinstance(current, Mapping) else float(now)
        raise RetryableError(
            f"email for event {event.event_id} is claimed by another delivery until its lease expires",
            retry_after_seconds=max(1.0, lease_until - now),
        )

    def _confirm(self, event: TaskEvent, name: str, token: str, message_id: str) -> None:
        try:
            self._settle(
                event,
                name,
                token,
                {
                    "state": {"S": SENT},
                    "message_id": {"S": message_id},
                    "sent_at": {"N": str(int(time.time()))},
                },
                raise_errors=True,
            )
        except ClientError as exc:
            if is_conditional_check_failure(exc):
                logger.warning(
                    "Email claim was taken over before confirming; the mail may be sent twice",
                    extra={
                        "channel": EMAIL,
                        "message_id": message_id,
                        "error_id": "FANOUT_EMAIL_LEASE_LOST",
                    },
                )
                return
            # The mail is out. Failing the record now would only make a retry wait out the lease
            # and send it again, so the record succeeds; the pending marker is left behind.
            logger.error(
                "Email sent but its marker could not be confirmed",
                extra={
                    "channel": EMAIL,
                    "message_id": message_id,
                    "error": str(exc),
                    "error_id": "FANOUT_EMAIL_CONFIRM_FAILED",
                },
            )

    def _settle(
        self,
        event: TaskEvent,
        name: str,
        token: str,
        value: Mapping[str, Any] | None,
        *,
        raise_errors: bool = False,
    ) -> None:
        """Replace (value) or release (None) our claim, only if it is still ours."""
        update = "SET #cm.#m = :value" if value is not None else "REMOVE #cm.#m"
        values: dict[str, Any] = {":token": {"S": token}}
        if value is not None:
            values[":value"] = {"M": dict(value)}
        try:
            client("dynamodb").update_item(
                TableName=self._task_table,
                Key={"task_id": {"S": event.task_id}},
                UpdateExpression=update,
                ConditionExpression="#cm.#m.#token = :token",
                ExpressionAttributeNames={"#cm": "channel_metadata", "#m": name, "#token": "token"},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if raise_errors:
                raise
            # Releasing is an optimisation (the lease expires anyway); never mask the real error.
            logger.warning(
                "Could not release the email claim; it expires with its lease",
                extra={
                    "channel": EMAIL,
                    "error": str(exc),
                },
            )

    def _after_error_response(self, event: TaskEvent, name: str, token: str, exc: ClientError) -> Outcome:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in THROTTLING_CODES or status >= 500 or status == 429:
            self._settle(event, name, token, None)  # SES refused: nothing was sent
            retry_after = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("retry-after")
            raise RetryableError(
                f"SES throttled or failed ({code or status}) for event {event.event_id}",
                retry_after_seconds=_seconds(retry_after),
            ) from exc
        if code in DEPLOYMENT_CODES:
            self._settle(event, name, token, None)
            raise exc
        self._settle(event, name, token, {"state": {"S": REJECTED}, "error_code": {"S": code or str(status)}})
        logger.error(
            "SES rejected the email; not retrying",
            extra={
                "channel": EMAIL,
                "error_code": code,
                "status": status,
                "error": str(error.get("Message", "")),
                "known_rejection": code in REJECTION_CODES,
            },
        )
        return Outcome.TERMINAL_FAILURE


def _state(marker: object) -> str | None:
    if isinstance(marker, Mapping):
        state = marker.get("state")
        return state if isinstance(state, str) else None
    return None


def _seconds(raw: object) -> float | None:
    try:
        return max(0.0, float(raw)) if raw is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
