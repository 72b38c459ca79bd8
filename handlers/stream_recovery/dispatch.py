"""Redispatch of one pending-dispatch marker: every eligible webhook, each under its own claim.

Called by the stream handler (a marker's INSERT) and by the sweeper (a stale marker, a
reclaimable claim); both may run for the same marker at once, and the stream may deliver an
INSERT twice: the claims make that safe.

For a marker (tenant, task, event sequence):

1. read the task (consistently). Gone -> delete the marker: nothing is left to notify (success);
2. refresh the marker (``recordedAtMicros`` = now, so the sweeper leaves it alone while this
   runs) *only if it still exists* -- an unconditional put (the seed's) could resurrect a
   marker another worker just deleted and cause a redispatch;
3. read the event (never overwritten, so every redelivery sends byte-identical content) and the
   task's push configs; a config is eligible iff ``registered_after_event_sequence < sequence``;
4. per eligible config, claim its delivery (``deliveries`` item, the shared claim primitive;
   lease ``claim_expiry_ms``): settled -> terminal already; held -> someone else is on it;
   acquired -> POST (``delivery.deliver``) with the attempt-started write fenced on the claim
   (``update_held``: a stale holder stops before its POST), then confirm the outcome:
   ``succeeded`` / ``gave_up`` / ``abandoned`` are terminal; ``retry`` (the horizon ran out)
   ends the lease at once so the sweeper may take it over (the attempt count is kept);
5. delete the marker only when every eligible config is terminal for this event.

Crash windows: after the claim and before the POST, the lease runs out and the next attempt
(a redelivered record, the sweeper) takes over; after the receiver accepted and before the
confirm, the takeover POSTs again with the same ``webhook-id``: the one at-least-once edge,
which receivers close by de-duplicating on that id; after the confirm, every later attempt
finds the claim settled. A marker deleted while another worker still runs is harmless: that
worker's claims still settle, and nothing resurrects the marker.

Timing (checked by ``DeliveryPolicy.check_fits`` at cold start): the claim lease is longer than
the function timeout, which is longer than one attempt, and the retry horizon is shorter than
the lease -- so a live holder never POSTs after its lease could have been taken over.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from handlers.common.aws import client
from handlers.common.claims import Acquire, Claim, ClaimLocation, ClaimStore, Write
from handlers.common.dynamo_items import to_plain
from handlers.stream_recovery import schema
from handlers.stream_recovery.delivery import DeliveryKey, DeliveryPolicy, DeliveryResult, Outcome, deliver
from handlers.stream_recovery.markers import PendingDispatch, is_eligible
from handlers.stream_recovery.writer import PushConfig

CLAIM_SHARDS = 8
# Kept free at the end of an invocation: the outcome write and the marker delete after the last
# POST, and the batch response, must still fit before Lambda's timeout.
DEADLINE_MARGIN_SECONDS = 3.0
DEFERRED = "deferred"  # not started: too little time left in this invocation; the sweeper retries


class StaleClaimError(RuntimeError):
    """Our delivery claim was taken over: this worker stops before POSTing."""


@dataclass(frozen=True)
class DispatchTables:
    tasks: str
    task_events: str
    push_configs: str
    pending_dispatches: str
    deliveries: str


@dataclass
class RedispatchResult:
    task_missing: bool = False
    marker_deleted: bool = False
    eligible: int = 0
    terminal: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)  # config id -> outcome or "held"/"settled"

    @property
    def complete(self) -> bool:
        return self.task_missing or self.terminal == self.eligible


class Redispatcher:
    def __init__(
        self,
        *,
        tables: DispatchTables,
        policy: DeliveryPolicy,
        claim_expiry_ms: int,
        claim_store: ClaimStore | None = None,
        clock_micros: Callable[[], int] = lambda: time.time_ns() // 1_000,
        deliver_fn: Callable[..., DeliveryResult] = deliver,
    ) -> None:
        if claim_expiry_ms <= policy.retry_horizon_seconds * 1000:
            raise ValueError("the claim expiry must be longer than the delivery retry horizon")
        self._tables = tables
        self._policy = policy
        self._claim_expiry_ms = claim_expiry_ms
        self._claims = claim_store or ClaimStore()
        self._clock_micros = clock_micros
        self._deliver = deliver_fn

    @property
    def policy(self) -> DeliveryPolicy:
        return self._policy

    def redispatch(self, marker: PendingDispatch, *, deadline: float | None = None) -> RedispatchResult:
        """Deliver ``marker``'s event to its eligible configs.

        ``deadline`` (``time.monotonic()``, the invocation's end): each delivery's horizon is cut
        to the time left, and a config whose delivery could not finish one attempt before it is
        not claimed (``deferred``: the marker stays, the sweeper or a redelivery does it later), so
        a slow receiver can never push the invocation into its timeout.
        """
        result = RedispatchResult()
        ddb = client("dynamodb")
        pk = marker.task_pk
        task = ddb.get_item(TableName=self._tables.tasks, Key={schema.PK: {"S": pk}}, ConsistentRead=True).get("Item")
        if not task:
            self._delete_marker(marker)
            result.task_missing = result.marker_deleted = True
            return result
        if not self._refresh_marker(marker):
            return result  # consumed meanwhile by another worker: nothing to do
        event = self._read_event(marker)
        if event is None:
            raise LookupError(f"event {marker.event_sequence} of task {pk} is missing while its marker exists")
        configs = [
            config
            for config in self._configs(pk)
            if is_eligible(config.registered_after_event_sequence, marker.event_sequence)
        ]
        result.eligible = len(configs)
        payload = _payload(marker, event)
        for config in configs:
            outcome = self._deliver_one(marker, config, payload, deadline)
            result.outcomes[config.config_id] = outcome
            if outcome in ("settled", Outcome.SUCCEEDED, Outcome.GAVE_UP, Outcome.ABANDONED):
                result.terminal += 1
        if result.complete:
            self._delete_marker(marker)
            result.marker_deleted = True
        return result

    def _deliver_one(
        self, marker: PendingDispatch, config: PushConfig, payload: Mapping[str, Any], deadline: float | None
    ) -> str:
        horizon = self._policy.retry_horizon_seconds
        if deadline is not None:
            horizon = min(horizon, deadline - time.monotonic() - DEADLINE_MARGIN_SECONDS)
            if horizon < self._policy.attempt_seconds:
                return DEFERRED
        location = ClaimLocation(
            self._tables.deliveries,
            {
                schema.PK: {"S": schema.delivery_pk(marker.tenant, marker.task_id, marker.event_sequence)},
                schema.DELIVERY_SK: {"S": config.config_id},
            },
        )
        acquired = self._claims.acquire(
            location,
            lease_ms=self._claim_expiry_ms,
            attributes={
                schema.DELIVERY_TENANT: marker.tenant,
                schema.DELIVERY_TASK_ID: marker.task_id,
                schema.DELIVERY_EVENT_SEQUENCE: marker.event_sequence,
                schema.DELIVERY_CLAIM_SHARD: claim_shard(marker, config.config_id),
            },
        )
        if acquired.status is Acquire.SETTLED:
            return "settled"
        if acquired.status is Acquire.HELD or acquired.claim is None:
            return "held"
        claim = acquired.claim
        # The count lives on the claim item and survives takeovers: max_attempts spans them all.
        prior = int(claim.previous.attributes.get(schema.DELIVERY_ATTEMPT_COUNT, 0)) if claim.previous else 0
        delivered = self._deliver(
            config.to_webhook_config(),
            DeliveryKey(marker.tenant, marker.task_id, marker.event_sequence, config.config_id),
            payload,
            policy=self._policy,
            prior_attempts=prior,
            horizon_seconds=horizon,
            before_attempt=lambda number: self._attempt_started(claim),
        )
        if delivered.outcome is Outcome.RETRY:
            self._claims.expire(claim)  # reclaimable now: the sweeper (or a redelivery) retries later
            return Outcome.RETRY
        confirmed = self._claims.confirm(
            claim,
            state=str(delivered.outcome),
            attributes={
                schema.DELIVERY_REASON: delivered.reason,
                schema.DELIVERY_LAST_STATUS: delivered.last_status if delivered.last_status is not None else 0,
            },
        )
        if not confirmed.ok:
            raise StaleClaimError(f"delivery claim {config.config_id} of {marker.task_pk} was taken over")
        return str(delivered.outcome)

    def _attempt_started(self, claim: Claim) -> None:
        written = self._claims.update_held(claim, add={schema.DELIVERY_ATTEMPT_COUNT: 1})
        if written.status is not Write.OK:
            raise StaleClaimError("the delivery claim was taken over before this attempt")

    def _refresh_marker(self, marker: PendingDispatch) -> bool:
        try:
            client("dynamodb").update_item(
                TableName=self._tables.pending_dispatches,
                Key=_marker_key(marker),
                UpdateExpression="SET #at = :now",
                ConditionExpression="attribute_exists(#pk)",
                ExpressionAttributeNames={"#at": schema.MARKER_RECORDED_AT_MICROS, "#pk": schema.PK},
                ExpressionAttributeValues={":now": {"N": str(self._clock_micros())}},
            )
            return True
        except client("dynamodb").exceptions.ConditionalCheckFailedException:
            return False

    def _delete_marker(self, marker: PendingDispatch) -> None:
        client("dynamodb").delete_item(TableName=self._tables.pending_dispatches, Key=_marker_key(marker))

    def _read_event(self, marker: PendingDispatch) -> dict[str, Any] | None:
        item = (
            client("dynamodb")
            .get_item(
                TableName=self._tables.task_events,
                Key={schema.PK: {"S": marker.task_pk}, schema.EVENT_SEQUENCE: {"N": str(marker.event_sequence)}},
                ConsistentRead=True,
            )
            .get("Item")
        )
        return to_plain(item)

    def _configs(self, pk: str) -> list[PushConfig]:
        configs: list[PushConfig] = []
        paginator = client("dynamodb").get_paginator("query")
        for page in paginator.paginate(
            TableName=self._tables.push_configs,
            KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames={"#pk": schema.PK},
            ExpressionAttributeValues={":pk": {"S": pk}},
            ConsistentRead=True,
        ):
            configs.extend(PushConfig.from_item(item) for item in page["Items"])
        return configs


def _marker_key(marker: PendingDispatch) -> dict[str, Any]:
    return {schema.PK: {"S": marker.task_pk}, schema.MARKER_SK: {"N": str(marker.event_sequence)}}


def claim_shard(marker: PendingDispatch, config_id: str) -> str:
    """The delivery claim's partition of the sweeper's ``byClaimShard`` index (stable per claim)."""
    key = f"{marker.task_pk}#{marker.event_sequence}#{config_id}"
    return str(zlib.crc32(key.encode()) % CLAIM_SHARDS)


def _payload(marker: PendingDispatch, event: Mapping[str, Any]) -> dict[str, Any]:
    """The A2A-style status update, built only from the stored event (identical on every retry)."""
    status: dict[str, Any] = {"state": str(event.get(schema.EVENT_STATE))}
    message = event.get(schema.EVENT_STATUS_MESSAGE)
    if message is not None:
        status["message"] = message
    return {
        "kind": "status-update",
        "tenant": marker.tenant,
        "taskId": marker.task_id,
        "eventSequence": marker.event_sequence,
        "status": status,
        "final": True,
        "recordedAtMicros": int(event.get(schema.EVENT_RECORDED_AT_MICROS, 0)),
    }
