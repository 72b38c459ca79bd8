"""The harness's moto server is atomic for DynamoDB, as AWS is: one winner per race, every time.

Stock moto server let two concurrent ``attribute_not_exists`` writers both win in 16 of 300
races here. These races run 2 to 8 writers released at once by a barrier against one item, in
three shapes (put-if-absent, compare-and-set on a version, TransactWriteItems with a
ConditionCheck), and assert what is stored, not only what the writers were told.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.claim_tables import create_pk_table
from tests.support.moto_server import MotoServer, SerialisedDynamoDB

RACES_PER_SHAPE = 340  # three shapes: 1,020 races in all
MAX_WRITERS = 8
RACES_PER_ROUND = 20
TABLE = "races"
LOSING_CODES = frozenset({"ConditionalCheckFailedException", "TransactionCanceledException"})


@pytest.fixture
def dynamodb(aws: MotoServer) -> Any:
    ddb = boto3.client(
        "dynamodb",
        endpoint_url=aws.endpoint,
        config=Config(max_pool_connections=MAX_WRITERS * 2, retries={"total_max_attempts": 1}),
    )
    create_pk_table(ddb, TABLE)
    return ddb


def _race(pool: ThreadPoolExecutor, writers: int, attempt: Callable[[int], None]) -> list[int]:
    """Release ``writers`` calls of ``attempt`` at once; return the writers that won."""
    barrier = threading.Barrier(writers)

    def one(writer: int) -> int | None:
        barrier.wait()
        try:
            attempt(writer)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in LOSING_CODES:
                return None
            raise
        return writer

    return [winner for winner in pool.map(one, range(writers)) if winner is not None]


def _batch_put(ddb: Any, items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), 25):
        chunk = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        ddb.batch_write_item(RequestItems={TABLE: chunk})


def _batch_delete(ddb: Any, keys: list[str]) -> None:
    for start in range(0, len(keys), 25):
        chunk = [{"DeleteRequest": {"Key": {"pk": {"S": key}}}} for key in keys[start : start + 25]]
        ddb.batch_write_item(RequestItems={TABLE: chunk})


def _scan(ddb: Any) -> dict[str, dict[str, Any]]:
    items: dict[str, dict[str, Any]] = {}
    for page in ddb.get_paginator("scan").paginate(TableName=TABLE, ConsistentRead=True):
        items.update({item["pk"]["S"]: item for item in page["Items"]})
    return items


class PutIfAbsent:
    def prepare(self, ddb: Any, races: list[str]) -> None:
        pass

    def attempt(self, ddb: Any, race: str, writer: int) -> None:
        ddb.put_item(
            TableName=TABLE,
            Item={"pk": {"S": race}, "writer": {"N": str(writer)}},
            ConditionExpression="attribute_not_exists(pk)",
        )


class CompareAndSet:
    def prepare(self, ddb: Any, races: list[str]) -> None:
        _batch_put(ddb, [{"pk": {"S": race}, "version": {"N": "0"}} for race in races])

    def attempt(self, ddb: Any, race: str, writer: int) -> None:
        ddb.update_item(
            TableName=TABLE,
            Key={"pk": {"S": race}},
            UpdateExpression="SET #v = :next, writer = :writer",
            ConditionExpression="#v = :seen",
            ExpressionAttributeNames={"#v": "version"},
            ExpressionAttributeValues={":seen": {"N": "0"}, ":next": {"N": "1"}, ":writer": {"N": str(writer)}},
        )


class TransactionWithConditionCheck:
    """A fence every writer passes (the lease they all believe they hold), the contended
    compare-and-set, and an unconditional effect that must land for the winner only."""

    def prepare(self, ddb: Any, races: list[str]) -> None:
        fences = [{"pk": {"S": f"{race}#fence"}, "token": {"S": "t1"}} for race in races]
        _batch_put(ddb, fences + [{"pk": {"S": race}, "version": {"N": "0"}} for race in races])

    def attempt(self, ddb: Any, race: str, writer: int) -> None:
        ddb.transact_write_items(
            TransactItems=[
                {
                    "ConditionCheck": {
                        "TableName": TABLE,
                        "Key": {"pk": {"S": f"{race}#fence"}},
                        "ConditionExpression": "#t = :token",
                        "ExpressionAttributeNames": {"#t": "token"},
                        "ExpressionAttributeValues": {":token": {"S": "t1"}},
                    }
                },
                {
                    "Update": {
                        "TableName": TABLE,
                        "Key": {"pk": {"S": race}},
                        "UpdateExpression": "SET #v = :next, writer = :writer",
                        "ConditionExpression": "#v = :seen",
                        "ExpressionAttributeNames": {"#v": "version"},
                        "ExpressionAttributeValues": {
                            ":seen": {"N": "0"},
                            ":next": {"N": "1"},
                            ":writer": {"N": str(writer)},
                        },
                    }
                },
                {"Put": {"TableName": TABLE, "Item": {"pk": {"S": f"{race}#effect#{writer}"}}}},
            ]
        )


SHAPES: dict[str, PutIfAbsent | CompareAndSet | TransactionWithConditionCheck] = {
    "put_if_absent": PutIfAbsent(),
    "compare_and_set": CompareAndSet(),
    "transaction_with_condition_check": TransactionWithConditionCheck(),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_race_has_exactly_one_winner(dynamodb: Any, shape: str) -> None:
    rng = random.Random(f"atomic-{shape}")
    races = {f"{shape}-{index}": rng.randint(2, MAX_WRITERS) for index in range(RACES_PER_SHAPE)}
    kind = SHAPES[shape]
    failures: list[str] = []
    names = list(races)
    with ThreadPoolExecutor(max_workers=MAX_WRITERS) as pool:
        # In rounds, each cleared afterwards: moto copies every table a transaction touches (its
        # rollback), so a growing table would make each race slower than the last.
        for start in range(0, len(names), RACES_PER_ROUND):
            round_races = {race: races[race] for race in names[start : start + RACES_PER_ROUND]}
            kind.prepare(dynamodb, list(round_races))
            reported = {
                race: _race(pool, writers, lambda writer, race=race: kind.attempt(dynamodb, race, writer))
                for race, writers in round_races.items()
            }
            stored = _scan(dynamodb)
            for race, writers in round_races.items():
                winners = reported[race]
                stored_writer = stored[race].get("writer", {}).get("N")
                effects = [writer for writer in range(writers) if f"{race}#effect#{writer}" in stored]
                if len(winners) != 1 or stored_writer != str(winners[0]):
                    failures.append(f"race {race} ({writers} writers): told {winners} they won, stored {stored_writer}")
                elif isinstance(kind, TransactionWithConditionCheck) and effects != winners:
                    failures.append(f"race {race}: the effects of {effects} landed, the winner was {winners}")
            _batch_delete(dynamodb, list(stored))
    assert not failures, f"{len(failures)} of {len(races)} races broke atomicity:\n" + "\n".join(failures[:10])
    assert min(races.values()) == 2
    assert max(races.values()) == MAX_WRITERS


def test_middleware_runs_dynamodb_requests_one_at_a_time_and_others_concurrently() -> None:
    active = {"dynamodb": 0, "other": 0}
    peak = {"dynamodb": 0, "other": 0}
    lock = threading.Lock()

    def slow_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        kind = "dynamodb" if "DynamoDB" in environ.get("HTTP_X_AMZ_TARGET", "") else "other"
        with lock:
            active[kind] += 1
            peak[kind] = max(peak[kind], active[kind])
        time.sleep(0.02)
        with lock:
            active[kind] -= 1
        start_response("200 OK", [])
        return [b"{}"]

    gate = SerialisedDynamoDB(slow_app)
    targets = ["DynamoDB_20120810.UpdateItem", "DynamoDBStreams_20120810.GetRecords", "AmazonSQS.SendMessage"]
    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(lambda i: gate({"HTTP_X_AMZ_TARGET": targets[i % 3]}, lambda *_: None), range(24)))
    assert peak == {"dynamodb": 1, "other": peak["other"]}
    assert peak["other"] > 1
    assert gate.serialised_requests == 16


def test_a_request_that_cannot_get_the_lock_fails_loudly_instead_of_hanging() -> None:
    entered, release = threading.Event(), threading.Event()

    def blocking_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        entered.set()
        release.wait(5)
        start_response("200 OK", [])
        return [b"{}"]

    gate = SerialisedDynamoDB(blocking_app, lock_wait_seconds=0.1)
    environ = {"HTTP_X_AMZ_TARGET": "DynamoDB_20120810.PutItem"}
    holder = threading.Thread(target=lambda: gate(environ, lambda *_: None))
    holder.start()
    entered.wait(5)
    statuses: list[str] = []
    body = gate(environ, lambda status, headers: statuses.append(status))
    release.set()
    holder.join()
    assert statuses == ["500 Internal Server Error"]
    assert b"re-entered the server" in b"".join(body)
