"""The writer library the application imports: task status commits and push-config registration.

Tables and attributes are described in ``schema.py`` (the one source of truth the construct
and the tests use too). In short, every item of a task is under ``pk = "{tenant}#{task_id}"``:

- tasks ``pk``: ``owner``, ``state``, ``latest_event_sequence``, ``push_config_count``, ...
- task events ``pk`` + ``event_sequence`` (N): one item per committed event, never overwritten;
- push configs ``pk`` + ``config_id`` (S): ``url``, ``signing_secret`` (``whsec_...``),
  ``registered_after_event_sequence``, optional auth, ...;
- pending dispatches ``pk`` + ``sk`` (N = event sequence): ``tenant``, ``taskId``, ``owner``,
  ``eventSequence``, ``recordedAtMicros``, ``ttl`` (epoch seconds, 7 days), ``sweepShard``.

``commit_status_update`` writes, in ONE ``TransactWriteItems``:

1. the task item (Update): new state and ``latest_event_sequence = seq``, conditional on
   ``latest_event_sequence < seq`` (sequences only move forward: an older or repeated commit
   is refused with ``StaleEventSequenceError`` naming the stored sequence -- except the exact
   same update again, a retry whose first try landed, which is answered ``already_committed``)
   and on the task's owner (set by the first commit, which also creates the task);
2. the event item (Put, conditional on absence);
3. the pending-dispatch marker (Put) -- only when push dispatch is on, the event is a terminal
   status update (``schema.TERMINAL_TASK_STATES``) and the task has push configs.

All three land or none does: a crash before the commit leaves nothing; after it, the marker
is there and its stream record (or the sweeper) drives the delivery, whatever happens to the
process that committed.

**How "the task has push configs" is known, and the race it closes.** The task item carries
``push_config_count``, changed only inside the push-config transactions (register: +1,
delete: -1). A terminal commit with dispatch on reads it (strongly consistent GetItem) and
then *conditions its own transaction on what it read*: with a marker, ``push_config_count >
0``; without one, ``push_config_count`` absent or 0. Registration's transaction in turn is
conditional on the task's ``latest_event_sequence`` it read (compare-and-swap) and raises the
count in the same write. Both transactions write the task item, so DynamoDB orders them:

- register first: the count is now > 0, the commit's "no configs" condition fails, the commit
  retries with the count it got back and writes the marker; the config has
  ``registered_after_event_sequence`` = the old sequence < the event's: eligible, and the
  marker that delivers it exists;
- commit first: ``latest_event_sequence`` moved, the registration's condition fails, it retries
  with the sequence it got back: ``registered_after_event_sequence`` >= the event's, so the
  config is (correctly) not eligible for it -- whether or not a marker was written for others.

So a config registered concurrently with a terminal commit is either eligible and covered by
a marker, or registered after the event -- never eligible without a marker. Non-terminal commits
and commits with dispatch off need no count and do no read. A failed condition asks for
``ALL_OLD``, so a retry uses the item it got back instead of reading again. Delete lowers the
count in the same transaction as the config's delete; a delete racing a commit either leaves
a marker whose stream handler finds the config gone (abandoned), or no marker and no config.

**Registration** (``register_push_config``): the task must exist. One transaction: the task
Update ``ADD push_config_count 1`` whose ConditionExpression is the compare-and-swap
``latest_event_sequence = :seen`` (DynamoDB allows one operation per item in a transaction, so
the task's ConditionCheck and its count update are the same operation), and the config Put
with ``registered_after_event_sequence = :seen``. A conflict (a commit moved the sequence in
between) retries with the sequence returned, ``max_register_attempts`` times in all, then
``PushConfigRegistrationConflictError``. Each config gets its own Standard Webhooks signing
secret (``delivery.generate_signing_secret()``), returned once to the caller to hand to the
receiver.

**Configuration.** Push dispatch needs the markers table and the delivery store (the
deliveries table the stream handler claims in); naming them without dispatch on would write
nothing and deliver nothing. Either mismatch -- and any missing table -- fails the writer's
construction with one ``ConfigurationError`` naming every problem (``from_env`` reads the
``STREAM_RECOVERY_*`` variables below).

Every transaction carries a fresh ``ClientRequestToken``, so botocore's own retry of one whose
first try landed is answered from DynamoDB's idempotency window instead of being applied twice
(or refused as stale).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.common.config import ConfigurationError
from handlers.stream_recovery import schema
from handlers.stream_recovery.delivery import WebhookConfig, generate_signing_secret
from handlers.stream_recovery.markers import PendingDispatch
from handlers.stream_recovery.ssrf import parse_target

COMPONENT = "stream recovery writer"

ENV_TASKS_TABLE = "STREAM_RECOVERY_TASKS_TABLE"
ENV_TASK_EVENTS_TABLE = "STREAM_RECOVERY_TASK_EVENTS_TABLE"
ENV_PUSH_CONFIGS_TABLE = "STREAM_RECOVERY_PUSH_CONFIGS_TABLE"
ENV_PENDING_DISPATCHES_TABLE = "STREAM_RECOVERY_PENDING_DISPATCHES_TABLE"
ENV_DELIVERIES_TABLE = "STREAM_RECOVERY_DELIVERIES_TABLE"
ENV_PUSH_DISPATCH = "STREAM_RECOVERY_PUSH_DISPATCH"

DEFAULT_MAX_ATTEMPTS = 5
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
logger = logging.getLogger(__name__)

ClockMicros = Callable[[], int]


def system_clock_micros() -> int:
    return time.time_ns() // 1000


# -- errors ---------------------------------------------------------------------------------


class StaleEventSequenceError(RuntimeError):
    """The task already has this event sequence or a later one: sequences only move forward."""

    def __init__(self, tenant: str, task_id: str, event_sequence: int, latest: int) -> None:
        super().__init__(
            f"task {tenant}/{task_id}: event sequence {event_sequence} is not after the stored "
            f"latest_event_sequence {latest}; nothing was written"
        )
        self.event_sequence = event_sequence
        self.latest_event_sequence = latest


class TaskOwnerMismatchError(RuntimeError):
    def __init__(self, tenant: str, task_id: str, owner: str) -> None:
        super().__init__(f"task {tenant}/{task_id} belongs to another owner than {owner!r}; nothing was written")


class TaskNotFoundError(LookupError):
    def __init__(self, tenant: str, task_id: str) -> None:
        super().__init__(f"task {tenant}/{task_id} does not exist")


class EventAlreadyExistsError(RuntimeError):
    """An event item exists for a sequence the task has not reached (written outside the writer)."""


class PushConfigExistsError(RuntimeError):
    def __init__(self, tenant: str, task_id: str, config_id: str) -> None:
        super().__init__(f"task {tenant}/{task_id} already has a push config {config_id!r}")


class WriteConflictError(RuntimeError):
    """A transaction kept meeting concurrent changes of the task item; nothing was written."""


class PushConfigRegistrationConflictError(WriteConflictError):
    pass


# -- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommitResult:
    tenant: str
    task_id: str
    event_sequence: int
    state: str
    final: bool  # the state is terminal
    marker_written: bool
    attempts: int
    # True when this very update was committed before (a retry whose first try landed): nothing
    # was written now; ``marker_written`` then says whether that earlier commit wrote a marker.
    already_committed: bool = False


@dataclass(frozen=True)
class PushConfig:
    tenant: str
    task_id: str
    config_id: str
    url: str
    registered_after_event_sequence: int
    created_at_micros: int
    signing_secret: str = field(repr=False)
    auth_scheme: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    notification_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> PushConfig:
        """A push config from its DynamoDB-typed item."""
        plain = {name: _deserializer.deserialize(value) for name, value in item.items()}

        def optional(name: str) -> str | None:
            value = plain.get(name)
            return str(value) if value is not None else None

        return cls(
            tenant=str(plain[schema.CONFIG_TENANT]),
            task_id=str(plain[schema.CONFIG_TASK_ID]),
            config_id=str(plain[schema.CONFIG_ID]),
            url=str(plain[schema.CONFIG_URL]),
            registered_after_event_sequence=int(plain[schema.CONFIG_REGISTERED_AFTER_EVENT_SEQUENCE]),
            created_at_micros=int(plain[schema.CONFIG_CREATED_AT_MICROS]),
            signing_secret=str(plain[schema.CONFIG_SIGNING_SECRET]),
            auth_scheme=optional(schema.CONFIG_AUTH_SCHEME),
            auth_token=optional(schema.CONFIG_AUTH_TOKEN),
            notification_token=optional(schema.CONFIG_NOTIFICATION_TOKEN),
        )

    def to_webhook_config(self) -> WebhookConfig:
        return WebhookConfig(
            config_id=self.config_id,
            url=self.url,
            signing_secret=self.signing_secret,
            auth_token=self.auth_token,
            auth_scheme=self.auth_scheme or "Bearer",
            notification_token=self.notification_token,
        )


# -- configuration --------------------------------------------------------------------------


_DESCRIPTIONS = {
    "tasks_table": "tasks table",
    "task_events_table": "task events table",
    "push_configs_table": "push configs table",
    "pending_dispatches_table": "pending-dispatch markers table",
    "deliveries_table": "delivery store",
    "push_dispatch": "push dispatch",
}
# Each problem names the setting to fix: the constructor's parameter, or (``from_env``) the variable.
_PARAMETER_LABELS = {
    "tasks_table": "tasks_table",
    "task_events_table": "task_events_table",
    "push_configs_table": "push_configs_table",
    "pending_dispatches_table": "pending_dispatches_table",
    "deliveries_table": "deliveries_table",
    "push_dispatch": "push_dispatch_enabled",
}
_ENV_LABELS = {
    "tasks_table": ENV_TASKS_TABLE,
    "task_events_table": ENV_TASK_EVENTS_TABLE,
    "push_configs_table": ENV_PUSH_CONFIGS_TABLE,
    "pending_dispatches_table": ENV_PENDING_DISPATCHES_TABLE,
    "deliveries_table": ENV_DELIVERIES_TABLE,
    "push_dispatch": ENV_PUSH_DISPATCH,
}


def configuration_problems(
    *,
    tasks_table: str | None,
    task_events_table: str | None,
    push_configs_table: str | None,
    push_dispatch_enabled: bool,
    pending_dispatches_table: str | None,
    deliveries_table: str | None,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """Every problem of a writer configuration (empty: valid).

    ``labels`` names each setting by where it comes from (default: the constructor's parameter
    names; ``from_env``: the variable names).
    """
    names = labels or _PARAMETER_LABELS

    def name(setting: str) -> str:
        return f"{_DESCRIPTIONS[setting]} ({names[setting]})"

    dispatch = name("push_dispatch")
    problems = []
    for setting, value in (
        ("tasks_table", tasks_table),
        ("task_events_table", task_events_table),
        ("push_configs_table", push_configs_table),
    ):
        if not value:
            problems.append(f"the {name(setting)} is required but not set")
    if push_dispatch_enabled:
        if not pending_dispatches_table:
            problems.append(
                f"{dispatch} is enabled but no {name('pending_dispatches_table')} is set "
                "(terminal updates would never be recovered after a crash)"
            )
        if not deliveries_table:
            problems.append(
                f"{dispatch} is enabled but no {name('deliveries_table')} is set "
                "(nothing could claim and deliver the webhooks)"
            )
    else:
        if pending_dispatches_table:
            problems.append(
                f"a {name('pending_dispatches_table')} is set ({pending_dispatches_table}) but {dispatch} is "
                "disabled (no marker would ever be written: enable push dispatch or remove the table)"
            )
        if deliveries_table:
            problems.append(
                f"a {name('deliveries_table')} is set ({deliveries_table}) but {dispatch} is disabled "
                "(no webhook would ever be delivered: enable push dispatch or remove the store)"
            )
    return problems


def _flag(raw: str | None, name: str, problems: list[str]) -> bool:
    if raw is None or not raw.strip():
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value not in _FALSE:
        problems.append(f"{name} must be true or false, got {raw!r}")
    return False


# -- the writer -----------------------------------------------------------------------------


class StreamRecoveryWriter:
    """Commits task status updates and manages push configs (see the module docstring)."""

    def __init__(
        self,
        *,
        tasks_table: str,
        task_events_table: str,
        push_configs_table: str,
        push_dispatch_enabled: bool,
        pending_dispatches_table: str | None = None,
        deliveries_table: str | None = None,
        clock_micros: ClockMicros = system_clock_micros,
        max_commit_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_register_attempts: int = DEFAULT_MAX_ATTEMPTS,
        allow_http_urls: bool = False,
        _extra_problems: Sequence[str] = (),
        _labels: Mapping[str, str] | None = None,
    ) -> None:
        problems = [
            *_extra_problems,
            *configuration_problems(
                tasks_table=tasks_table,
                task_events_table=task_events_table,
                push_configs_table=push_configs_table,
                push_dispatch_enabled=push_dispatch_enabled,
                pending_dispatches_table=pending_dispatches_table,
                deliveries_table=deliveries_table,
                labels=_labels,
            ),
        ]
        for name, value in (
            ("max_commit_attempts", max_commit_attempts),
            ("max_register_attempts", max_register_attempts),
        ):
            if value < 1:
                problems.append(f"{name} must be >= 1, got {value}")
        if problems:
            raise ConfigurationError(f"{COMPONENT}: invalid configuration: " + "; ".join(problems))
        self.tasks_table = tasks_table
        self.task_events_table = task_events_table
        self.push_configs_table = push_configs_table
        self.pending_dispatches_table = pending_dispatches_table
        self.deliveries_table = deliveries_table
        self.push_dispatch_enabled = push_dispatch_enabled
        self._clock = clock_micros
        self._max_commit_attempts = max_commit_attempts
        self._max_register_attempts = max_register_attempts
        self._allow_http_urls = allow_http_urls

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> StreamRecoveryWriter:
        """A writer from the ``STREAM_RECOVERY_*`` variables (the names the construct sets)."""
        env = os.environ if environ is None else environ

        def value(name: str) -> str | None:
            raw = env.get(name, "").strip()
            return raw or None

        problems: list[str] = []
        enabled = _flag(env.get(ENV_PUSH_DISPATCH), ENV_PUSH_DISPATCH, problems)
        return cls(
            tasks_table=value(ENV_TASKS_TABLE) or "",
            task_events_table=value(ENV_TASK_EVENTS_TABLE) or "",
            push_configs_table=value(ENV_PUSH_CONFIGS_TABLE) or "",
            push_dispatch_enabled=enabled,
            pending_dispatches_table=value(ENV_PENDING_DISPATCHES_TABLE),
            deliveries_table=value(ENV_DELIVERIES_TABLE),
            _extra_problems=problems,
            _labels=_ENV_LABELS,
            **options,
        )

    # -- commit -----------------------------------------------------------------------------

    def commit_status_update(
        self,
        *,
        tenant: str,
        task_id: str,
        owner: str,
        event_sequence: int,
        state: str,
        status_message: Mapping[str, Any] | None = None,
    ) -> CommitResult:
        """Write the task's new status, its event and (when due) the pending-dispatch marker, atomically.

        The first commit of a task creates it (with ``owner``). Raises
        ``StaleEventSequenceError`` when ``event_sequence`` is not after the stored one,
        ``TaskOwnerMismatchError`` for another owner, ``WriteConflictError`` when the task item
        kept changing for ``max_commit_attempts`` transactions; nothing is written in any of these.
        The exact same update again (a retry whose first try landed) returns ``already_committed``.
        """
        pk = schema.task_pk(tenant, task_id)
        _check_sequence(event_sequence)
        if state not in schema.TASK_STATES:
            raise ValueError(f"unknown task state {state!r} (one of {sorted(schema.TASK_STATES)})")
        if not owner:
            raise ValueError("a status update needs the task's owner")
        final = schema.is_terminal_state(state)
        needs_marker_decision = self.push_dispatch_enabled and final
        has_configs: bool | None = None
        if needs_marker_decision:
            task = self._read_task(pk)
            has_configs = task is not None and int(task.get(schema.TASK_PUSH_CONFIG_COUNT, 0)) > 0
        for attempt in range(1, self._max_commit_attempts + 1):
            now = self._clock()
            items = [
                self._task_update(pk, tenant, task_id, owner, event_sequence, state, status_message, now, has_configs),
                self._event_put(pk, tenant, task_id, event_sequence, state, final, status_message, now),
            ]
            if has_configs:
                items.append(self._marker_put(pk, tenant, task_id, owner, event_sequence, now))
            reasons = self._transact(items)
            if reasons is None:
                return CommitResult(tenant, task_id, event_sequence, state, final, bool(has_configs), attempt)
            task_reason, event_reason = reasons[0], reasons[1]
            if task_reason.get("Code") == "ConditionalCheckFailed":
                old = _plain(task_reason.get("Item"))
                if old is not None:
                    if str(old.get(schema.TASK_OWNER)) != owner:
                        raise TaskOwnerMismatchError(tenant, task_id, owner)
                    latest = int(old.get(schema.TASK_LATEST_EVENT_SEQUENCE, 0))
                    if latest == event_sequence:
                        earlier = self._earlier_commit(pk, event_sequence, state, status_message, final)
                        if earlier is not None:
                            return CommitResult(
                                tenant, task_id, event_sequence, state, final, earlier, attempt, already_committed=True
                            )
                    if latest >= event_sequence:
                        raise StaleEventSequenceError(tenant, task_id, event_sequence, latest)
                if needs_marker_decision:
                    # the push-config count changed under us: decide again from the item returned
                    has_configs = old is not None and int(old.get(schema.TASK_PUSH_CONFIG_COUNT, 0)) > 0
                continue
            if event_reason.get("Code") == "ConditionalCheckFailed":
                raise EventAlreadyExistsError(
                    f"task {tenant}/{task_id}: an event {event_sequence} exists although the task has not reached it"
                )
            # a transaction conflict or throttle on one of the items: read again and retry
            if needs_marker_decision:
                task = self._read_task(pk)
                has_configs = task is not None and int(task.get(schema.TASK_PUSH_CONFIG_COUNT, 0)) > 0
        raise WriteConflictError(
            f"task {tenant}/{task_id}: the status update {event_sequence} met a concurrent change of the task "
            f"{self._max_commit_attempts} times; nothing was written"
        )

    def _earlier_commit(
        self, pk: str, event_sequence: int, state: str, status_message: Mapping[str, Any] | None, final: bool
    ) -> bool | None:
        """Whether the stored event ``event_sequence`` is exactly this update (None: it is not).

        Then an earlier try of this commit landed (its answer was lost and the caller retried):
        the retry is answered as a success instead of as stale. The answer is whether that
        commit wrote a marker (it was in the same transaction, so it was written then or never;
        a marker the stream handler has consumed since reads as not written -- informational only).
        """
        answer = client("dynamodb").get_item(
            TableName=self.task_events_table,
            Key={schema.PK: {"S": pk}, schema.EVENT_SEQUENCE: {"N": str(event_sequence)}},
            ConsistentRead=True,
        )
        event = _plain(answer.get("Item"))
        expected_message = _dynamo_value(dict(status_message)) if status_message is not None else None
        if (
            event is None
            or event.get(schema.EVENT_KIND) != schema.EVENT_KIND_STATUS_UPDATE
            or event.get(schema.EVENT_STATE) != state
            or event.get(schema.EVENT_STATUS_MESSAGE) != expected_message
        ):
            return None
        if not (self.push_dispatch_enabled and final and self.pending_dispatches_table):
            return False
        marker = client("dynamodb").get_item(
            TableName=self.pending_dispatches_table,
            Key={schema.PK: {"S": pk}, schema.MARKER_SK: {"N": str(event_sequence)}},
            ConsistentRead=True,
        )
        return "Item" in marker

    def _task_update(
        self,
        pk: str,
        tenant: str,
        task_id: str,
        owner: str,
        event_sequence: int,
        state: str,
        status_message: Mapping[str, Any] | None,
        now: int,
        has_configs: bool | None,
    ) -> dict[str, Any]:
        names = {
            "#pk": schema.PK,
            "#tenant": schema.TASK_TENANT,
            "#task_id": schema.TASK_ID,
            "#owner": schema.TASK_OWNER,
            "#state": schema.TASK_STATE,
            "#message": schema.TASK_STATUS_MESSAGE,
            "#status_ts": schema.TASK_STATUS_TIMESTAMP_MICROS,
            "#latest": schema.TASK_LATEST_EVENT_SEQUENCE,
            "#count": schema.TASK_PUSH_CONFIG_COUNT,
            "#created": schema.TASK_CREATED_AT_MICROS,
            "#updated": schema.TASK_UPDATED_AT_MICROS,
        }
        values: dict[str, Any] = {
            ":tenant": tenant,
            ":task_id": task_id,
            ":owner": owner,
            ":state": state,
            ":now": now,
            ":seq": event_sequence,
            ":zero": 0,
        }
        sets = [
            "#tenant = :tenant",
            "#task_id = :task_id",
            "#owner = if_not_exists(#owner, :owner)",
            "#state = :state",
            "#status_ts = :now",
            "#latest = :seq",
            "#count = if_not_exists(#count, :zero)",
            "#created = if_not_exists(#created, :now)",
            "#updated = :now",
        ]
        update = ""
        if status_message is not None:
            sets.append("#message = :message")
            values[":message"] = _dynamo_value(dict(status_message))
            update = "SET " + ", ".join(sets)
        else:
            update = "SET " + ", ".join(sets) + " REMOVE #message"
        condition = "(attribute_not_exists(#pk) OR (#owner = :owner AND #latest < :seq))"
        if has_configs is True:
            condition += " AND #count > :zero"
        elif has_configs is False:
            condition += " AND (attribute_not_exists(#count) OR #count = :zero)"
        return {
            "Update": {
                "TableName": self.tasks_table,
                "Key": {schema.PK: {"S": pk}},
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": _serialize(values),
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _event_put(
        self,
        pk: str,
        tenant: str,
        task_id: str,
        event_sequence: int,
        state: str,
        final: bool,
        status_message: Mapping[str, Any] | None,
        now: int,
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            schema.PK: pk,
            schema.EVENT_SEQUENCE: event_sequence,
            schema.EVENT_TENANT: tenant,
            schema.EVENT_TASK_ID: task_id,
            schema.EVENT_KIND: schema.EVENT_KIND_STATUS_UPDATE,
            schema.EVENT_STATE: state,
            schema.EVENT_FINAL: final,
            schema.EVENT_RECORDED_AT_MICROS: now,
        }
        if status_message is not None:
            item[schema.EVENT_STATUS_MESSAGE] = _dynamo_value(dict(status_message))
        return {
            "Put": {
                "TableName": self.task_events_table,
                "Item": _serialize(item),
                "ConditionExpression": "attribute_not_exists(#pk)",
                "ExpressionAttributeNames": {"#pk": schema.PK},
            }
        }

    def _marker_put(
        self, pk: str, tenant: str, task_id: str, owner: str, event_sequence: int, now: int
    ) -> dict[str, Any]:
        assert self.pending_dispatches_table is not None  # guaranteed by the configuration check
        marker = PendingDispatch(
            tenant=tenant, task_id=task_id, owner=owner, event_sequence=event_sequence, recorded_at_micros=now
        )
        assert marker.task_pk == pk
        return {"Put": {"TableName": self.pending_dispatches_table, "Item": _serialize(marker.item())}}

    # -- push configs -----------------------------------------------------------------------

    def register_push_config(
        self,
        *,
        tenant: str,
        task_id: str,
        url: str,
        config_id: str | None = None,
        auth_scheme: str | None = None,
        auth_token: str | None = None,
        notification_token: str | None = None,
    ) -> PushConfig:
        """Create a push config whose ``registered_after_event_sequence`` is the task's latest, by CAS.

        Returns the stored config, with its fresh signing secret. Raises ``TaskNotFoundError``,
        ``PushConfigExistsError``, ``ssrf.InvalidTargetError`` for a URL delivery would refuse,
        and ``PushConfigRegistrationConflictError`` after ``max_register_attempts`` conflicts.
        """
        pk = schema.task_pk(tenant, task_id)
        parse_target(url, allow_http=self._allow_http_urls)
        config_id = config_id if config_id is not None else uuid.uuid4().hex
        if not config_id:
            raise ValueError("a push config id must not be empty")
        task = self._read_task(pk)
        if task is None:
            raise TaskNotFoundError(tenant, task_id)
        seen = int(task.get(schema.TASK_LATEST_EVENT_SEQUENCE, 0))
        secret = generate_signing_secret()
        for attempt in range(1, self._max_register_attempts + 1):
            config = PushConfig(
                tenant=tenant,
                task_id=task_id,
                config_id=config_id,
                url=url,
                registered_after_event_sequence=seen,
                created_at_micros=self._clock(),
                signing_secret=secret,
                auth_scheme=auth_scheme,
                auth_token=auth_token,
                notification_token=notification_token,
            )
            reasons = self._transact([self._count_update(pk, +1, seen=seen), self._config_put(pk, config)])
            if reasons is None:
                if attempt > 1:
                    logger.info("push config %s of %s registered after %d attempts", config_id, pk, attempt)
                return config
            task_reason, config_reason = reasons[0], reasons[1]
            if task_reason.get("Code") == "ConditionalCheckFailed":
                old = _plain(task_reason.get("Item"))
                if old is None:
                    raise TaskNotFoundError(tenant, task_id)
                seen = int(old.get(schema.TASK_LATEST_EVENT_SEQUENCE, 0))
                continue
            if config_reason.get("Code") == "ConditionalCheckFailed":
                raise PushConfigExistsError(tenant, task_id, config_id)
            task = self._read_task(pk)
            if task is None:
                raise TaskNotFoundError(tenant, task_id)
            seen = int(task.get(schema.TASK_LATEST_EVENT_SEQUENCE, 0))
        raise PushConfigRegistrationConflictError(
            f"task {tenant}/{task_id}: could not register push config {config_id!r}: the task's "
            f"latest_event_sequence changed during each of {self._max_register_attempts} attempts "
            f"(last seen {seen}); nothing was written, try again"
        )

    def delete_push_config(self, *, tenant: str, task_id: str, config_id: str) -> bool:
        """Delete a push config (and lower the task's count with it); False when there was none."""
        pk = schema.task_pk(tenant, task_id)
        config_key = {schema.PK: {"S": pk}, schema.CONFIG_ID: {"S": config_id}}
        delete = {
            "Delete": {
                "TableName": self.push_configs_table,
                "Key": config_key,
                "ConditionExpression": "attribute_exists(#pk)",
                "ExpressionAttributeNames": {"#pk": schema.PK},
            }
        }
        reasons = self._transact([delete, self._count_update(pk, -1)])
        if reasons is None:
            return True
        if reasons[0].get("Code") == "ConditionalCheckFailed":
            return False
        if reasons[1].get("Code") == "ConditionalCheckFailed":
            # The task is gone (or its count is already 0): delete the orphaned config alone.
            try:
                client("dynamodb").delete_item(
                    TableName=self.push_configs_table,
                    Key=config_key,
                    ConditionExpression="attribute_exists(#pk)",
                    ExpressionAttributeNames={"#pk": schema.PK},
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                    return False
                raise
            return True
        raise WriteConflictError(f"task {tenant}/{task_id}: deleting push config {config_id!r} met a concurrent change")

    def list_push_configs(self, *, tenant: str, task_id: str) -> list[PushConfig]:
        """Every push config of a task (strongly consistent)."""
        pk = schema.task_pk(tenant, task_id)
        configs: list[PushConfig] = []
        kwargs: dict[str, Any] = {
            "TableName": self.push_configs_table,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": schema.PK},
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        while True:
            page = client("dynamodb").query(**kwargs)
            configs.extend(PushConfig.from_item(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return configs
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _count_update(self, pk: str, delta: int, *, seen: int | None = None) -> dict[str, Any]:
        names = {"#count": schema.TASK_PUSH_CONFIG_COUNT}
        values: dict[str, Any] = {":delta": delta}
        if seen is not None:
            # the compare-and-swap on the task's latest sequence (this is the task's ConditionCheck)
            names["#latest"] = schema.TASK_LATEST_EVENT_SEQUENCE
            values[":seen"] = seen
            condition = "#latest = :seen"
        else:
            values[":zero"] = 0
            condition = "#count > :zero"
        return {
            "Update": {
                "TableName": self.tasks_table,
                "Key": {schema.PK: {"S": pk}},
                "UpdateExpression": "ADD #count :delta",
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": _serialize(values),
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _config_put(self, pk: str, config: PushConfig) -> dict[str, Any]:
        item: dict[str, Any] = {
            schema.PK: pk,
            schema.CONFIG_ID: config.config_id,
            schema.CONFIG_TENANT: config.tenant,
            schema.CONFIG_TASK_ID: config.task_id,
            schema.CONFIG_URL: config.url,
            schema.CONFIG_SIGNING_SECRET: config.signing_secret,
            schema.CONFIG_REGISTERED_AFTER_EVENT_SEQUENCE: config.registered_after_event_sequence,
            schema.CONFIG_CREATED_AT_MICROS: config.created_at_micros,
        }
        for name, value in (
            (schema.CONFIG_AUTH_SCHEME, config.auth_scheme),
            (schema.CONFIG_AUTH_TOKEN, config.auth_token),
            (schema.CONFIG_NOTIFICATION_TOKEN, config.notification_token),
        ):
            if value is not None:
                item[name] = value
        return {
            "Put": {
                "TableName": self.push_configs_table,
                "Item": _serialize(item),
                "ConditionExpression": "attribute_not_exists(#pk)",
                "ExpressionAttributeNames": {"#pk": schema.PK},
            }
        }

    # -- DynamoDB ---------------------------------------------------------------------------

    def _read_task(self, pk: str) -> dict[str, Any] | None:
        answer = client("dynamodb").get_item(
            TableName=self.tasks_table,
            Key={schema.PK: {"S": pk}},
            ConsistentRead=True,
            ProjectionExpression="#owner, #latest, #count",
            ExpressionAttributeNames={
                "#owner": schema.TASK_OWNER,
                "#latest": schema.TASK_LATEST_EVENT_SEQUENCE,
                "#count": schema.TASK_PUSH_CONFIG_COUNT,
            },
        )
        return _plain(answer.get("Item"))

    def _transact(self, items: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]] | None:
        """Run one transaction: None when it landed, else its cancellation reasons (one per item)."""
        try:
            client("dynamodb").transact_write_items(TransactItems=list(items), ClientRequestToken=str(uuid.uuid4()))
            return None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons = list(exc.response.get("CancellationReasons") or [])
            if len(reasons) != len(items):
                raise
            return reasons


# -- helpers --------------------------------------------------------------------------------


def _check_sequence(event_sequence: int) -> None:
    if isinstance(event_sequence, bool) or not isinstance(event_sequence, int):
        raise TypeError(f"an event sequence is an int, got {type(event_sequence).__name__}")
    if not 1 <= event_sequence <= schema.U64_MAX:
        raise ValueError(f"an event sequence must be between 1 and {schema.U64_MAX}, got {event_sequence}")


def _dynamo_value(value: Any) -> Any:
    """JSON-like values as DynamoDB accepts them (floats as Decimal)."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, Mapping):
        return {str(k): _dynamo_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dynamo_value(v) for v in value]
    return value


def _serialize(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _serializer.serialize(value) for name, value in values.items()}


def _plain(item: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not item:
        return None
    return {name: _deserializer.deserialize(value) for name, value in item.items()}
