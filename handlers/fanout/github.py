"""GitHub dispatcher: one edit-in-place issue/PR comment per task.

The comment carries a hidden marker ``<!-- bgagent-task:<task_id> -->`` and always shows the
task's latest notified state (terminal events and ``pr_created``). Its id is stored in the task
row at ``channel_metadata.github_comment_id``.

- no stored id -> adopt the issue's comment that carries our marker, if any, else create one;
  then save the id conditionally (only if no id is stored yet, or it is the same id);
- stored id -> edit it; 404 (someone deleted it) -> create again and save the new id
  conditionally on the old id still being the stored one;
- 401 -> drop the cached token, read the secret again, retry once (token rotation); a second
  401 fails the record (``RetryableError``): a rejected credential is a broken deployment, and
  the DLQ keeps the notification until the secret is fixed, where a terminal drop would lose it;
- 429, 5xx, timeouts, and a 403 that is a rate limit -> ``RetryableError`` with the Retry-After
  (or X-RateLimit-Reset) delay when GitHub gives one. GitHub answers its primary and secondary
  rate limits with 403 too, and says so in the headers (``x-ratelimit-remaining: 0`` or a
  ``retry-after``) or, for a secondary limit that carries neither, in the message ("You have
  exceeded a secondary rate limit"); only those 403s are retried;
- any other 4xx (422 body rejected, 404 on the issue itself, 410 gone, a 403 without rate-limit
  headers: the token lacks the permission, the issue is locked...) ->
  ``TERMINAL_FAILURE``, logged: no retry can make GitHub accept it.

The comment only moves forward. A redelivery starts from the lowest failed sequence number of
the batch, so it re-runs events of *other* tasks that had already succeeded -- and a bisected or
shorter redelivery can end with a task's older event (``pr_created`` after ``task_completed``).
So the row keeps the last applied event, ``channel_metadata.github_applied_sequence``, and an
event older than it is ``SKIPPED`` without any GitHub call.

- Ordered by the stream's sequence number, not the event timestamp. The sequence number is
  assigned by DynamoDB as it commits each write, one total order per shard, and every event of
  a task shares its partition key: it is the order the stream delivers, our processor keeps
  per task, and redelivery resumes from. (Across a shard roll-over -- every few hours, or a
  split -- Lambda reads the child after its parent; we rely on the child's numbers following
  the parent's, as DynamoDB issues them; the API documents order only within a shard.) The
  ``timestamp`` is the producer's clock: events of one second carry the same value (a tie
  cannot tell a replay from the next event), precision varies ("...:00Z" sorts after
  "...:00.5Z"), and two writers' clocks disagree. The number is stored as a 40-digit
  zero-padded string (the API's maximum length; more digits than a DynamoDB number keeps
  exactly), so the string comparison in the condition is the numeric one. A producer that
  rewrites an old event row (a MODIFY) gets a new, higher sequence number: the rewrite is
  shown, as the latest write to the stream.
- Claim, then edit: a conditional update moves ``github_applied_sequence`` forward
  (``<=`` the record's number: a redelivery of the *same* event passes and edits again); a
  failed condition means a newer event was applied -> ``SKIPPED``. When the snapshot read at the
  start of the record already shows a newer one, even that write is spared. Only then is the
  comment edited (or created). Windows:
  - crash (or a retryable GitHub error) between the claim and the edit: the row is ahead of the
    comment; the record is redelivered, its claim passes (equal), and the edit is made then.
    Until then the comment shows the previous state, never an older one.
  - a terminal GitHub error after the claim (422, 403 without a rate limit): the row stays ahead
    and the comment keeps the previous state until the task's next event edits it.
  - two invocations of one task overlapping (a timed-out predecessor still running): both
    claims may pass in order and their PATCHes still land out of order; the comment then shows
    the older state until the task's next event. Closing this would need a lease around the
    HTTP call (``handlers/common/claims.py``) for a window Lambda's timeout kill leaves almost
    empty.
  (Edit first and record afterwards would let a crash after the edit leave the row *behind* the
  comment, and a replay of an event in between would pass its check and roll the comment back.)

Idempotency windows of the comment itself (a redelivery re-runs everything):
- crash after *create* but before the id is saved: the retry finds no id, lists the issue's
  comments and adopts the one with our marker -> still one comment. (The only residual window
  is GitHub's list lagging behind its own create by more than Lambda's redelivery delay.)
- two invocations racing on one task (only after a timed-out invocation overlaps its retry):
  both may create; the conditional save lets one id win, the loser deletes the comment it
  created and fails retryably, so its redelivery edits the winner's comment.
- crash after an *edit*: the retry edits again with the same body -- harmless.

Deadline: every GitHub request starts only when ``MIN_REQUEST_SECONDS`` of the invocation are
left, and its timeout is cut to what is left; the listing stops between pages. A request that
does not fit raises ``DeadlineExceededError`` (retryable) before it is sent -- before the
forward claim (nothing written), while listing (nothing created: the redelivery lists again),
or between the claim and the edit (the first window above: the redelivery edits). A create
cut off by its shortened timeout is the first idempotency window below (the retry adopts it).

Tokens: the repo table's ``github_token_secret_arn`` for the task's repo when present, else the
stack-wide secret. A repo secret is used only when its ARN starts with the configured
``repo_secret_arn_prefix`` (the construct's ``github_repo_secret_prefix``: exactly what the role
may read, in this account and region) or is the stack-wide secret itself; any other -- or any at
all when no prefix is configured -- is refused before it is read: ``TERMINAL_FAILURE`` for this
channel with an error line naming the repo and the secret (``FANOUT_GITHUB_REPO_SECRET_REFUSED``),
because every retry would meet AccessDenied and end in the DLQ. SecretString is the token itself
or JSON with a ``token`` or ``bot_token`` field (``secret_format``, the same as Slack's). Tokens are
cached per container per secret; repo rows for
``REPO_ROW_TTL_SECONDS``. Each is read by one worker at a time, so a cold container whose batch
starts many tasks at once reads a secret (and a repo row) once, not once per task; after a 401
only the token that failed is dropped.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.fanout.deadline import NO_DEADLINE, Deadline
from handlers.fanout.model import (
    MalformedRecordError,
    Outcome,
    RetryableError,
    TaskEvent,
)
from handlers.fanout.router import TaskNotFoundError
from handlers.fanout.routing import (
    GITHUB,
    PR_CREATED,
    TASK_CANCELLED,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_STRANDED,
)
from handlers.fanout.secret_format import token_from_secret
from handlers.fanout.settings import child_logger
from handlers.fanout.task_row import (
    channel_metadata,
    deserialize_item,
    ensure_channel_metadata,
    is_conditional_check_failure,
)

logger = child_logger()

COMMENT_ID_FIELD = "github_comment_id"
APPLIED_SEQUENCE_FIELD = "github_applied_sequence"
SEQUENCE_WIDTH = 40  # DynamoDB Streams sequence numbers are 21 to 40 digits
REPO_SECRET_REFUSED = "FANOUT_GITHUB_REPO_SECRET_REFUSED"
REQUEST_TIMEOUT_SECONDS = 8.0
REPO_ROW_TTL_SECONDS = 300.0
MIN_REQUEST_SECONDS = 1.0  # a request is not started with less of the invocation left
MAX_LIST_PAGES = 20  # 2,000 comments: beyond that we stop looking for our marker and create
API_VERSION = "2022-11-28"
USER_AGENT = "bgagent-fanout"

T = TypeVar("T")


def marker(task_id: str) -> str:
    return f"<!-- bgagent-task:{task_id} -->"


# ---------------------------------------------------------------------------------------------
# Rendering: one renderer per event type this channel can show. RENDERABLE_EVENTS is what the
# drift test checks the channel's subscription against.


def _link(metadata: Mapping[str, Any], key: str, label: str) -> str | None:
    url = metadata.get(key)
    return f"[{label}]({url})" if isinstance(url, str) and url.startswith("https://") else None


def _quote(text: object, limit: int = 500) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return None
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "\n".join("> " + line for line in text.splitlines())


def _render_completed(event: TaskEvent, task: Mapping[str, Any]) -> list[str | None]:
    return ["✅ **Completed**", _link(event.metadata, "pr_url", "View pull request")]


def _render_failed(event: TaskEvent, task: Mapping[str, Any]) -> list[str | None]:
    error = event.metadata.get("error_message") or event.metadata.get("message_preview")
    return ["❌ **Failed**", _quote(error)]


def _render_cancelled(event: TaskEvent, task: Mapping[str, Any]) -> list[str | None]:
    return ["🚫 **Cancelled**"]


def _render_stranded(event: TaskEvent, task: Mapping[str, Any]) -> list[str | None]:
    prior = event.metadata.get("prior_status")
    suffix = f" (last status: {prior})" if isinstance(prior, str) and prior else ""
    return [f"⚠️ **Stranded**{suffix}: the agent stopped reporting progress."]


def _render_pr_created(event: TaskEvent, task: Mapping[str, Any]) -> list[str | None]:
    return ["🔀 **Pull request opened**", _link(event.metadata, "pr_url", "View pull request")]


RENDERERS: Mapping[str, Callable[[TaskEvent, Mapping[str, Any]], list[str | None]]] = {
    TASK_COMPLETED: _render_completed,
    TASK_FAILED: _render_failed,
    TASK_CANCELLED: _render_cancelled,
    TASK_STRANDED: _render_stranded,
    PR_CREATED: _render_pr_created,
}
RENDERABLE_EVENTS: frozenset[str] = frozenset(RENDERERS)


def render_comment(event: TaskEvent, task: Mapping[str, Any]) -> str:
    lines = [marker(event.task_id), f"**Background agent task** `{event.task_id}`", ""]
    lines += [line for line in RENDERERS[event.event_type](event, task) if line]
    lines += ["", f"<sub>Updated {event.timestamp} · event `{event.event_id}` ({event.event_type})</sub>"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# REST client (stdlib only: nothing else is bundled for this).


class GitHubHttpError(Exception):
    def __init__(
        self, status: int, message: str, retry_after_seconds: float | None = None, *, rate_limited: bool = False
    ) -> None:
        super().__init__(f"GitHub answered {status}: {message}")
        self.status = status
        self.retry_after_seconds = retry_after_seconds
        # The headers say this is a rate limit (x-ratelimit-remaining: 0, or a retry-after).
        self.rate_limited = rate_limited


@dataclass(frozen=True)
class GitHubResponse:
    status: int
    body: Any
    headers: Mapping[str, str]


class GitHubClient:
    def __init__(self, api_url: str, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self._api_url = api_url.rstrip("/")
        self._timeout = timeout

    def request(
        self,
        method: str,
        path_or_url: str,
        token: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> GitHubResponse:
        url = path_or_url if path_or_url.startswith(("http://", "https://")) else self._api_url + path_or_url
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": USER_AGENT,
                **({"Content-Type": "application/json"} if data is not None else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout if timeout is None else timeout) as response:
                raw = response.read()
                return GitHubResponse(response.status, json.loads(raw) if raw else None, dict(response.headers))
        except urllib.error.HTTPError as exc:
            detail = _error_message(exc)
            raise GitHubHttpError(
                exc.code, detail, _retry_after(exc.headers), rate_limited=_is_rate_limited(exc.headers, detail)
            ) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise RetryableError(f"GitHub {method} {url} did not answer: {exc}") from exc


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read() or b"{}")
    except ValueError:
        return exc.reason or ""
    return str(payload.get("message", exc.reason)) if isinstance(payload, dict) else str(exc.reason)


def _is_rate_limited(headers: Any, message: str) -> bool:
    """GitHub's documented rate-limit signals on a 403/429: no requests left, a retry-after, or
    (a secondary rate limit may come with neither header) a message that says so."""
    if "secondary rate limit" in message.lower():
        return True
    if headers is None:
        return False
    remaining = headers.get("X-RateLimit-Remaining")
    return bool(headers.get("Retry-After")) or (remaining is not None and remaining.strip() == "0")


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    retry_after = headers.get("Retry-After")
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            try:
                parsed = email.utils.parsedate_to_datetime(retry_after)
            except (TypeError, ValueError):
                return None
            return max(0.0, parsed.timestamp() - time.time())
    if headers.get("X-RateLimit-Remaining") == "0" and headers.get("X-RateLimit-Reset"):
        try:
            return max(0.0, float(headers["X-RateLimit-Reset"]) - time.time())
        except ValueError:
            return None
    return None


_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


# ---------------------------------------------------------------------------------------------


class _Unauthorized(Exception):
    pass


class _TerminalGitHubError(Exception):
    pass


@dataclass(frozen=True)
class _Target:
    owner_repo: str
    number: int

    @property
    def comments_path(self) -> str:
        return f"/repos/{self.owner_repo}/issues/{self.number}/comments"

    def comment_path(self, comment_id: int) -> str:
        return f"/repos/{self.owner_repo}/issues/comments/{comment_id}"


class GitHubDispatcher:
    channel = GITHUB

    def __init__(
        self,
        *,
        task_table_name: str,
        default_token_secret_arn: str,
        repo_table_name: str | None = None,
        repo_secret_arn_prefix: str | None = None,
        api_url: str = "https://api.github.com",
    ) -> None:
        self._task_table = task_table_name
        self._default_secret = default_token_secret_arn
        self._repo_table = repo_table_name
        self._repo_secret_prefix = repo_secret_arn_prefix
        self._api = GitHubClient(api_url)
        self._tokens: dict[str, str] = {}
        self._repo_secrets: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()  # guards the two caches and the map of fetch locks
        self._fetch_locks: dict[str, threading.Lock] = {}

    def dispatch(self, event: TaskEvent, task: Mapping[str, Any], deadline: Deadline = NO_DEADLINE) -> Outcome:
        if event.event_type not in RENDERERS:
            return Outcome.SKIPPED
        target = _target(task)
        if target is None:
            return Outcome.SKIPPED  # the task has no PR or issue to comment on
        body = render_comment(event, task)
        secret_arn = self._secret_arn_for(target.owner_repo)
        refusal = self._refusal(secret_arn)
        if refusal is not None:
            logger.error(
                "The repo row names a GitHub token secret this function may not read; not commenting",
                extra={
                    "channel": GITHUB,
                    "repo": target.owner_repo,
                    "secret_arn": secret_arn,
                    "reason": refusal,
                    "error_id": REPO_SECRET_REFUSED,
                },
            )
            return Outcome.TERMINAL_FAILURE
        deadline.require(MIN_REQUEST_SECONDS, "the GitHub comment")  # before the claim: nothing written yet
        if not self._claim_forward_move(event, task):
            return Outcome.SKIPPED
        try:
            return self._with_token(secret_arn, lambda token: self._upsert_comment(token, target, task, body, deadline))
        except _TerminalGitHubError as exc:
            logger.error(
                "GitHub rejected the comment; not retrying",
                extra={
                    "channel": GITHUB,
                    "repo": target.owner_repo,
                    "number": target.number,
                    "error": str(exc),
                },
            )
            return Outcome.TERMINAL_FAILURE

    # -- forward only -----------------------------------------------------------------------

    def _claim_forward_move(self, event: TaskEvent, task: Mapping[str, Any]) -> bool:
        """Move ``github_applied_sequence`` to this event unless a newer one is there already."""
        sequence = _ordering_key(event)
        applied = channel_metadata(task).get(APPLIED_SEQUENCE_FIELD)
        if isinstance(applied, str) and applied > sequence:  # the row only moves forward: no write needed
            self._log_older(event, applied)
            return False
        ensure_channel_metadata(self._task_table, task)
        try:
            client("dynamodb").update_item(
                TableName=self._task_table,
                Key={"task_id": {"S": str(task["task_id"])}},
                UpdateExpression="SET #cm.#seq = :seq",
                ConditionExpression=(
                    "attribute_exists(task_id) AND (attribute_not_exists(#cm.#seq) OR #cm.#seq <= :seq)"
                ),
                ExpressionAttributeNames={"#cm": "channel_metadata", "#seq": APPLIED_SEQUENCE_FIELD},
                ExpressionAttributeValues={":seq": {"S": sequence}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_conditional_check_failure(exc):
                raise
            item = exc.response.get("Item")
            if not item:
                raise TaskNotFoundError(f"task {task['task_id']} disappeared before its comment was edited") from exc
            self._log_older(event, channel_metadata(deserialize_item(item)).get(APPLIED_SEQUENCE_FIELD))
            return False
        return True

    @staticmethod
    def _log_older(event: TaskEvent, applied: object) -> None:
        logger.info(
            "The comment already shows a newer event; not editing it back",
            extra={"channel": GITHUB, "applied_sequence": applied, "sequence": event.sequence_number},
        )

    # -- the comment ------------------------------------------------------------------------

    def _upsert_comment(
        self, token: str, target: _Target, task: Mapping[str, Any], body: str, deadline: Deadline
    ) -> Outcome:
        stored_id = _comment_id(channel_metadata(task).get(COMMENT_ID_FIELD))
        if stored_id is not None:
            try:
                self._call(token, "PATCH", target.comment_path(stored_id), {"body": body}, deadline)
                return Outcome.DELIVERED
            except GitHubHttpError as exc:
                if exc.status != 404:
                    raise self._classify(exc) from exc
                logger.warning(
                    "Stored GitHub comment is gone; creating a new one",
                    extra={
                        "channel": GITHUB,
                        "comment_id": stored_id,
                        "repo": target.owner_repo,
                    },
                )

        adopted = self._find_marked_comment(token, target, str(task["task_id"]), deadline)
        if adopted is not None:
            self._call_classified(token, "PATCH", target.comment_path(adopted), {"body": body}, deadline)
            new_id, created = adopted, False
        else:
            response = self._call_classified(token, "POST", target.comments_path, {"body": body}, deadline)
            new_id, created = int(response.body["id"]), True
        self._save_comment_id(token, target, task, new_id, previous_id=stored_id, created=created, deadline=deadline)
        return Outcome.DELIVERED

    def _find_marked_comment(self, token: str, target: _Target, task_id: str, deadline: Deadline) -> int | None:
        wanted = marker(task_id)
        url: str | None = f"{target.comments_path}?per_page=100"
        for _ in range(MAX_LIST_PAGES):
            if url is None:
                return None
            response = self._call_classified(token, "GET", url, None, deadline)
            for comment in response.body or []:
                if isinstance(comment, dict) and wanted in str(comment.get("body", "")):
                    return int(comment["id"])
            match = _NEXT_LINK.search(response.headers.get("Link", "") or "")
            url = match.group(1) if match else None
        logger.warning(
            "Stopped looking for the marked comment after the page limit",
            extra={
                "channel": GITHUB,
                "repo": target.owner_repo,
                "number": target.number,
                "pages": MAX_LIST_PAGES,
            },
        )
        return None

    def _save_comment_id(
        self,
        token: str,
        target: _Target,
        task: Mapping[str, Any],
        new_id: int,
        *,
        previous_id: int | None,
        created: bool,
        deadline: Deadline,
    ) -> None:
        ensure_channel_metadata(self._task_table, task)
        if previous_id is None:
            condition = "attribute_exists(task_id) AND (attribute_not_exists(#cm.#cid) OR #cm.#cid = :new)"
            values = {":new": {"N": str(new_id)}}
        else:
            condition = "attribute_exists(task_id) AND (#cm.#cid = :old OR #cm.#cid = :new)"
            values = {":new": {"N": str(new_id)}, ":old": {"N": str(previous_id)}}
        try:
            client("dynamodb").update_item(
                TableName=self._task_table,
                Key={"task_id": {"S": str(task["task_id"])}},
                UpdateExpression="SET #cm.#cid = :new",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#cm": "channel_metadata", "#cid": COMMENT_ID_FIELD},
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_conditional_check_failure(exc):
                raise
            # Another invocation stored a different comment for this task (or the task row is
            # gone). Ours is the duplicate: remove it if we created it; a redelivery then edits
            # the stored one.
            if created:
                self._delete_quietly(token, target, new_id, deadline)
            if not exc.response.get("Item"):
                raise TaskNotFoundError(f"task {task['task_id']} disappeared while its comment was saved") from exc
            raise RetryableError(
                f"comment id of task {task['task_id']} changed concurrently; redelivery will edit the stored one"
            ) from exc

    def _delete_quietly(self, token: str, target: _Target, comment_id: int, deadline: Deadline) -> None:
        try:
            self._call(token, "DELETE", target.comment_path(comment_id), None, deadline)
        except (GitHubHttpError, RetryableError) as exc:
            if isinstance(exc, GitHubHttpError) and exc.status == 404:
                return
            logger.error(
                "Could not delete a duplicate GitHub comment; it stays visible",
                extra={
                    "channel": GITHUB,
                    "comment_id": comment_id,
                    "repo": target.owner_repo,
                    "error": str(exc),
                    "error_id": "FANOUT_GITHUB_DUP_DELETE_FAILED",
                },
            )

    # -- HTTP classification ----------------------------------------------------------------

    def _call(
        self, token: str, method: str, path: str, body: Mapping[str, Any] | None, deadline: Deadline
    ) -> GitHubResponse:
        deadline.require(MIN_REQUEST_SECONDS, f"GitHub {method} {path.split('?', 1)[0]}")
        try:
            return self._api.request(method, path, token, body, timeout=deadline.cap(REQUEST_TIMEOUT_SECONDS))
        except GitHubHttpError as exc:
            if exc.status == 401:
                raise _Unauthorized(str(exc)) from exc
            raise

    def _call_classified(
        self, token: str, method: str, path: str, body: Mapping[str, Any] | None, deadline: Deadline
    ) -> GitHubResponse:
        try:
            return self._call(token, method, path, body, deadline)
        except GitHubHttpError as exc:
            raise self._classify(exc) from exc

    @staticmethod
    def _classify(exc: GitHubHttpError) -> Exception:
        if exc.status == 429 or exc.status >= 500 or (exc.status == 403 and exc.rate_limited):
            return RetryableError(str(exc), retry_after_seconds=exc.retry_after_seconds)
        return _TerminalGitHubError(str(exc))

    # -- tokens -----------------------------------------------------------------------------

    def _with_token(self, secret_arn: str, action: Callable[[str], T]) -> T:
        token = self._token(secret_arn)
        try:
            return action(token)
        except _Unauthorized:
            # The secret may have been rotated since we cached it: read it again, once. Only the
            # token that failed is dropped: a worker that already re-read it is not undone.
            logger.info("GitHub answered 401; re-reading the token secret", extra={"channel": GITHUB})
            with self._lock:
                if self._tokens.get(secret_arn) == token:
                    del self._tokens[secret_arn]
        try:
            return action(self._token(secret_arn))
        except _Unauthorized as exc:
            raise RetryableError(f"GitHub rejected a freshly read token from {secret_arn}: {exc}") from exc

    def _token(self, secret_arn: str) -> str:
        with self._lock:
            cached = self._tokens.get(secret_arn)
        if cached:
            return cached
        with self._fetch_lock(f"secret:{secret_arn}"):
            with self._lock:  # another worker may have read it while we waited
                cached = self._tokens.get(secret_arn)
            if cached:
                return cached
            secret = client("secretsmanager").get_secret_value(SecretId=secret_arn).get("SecretString")
            token = _token_from_secret(secret, secret_arn)
            with self._lock:
                self._tokens[secret_arn] = token
            return token

    def _refusal(self, secret_arn: str) -> str | None:
        """Why ``secret_arn`` (a repo row's) may not be read, or None when the role can read it."""
        if secret_arn == self._default_secret:
            return None
        if self._repo_secret_prefix is None:
            return "no github_repo_secret_prefix is configured: repo rows may not name a token secret"
        if not secret_arn.startswith(self._repo_secret_prefix):
            return f"the function may read only the repo secrets whose ARN starts with {self._repo_secret_prefix}"
        return None

    def _secret_arn_for(self, owner_repo: str) -> str:
        if not self._repo_table:
            return self._default_secret
        fresh, repo_secret = self._cached_repo_secret(owner_repo)
        if not fresh:
            with self._fetch_lock(f"repo:{owner_repo}"):
                fresh, repo_secret = self._cached_repo_secret(owner_repo)  # another worker may have read it
                if not fresh:
                    repo_secret = self._read_repo_secret(owner_repo)
        return repo_secret or self._default_secret

    def _cached_repo_secret(self, owner_repo: str) -> tuple[bool, str | None]:
        """(whether the cached repo row is still fresh, the repo's own token secret ARN or None)."""
        with self._lock:
            entry = self._repo_secrets.get(owner_repo)
        if entry is None or time.monotonic() - entry[0] >= REPO_ROW_TTL_SECONDS:
            return False, None
        return True, entry[1]

    def _read_repo_secret(self, owner_repo: str) -> str | None:
        read_at = time.monotonic()
        item = client("dynamodb").get_item(TableName=self._repo_table, Key={"repo": {"S": owner_repo}}).get("Item")
        arn = deserialize_item(item).get("github_token_secret_arn") if item else None
        repo_secret = arn if isinstance(arn, str) and arn else None
        with self._lock:
            self._repo_secrets[owner_repo] = (read_at, repo_secret)
        return repo_secret

    def _fetch_lock(self, key: str) -> threading.Lock:
        """One lock per cache entry: on a cold container the workers of many tasks ask for the same
        secret or repo row at once, and only the first of them reads it (the others wait for it)."""
        with self._lock:
            return self._fetch_locks.setdefault(key, threading.Lock())


def _token_from_secret(secret: str | None, secret_arn: str) -> str:
    try:
        return token_from_secret(secret)
    except ValueError as exc:
        raise MalformedRecordError(f"GitHub token secret {secret_arn}: {exc}") from None


def _target(task: Mapping[str, Any]) -> _Target | None:
    number = task.get("pr_number")
    if number is None:
        number = task.get("issue_number")
    if number is None:
        return None
    repo = task.get("repo")
    if not isinstance(repo, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
        raise MalformedRecordError(f"task {task.get('task_id')} has no valid 'owner/name' repo (got {repo!r})")
    if isinstance(number, bool):
        raise MalformedRecordError(f"task {task.get('task_id')} has a boolean PR/issue number")
    try:
        parsed = int(number)
    except (TypeError, ValueError) as exc:
        raise MalformedRecordError(f"task {task.get('task_id')} has a non-numeric PR/issue number {number!r}") from exc
    if parsed <= 0 or (isinstance(number, (Decimal, float)) and number != parsed):
        raise MalformedRecordError(f"task {task.get('task_id')} has an invalid PR/issue number {number!r}")
    return _Target(repo, parsed)


def _ordering_key(event: TaskEvent) -> str:
    """The event's stream sequence number, zero-padded so that string order is numeric order."""
    sequence = event.sequence_number
    if not re.fullmatch(rf"[0-9]{{1,{SEQUENCE_WIDTH}}}", sequence):
        raise MalformedRecordError(
            f"event {event.event_id} has no stream sequence number to order it (got {sequence!r})"
        )
    return sequence.zfill(SEQUENCE_WIDTH)


def _comment_id(value: object) -> int | None:
    if value is None:
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise MalformedRecordError(f"channel_metadata.{COMMENT_ID_FIELD} is not a number: {value!r}") from exc
