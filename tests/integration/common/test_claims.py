"""The claim primitive against the (atomic) moto server: every state, every fencing rule."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from handlers.common.claims import (
    PENDING,
    RELEASED,
    Acquire,
    ClaimLocation,
    ClaimStore,
    ClaimTargetMissingError,
    Write,
)
from tests.support.claim_tables import FakeClock, create_pk_table
from tests.support.moto_server import MotoServer

TABLE = "claims"
LEASE_MS = 10_000


@pytest.fixture
def ddb(aws: MotoServer) -> Any:
    ddb = boto3.client("dynamodb")
    create_pk_table(ddb, TABLE)
    return ddb


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> ClaimStore:
    return ClaimStore(clock=clock)


def own_item(pk: str = "job-1") -> ClaimLocation:
    return ClaimLocation(TABLE, {"pk": {"S": pk}})


def stored(ddb: Any, pk: str = "job-1") -> dict[str, Any]:
    return ddb.get_item(TableName=TABLE, Key={"pk": {"S": pk}}, ConsistentRead=True).get("Item", {})


def test_a_fresh_claim_is_generation_one_and_a_second_claimant_sees_it_held(
    ddb: Any, store: ClaimStore, clock: FakeClock
) -> None:
    first = store.acquire(own_item(), lease_ms=LEASE_MS, attributes={"worker": "a"})
    assert first.status is Acquire.ACQUIRED and first.claim is not None
    assert first.claim.generation == 1 and not first.claim.takeover
    item = stored(ddb)
    assert item["state"]["S"] == PENDING and item["worker"]["S"] == "a"
    assert int(item["lease_until_ms"]["N"]) == clock.now_ms + LEASE_MS

    second = store.acquire(own_item(), lease_ms=LEASE_MS)
    assert second.status is Acquire.HELD
    assert second.current is not None and second.current.token == first.claim.token


def test_an_expired_claim_is_taken_over_and_the_stale_holder_can_write_nothing(
    ddb: Any, store: ClaimStore, clock: FakeClock
) -> None:
    stale = store.acquire(own_item(), lease_ms=LEASE_MS).claim
    assert stale is not None
    clock.advance(LEASE_MS + 1)
    result = store.acquire(own_item(), lease_ms=LEASE_MS)
    assert result.status is Acquire.ACQUIRED and result.claim is not None
    fresh = result.claim
    assert fresh.takeover and fresh.generation == 2
    assert fresh.previous is not None and fresh.previous.token == stale.token
    assert fresh.first_claimed_at_ms == stale.first_claimed_at_ms

    effect = {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "effect"}, "by": {"S": "stale"}}}}
    assert store.extend(stale, lease_ms=LEASE_MS).status is Write.STOLEN
    assert store.expire(stale).status is Write.STOLEN
    assert store.confirm(stale, state="done").status is Write.STOLEN
    assert store.release(stale).status is Write.STOLEN
    assert store.write_fenced(stale, [effect]).status is Write.STOLEN
    assert stored(ddb, "effect") == {}
    assert stored(ddb)["token"]["S"] == fresh.token and stored(ddb)["state"]["S"] == PENDING

    holders_effect = {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "effect"}, "by": {"S": "fresh"}}}}
    assert store.write_fenced(fresh, [holders_effect]).ok
    assert stored(ddb, "effect")["by"]["S"] == "fresh"


def test_confirm_is_final_and_a_retried_confirm_is_recognised(ddb: Any, store: ClaimStore, clock: FakeClock) -> None:
    claim = store.acquire(own_item(), lease_ms=LEASE_MS).claim
    assert claim is not None
    assert store.confirm(claim, state="done", attributes={"result": "r-1"}).ok
    item = stored(ddb)
    assert item["state"]["S"] == "done" and item["result"]["S"] == "r-1" and "lease_until_ms" not in item

    assert store.confirm(claim, state="done").ok  # the answer of the first attempt was lost
    assert store.confirm(claim, state="failed").status is Write.SETTLED
    assert store.extend(claim, lease_ms=LEASE_MS).status is Write.SETTLED
    clock.advance(10 * LEASE_MS)
    after = store.acquire(own_item(), lease_ms=LEASE_MS)
    assert after.status is Acquire.SETTLED and after.current is not None and after.current.state == "done"


def test_a_released_claim_is_claimed_again_at_once_with_a_higher_generation(ddb: Any, store: ClaimStore) -> None:
    first = store.acquire(own_item(), lease_ms=LEASE_MS).claim
    assert first is not None
    assert store.release(first).ok
    assert store.release(first).ok  # retry after a lost answer
    assert stored(ddb)["state"]["S"] == RELEASED
    again = store.acquire(own_item(), lease_ms=LEASE_MS)
    assert again.status is Acquire.ACQUIRED and again.claim is not None
    assert again.claim.generation == 2 and not again.claim.takeover  # released, not crashed


def test_extend_keeps_the_lease_alive_and_expire_lets_a_takeover_in(
    ddb: Any, store: ClaimStore, clock: FakeClock
) -> None:
    claim = store.acquire(own_item(), lease_ms=LEASE_MS).claim
    assert claim is not None
    clock.advance(LEASE_MS - 1)
    assert store.extend(claim, lease_ms=LEASE_MS).ok
    clock.advance(LEASE_MS - 1)
    assert store.acquire(own_item(), lease_ms=LEASE_MS).status is Acquire.HELD
    assert store.expire(claim, grace_ms=0).ok
    clock.advance(1)
    taken = store.acquire(own_item(), lease_ms=LEASE_MS)
    assert taken.status is Acquire.ACQUIRED and taken.claim is not None and taken.claim.takeover


def test_a_nested_claim_lives_in_its_map_and_never_creates_the_item(ddb: Any, store: ClaimStore) -> None:
    location = ClaimLocation(TABLE, {"pk": {"S": "task-1"}}, ("channel_metadata", "email:e-1"))
    with pytest.raises(ClaimTargetMissingError):
        store.acquire(location, lease_ms=LEASE_MS)
    assert stored(ddb, "task-1") == {}

    ddb.put_item(TableName=TABLE, Item={"pk": {"S": "task-1"}, "channel_metadata": {"M": {}}, "title": {"S": "x"}})
    result = store.acquire(location, lease_ms=LEASE_MS, attributes={"event_id": "e-1"}, return_item=True)
    assert result.status is Acquire.ACQUIRED and result.claim is not None
    assert result.item is not None and result.item["title"] == "x"  # the row as it was
    marker = stored(ddb, "task-1")["channel_metadata"]["M"]["email:e-1"]["M"]
    assert marker["state"]["S"] == PENDING and marker["event_id"]["S"] == "e-1"
    assert store.read(location) is not None

    assert store.confirm(result.claim, state="sent", attributes={"message_id": "m-1"}).ok
    record = store.read(location)
    assert record is not None and record.state == "sent" and record.attributes["message_id"] == "m-1"
    assert store.acquire(location, lease_ms=LEASE_MS).status is Acquire.SETTLED


def test_a_fenced_write_whose_own_condition_fails_is_reported_as_such(ddb: Any, store: ClaimStore) -> None:
    claim = store.acquire(own_item(), lease_ms=LEASE_MS).claim
    assert claim is not None
    ddb.put_item(TableName=TABLE, Item={"pk": {"S": "target"}, "v": {"N": "2"}})
    stale_update = {
        "Update": {
            "TableName": TABLE,
            "Key": {"pk": {"S": "target"}},
            "UpdateExpression": "SET v = :next",
            "ConditionExpression": "v = :seen",
            "ExpressionAttributeValues": {":seen": {"N": "1"}, ":next": {"N": "3"}},
        }
    }
    result = store.write_fenced(claim, [stale_update])
    assert result.status is Write.CONDITION_FAILED
    assert stored(ddb, "target")["v"]["N"] == "2"


def test_racing_takeovers_of_one_expired_lease_have_one_winner(ddb: Any, clock: FakeClock) -> None:
    # Each round: one holder crashes, eight claimants race for the expired lease at once.
    for round_number in range(20):
        location = own_item(f"race-{round_number}")
        crashed = ClaimStore(clock=clock).acquire(location, lease_ms=LEASE_MS).claim
        assert crashed is not None
        clock.advance(LEASE_MS + 1)
        barrier = threading.Barrier(8)

        def claimant(_: int, location: ClaimLocation = location, barrier: threading.Barrier = barrier) -> Acquire:
            barrier.wait()
            return ClaimStore(clock=clock).acquire(location, lease_ms=LEASE_MS).status

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(claimant, range(8)))
        assert statuses.count(Acquire.ACQUIRED) == 1, statuses
        assert statuses.count(Acquire.HELD) == 7
        assert int(stored(ddb, f"race-{round_number}")["generation"]["N"]) == 2


def test_reopening_a_terminal_claim_fences_out_its_holders_and_lets_the_next_claimant_take_it_over(
    ddb: Any, store: ClaimStore, clock: FakeClock
) -> None:
    first = store.acquire(own_item(), lease_ms=LEASE_MS, attributes={"attempts": 3})
    assert first.claim is not None
    assert store.confirm(first.claim, state="gave_up").ok
    settled = store.read(own_item())
    assert settled is not None and settled.is_terminal

    reopen = store.reopen_item(
        own_item(), settled, set_attributes={"attempts": 0}, append_to=("history", {"previousState": "gave_up"})
    )
    ddb.transact_write_items(TransactItems=[reopen])

    reopened = store.read(own_item())
    assert reopened is not None and reopened.state == PENDING and reopened.is_reclaimable(clock())
    assert reopened.generation == first.claim.generation + 1 and reopened.token != first.claim.token
    assert reopened.attributes["attempts"] == 0 and reopened.attributes["history"] == [{"previousState": "gave_up"}]
    # The old holder is fenced out; the next claimant takes the claim over like a crashed one.
    assert store.confirm(first.claim, state="succeeded").status is Write.STOLEN
    again = store.acquire(own_item(), lease_ms=LEASE_MS, seen=reopened)
    assert again.status is Acquire.ACQUIRED and again.claim is not None and again.claim.takeover


def test_a_reopen_of_a_claim_that_changed_since_it_was_read_is_cancelled(
    ddb: Any, store: ClaimStore, clock: FakeClock
) -> None:
    first = store.acquire(own_item(), lease_ms=LEASE_MS)
    assert first.claim is not None and store.confirm(first.claim, state="gave_up").ok
    seen = store.read(own_item())
    assert seen is not None
    ddb.transact_write_items(TransactItems=[store.reopen_item(own_item(), seen)])
    with pytest.raises(ddb.exceptions.TransactionCanceledException):
        ddb.transact_write_items(TransactItems=[store.reopen_item(own_item(), seen)])
    with pytest.raises(ValueError, match="only a terminal claim is reopened"):
        store.reopen_item(own_item(), store.read(own_item()))  # type: ignore[arg-type]
