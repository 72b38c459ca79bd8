"""Leases with fencing on a DynamoDB item: the one claim primitive of the product.

Every subsystem that must do something once (post a Slack message, send a mail, deliver a
webhook, own a (project, user) pair, run an orchestration pass) claims it here first.

A claim record lives either in the top-level attributes of its own item (``path=()``) or in
a map attribute of a larger item (``path=("channel_metadata", "slack_terminal_msg")``)::

    state               "pending" while a holder owns it; "released" when it gave it back
                        unused; any other string is terminal (the caller names it: "posted",
                        "sent", "rejected", ...) and final -- nothing rewrites a terminal claim
    token               random, fixed for one holder: every later write is conditional on it
    generation          an integer raised on every claim and takeover (never on extend): an
                        ordered fencing token to store on targets that must reject stale writers
    lease_until_ms      end of the lease (epoch ms); removed once terminal
    claimed_at_ms       when this holder claimed it; first_claimed_at_ms: the first holder ever
    ...                 the caller's own attributes (event ids, a Slack ts, ...)

All times are integer epoch milliseconds (mixing seconds and milliseconds in one item broke a
port of Powertools' idempotency); the clock is injectable. Expiry is decided here, in code,
from ``lease_until_ms`` -- a TTL attribute may clean up, it never decides.

Writes (each one conditional, each one asking for ``ALL_OLD`` on a failed condition so the
answer says *why* without a read of its own):

- ``acquire``: put-if-absent; if the record exists and is ``released``, or ``pending`` with an
  expired lease, take it over conditionally on exactly the token and generation seen (so two
  takeovers of one expired lease cannot both win); a live lease is ``HELD``, a terminal record
  ``SETTLED``. The first write assumes what the caller saw (``seen``) or absence.
- ``extend`` / ``expire``: move the lease (later, or earlier to let a takeover in sooner),
  conditional on the holder's token and a non-terminal state. They only move the lease and are
  keyed on the fixed token, so a retry of one that failed on the client but succeeded on the
  server is harmless (the awslabs lock client lost locks to heartbeats that changed the token).
- ``confirm``: the terminal state, conditional on the token; ``release``: back to
  ``released``, conditional on the token. A retry whose first attempt landed is recognised
  (same token, same result) and answers OK.
- ``write_fenced``: a TransactWriteItems whose first item is a ConditionCheck on the claim
  (the holder's token, still pending): the caller's DynamoDB writes land only while it holds;
  ``update_held``: counters on the claim record itself (an attempt count), fenced the same way.

Waiting (no write): ``wait_while_held`` polls a record that ``acquire`` found ``HELD`` until it
is no longer live (settled, released, or its lease ran out -- the caller acquires again) or a
deadline passes (``ClaimHeldError`` with the lease left, for a Retry-After). A caller that meets
a live claim of a crashed attempt waits it out here instead of failing at once: an event source
may redeliver immediately, and a record that fails every redelivery while the lease runs out
spends its bounded retries and ends in the DLQ although nothing is wrong.

A stale holder (its lease expired and someone took over) can therefore never extend, confirm,
release or write fenced: the token no longer matches. What fencing cannot stop is an outside
call already sent (Slack, SES, a webhook): after a takeover, two holders may both have called
out. Callers pass the provider an idempotency key where it has one and say what remains
at-least-once.

Crash windows, the same for every caller:
- crash after the claim, before the effect: the lease runs out; the next attempt takes over
  and does the effect once. The cost is the lease length in delay, never a loss.
- crash after the effect, before ``confirm``: the same takeover happens, and the effect may
  be repeated -- unless the caller can detect it first (Slack looks for its message by
  metadata; a webhook receiver dedups by the stable idempotency id). The lease bounds how
  soon; the caller's lookup decides whether twice.
- crash after ``confirm``: the record is terminal; every later attempt is ``SETTLED``.
- a holder stalled past its lease: its next write fails as stolen; the caller decides what to
  do with an effect it already caused (e.g. delete the duplicate Slack message).
"""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.common.dynamo_items import serialize_values, to_plain

PENDING = "pending"
RELEASED = "released"
UNRECOGNISED = "unrecognised"
NON_TERMINAL = frozenset({PENDING, RELEASED})
# Bounds the loop of a contended acquire: each failed write returns the record as it now is,
# so more rounds only happen while other holders keep winning in between.
MAX_ACQUIRE_WRITES = 5

Clock = Callable[[], int]
DynamoItem = Mapping[str, Any]


def system_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ClaimHeldError(RuntimeError):
    """Another holder's lease was still live when the wait for it ended."""

    def __init__(self, location: ClaimLocation, record: ClaimRecord, lease_left_ms: int) -> None:
        super().__init__(
            f"claim {location.table} {dict(location.key)} {'.'.join(location.path)} is still held "
            f"(lease left {lease_left_ms} ms)"
        )
        self.location = location
        self.record = record
        self.lease_left_ms = lease_left_ms


class ClaimTargetMissingError(RuntimeError):
    """The item that should hold a nested claim does not exist (nested claims never create it)."""


@dataclass(frozen=True)
class ClaimLocation:
    """Where a claim record lives: one item of one table, at ``path`` inside it (() = top level)."""

    table: str
    key: Mapping[str, Any]  # DynamoDB-typed: {"task_id": {"S": "t-1"}}
    path: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.table or not self.key:
            raise ValueError("a claim needs a table and a key")


@dataclass(frozen=True)
class ClaimRecord:
    """A claim record as stored (plain Python values, numbers as int)."""

    state: str
    token: str | None
    generation: int
    lease_until_ms: int | None
    attributes: Mapping[str, Any]  # every field, the claim's own included

    @property
    def is_terminal(self) -> bool:
        return self.state not in NON_TERMINAL

    def is_live(self, now_ms: int) -> bool:
        """A pending claim whose lease has not run out: someone holds it."""
        return self.state == PENDING and self.lease_until_ms is not None and self.lease_until_ms >= now_ms

    def is_reclaimable(self, now_ms: int) -> bool:
        return not self.is_terminal and not self.is_live(now_ms)

    @classmethod
    def parse(cls, value: Any) -> ClaimRecord | None:
        """The record in ``value``; None when there is none.

        A value that is there but is not a claim record (e.g. a legacy ``true`` marker) counts
        as terminal, state ``unrecognised``: when in doubt, the work is treated as done -- a
        skipped effect can be recovered from the logs, a repeated one cannot be taken back.
        """
        if value is None:
            return None
        if not isinstance(value, Mapping) or not isinstance(value.get("state"), str):
            return cls(state=UNRECOGNISED, token=None, generation=0, lease_until_ms=None, attributes={"value": value})
        lease = value.get("lease_until_ms")
        return cls(
            state=str(value["state"]),
            token=str(value["token"]) if value.get("token") is not None else None,
            generation=int(value.get("generation", 0)),
            lease_until_ms=int(lease) if lease is not None else None,
            attributes=dict(value),
        )


@dataclass(frozen=True)
class Claim:
    """What a holder owns: the location, its fixed token, its generation and its lease."""

    location: ClaimLocation
    token: str
    generation: int
    lease_until_ms: int
    first_claimed_at_ms: int
    previous: ClaimRecord | None  # the record taken over (None for a fresh claim)

    @property
    def takeover(self) -> bool:
        """True when an earlier holder's lease ran out: its effect may have happened."""
        return self.previous is not None and self.previous.state == PENDING


class Acquire(enum.Enum):
    ACQUIRED = "acquired"
    HELD = "held"  # another holder's lease is live
    SETTLED = "settled"  # terminal: the work is done (or was given up)


@dataclass(frozen=True)
class AcquireResult:
    status: Acquire
    claim: Claim | None = None
    current: ClaimRecord | None = None  # the record that made it HELD or SETTLED
    item: Mapping[str, Any] | None = None  # the item (plain values) as the last write saw it, when known


class Write(enum.Enum):
    OK = "ok"
    STOLEN = "stolen"  # another token holds the record now (or it was taken over and settled)
    SETTLED = "settled"  # our own claim is terminal already, with another state than asked
    GONE = "gone"  # the record (or its item) no longer exists
    CONDITION_FAILED = "condition_failed"  # write_fenced: the fence held, one of the caller's conditions did not


@dataclass(frozen=True)
class WriteResult:
    status: Write
    current: ClaimRecord | None = None
    cancellation_reasons: Sequence[Mapping[str, Any]] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.status is Write.OK


class ClaimStore:
    """Claims on DynamoDB through the container-wide client (``handlers.common.aws``)."""

    def __init__(self, *, clock: Clock = system_clock_ms, token_factory: Callable[[], str] | None = None) -> None:
        self._clock = clock
        self._new_token = token_factory or (lambda: secrets.token_hex(16))

    def now_ms(self) -> int:
        return self._clock()

    # -- acquire -----------------------------------------------------------------------------

    def acquire(
        self,
        location: ClaimLocation,
        *,
        lease_ms: int,
        attributes: Mapping[str, Any] | None = None,
        seen: ClaimRecord | None = None,
        return_item: bool = False,
    ) -> AcquireResult:
        """Claim ``location`` for ``lease_ms``, take over a reclaimable record, or say why not.

        ``seen`` is the record as the caller last read it (None: assume absent); it only picks
        the first write, the conditions decide. ``return_item`` also returns the whole item as
        it was before a successful claim (``ALL_OLD``); a failed write always returns it.
        """
        if lease_ms <= 0:
            raise ValueError(f"lease_ms must be positive, got {lease_ms}")
        current = seen
        item: Mapping[str, Any] | None = None
        for _ in range(MAX_ACQUIRE_WRITES):
            now = self._clock()
            if current is not None:
                if current.is_terminal:
                    return AcquireResult(Acquire.SETTLED, current=current, item=item)
                if current.is_live(now):
                    return AcquireResult(Acquire.HELD, current=current, item=item)
            token = self._new_token()
            first = int(current.attributes.get("first_claimed_at_ms", now)) if current is not None else now
            generation = (current.generation if current is not None else 0) + 1
            record = {
                **(attributes or {}),
                "state": PENDING,
                "token": token,
                "generation": generation,
                "lease_until_ms": now + lease_ms,
                "claimed_at_ms": now,
                "first_claimed_at_ms": first,
            }
            names = _Names(location)
            if current is None:
                condition = f"attribute_not_exists({names.absent_target()})"
                values: dict[str, Any] = {}
            else:
                # Fencing: take over exactly the record we saw, and only while it is reclaimable.
                state, lease = names.field("state"), names.field("lease_until_ms")
                condition = (
                    f"{names.field('token')} = :seen_token AND {names.generation_matches(current)} AND "
                    f"({state} = :released OR ({state} = :pending AND "
                    f"(attribute_not_exists({lease}) OR {lease} < :now)))"
                )
                values = {":seen_token": current.token, ":released": RELEASED, ":pending": PENDING, ":now": now}
                if current.generation:
                    values[":seen_generation"] = current.generation
            update = names.set_record(record, values)
            outcome = self._update(
                location,
                update=update,
                condition=condition,
                names=names,
                values=values,
                return_old=return_item,
            )
            if outcome.won:
                old_item = outcome.item if return_item else None
                claim = Claim(location, token, generation, now + lease_ms, first, previous=current)
                return AcquireResult(Acquire.ACQUIRED, claim=claim, item=old_item)
            item = outcome.item
            current = outcome.record
            if current is None and outcome.item is None and location.path:
                raise ClaimTargetMissingError(f"{location.table} item {dict(location.key)} does not exist")
        now = self._clock()
        if current is not None and current.is_live(now):
            return AcquireResult(Acquire.HELD, current=current, item=item)
        if current is not None and current.is_terminal:
            return AcquireResult(Acquire.SETTLED, current=current, item=item)
        raise ClaimContentionError(f"claim {location.table} {dict(location.key)} keeps changing under us")

    # -- the holder's writes -----------------------------------------------------------------

    def extend(self, claim: Claim, *, lease_ms: int) -> WriteResult:
        """Move the lease to now + ``lease_ms`` (only the holder, only while pending)."""
        return self._move_lease(claim, self._clock() + lease_ms)

    def expire(self, claim: Claim, *, grace_ms: int = 0) -> WriteResult:
        """End the lease after ``grace_ms``: the next attempt may take over (and should look first)."""
        return self._move_lease(claim, self._clock() + grace_ms)

    def _move_lease(self, claim: Claim, until_ms: int) -> WriteResult:
        names = _Names(claim.location)
        values = {":token": claim.token, ":pending": PENDING, ":until": until_ms}
        return self._holder_write(
            claim,
            update=f"SET {names.field('lease_until_ms')} = :until",
            condition=f"{names.field('token')} = :token AND {names.field('state')} = :pending",
            names=names,
            values=values,
            already_done=lambda record: False,
        )

    def confirm(self, claim: Claim, *, state: str, attributes: Mapping[str, Any] | None = None) -> WriteResult:
        """Make the claim terminal with ``state`` (and the caller's attributes)."""
        if state in NON_TERMINAL:
            raise ValueError(f"confirm needs a terminal state, not {state!r}")
        names = _Names(claim.location)
        values: dict[str, Any] = {":token": claim.token, ":pending": PENDING}
        sets = [f"{names.field('state')} = :state", f"{names.field('settled_at_ms')} = :settled_at"]
        values[":state"] = state
        values[":settled_at"] = self._clock()
        for index, (name, value) in enumerate((attributes or {}).items()):
            sets.append(f"{names.field(name)} = :a{index}")
            values[f":a{index}"] = value
        return self._holder_write(
            claim,
            update=f"SET {', '.join(sets)} REMOVE {names.field('lease_until_ms')}",
            condition=f"{names.field('token')} = :token AND {names.field('state')} = :pending",
            names=names,
            values=values,
            already_done=lambda record: record.state == state,
        )

    def release(self, claim: Claim) -> WriteResult:
        """Give the claim back unused: the next attempt claims it at once (a new generation)."""
        names = _Names(claim.location)
        return self._holder_write(
            claim,
            update=f"SET {names.field('state')} = :released REMOVE {names.field('lease_until_ms')}",
            condition=f"{names.field('token')} = :token AND {names.field('state')} = :pending",
            names=names,
            values={":token": claim.token, ":pending": PENDING, ":released": RELEASED},
            already_done=lambda record: record.state == RELEASED,
        )

    def update_held(self, claim: Claim, *, add: Mapping[str, int] | None = None) -> WriteResult:
        """Add to counters on the claim record itself (e.g. an attempt count), only while held.

        Fenced like every holder write: a stale holder's update never lands (STOLEN). Not safe
        to blindly retry after an unknown answer (the count could rise twice); a caller that
        counts attempts accepts that a lost answer over-counts by one, never under-counts.
        """
        if not add:
            raise ValueError("update_held needs something to add")
        names = _Names(claim.location)
        values: dict[str, Any] = {":token": claim.token, ":pending": PENDING}
        adds = []
        for index, (name, delta) in enumerate(add.items()):
            adds.append(f"{names.field(name)} :d{index}")
            values[f":d{index}"] = delta
        return self._holder_write(
            claim,
            update="ADD " + ", ".join(adds),
            condition=f"{names.field('token')} = :token AND {names.field('state')} = :pending",
            names=names,
            values=values,
            already_done=lambda record: False,
        )

    def fence(self, claim: Claim) -> dict[str, Any]:
        """The ConditionCheck that makes a transaction land only while ``claim`` is held."""
        names = _Names(claim.location)
        condition = f"{names.field('token')} = :token AND {names.field('state')} = :pending"
        return {
            "ConditionCheck": {
                "TableName": claim.location.table,
                "Key": dict(claim.location.key),
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names.used(condition),
                "ExpressionAttributeValues": serialize_values({":token": claim.token, ":pending": PENDING}),
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def write_fenced(self, claim: Claim, transact_items: Sequence[Mapping[str, Any]]) -> WriteResult:
        """Run ``transact_items`` (TransactWriteItems entries) only while ``claim`` is held.

        A failed fence is STOLEN (or GONE); a failed condition of the caller's own items is
        reported with the cancellation reasons (status OK is never returned for it).
        """
        try:
            client("dynamodb").transact_write_items(TransactItems=[self.fence(claim), *transact_items])
            return WriteResult(Write.OK)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons") or []
            fence_reason = reasons[0] if reasons else {}
            if fence_reason.get("Code") == "ConditionalCheckFailed":
                record = _record_at(to_plain(fence_reason.get("Item")), claim.location.path)
                status = Write.GONE if record is None else Write.STOLEN
                return WriteResult(status, current=record, cancellation_reasons=reasons)
            if any(reason.get("Code") not in (None, "None", "ConditionalCheckFailed") for reason in reasons):
                raise  # a conflict or throttle: transient, the caller retries the whole thing
            return WriteResult(Write.CONDITION_FAILED, cancellation_reasons=reasons)

    def reopen_item(
        self,
        location: ClaimLocation,
        seen: ClaimRecord,
        *,
        set_attributes: Mapping[str, Any] | None = None,
        remove_attributes: Sequence[str] = (),
        append_to: tuple[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The TransactWriteItems Update that reopens the terminal claim ``seen`` (an operator's act).

        Terminal claims never change on the hot path; an operator re-running the work reopens
        one: back to ``pending`` with a fresh token nobody holds and the next generation (every
        earlier holder is fenced out) and a lease already run out (reclaimable by whoever comes
        first, through the normal takeover). Conditional on state, token and generation being
        exactly ``seen``'s, so a claim that changed since it was read is not reopened (the
        transaction is cancelled). ``append_to`` = (attribute, entry) appends to a list
        attribute (a history). Top-level claims only.
        """
        if location.path:
            raise ValueError("reopen_item is for top-level claims")
        if not seen.is_terminal:
            raise ValueError("only a terminal claim is reopened; an open one is taken over")
        names = _Names(location)
        now = self._clock()
        values: dict[str, Any] = {
            ":pending": PENDING,
            ":token": "reopened-" + self._new_token(),
            ":generation": seen.generation + 1,
            ":lease": now - 1,
            ":now": now,
            ":seen_state": seen.state,
        }
        sets = [
            f"{names.field('state')} = :pending",
            f"{names.field('token')} = :token",
            f"{names.field('generation')} = :generation",
            f"{names.field('lease_until_ms')} = :lease",
            f"{names.field('claimed_at_ms')} = :now",
        ]
        for index, (name, value) in enumerate((set_attributes or {}).items()):
            sets.append(f"{names.field(name)} = :s{index}")
            values[f":s{index}"] = value
        if append_to is not None:
            attribute, entry = append_to
            history = names.field(attribute)
            sets.append(f"{history} = list_append(if_not_exists({history}, :empty), :entry)")
            values[":empty"], values[":entry"] = [], [dict(entry)]
        removes = [names.field(name) for name in ("settled_at_ms", *remove_attributes)]
        condition = f"{names.field('state')} = :seen_state AND "
        if seen.token is not None:
            condition += f"{names.field('token')} = :seen_token AND "
            values[":seen_token"] = seen.token
        else:
            condition += f"attribute_not_exists({names.field('token')}) AND "
        condition += names.generation_matches(seen)
        if seen.generation:
            values[":seen_generation"] = seen.generation
        update = "SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes)
        return {
            "Update": {
                "TableName": location.table,
                "Key": dict(location.key),
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names.used(update, condition),
                "ExpressionAttributeValues": serialize_values(values),
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def wait_while_held(
        self,
        location: ClaimLocation,
        held: ClaimRecord | None,
        deadline_monotonic: float,
        poll_seconds: float = 0.25,
    ) -> ClaimRecord | None:
        """Poll ``location`` while ``held`` (and then what is read) is a live claim.

        Returns the record once it is no longer live (terminal, released, expired, or None when
        it is gone): the caller acquires again with it as ``seen``. Raises ``ClaimHeldError``
        with the lease left when ``deadline_monotonic`` (``time.monotonic()``) passes first. Never
        sleeps past the deadline or the lease. Read failures (ClientError, BotoCoreError)
        propagate.
        """
        current = held
        while current is not None and current.is_live(self._clock()):
            lease_left_ms = (current.lease_until_ms or 0) - self._clock()
            wait_left = deadline_monotonic - time.monotonic()
            if wait_left <= 0:
                raise ClaimHeldError(location, current, max(lease_left_ms, 0))
            time.sleep(max(0.0, min(poll_seconds, lease_left_ms / 1000, wait_left)))
            current = self.read(location)
        return current

    def read(self, location: ClaimLocation) -> ClaimRecord | None:
        """The record as stored now (consistent read, only the claim's attributes)."""
        request: dict[str, Any] = {"TableName": location.table, "Key": dict(location.key), "ConsistentRead": True}
        if location.path:
            # Only the claim's map, not the (possibly large) item around it. A top-level claim
            # shares its item with the caller's attributes, so that item is read whole.
            names = _Names(location)
            request["ProjectionExpression"] = ".".join(names.used_path())
            request["ExpressionAttributeNames"] = names.used(request["ProjectionExpression"])
        response = client("dynamodb").get_item(**request)
        return _record_at(to_plain(response.get("Item")), location.path)

    # -- plumbing ----------------------------------------------------------------------------

    def _holder_write(
        self,
        claim: Claim,
        *,
        update: str,
        condition: str,
        names: _Names,
        values: Mapping[str, Any],
        already_done: Callable[[ClaimRecord], bool],
    ) -> WriteResult:
        outcome = self._update(claim.location, update=update, condition=condition, names=names, values=values)
        if outcome.won:
            return WriteResult(Write.OK)
        current = outcome.record
        if current is None:
            return WriteResult(Write.GONE)
        if current.token != claim.token:
            return WriteResult(Write.STOLEN, current=current)
        if already_done(current):
            return WriteResult(Write.OK, current=current)  # a retry of a write that landed
        return WriteResult(Write.SETTLED, current=current)

    def _update(
        self,
        location: ClaimLocation,
        *,
        update: str,
        condition: str,
        names: _Names,
        values: Mapping[str, Any],
        return_old: bool = False,
    ) -> _UpdateOutcome:
        if location.path:
            # A nested claim lives in an existing item and never creates it.
            condition = f"attribute_exists({names.key_attribute()}) AND ({condition})"
        request: dict[str, Any] = {
            "TableName": location.table,
            "Key": dict(location.key),
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names.used(update, condition),
            "ReturnValues": "ALL_OLD" if return_old else "NONE",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if values:
            request["ExpressionAttributeValues"] = serialize_values(values)
        try:
            response = client("dynamodb").update_item(**request)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            item = to_plain(exc.response.get("Item"))
            return _UpdateOutcome(False, item, _record_at(item, location.path))
        item = to_plain(response.get("Attributes")) if return_old else None
        return _UpdateOutcome(True, item, None)


class ClaimContentionError(RuntimeError):
    """The record changed on every one of ``MAX_ACQUIRE_WRITES`` writes: try again later."""


@dataclass(frozen=True)
class _UpdateOutcome:
    won: bool
    item: Mapping[str, Any] | None
    record: ClaimRecord | None


class _Names:
    """Expression attribute names for one location (``#p0.#p1.#f_state`` or ``#f_state``)."""

    def __init__(self, location: ClaimLocation) -> None:
        self._location = location
        self._names: dict[str, str] = {f"#p{index}": part for index, part in enumerate(location.path)}
        self._prefix = "".join(f"#p{index}." for index in range(len(location.path)))

    def field(self, name: str) -> str:
        placeholder = f"#f_{len(self._names)}"
        for existing, value in self._names.items():
            if value == name and existing.startswith("#f_"):
                placeholder = existing
                break
        self._names[placeholder] = name
        return f"{self._prefix}{placeholder}"

    def key_attribute(self) -> str:
        self._names["#key"] = next(iter(self._location.key))
        return "#key"

    def generation_matches(self, current: ClaimRecord) -> str:
        if current.generation:
            return f"{self.field('generation')} = :seen_generation"
        return f"attribute_not_exists({self.field('generation')})"

    def set_record(self, record: Mapping[str, Any], values: dict[str, Any]) -> str:
        if self._location.path:
            path = ".".join(self.used_path())
            values[":record"] = dict(record)
            return f"SET {path} = :record"
        sets = []
        for index, (name, value) in enumerate(record.items()):
            sets.append(f"{self.field(name)} = :r{index}")
            values[f":r{index}"] = value
        return "SET " + ", ".join(sets)

    def absent_target(self) -> str:
        """What must not exist for a fresh claim: the whole map of a nested claim (any value
        there, even one that is not a claim record, blocks it), the token of a top-level one
        (the item itself may already hold the caller's data)."""
        return ".".join(self.used_path()) if self._location.path else self.field("token")

    def used_path(self) -> list[str]:
        return [f"#p{index}" for index in range(len(self._location.path))]

    def used(self, *expressions: str) -> dict[str, str]:
        text = " ".join(expressions)
        return {placeholder: name for placeholder, name in self._names.items() if placeholder in text}


def _record_at(item: Mapping[str, Any] | None, path: tuple[str, ...]) -> ClaimRecord | None:
    if not path:
        # A top-level claim shares its item with the caller's data: no token, no claim yet.
        return ClaimRecord.parse(item) if item and "token" in item else None
    value: Any = item
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return ClaimRecord.parse(value)
