"""StreamRecovery sweeper (EventBridge Scheduler, every 5 minutes): the backstop of the stream.

It finds, through sparse indexes (never a table scan, so its cost grows with the stale items,
not with the tables):

- stale markers: ``bySweepShard`` (every live marker, by ``recordedAtMicros``) older than the
  cutoff (10 minutes: a marker the stream handler is working on is refreshed, so it is never
  that old while someone holds it), at most 128, each redispatched as the stream would;
- reclaimable claims: ``byClaimShard`` (every non-terminal delivery claim, by its lease) whose
  lease has run out, at most 128. A claim whose marker still exists is redispatched through
  it; a claim whose marker is gone (its task was deleted) is taken over and ``abandoned``.

A failure of one item is counted and sampled (at most 8 errors in the answer) and never stops
the others; the next run retries whatever is still there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from handlers.common.aws import client
from handlers.common.claims import Acquire, ClaimContentionError, ClaimLocation, ClaimStore
from handlers.stream_recovery import schema
from handlers.stream_recovery.delivery import Outcome
from handlers.stream_recovery.dispatch import (
    CLAIM_SHARDS,
    DEADLINE_MARGIN_SECONDS,
    Redispatcher,
    StaleClaimError,
)
from handlers.stream_recovery.markers import MalformedMarkerError, parse_new_image

STALE_MARKER_AGE_MICROS = 10 * 60 * 1_000_000
ITEM_LIMIT = 128
ERROR_SAMPLE = 8
ABANDONED = "abandoned"


@dataclass
class SweepReport:
    staleMarkersFound: int = 0
    staleMarkersRecovered: int = 0
    staleMarkersTransientErrors: int = 0
    reclaimableClaimsFound: int = 0
    reclaimableClaimsProcessed: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        if len(self.errors) < ERROR_SAMPLE:
            self.errors.append(message)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Sweeper:
    def __init__(
        self,
        *,
        redispatcher: Redispatcher,
        pending_dispatches_table: str,
        deliveries_table: str,
        claim_expiry_ms: int,
        claim_store: ClaimStore | None = None,
        clock_micros: Callable[[], int] = lambda: time.time_ns() // 1_000,
    ) -> None:
        self._redispatcher = redispatcher
        self._markers_table = pending_dispatches_table
        self._deliveries_table = deliveries_table
        self._claim_expiry_ms = claim_expiry_ms
        self._claims = claim_store or ClaimStore()
        self._clock_micros = clock_micros

    def sweep(self, *, deadline: float | None = None) -> SweepReport:
        """One sweep: stale markers first, then reclaimable claims of other events.

        ``deadline`` (``time.monotonic()``): deliveries are cut to the time left and the sweep stops
        starting new items when less than one attempt remains (the rest waits for the next sweep).
        A claim that the markers pass of this same sweep just tried and left to retry is not
        processed again (its lease ended only because it is still failing).
        """
        report = SweepReport()
        retried: set[tuple[str, int, str]] = set()  # (task pk, event sequence, config id)
        cutoff = self._clock_micros() - STALE_MARKER_AGE_MICROS
        for item in self._index_items(
            self._markers_table, schema.MARKER_SWEEP_INDEX, schema.MARKER_SWEEP_SHARD,
            schema.MARKER_RECORDED_AT_MICROS, cutoff, schema.MARKER_SWEEP_SHARDS,
        ):  # fmt: skip
            report.staleMarkersFound += 1
            if self._out_of_time(deadline):
                report.error(f"marker {_describe(item)}: left for the next sweep (the invocation's time ran out)")
                continue
            try:
                marker = parse_new_image(item)
                result = self._redispatcher.redispatch(marker, deadline=deadline)
                retried.update(
                    (marker.task_pk, marker.event_sequence, config_id)
                    for config_id, outcome in result.outcomes.items()
                    if outcome == Outcome.RETRY
                )
                report.staleMarkersRecovered += 1
            except (ClientError, BotoCoreError, StaleClaimError, LookupError, ClaimContentionError) as exc:
                report.staleMarkersTransientErrors += 1
                report.error(f"marker {_describe(item)}: {type(exc).__name__}: {exc}")
            except MalformedMarkerError as exc:
                report.error(f"marker {_describe(item)}: {exc}")
        now_ms = self._claims.now_ms()
        for item in self._index_items(
            self._deliveries_table, schema.DELIVERY_CLAIM_INDEX, schema.DELIVERY_CLAIM_SHARD,
            schema.DELIVERY_LEASE, now_ms, CLAIM_SHARDS,
        ):  # fmt: skip
            report.reclaimableClaimsFound += 1
            claim_key = (
                schema.task_pk(item[schema.DELIVERY_TENANT]["S"], item[schema.DELIVERY_TASK_ID]["S"]),
                int(item[schema.DELIVERY_EVENT_SEQUENCE]["N"]),
                item[schema.DELIVERY_SK]["S"],
            )
            if claim_key in retried:
                continue  # tried by this sweep's markers pass a moment ago, still failing
            if self._out_of_time(deadline):
                report.error(f"claim {_describe(item)}: left for the next sweep (the invocation's time ran out)")
                continue
            try:
                self._reclaim(item, deadline)
                report.reclaimableClaimsProcessed += 1
            except (
                ClientError,
                BotoCoreError,
                StaleClaimError,
                LookupError,
                KeyError,
                ValueError,
                ClaimContentionError,
            ) as exc:
                report.error(f"claim {_describe(item)}: {type(exc).__name__}: {exc}")
        return report

    def _out_of_time(self, deadline: float | None) -> bool:
        if deadline is None:
            return False
        return deadline - time.monotonic() - DEADLINE_MARGIN_SECONDS < self._redispatcher.policy.attempt_seconds

    def _reclaim(self, item: Mapping[str, Any], deadline: float | None = None) -> None:
        tenant = item[schema.DELIVERY_TENANT]["S"]
        task_id = item[schema.DELIVERY_TASK_ID]["S"]
        sequence = int(item[schema.DELIVERY_EVENT_SEQUENCE]["N"])
        marker_key = {schema.PK: {"S": schema.task_pk(tenant, task_id)}, schema.MARKER_SK: {"N": str(sequence)}}
        marker = (
            client("dynamodb").get_item(TableName=self._markers_table, Key=marker_key, ConsistentRead=True).get("Item")
        )
        if marker:
            self._redispatcher.redispatch(parse_new_image(marker), deadline=deadline)
            return
        # No marker: its task was deleted (or it was consumed while this claim's holder died
        # after the POST). Nothing will ever drive this claim again: settle it as abandoned.
        location = ClaimLocation(
            self._deliveries_table, {schema.PK: item[schema.PK], schema.DELIVERY_SK: item[schema.DELIVERY_SK]}
        )
        taken = self._claims.acquire(location, lease_ms=self._claim_expiry_ms)
        if taken.status is Acquire.ACQUIRED and taken.claim is not None:
            self._claims.confirm(taken.claim, state=ABANDONED, attributes={schema.DELIVERY_REASON: "marker_gone"})

    def _index_items(
        self, table: str, index: str, shard_attribute: str, sort_attribute: str, below: int, shards: int
    ) -> Iterator[Mapping[str, Any]]:
        """Up to ITEM_LIMIT items over all shards whose sort key is below ``below``."""
        left = ITEM_LIMIT
        for shard in range(shards):
            if left <= 0:
                return
            paginator = client("dynamodb").get_paginator("query")
            for page in paginator.paginate(
                TableName=table,
                IndexName=index,
                KeyConditionExpression="#shard = :shard AND #sort < :below",
                ExpressionAttributeNames={"#shard": shard_attribute, "#sort": sort_attribute},
                ExpressionAttributeValues={":shard": {"S": str(shard)}, ":below": {"N": str(below)}},
                PaginationConfig={"MaxItems": left},
            ):
                for item in page["Items"]:
                    left -= 1
                    yield item
                    if left <= 0:
                        return


def _describe(item: Mapping[str, Any]) -> str:
    pk = item.get(schema.PK, {}).get("S", "?")
    sort = item.get(schema.MARKER_SK) or item.get(schema.DELIVERY_SK) or {}
    return f"{pk}/{next(iter(sort.values()), '?') if isinstance(sort, Mapping) else '?'}"
