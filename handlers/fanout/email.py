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
batch delivered twice) must not mail twice. Each (task, event_id) gets a claim in the task row,
``channel_metadata["email:<event_id>"]``, on the shared claim primitive
(``handlers.common.claims``: token, generation, lease in epoch milliseconds):

1. claim (or take over an expired or released claim, conditional on the token seen);
2. send;
3. confirm: terminal ``sent`` (with the message id) conditionally on our token.

Windows:
- crash after the claim, before the send: nothing was sent; the claim expires with its lease
  and a retry sends the mail once;
- marker already ``sent`` (or ``rejected``): SKIPPED -- the duplicate delivery is absorbed;
- marker ``pending`` under a live lease (another invocation is sending, crashed moments ago,
  or its SendEmail got no answer): the claim is waited for (``ClaimStore.wait_while_held``,
  polling, at most ``claim_wait_seconds``): it turns ``sent`` -> SKIPPED, or its lease ends ->
  take over and send. Still held at the end of the wait -> ``RetryableError`` with the lease
  left as Retry-After. Each redelivery waits again, so the event source's bounded retries
  (10 x up to 10 s against a 45 s lease) reach the takeover instead of pushing the record to
  the DLQ while the lease runs out;
- SES answered with an error (throttle, 5xx, rejection): nothing was sent, so the claim is
  released (throttle/5xx) or turned into ``rejected`` (terminal) -- a retry is not held up;
- SES call timed out or the connection broke: SES may or may not have sent it. The claim stays
  pending and the lease decides: a retry after the lease sends again (at-least-once);
- crash (or timeout of the function) after SES accepted the mail but before the confirm: the
  same -- a retry after the lease re-sends. This is the one at-least-once edge SES leaves
  open: a mail may be sent twice, never lost;
- confirm finds our claim taken over (we were slower than the lease): the other claimant may
  have sent too; logged as a possible duplicate (FANOUT_EMAIL_LEASE_LOST);
- the confirm write itself fails after SES accepted the mail (a ClientError, or a read
  timeout / connection error): it is retried at once, a few times (``CONFIRM_ATTEMPTS``; a
  retried confirm whose first attempt landed is recognised as ours), so a passing DynamoDB
  hiccup cannot turn an accepted mail into a resend. If every attempt fails, the record still
  succeeds (failing it would only make a retry wait out the lease and send again); the pending
  marker stays, so only a redelivery of this record after the lease could re-send -- the
  residual window, logged (FANOUT_EMAIL_CONFIRM_FAILED).

Deadline (``handlers.fanout.deadline``): SendEmail runs on this dispatcher's own client with
one attempt per call (``SES_CLIENT_CONFIG``: 2 s connect, 5 s read); the retries of a refused
send (throttle, 5xx, no connection: nothing was sent) are ours, ``SEND_ATTEMPTS`` in all, each
started only when a whole call plus the confirm still fits (``SEND_BUDGET_SECONDS``), with the
backoff pause counted too. botocore's own retries would also have re-sent after a read timeout
-- an unknown outcome, i.e. a possible duplicate mail -- and could not be bounded. So:
- not enough time before the claim: nothing is written; the record fails and is redelivered;
- the wait for a live claim ends early enough to leave a send's budget;
- not enough time for the next attempt after a refused one: the claim is released (nothing
  was sent) and the record fails retryably;
- the confirm's retry pauses are skipped when they no longer fit (the record still succeeds:
  the FANOUT_EMAIL_CONFIRM_FAILED window below).

What SES can and cannot guarantee: SendEmail has no idempotency key, and a call that timed
out may still have sent the mail. A mail whose send outcome is unknown (no answer from SES, a
crash between the send and the confirm, a confirm that never landed) is therefore sent again
after the lease: possibly twice, never lost. Everything else is exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from handlers.common.claims import (
    Acquire,
    Claim,
    ClaimContentionError,
    ClaimHeldError,
    ClaimLocation,
    ClaimRecord,
    ClaimStore,
    ClaimTargetMissingError,
    WriteResult,
)
from handlers.fanout.deadline import NO_DEADLINE, Deadline, DeadlineExceededError
from handlers.fanout.model import Outcome, RetryableError, TaskEvent
from handlers.fanout.router import TaskNotFoundError
from handlers.fanout.routing import EMAIL, TASK_COMPLETED, TASK_FAILED, email_recipients
from handlers.fanout.settings import child_logger
from handlers.fanout.task_row import (
    channel_metadata,
    ensure_channel_metadata,
)

logger = child_logger()

# SendEmail: one attempt per call, so that the retries are ours and bounded by the deadline.
SES_CLIENT_CONFIG = Config(
    retries={"total_max_attempts": 1, "mode": "standard"},
    connect_timeout=2,
    read_timeout=5,
    tcp_keepalive=True,
    max_pool_connections=64,
)
SEND_ATTEMPTS = 3
SEND_RETRY_PAUSE_SECONDS = 0.2  # before attempt n: n x this
CONFIRM_RESERVE_SECONDS = 0.5  # the confirm write after SES accepted the mail
SEND_BUDGET_SECONDS = 2 + 5 + CONFIRM_RESERVE_SECONDS  # connect + read timeout + the confirm
# Longer than our SES attempts can take (3 x (2 s connect + 5 s read) + pauses),
# short enough that Lambda's bounded stream retries reach a re-claim after a crash.
CLAIM_LEASE_MS = 45_000
# How long a record waits for another attempt's live claim before failing retryably (bounded:
# the invocation has other records and channels to run).
DEFAULT_CLAIM_WAIT_SECONDS = 10.0
CLAIM_POLL_SECONDS = 0.25
# The confirm after SES accepted the mail: attempts, and the pause before each retry.
CONFIRM_ATTEMPTS = 3
CONFIRM_RETRY_PAUSE_SECONDS = 0.2
SENT, REJECTED = "sent", "rejected"

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

    def __init__(
        self,
        *,
        task_table_name: str,
        sender: str,
        claim_store: ClaimStore | None = None,
        claim_wait_seconds: float = DEFAULT_CLAIM_WAIT_SECONDS,
    ) -> None:
        self._task_table = task_table_name
        self._sender = sender
        self._claims = claim_store or ClaimStore()
        self._claim_wait_s = claim_wait_seconds
        self._ses: Any = None
        self._ses_lock = threading.Lock()

    def _ses_client(self) -> Any:
        """This container's SendEmail client (created on first use; endpoint from the environment)."""
        with self._ses_lock:
            if self._ses is None:
                self._ses = boto3.session.Session().client("sesv2", config=SES_CLIENT_CONFIG)
            return self._ses

    def dispatch(self, event: TaskEvent, task: Mapping[str, Any], deadline: Deadline = NO_DEADLINE) -> Outcome:
        if event.event_type not in RENDERERS:
            return Outcome.SKIPPED
        recipients = email_recipients(task.get("notifications"))
        if not recipients:
            return Outcome.SKIPPED
        name = marker_name(event.event_id)
        seen = ClaimRecord.parse(channel_metadata(task).get(name))
        if seen is not None and seen.is_terminal:
            return Outcome.SKIPPED  # fast path; the claim below is the authoritative check

        deadline.require(SEND_BUDGET_SECONDS, "sending the email")  # before the claim: nothing written yet
        ensure_channel_metadata(self._task_table, task)
        claim = self._claim(event, name, seen, deadline)
        if claim is None:
            return Outcome.SKIPPED
        subject, text = RENDERERS[event.event_type](event, task)
        request = {
            "FromEmailAddress": self._sender,
            "Destination": {"ToAddresses": recipients},
            "Content": {
                "Simple": {
                    "Subject": {"Data": subject, "Charset": "UTF-8"},
                    "Body": {"Text": {"Data": text, "Charset": "UTF-8"}},
                }
            },
        }
        refused: RetryableError | None = None
        for attempt in range(SEND_ATTEMPTS):
            try:
                if attempt:
                    deadline.sleep(
                        SEND_RETRY_PAUSE_SECONDS * attempt, "retrying SendEmail", reserve=SEND_BUDGET_SECONDS
                    )
                else:
                    deadline.require(SEND_BUDGET_SECONDS, "sending the email")
            except DeadlineExceededError:
                self._release(claim)  # nothing was sent (or every earlier attempt was refused)
                raise
            try:
                response = self._ses_client().send_email(**request)
            except ClientError as exc:
                refused = self._after_error_response(event, claim, exc)
                if refused is None:
                    return Outcome.TERMINAL_FAILURE
                continue
            except (ReadTimeoutError, ConnectionClosedError) as exc:
                # Unknown whether SES sent it: the pending claim stays, its lease decides (see above).
                raise RetryableError(f"SES send for event {event.event_id} got no answer: {exc}") from exc
            except (EndpointConnectionError, ConnectTimeoutError) as exc:
                # never connected: nothing was sent
                refused = RetryableError(f"SES could not be reached for event {event.event_id}: {exc}")
                continue
            except BotoCoreError:
                self._release(claim)  # failed before the request left (credentials...)
                raise
            self._confirm(claim, str(response.get("MessageId", "")), deadline)
            return Outcome.DELIVERED
        self._release(claim)  # SES refused every attempt: nothing was sent
        assert refused is not None
        raise refused

    # -- claim protocol ---------------------------------------------------------------------

    def _claim(self, event: TaskEvent, name: str, seen: ClaimRecord | None, invocation: Deadline) -> Claim | None:
        """Our claim on the mail; None when it is already settled (sent/rejected)."""
        location = ClaimLocation(self._task_table, {"task_id": {"S": event.task_id}}, ("channel_metadata", name))
        # The wait ends in time to leave a send's budget before the invocation deadline.
        deadline = invocation.until(self._claim_wait_s, reserve=SEND_BUDGET_SECONDS)
        while True:
            try:
                result = self._claims.acquire(
                    location, lease_ms=CLAIM_LEASE_MS, attributes={"event_id": event.event_id}, seen=seen
                )
            except ClaimTargetMissingError as exc:
                raise TaskNotFoundError(f"task {event.task_id} disappeared before its email could be claimed") from exc
            except ClaimContentionError as exc:
                raise RetryableError(str(exc)) from exc
            if result.status is Acquire.ACQUIRED:
                return result.claim
            current = result.current
            if result.status is Acquire.SETTLED:
                logger.info(
                    "Email already settled for this event; not sending again",
                    extra={"channel": EMAIL, "state": current.state if current else None},
                )
                return None
            # HELD: another delivery is sending, or its send got no answer. Wait (bounded) for
            # it to settle or for its lease to end, then acquire again with what was read.
            try:
                seen = self._claims.wait_while_held(location, current, deadline, CLAIM_POLL_SECONDS)
            except ClaimHeldError as exc:
                raise RetryableError(
                    f"email for event {event.event_id} is still held by another delivery "
                    f"({exc.lease_left_ms} ms of its lease left)",
                    retry_after_seconds=max(1.0, exc.lease_left_ms / 1000),
                ) from exc
            except (ClientError, BotoCoreError) as exc:
                raise RetryableError(f"reading the email claim of event {event.event_id} failed: {exc}") from exc

    def _confirm(self, claim: Claim, message_id: str, deadline: Deadline) -> None:
        error: Exception | None = None
        result: WriteResult | None = None
        for attempt in range(CONFIRM_ATTEMPTS):
            if attempt:
                pause = CONFIRM_RETRY_PAUSE_SECONDS * attempt
                if not deadline.allows(pause + CONFIRM_RESERVE_SECONDS):
                    break  # no time for another attempt: the record succeeds, the marker stays pending
                time.sleep(pause)
            try:
                # Safe to repeat: a retry whose first attempt landed is recognised (same token).
                result = self._claims.confirm(claim, state=SENT, attributes={"message_id": message_id})
                break
            except (ClientError, BotoCoreError) as exc:
                error = exc
        if result is None:
            # The mail is out. Failing the record now would only make a retry wait out the lease
            # and send it again, so the record succeeds; the pending marker is left behind.
            logger.error(
                "Email sent but its marker could not be confirmed",
                extra={
                    "channel": EMAIL,
                    "message_id": message_id,
                    "error": str(error),
                    "attempts": CONFIRM_ATTEMPTS,
                    "error_id": "FANOUT_EMAIL_CONFIRM_FAILED",
                },
            )
            return
        if not result.ok:
            logger.warning(
                "Email claim was taken over before confirming; the mail may be sent twice",
                extra={"channel": EMAIL, "message_id": message_id, "error_id": "FANOUT_EMAIL_LEASE_LOST"},
            )

    def _release(self, claim: Claim) -> None:
        """SES took nothing: give the claim back so a retry sends at once."""
        try:
            self._claims.release(claim)
        except (ClientError, BotoCoreError) as exc:
            # Releasing is an optimisation (the lease expires anyway); never mask the real error.
            logger.warning(
                "Could not release the email claim; it expires with its lease",
                extra={"channel": EMAIL, "error": str(exc)},
            )

    def _reject(self, claim: Claim, code: str) -> None:
        try:
            self._claims.confirm(claim, state=REJECTED, attributes={"error_code": code})
        except (ClientError, BotoCoreError) as exc:
            logger.warning(
                "Could not record the rejection; a retry after the lease asks SES again",
                extra={"channel": EMAIL, "error": str(exc)},
            )

    def _after_error_response(self, event: TaskEvent, claim: Claim, exc: ClientError) -> RetryableError | None:
        """What SES's error answer means: a refusal to retry (returned; the claim stays ours for the
        next attempt), or a rejection (recorded: None means TERMINAL_FAILURE). Deployment errors raise."""
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in THROTTLING_CODES or status >= 500 or status == 429:
            # SES refused: nothing was sent. The caller retries, or releases the claim and raises this.
            retry_after = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("retry-after")
            refused = RetryableError(
                f"SES throttled or failed ({code or status}) for event {event.event_id}",
                retry_after_seconds=_seconds(retry_after),
            )
            refused.__cause__ = exc
            return refused
        if code in DEPLOYMENT_CODES:
            self._release(claim)
            raise exc
        self._reject(claim, code or str(status))
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
        return None


def _seconds(raw: object) -> float | None:
    try:
        return max(0.0, float(raw)) if raw is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
