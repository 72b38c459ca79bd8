"""Slack dispatcher: Block Kit notifications in the task's Slack thread, exactly once.

Scope: only tasks whose ``channel_source`` is ``slack`` and only the events ``slack_blocks``
can render; everything else is SKIPPED. Messages thread under ``slack_thread_ts`` (the
@mention that started the task); without one, the task_created message is posted at top level
and becomes the thread root. DM channels (id ``D...``) are posted to the user id when it is
known. Link unfurling is off. The bot token of team T is read from the secret
``<prefix>T`` (SecretString: the token, or JSON ``{"token": ...}`` / ``{"bot_token": ...}``, see
``secret_format``), cached per container.

Error classes (see ``SlackFailure``):
- the terminal Slack codes in ``TERMINAL_SLACK_ERRORS`` -> logged + metric, TERMINAL_FAILURE;
- everything else (ratelimited/429, 5xx, internal_error, fatal_error, service_unavailable,
  request_timeout, timeouts, connection errors) -> ``RetryableError``, Retry-After logged;
- a missing or malformed bot-token secret is a broken deployment for that team:
  ``SlackConfigurationError``, which fails the record (error log + metric). Retries re-read
  the secret, so a secret created meanwhile heals it; otherwise the record ends in the
  on-failure destination, from where it can be redriven once the secret is fixed. Answering
  TERMINAL_FAILURE instead would acknowledge -- i.e. drop -- every notification of that team.

slack-sdk retries: the client that posts has *no* built-in retry handlers. A retried
chat.postMessage after a lost answer is a duplicate message, and RateLimitErrorRetryHandler
would sleep Retry-After (often 30 s+) inside the invocation while the rest of the batch
waits. Every post failure goes to our classifier instead, the dedup protocol below makes the
redelivery safe, and Lambda's redelivery is the retry. The client for idempotent calls
(reactions, deletes, lookups) keeps one short connection-error retry: repeating those is
harmless (already_reacted / message_not_found are answers we accept).

Dedup markers (``channel_metadata.<marker>`` in the task row, one per kind of message):
``slack_created_msg`` (task_created), ``slack_session_msg`` (session_started),
``slack_terminal_msg`` (shared by completed/failed/cancelled/timed_out/stranded: the first
terminal event wins, later ones are SKIPPED) and ``slack_agent_error_msg:<event_id>`` (one per
agent_error event: a task may report several different errors, each posts once, and a
redelivery of one of them finds its own marker).
A marker is a map: ``{state: pending, token, lease_until_ms, first_claimed_at_ms, ...}`` while
an attempt owns it, ``{state: posted, token, ts, channel, ...}`` once the message is confirmed
(the created/session ``ts`` is what the terminal cleanup deletes).

Protocol (fixes the seed, which wrote its marker *before* posting, so a failed post lost the
notification forever). The marker is learnt without a read of its own: first from the task
row the router hands over (read consistently at the start of this record), then from the
conditional claim itself (a failed condition returns the row, ``ALL_OLD``) ->
  posted                        -> SKIPPED (duplicate delivery). A posted marker is final
                                   (nothing rewrites or removes it), so the record-start read
                                   can answer this without writing; even a stale read could
                                   only miss a posted marker, never show one that is not;
  pending, lease not expired    -> another attempt is in flight: poll the marker for up to
                                   ``claim_wait_seconds`` (it usually turns posted -> SKIPPED,
                                   or its lease runs out -> take over), then RetryableError;
  absent                        -> claim: conditional write ``attribute_not_exists``;
  pending, lease expired        -> take over: conditional on the old token (fencing), then
                                   look for the earlier attempt's message before posting;
then post (only if the lease still covers the longest possible post), set the state reaction,
on terminal events delete the intermediate messages, and confirm: conditional on our token,
storing the ts. Every post carries Slack message metadata naming the task and marker, which
is how a takeover recognises an earlier attempt's message (conversations.replies for
threaded posts, conversations.history for top-level ones, from the first claim on).
A successful claim returns the whole old row only when the dispatch still needs a fact the
record-start read could not give: the task_created message's ts as thread root, for a task
without ``slack_thread_ts`` whose read did not show that message posted yet.

DynamoDB calls per Slack notification: claim + confirm, plus one re-read (of the two
intermediate markers only) on terminal events. A duplicate delivery costs none (one failed
claim if its record-start read predates the confirm). Waiting on another attempt's claim and
a lost confirm re-read the one marker concerned.

A definite rejection (ok:false with a code, 429) releases the claim; an answer that leaves it
open whether Slack stored the message (5xx, internal_error/fatal_error/service_unavailable,
timeout, connection error) cuts the lease to a short grace instead, so the redelivery takes
over within seconds *and* looks for the message before posting again.

Timing: HTTP timeout 5 s, lease 15 s, claim wait 10 s (all constructor keywords). The lease
is checked right before posting (at least timeout + 2 s must remain) so that a live attempt
never posts after its lease ended; it is short because every redelivery meeting a crashed
attempt's claim has to outwait it, and the claim wait lets one redelivery do so instead of
failing fast and burning the event source's bounded retries (10 in FanOutConsumer).

Crash windows (the container dies; Lambda redelivers the record):
- before the claim: nothing was written or posted; the redelivery starts from scratch.
- after the claim, before the post: the marker stays pending until its lease expires (at
  most 15 s); a redelivery waits it out (or fails retryably if it cannot), takes over,
  finds no message, posts once.
- after the post, before the confirm: same, but the takeover finds the message by its
  metadata and confirms it (and re-applies the reaction and cleanup, both idempotent):
  still one message. Residual window, stated honestly: if the lookup is impossible (the app
  lacks the history scope, or Slack's read lags its write by more than the lease) the
  takeover posts again -- a duplicate, never a loss. That fallback is logged
  (FANOUT_SLACK_LOOKUP_UNAVAILABLE).
- after the confirm: the marker says posted; redeliveries are SKIPPED (from their record-start
  read, or -- if that read predates the confirm -- from the failed claim).
- two live attempts: only possible if one stalls past its lease between the lease check and
  the post. The fencing token makes the stale attempt's confirm fail; it then keeps its
  message if the winner adopted it, deletes it if the winner confirmed another one
  (message_not_found counts as deleted; a failed delete is FANOUT_SLACK_DUP_DELETE_FAILED),
  and otherwise leaves it and logs FANOUT_SLACK_LEASE_OVERRUN (a possible duplicate beats a
  possible loss).

Deadline (``handlers.fanout.deadline``): every Slack call starts only when its HTTP timeout
still fits in the invocation (the post: timeout + margin, checked before the claim too, so a
record without time writes nothing), and the wait for a live claim ends early enough to leave
a post's budget. A step that does not fit stops the record (``DeadlineExceededError``,
retryable) where the protocol above already copes: before the claim (nothing written); after
the claim, before the post (the lease is ended at once: nothing was posted); during a
takeover's lookup, or after the post -- before a reaction, the cleanup or the confirm -- the
lease is cut to the short grace, so the redelivery takes over, finds the message by its
metadata and finishes the reactions, cleanup and confirm (the lookup's residual window above
applies).

Reactions track the task state on the root message (eyes -> hourglass_flowing_sand ->
white_check_mark / x / no_entry_sign / hourglass / x). A takeover that adopts an earlier
attempt's message shows the state of the event that posted it (named in the message metadata,
and recorded in the confirmed marker), not its own: the terminal marker is shared, so the
adopted message may be another terminal event's ("timed out" adopted by task_failed). A
failing reaction is logged at error (FANOUT_SLACK_REACTION_FAILED) but does not fail the
record: the notification itself was delivered, and failing the record would hold back the
task's later events (per-task order) and spend the retry budget -- which can push a real
notification into the DLQ -- for an emoji; the next state change replaces the reaction anyway.
The same holds for deleting the intermediate messages of a terminal event
(FANOUT_SLACK_CLEANUP_DELETE_FAILED).
"""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from botocore.exceptions import BotoCoreError, ClientError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import ConnectionErrorRetryHandler
from slack_sdk.web import SlackResponse

from handlers.common import claims
from handlers.common.aws import client
from handlers.common.claims import (
    PENDING,
    RELEASED,
    Acquire,
    ClaimContentionError,
    ClaimHeldError,
    ClaimLocation,
    ClaimRecord,
    ClaimStore,
    ClaimTargetMissingError,
    WriteResult,
)
from handlers.common.config import ConfigurationError
from handlers.common.observability import METRICS_NAMESPACE, add_count
from handlers.fanout.deadline import NO_DEADLINE, Deadline, DeadlineExceededError
from handlers.fanout.model import MalformedRecordError, Outcome, RetryableError, TaskEvent
from handlers.fanout.routing import (
    AGENT_ERROR,
    SESSION_STARTED,
    SLACK,
    TASK_CANCELLED,
    TASK_COMPLETED,
    TASK_CREATED,
    TASK_FAILED,
    TASK_STRANDED,
    TASK_TIMED_OUT,
    TERMINAL_EVENTS,
)
from handlers.fanout.secret_format import token_from_secret
from handlers.fanout.slack_blocks import RENDERABLE_EVENTS, SlackMessage, render
from handlers.fanout.task_row import deserialize_item

SERVICE = "fanout"
logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", SERVICE), child=True)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", METRICS_NAMESPACE), service=SERVICE)

TERMINAL_SLACK_ERRORS = frozenset(
    {
        "channel_not_found", "not_in_channel", "is_archived", "message_not_found", "not_authed",
        "invalid_auth", "token_revoked", "token_expired", "account_inactive", "no_permission",
        "missing_scope", "restricted_action", "ekm_access_denied", "team_access_not_granted",
        "posting_to_general_channel_denied", "as_user_not_supported", "invalid_blocks",
        "invalid_blocks_format", "invalid_arguments", "msg_too_long", "too_many_attachments",
        # the thread cannot take a reply (gone, or the root is a message that cannot have one)
        "thread_not_found", "cannot_reply_to_message", "restricted_action_thread_locked",
        "restricted_action_read_only_channel", "restricted_action_non_threadable_channel",
        # the secret holds a token of the wrong type (a user or app-level token, not xoxb)
        "not_allowed_token_type",
        # chat.postMessage rejects the message metadata: the same metadata fails every retry
        "invalid_metadata_format", "invalid_metadata_schema", "metadata_too_large",
        "metadata_must_be_sent_from_app",
    }
)  # fmt: skip
# The cached token is stale or dead: forget it so the next record reads the secret again.
AUTH_ERRORS = frozenset({"not_authed", "invalid_auth", "token_revoked", "token_expired", "account_inactive"})
# Answers after which Slack may nevertheless have stored the message (Slack documents that
# fatal_error can follow a partial success); 5xx and transport errors are treated the same.
MAYBE_POSTED_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable"})

SLACK_TERMINAL_EVENTS = TERMINAL_EVENTS | {TASK_TIMED_OUT}
CREATED_MARKER = "slack_created_msg"
SESSION_MARKER = "slack_session_msg"
TERMINAL_MARKER = "slack_terminal_msg"
AGENT_ERROR_MARKER = "slack_agent_error_msg"
# The kind of marker per event type; ``marker_for`` names the marker of one event (agent errors
# get one per event id).
MARKERS: Mapping[str, str] = {
    TASK_CREATED: CREATED_MARKER,
    SESSION_STARTED: SESSION_MARKER,
    AGENT_ERROR: AGENT_ERROR_MARKER,
    **{event_type: TERMINAL_MARKER for event_type in SLACK_TERMINAL_EVENTS},
}
POSTED = "posted"


def marker_for(event: TaskEvent) -> str:
    """The dedup marker of ``event``: per kind of message, except agent errors (per event id)."""
    kind = MARKERS[event.event_type]
    return agent_error_marker(event.event_id) if kind == AGENT_ERROR_MARKER else kind


def agent_error_marker(event_id: str) -> str:
    return f"{AGENT_ERROR_MARKER}:{event_id}"


STATE_REACTIONS: Mapping[str, str] = {
    TASK_CREATED: "eyes",
    SESSION_STARTED: "hourglass_flowing_sand",
    TASK_COMPLETED: "white_check_mark",
    TASK_FAILED: "x",
    TASK_CANCELLED: "no_entry_sign",
    TASK_TIMED_OUT: "hourglass",
    TASK_STRANDED: "x",
}
REPLACED_REACTIONS: Mapping[str, tuple[str, ...]] = {
    SESSION_STARTED: ("eyes",),
    **{event_type: ("eyes", "hourglass_flowing_sand") for event_type in SLACK_TERMINAL_EVENTS},
}

# Slack message metadata on every post: how a takeover recognises an earlier attempt's message.
METADATA_EVENT_TYPE = "bgagent_task_notification"

# Timing. The lease bounds how long a crashed attempt blocks the marker; it must cover one post
# (checked right before posting) and is kept short because redeliveries wait for it.
DEFAULT_LEASE_SECONDS = 15.0
DEFAULT_HTTP_TIMEOUT_SECONDS = 5
DEFAULT_CLAIM_WAIT_SECONDS = 10.0
CLAIM_POLL_SECONDS = 0.25
# After an answer that leaves it open whether Slack stored the message, the lease is cut to
# this grace instead of ended at once: a request our client abandoned (timeout) may still be
# completing at Slack, and the takeover should find its message rather than race it.
MAYBE_POSTED_GRACE_MS = 2_000
# The lease must still cover the post (HTTP timeout) plus this margin when we start posting.
POST_MARGIN_MS = 2_000
# The lookup starts this long before the first claim: clocks of different containers differ.
LOOKUP_CLOCK_SKEW_MS = 60_000
LOOKUP_PAGE_SIZE = 200
LOOKUP_MAX_PAGES = 5


class SlackConfigurationError(Exception):
    """The Slack team's bot-token secret is missing, unreadable or malformed (broken deployment)."""


class SlackRetryableError(RetryableError):
    """A transient Slack failure after which our claim was already released or expired."""


class SlackDeadlineError(SlackRetryableError, DeadlineExceededError):
    """No time left to post; the claim was already ended (nothing was posted)."""


@dataclass(frozen=True)
class SlackTarget:
    team_id: str
    channel_id: str
    user_id: str | None
    thread_ts: str | None

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> SlackTarget:
        metadata = task.get("channel_metadata")
        if not isinstance(metadata, Mapping):
            raise MalformedRecordError(f"slack task {task.get('task_id')} has no channel_metadata map")
        missing = [name for name in ("slack_team_id", "slack_channel_id") if not _text(metadata.get(name))]
        if missing:
            raise MalformedRecordError(f"slack task {task.get('task_id')} lacks channel_metadata {', '.join(missing)}")
        return cls(
            team_id=str(metadata["slack_team_id"]),
            channel_id=str(metadata["slack_channel_id"]),
            user_id=_text(metadata.get("slack_user_id")),
            thread_ts=_text(metadata.get("slack_thread_ts")),
        )

    @property
    def post_channel(self) -> str:
        """DMs are addressed by user id when we know it; Slack resolves it to the DM channel."""
        if self.channel_id.startswith("D") and self.user_id:
            return self.user_id
        return self.channel_id


@dataclass(frozen=True)
class SlackFailure:
    code: str
    status: int | None
    terminal: bool
    maybe_posted: bool
    retry_after_seconds: float | None

    @classmethod
    def of(cls, exc: BaseException) -> SlackFailure | None:
        """Classify a slack-sdk call failure; None for errors that are not Slack/transport failures."""
        if isinstance(exc, SlackApiError):
            response = exc.response
            data = response.data if isinstance(response.data, dict) else {}
            status = int(response.status_code)
            error = data.get("error")
            # A non-JSON body (a gateway's 5xx page) yields a prose "error"; name it by status instead.
            code = error if isinstance(error, str) and error.isidentifier() else f"http_{status}"
            return cls(
                code=code,
                status=status,
                terminal=code in TERMINAL_SLACK_ERRORS,
                maybe_posted=status >= 500 or code in MAYBE_POSTED_ERRORS,
                retry_after_seconds=_retry_after(response.headers),
            )
        if isinstance(exc, (OSError, http.client.HTTPException)):  # URLError, timeouts, resets
            return cls(type(exc).__name__, None, terminal=False, maybe_posted=True, retry_after_seconds=None)
        return None


@dataclass(frozen=True)
class Claim:
    """This attempt's hold on one marker (the shared claim primitive's lease) plus what it saw."""

    lease: claims.Claim
    marker: str
    # The freshest whole view of the row's markers this attempt has: the row as the claim found
    # it when the claim asked for it (or failed), else the record-start read.
    channel_metadata: Mapping[str, Any]

    @property
    def takeover(self) -> bool:
        return self.lease.takeover

    @property
    def lease_until_ms(self) -> int:
        return self.lease.lease_until_ms

    @property
    def first_claimed_at_ms(self) -> int:
        return self.lease.first_claimed_at_ms


@dataclass(frozen=True)
class _TeamClients:
    poster: WebClient  # chat.postMessage: no built-in retries (see module docstring)
    helper: WebClient  # idempotent calls: one short retry on connection errors


@dataclass(frozen=True)
class _Posted:
    channel: str
    ts: str
    # For a message adopted from an earlier attempt: the event that posted it (it owns the
    # marker, so its reaction is the one to show). None for a message this attempt posted.
    owner_event_type: str | None = None
    owner_event_id: str | None = None


class SlackDispatcher:
    channel = SLACK

    def __init__(
        self,
        *,
        task_table_name: str,
        slack_secret_prefix: str,
        slack_api_url: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        http_timeout_seconds: int = DEFAULT_HTTP_TIMEOUT_SECONDS,
        claim_wait_seconds: float = DEFAULT_CLAIM_WAIT_SECONDS,
        claim_store: ClaimStore | None = None,
    ) -> None:
        if not task_table_name:
            raise ConfigurationError("SlackDispatcher: TASK_TABLE_NAME is required (markers live in the task table)")
        if not slack_secret_prefix:
            raise ConfigurationError("SlackDispatcher: SLACK_SECRET_PREFIX is required (bot tokens live there)")
        if lease_seconds * 1000 < http_timeout_seconds * 1000 + POST_MARGIN_MS:
            raise ConfigurationError("SlackDispatcher: the claim lease must outlast one post (HTTP timeout + margin)")
        self._table = task_table_name
        self._secret_prefix = slack_secret_prefix
        self._api_url = slack_api_url or WebClient.BASE_URL
        self._lease_ms = int(lease_seconds * 1000)
        self._post_budget_ms = http_timeout_seconds * 1000 + POST_MARGIN_MS
        self._http_timeout = http_timeout_seconds
        self._claim_wait_s = claim_wait_seconds
        self._claims = claim_store or ClaimStore()
        self._teams: dict[str, _TeamClients] = {}
        self._teams_lock = threading.Lock()
        self._secret_read_lock = threading.Lock()

    # -- entry point -------------------------------------------------------------------------

    def dispatch(self, event: TaskEvent, task: Mapping[str, Any], deadline: Deadline = NO_DEADLINE) -> Outcome:
        if task.get("channel_source") != SLACK:
            return Outcome.SKIPPED
        if event.event_type not in RENDERABLE_EVENTS:
            logger.info("No Slack renderer for this event type", extra=_log_fields(event))
            return Outcome.SKIPPED
        target = SlackTarget.from_task(task)
        marker = marker_for(event)
        known: Mapping[str, Any] = task["channel_metadata"]  # a map: from_task checked it
        if marker in known and _marker_state(known[marker]) == POSTED:
            return _already_posted(event, marker)
        message = render(event, task)
        deadline.require(self._post_budget_ms / 1000, "posting to Slack")  # before the claim: nothing written
        team = self._team_clients(target.team_id)  # before claiming: a broken secret leaves no claim behind
        # The created message's ts is the thread root of a task without slack_thread_ts; the
        # claim fetches the row when the record-start read does not show that ts yet.
        needs_created_ts = (
            target.thread_ts is None
            and event.event_type != TASK_CREATED
            and _posted_ts(known.get(CREATED_MARKER)) is None
        )
        claim = self._claim(event, marker, known, return_row=needs_created_ts, deadline=deadline)
        if isinstance(claim, Outcome):
            return claim
        try:
            return self._deliver(event, target, team, message, claim, deadline)
        except SlackRetryableError:
            raise  # the claim was already released or expired where the failure was classified
        except Exception:
            # Anything else (a task-table write after the post, a bug): we may have posted.
            # Cut the lease so the redelivery takes over within seconds and looks before posting.
            self._expire(event.task_id, claim)
            raise

    def _deliver(
        self,
        event: TaskEvent,
        target: SlackTarget,
        team: _TeamClients,
        message: SlackMessage,
        claim: Claim,
        deadline: Deadline,
    ) -> Outcome:
        thread_ts = target.thread_ts
        if thread_ts is None and event.event_type != TASK_CREATED:
            thread_ts = _posted_ts(claim.channel_metadata.get(CREATED_MARKER))
        posted = self._find_earlier_post(event, target, team, thread_ts, claim, deadline) if claim.takeover else None
        if posted is None:
            result = self._post(event, target, team, message, thread_ts, claim, deadline)
            if isinstance(result, Outcome):
                return result
            posted = result
        root = self._root(target, claim, event, posted)
        if root is not None:
            # An adopted message may be another event's (a terminal marker is shared: "timed out"
            # posted, then the attempt crashed, and task_failed took the marker over): the root
            # shows the state of the message that owns the marker, as in ``_lost_confirm``.
            self._update_reactions(event, posted.owner_event_type or event.event_type, team, root, deadline)
        if event.event_type in SLACK_TERMINAL_EVENTS:
            self._delete_intermediate_messages(event, team, claim, root, deadline)
        return self._confirm(event, team, claim, posted, root)

    # -- tokens ------------------------------------------------------------------------------

    def _team_clients(self, team_id: str) -> _TeamClients:
        with self._teams_lock:
            cached = self._teams.get(team_id)
        if cached is not None:
            return cached
        # One secret read per team per container, even when many tasks of a new team start at once.
        with self._secret_read_lock:
            with self._teams_lock:
                cached = self._teams.get(team_id)
            if cached is not None:
                return cached
            token = self._read_bot_token(team_id)
            clients = _TeamClients(
                poster=WebClient(token=token, base_url=self._api_url, timeout=self._http_timeout, retry_handlers=[]),
                helper=WebClient(
                    token=token,
                    base_url=self._api_url,
                    timeout=self._http_timeout,
                    retry_handlers=[ConnectionErrorRetryHandler(max_retry_count=1)],
                ),
            )
            with self._teams_lock:
                self._teams[team_id] = clients
            return clients

    def _forget_team(self, team_id: str) -> None:
        with self._teams_lock:
            self._teams.pop(team_id, None)

    def _read_bot_token(self, team_id: str) -> str:
        secret_id = f"{self._secret_prefix}{team_id}"
        try:
            response = client("secretsmanager").get_secret_value(SecretId=secret_id)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                raise self._secret_error("FANOUT_SLACK_SECRET_MISSING", team_id, secret_id, "secret not found") from exc
            if code in ("AccessDeniedException", "DecryptionFailure", "InvalidRequestException"):
                raise self._secret_error("FANOUT_SLACK_SECRET_UNREADABLE", team_id, secret_id, code) from exc
            raise RetryableError(f"reading Slack secret {secret_id} failed: {code}") from exc
        except BotoCoreError as exc:
            raise RetryableError(f"reading Slack secret {secret_id} failed: {exc}") from exc
        try:
            return parse_bot_token(response.get("SecretString"))
        except ValueError as exc:
            raise self._secret_error("FANOUT_SLACK_SECRET_MALFORMED", team_id, secret_id, str(exc)) from exc

    @staticmethod
    def _secret_error(error_id: str, team_id: str, secret_id: str, reason: str) -> SlackConfigurationError:
        logger.error(
            "Slack bot token unavailable; the record fails and ends in the on-failure destination if this persists",
            extra={"error_id": error_id, "team_id": team_id, "secret_id": secret_id, "reason": reason},
        )
        _count("slack_secret_error")
        return SlackConfigurationError(f"{error_id}: Slack secret {secret_id} for team {team_id}: {reason}")

    # -- marker: claim, confirm, release ---------------------------------------------------

    def _claim(
        self, event: TaskEvent, marker: str, known: Mapping[str, Any], *, return_row: bool, deadline: Deadline
    ) -> Claim | Outcome:
        """Own ``marker`` for this attempt, or learn that the message was already posted.

        ``known`` is ``channel_metadata`` as read at the start of the record: the claim's first
        write assumes what it shows (usually: no marker yet); a failed condition returns the
        row as it is, which decides the next step (``handlers.common.claims``). A won claim
        returns the old row only when ``return_row`` (see ``dispatch``). A claim held by another
        attempt is waited for (polling, up to ``claim_wait_seconds``) rather than failed at once:
        Lambda may redeliver a stream batch immediately, and a record that fails on every
        redelivery while a crashed attempt's lease runs out would spend its bounded retries and
        end in the on-failure destination.
        """
        location = self._location(event.task_id, marker)
        # Waiting ends in time to leave a post's budget before the invocation deadline.
        wait_until = deadline.until(self._claim_wait_s, reserve=self._post_budget_ms / 1000)
        seen = ClaimRecord.parse(known.get(marker))
        while True:
            try:
                result = self._claims.acquire(
                    location,
                    lease_ms=self._lease_ms,
                    attributes={"event_id": event.event_id, "event_type": event.event_type},
                    seen=seen,
                    return_item=return_row,
                )
            except ClaimTargetMissingError as exc:
                raise MalformedRecordError(f"task {event.task_id} disappeared from the task table") from exc
            except (ClientError, BotoCoreError, ClaimContentionError) as exc:
                raise RetryableError(f"claiming {marker} of task {event.task_id} failed: {exc}") from exc
            if result.item is not None:
                known = _channel_metadata_of(event.task_id, result.item)
            if result.status is Acquire.ACQUIRED:
                assert result.claim is not None
                if result.claim.takeover:
                    logger.warning("Taking over an expired Slack claim", extra=_log_fields(event, marker))
                return Claim(result.claim, marker, known)
            if result.status is Acquire.SETTLED:
                return _already_posted(event, marker)
            seen = self._wait_while_held(event, location, result.current, wait_until)

    def _wait_while_held(
        self, event: TaskEvent, location: ClaimLocation, held: ClaimRecord | None, deadline: float
    ) -> ClaimRecord | None:
        """Poll a live claim of another attempt until it settles or its lease runs out."""
        try:
            return self._claims.wait_while_held(location, held, deadline, CLAIM_POLL_SECONDS)
        except ClaimHeldError as exc:
            raise RetryableError(
                f"another attempt is posting {location.path[-1]} for task {event.task_id}",
                retry_after_seconds=exc.lease_left_ms / 1000,
            ) from exc
        except (ClientError, BotoCoreError) as exc:
            raise RetryableError(f"task table read failed for task {event.task_id}: {exc}") from exc

    def _location(self, task_id: str, marker: str) -> ClaimLocation:
        return ClaimLocation(self._table, {"task_id": {"S": task_id}}, ("channel_metadata", marker))

    def _confirm(
        self, event: TaskEvent, team: _TeamClients, claim: Claim, posted: _Posted, root: _Posted | None
    ) -> Outcome:
        attributes: dict[str, Any] = {"ts": posted.ts, "channel": posted.channel, "posted_at_ms": self._claims.now_ms()}
        if posted.owner_event_type is not None:
            # The marker records the event whose message it holds (what ``_lost_confirm`` of a
            # stale attempt compares its reaction with), and who adopted it.
            attributes["event_type"] = posted.owner_event_type
            if posted.owner_event_id is not None:
                attributes["event_id"] = posted.owner_event_id
            attributes["adopted_by_event_id"] = event.event_id
        try:
            result = self._claims.confirm(claim.lease, state=POSTED, attributes=attributes)
        except (ClientError, BotoCoreError) as exc:
            raise RetryableError(f"task table write failed for task {event.task_id}: {exc}") from exc
        if result.ok:
            logger.info("Slack message delivered", extra={**_log_fields(event, claim.marker), "ts": posted.ts})
            _count("slack_posted")
            return Outcome.DELIVERED
        return self._lost_confirm(event, team, claim, posted, root, result.current)

    def _lost_confirm(
        self,
        event: TaskEvent,
        team: _TeamClients,
        claim: Claim,
        posted: _Posted,
        root: _Posted | None,
        current: ClaimRecord | None,
    ) -> Outcome:
        """Our fencing token is no longer the marker's: someone took the claim over meanwhile.

        ``current`` is the marker as the failed confirm found it (no read of its own).
        """
        fields = {**_log_fields(event, claim.marker), "ts": posted.ts}
        if current is not None and current.state == POSTED:
            if current.attributes.get("ts") == posted.ts:
                logger.info("Another attempt confirmed our message", extra=fields)
                return Outcome.DELIVERED
            logger.info("Lost the conditional write: deleting the duplicate just posted", extra=fields)
            if self._delete(team, posted, "FANOUT_SLACK_DUP_DELETE_FAILED"):
                _count("slack_duplicate_deleted")
            else:
                _count("slack_duplicate_delete_failed")
            ours = STATE_REACTIONS.get(posted.owner_event_type or event.event_type)  # the one we set
            theirs = STATE_REACTIONS.get(str(current.attributes.get("event_type")))
            if root is not None and ours and ours != theirs:
                self._react(team.helper.reactions_remove, root, ours, "no_reaction", event)
            return Outcome.SKIPPED
        logger.error(
            "Slack claim was taken over while this attempt was posting; keeping the message (possible duplicate)",
            extra={**fields, "error_id": "FANOUT_SLACK_LEASE_OVERRUN"},
        )
        _count("slack_lease_overrun")
        return Outcome.DELIVERED

    def _release(self, task_id: str, claim: Claim) -> None:
        """Nothing was posted: give the claim back so the redelivery claims afresh."""
        self._best_effort(task_id, claim, lambda: self._claims.release(claim.lease))

    def _expire(self, task_id: str, claim: Claim, grace_ms: int = MAYBE_POSTED_GRACE_MS) -> None:
        """End our lease (after ``grace_ms``): the redelivery takes over and looks before posting."""
        self._best_effort(task_id, claim, lambda: self._claims.expire(claim.lease, grace_ms=grace_ms))

    @staticmethod
    def _best_effort(task_id: str, claim: Claim, write: Callable[[], WriteResult]) -> None:
        # Releasing or shortening a lease only saves the next attempt some waiting: the lease
        # expires on its own, so a failure here must not mask the error being handled.
        try:
            write()
        except (ClientError, BotoCoreError) as exc:
            logger.warning(
                "Could not update the Slack marker; its lease will expire on its own",
                extra={"task_id": task_id, "marker": claim.marker, "error": str(exc)},
            )

    def _read_markers(self, task_id: str, *markers: str) -> Mapping[str, Any]:
        """``markers`` as stored now (consistent read: markers written a moment ago are seen).

        Returns the part of ``channel_metadata`` holding those of them that exist. Only they
        are fetched (plus the key, which tells a vanished row from absent markers).
        """
        names = {f"#m{index}": name for index, name in enumerate(markers)}
        try:
            response = client("dynamodb").get_item(
                TableName=self._table,
                Key={"task_id": {"S": task_id}},
                ConsistentRead=True,
                ProjectionExpression=", ".join(["task_id", *(f"#cm.{placeholder}" for placeholder in names)]),
                ExpressionAttributeNames={"#cm": "channel_metadata", **names},
            )
        except (ClientError, BotoCoreError) as exc:
            raise RetryableError(f"task table read failed for task {task_id}: {exc}") from exc
        item = response.get("Item")
        if not item:
            raise MalformedRecordError(f"task {task_id} disappeared from the task table during Slack dispatch")
        metadata = deserialize_item(item).get("channel_metadata")
        return metadata if isinstance(metadata, Mapping) else {}

    # -- Slack calls -------------------------------------------------------------------------

    def _post(
        self,
        event: TaskEvent,
        target: SlackTarget,
        team: _TeamClients,
        message: SlackMessage,
        thread_ts: str | None,
        claim: Claim,
        deadline: Deadline,
    ) -> _Posted | Outcome:
        if not deadline.allows(self._post_budget_ms / 1000):
            self._expire(event.task_id, claim, grace_ms=0)  # nothing posted; the next attempt still looks first
            raise SlackDeadlineError(f"too little of the invocation left to post for task {event.task_id}")
        if claim.lease_until_ms - self._claims.now_ms() < self._post_budget_ms:
            # A post started now could still be running when another attempt takes over.
            # Nothing was posted by us; the lease is ended (not released) so that the next
            # attempt still looks for an earlier attempt's message first.
            self._expire(event.task_id, claim, grace_ms=0)
            raise SlackRetryableError(f"claim lease of task {event.task_id} too short to post safely")
        try:
            response = team.poster.chat_postMessage(
                channel=target.post_channel,
                text=message.text,
                blocks=message.blocks,
                thread_ts=thread_ts,
                unfurl_links=False,
                unfurl_media=False,
                metadata={
                    "event_type": METADATA_EVENT_TYPE,
                    "event_payload": {
                        "task_id": event.task_id,
                        "marker": claim.marker,
                        "event_id": event.event_id,
                        "event_type": event.event_type,
                    },
                },
            )
        except Exception as exc:
            failure = SlackFailure.of(exc)
            if failure is None:
                raise
            if failure.maybe_posted:
                self._expire(event.task_id, claim)
            else:
                self._release(event.task_id, claim)
            if failure.terminal:
                if failure.code in AUTH_ERRORS:
                    self._forget_team(target.team_id)
                logger.warning(
                    "Slack rejected the message for good; dropped for this channel",
                    extra={**_log_fields(event, claim.marker), "slack_error": failure.code, "status": failure.status},
                )
                _count("slack_terminal_api_error")
                return Outcome.TERMINAL_FAILURE
            logger.warning(
                "Slack post failed transiently; the record will be redelivered",
                extra={
                    **_log_fields(event, claim.marker),
                    "slack_error": failure.code,
                    "status": failure.status,
                    "retry_after_seconds": failure.retry_after_seconds,
                    "maybe_posted": failure.maybe_posted,
                },
            )
            _count("slack_retryable_api_error")
            raise SlackRetryableError(
                f"Slack chat.postMessage failed: {failure.code}", retry_after_seconds=failure.retry_after_seconds
            ) from exc
        return _Posted(channel=str(response["channel"]), ts=str(response["ts"]))

    def _find_earlier_post(
        self,
        event: TaskEvent,
        target: SlackTarget,
        team: _TeamClients,
        thread_ts: str | None,
        claim: Claim,
        deadline: Deadline,
    ) -> _Posted | None:
        """The message an earlier attempt posted for this marker, recognised by its metadata."""
        oldest = f"{(claim.first_claimed_at_ms - LOOKUP_CLOCK_SKEW_MS) / 1000:.6f}"
        deadline.require(self._http_timeout, "the Slack lookup")
        try:
            if thread_ts is not None:
                response = team.helper.conversations_replies(
                    channel=target.channel_id,
                    ts=thread_ts,
                    oldest=oldest,
                    include_all_metadata=True,
                    limit=LOOKUP_PAGE_SIZE,
                )
            else:
                response = team.helper.conversations_history(
                    channel=target.channel_id, oldest=oldest, include_all_metadata=True, limit=LOOKUP_PAGE_SIZE
                )
            for page_number, page in enumerate(response, start=1):
                for item in page.get("messages") or []:
                    if _is_our_post(item, event.task_id, claim.marker):
                        owner_type, owner_id = _owner_of(item, claim)
                        logger.info(
                            "Found the earlier attempt's message; adopting it instead of posting again",
                            extra={
                                **_log_fields(event, claim.marker),
                                "ts": item["ts"],
                                "owner_event_type": owner_type,
                            },
                        )
                        _count("slack_earlier_post_adopted")
                        return _Posted(
                            channel=target.channel_id,
                            ts=str(item["ts"]),
                            owner_event_type=owner_type,
                            owner_event_id=owner_id,
                        )
                if page_number >= LOOKUP_MAX_PAGES:
                    break
                if (page.get("response_metadata") or {}).get("next_cursor"):
                    # Not finding the message for lack of time would post it twice: stop instead.
                    deadline.require(self._http_timeout, "the next page of the Slack lookup")
            return None
        except Exception as exc:
            failure = SlackFailure.of(exc)
            if failure is None:
                raise
            if failure.terminal:  # thread_not_found among them
                logger.warning(
                    "Cannot look for an earlier attempt's message; posting again may duplicate it",
                    extra={
                        **_log_fields(event, claim.marker),
                        "error_id": "FANOUT_SLACK_LOOKUP_UNAVAILABLE",
                        "slack_error": failure.code,
                    },
                )
                _count("slack_lookup_unavailable")
                return None
            self._expire(event.task_id, claim, grace_ms=0)  # we posted nothing; the next attempt looks again
            logger.warning(
                "Slack lookup failed transiently; the record will be redelivered",
                extra={
                    **_log_fields(event, claim.marker),
                    "slack_error": failure.code,
                    "retry_after_seconds": failure.retry_after_seconds,
                },
            )
            raise SlackRetryableError(
                f"Slack lookup failed: {failure.code}", retry_after_seconds=failure.retry_after_seconds
            ) from exc

    def _root(self, target: SlackTarget, claim: Claim, event: TaskEvent, posted: _Posted) -> _Posted | None:
        """The message that carries the state reactions: the @mention, else our task_created message."""
        if target.thread_ts is not None:
            return _Posted(channel=target.channel_id, ts=target.thread_ts)
        if event.event_type == TASK_CREATED:
            return posted
        created = claim.channel_metadata.get(CREATED_MARKER)
        ts = _posted_ts(created)
        return _Posted(channel=str(created["channel"]), ts=ts) if ts is not None and created is not None else None

    def _update_reactions(
        self, event: TaskEvent, state: str, team: _TeamClients, root: _Posted, deadline: Deadline
    ) -> None:
        """Show the state ``state`` (an event type) on the root message."""
        name = STATE_REACTIONS.get(state)
        if name is None:
            return
        deadline.require(self._http_timeout, "a Slack reaction")
        self._react(team.helper.reactions_add, root, name, "already_reacted", event)
        for previous in REPLACED_REACTIONS.get(state, ()):
            deadline.require(self._http_timeout, "a Slack reaction")
            self._react(team.helper.reactions_remove, root, previous, "no_reaction", event)

    @staticmethod
    def _react(call: Callable[..., SlackResponse], root: _Posted, name: str, harmless: str, event: TaskEvent) -> None:
        try:
            call(channel=root.channel, timestamp=root.ts, name=name)
        except Exception as exc:
            failure = SlackFailure.of(exc)
            if failure is None:
                raise
            if failure.code == harmless:
                return
            logger.error(
                "Slack reaction failed; the notification itself was delivered",
                extra={
                    **_log_fields(event),
                    "error_id": "FANOUT_SLACK_REACTION_FAILED",
                    "reaction": name,
                    "slack_error": failure.code,
                    "retry_after_seconds": failure.retry_after_seconds,
                },
            )
            _count("slack_reaction_failed")

    def _delete_intermediate_messages(
        self, event: TaskEvent, team: _TeamClients, claim: Claim, root: _Posted | None, deadline: Deadline
    ) -> None:
        """Remove the created/session messages once the task is over.

        Reads the row again (consistently; the two markers only): the snapshot taken when the
        record started can predate the write of the session/created ts by a previous batch or
        an overlapping invocation. The thread root is never deleted (it holds the thread and
        the reactions). If the re-read fails, the freshest earlier view is used (the claim's
        row, else the record-start read); the confirm that follows then most likely fails too,
        and the redelivery takes over and runs this cleanup again.

        The re-read is skipped when the earlier view already shows both messages posted: a
        posted marker is final (nothing rewrites or removes it), so a fresh read could only
        show the same -- the usual case of a terminal event that follows its task's created and
        session events (one DynamoDB call less per terminal notification).
        """
        known = claim.channel_metadata
        if all(_posted_ts(known.get(marker)) is not None for marker in (SESSION_MARKER, CREATED_MARKER)):
            metadata = known
        else:
            metadata = self._reread_markers(event, known)
        for marker in (SESSION_MARKER, CREATED_MARKER):
            record = metadata.get(marker)
            ts = _posted_ts(record)
            if ts is None or record is None or (root is not None and root.ts == ts):
                continue
            deadline.require(self._http_timeout, "deleting an intermediate Slack message")
            if not self._delete(
                team, _Posted(channel=str(record["channel"]), ts=ts), "FANOUT_SLACK_CLEANUP_DELETE_FAILED"
            ):
                _count("slack_cleanup_delete_failed")

    def _reread_markers(self, event: TaskEvent, known: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            return self._read_markers(event.task_id, SESSION_MARKER, CREATED_MARKER)
        except RetryableError as exc:
            logger.warning(
                "Re-reading the task row for cleanup failed; using the earlier read",
                extra={**_log_fields(event), "error": str(exc)},
            )
            return known

    @staticmethod
    def _delete(team: _TeamClients, message: _Posted, error_id: str) -> bool:
        """Delete one of our messages; message_not_found means it is already gone (success)."""
        try:
            team.helper.chat_delete(channel=message.channel, ts=message.ts)
            return True
        except Exception as exc:
            failure = SlackFailure.of(exc)
            if failure is None:
                raise
            if failure.code == "message_not_found":
                return True
            logger.error(
                "Deleting a Slack message failed; it stays in the channel",
                extra={
                    "error_id": error_id,
                    "channel": message.channel,
                    "ts": message.ts,
                    "slack_error": failure.code,
                    "retry_after_seconds": failure.retry_after_seconds,
                },
            )
            return False


def parse_bot_token(secret_string: str | None) -> str:
    """The bot token from a SecretString: the token itself, or JSON ``{"token": ...}`` or
    ``{"bot_token": ...}`` (``secret_format``); it must look like a Slack token."""
    raw = token_from_secret(secret_string)
    if not raw.startswith("xox") or any(character.isspace() for character in raw):
        raise ValueError("the value is not a Slack token (expected xoxb-...)")
    return raw


def _channel_metadata_of(task_id: str, item: Mapping[str, Any]) -> Mapping[str, Any]:
    """``channel_metadata`` of the row as a claim write returned it (plain values)."""
    metadata = item.get("channel_metadata")
    if not isinstance(metadata, Mapping):
        raise MalformedRecordError(f"task {task_id} has no channel_metadata map")
    return metadata


def _already_posted(event: TaskEvent, marker: str) -> Outcome:
    logger.info("Slack message already posted for this marker; skipping", extra=_log_fields(event, marker))
    _count("slack_deduplicated")
    return Outcome.SKIPPED


def _marker_state(value: Any) -> str:
    # Anything that is not a map with a known state (e.g. a legacy ``true``) counts as posted:
    # when in doubt, a skipped notification is recoverable from the logs, a duplicate is not.
    # A released marker (an attempt that posted nothing gave it back) is claimable again.
    if isinstance(value, Mapping) and value.get("state") in (PENDING, RELEASED):
        return str(value["state"])
    return POSTED


def _posted_ts(value: Any) -> str | None:
    if isinstance(value, Mapping) and value.get("state") == POSTED and value.get("ts") and value.get("channel"):
        return str(value["ts"])
    return None


def _is_our_post(item: Mapping[str, Any], task_id: str, marker: str) -> bool:
    metadata = item.get("metadata") or {}
    payload = metadata.get("event_payload") or {}
    return (
        metadata.get("event_type") == METADATA_EVENT_TYPE
        and payload.get("task_id") == task_id
        and payload.get("marker") == marker
        and bool(item.get("ts"))
    )


def _owner_of(item: Mapping[str, Any], claim: Claim) -> tuple[str | None, str | None]:
    """The event (type, id) that posted an adopted message.

    From the message's own metadata (every post names its event); a message posted before the
    metadata carried the event type falls back to the claim record taken over, which names the
    event of the attempt that crashed (right unless a takeover crashed in between).
    """
    payload = (item.get("metadata") or {}).get("event_payload") or {}
    event_type, event_id = _text(payload.get("event_type")), _text(payload.get("event_id"))
    if event_type is None and claim.lease.previous is not None:
        previous = claim.lease.previous.attributes
        event_type, event_id = _text(previous.get("event_type")), _text(previous.get("event_id"))
    return event_type, event_id


def _retry_after(headers: Mapping[str, Any] | None) -> float | None:
    for name, value in (headers or {}).items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) and value else value
            try:
                return float(raw)
            except (TypeError, ValueError):
                return None
    return None


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _log_fields(event: TaskEvent, marker: str | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "channel": SLACK,
        "task_id": event.task_id,
        "event_id": event.event_id,
        "event_type": event.event_type,
    }
    if marker:
        fields["marker"] = marker
    return fields


def _count(name: str) -> None:
    add_count(metrics, name)  # under the one lock of Powertools' shared metric set
