"""The fan-out world in moto: the three tables, rows, and Lambda events read from the real stream.

``FanOutTables`` creates the task-events table (stream NEW_AND_OLD_IMAGES), the task table and
the repo table in the moto server the environment points at, writes rows the way the platform
does, and turns what the task-events table's stream really emitted (dynamodbstreams
GetRecords) into the event Lambda's DynamoDB event source mapping would deliver. Nothing is
hand-written: sequence numbers, keys and images are moto's.

moto emits a stream record for every put, even one that changes nothing (as a MODIFY).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import ModuleType
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from tests.support.ddb_stream import StreamReader

TASK_EVENTS_TABLE = "TaskEvents"
TASK_TABLE = "Tasks"
REPO_TABLE = "Repos"
EMAIL_SENDER = "bgagent@example.com"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _ddb_item(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _serializer.serialize(_decimals(value)) for name, value in row.items()}


def _decimals(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decimals(v) for v in value]
    return value


@dataclass(frozen=True)
class FakeLambdaContext:
    """What Lambda passes as ``context``: the fields Powertools' Logger reads, and the remaining
    time, counting down from ``timeout_ms`` since the context was made (the invocation start)."""

    function_name: str = "FanOutFn"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:FanOutFn"
    aws_request_id: str = "req-1"
    timeout_ms: int = 60_000  # FanOutConsumer's function timeout
    started_at: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self.timeout_ms - (time.monotonic() - self.started_at) * 1000))


class FanOutTables:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.ddb = boto3.client("dynamodb", endpoint_url=endpoint)
        self.streams = boto3.client("dynamodbstreams", endpoint_url=endpoint)
        self.stream_arn = ""
        self._stream: StreamReader

    # -- setup -----------------------------------------------------------------------------

    def create(self, *, lookup_table_streams: bool = True) -> FanOutTables:
        """The three tables; ``lookup_table_streams=False`` leaves the task and repo tables without a
        stream (nothing here reads them; the benchmark spares moto the copying)."""
        events = self.ddb.create_table(
            TableName=TASK_EVENTS_TABLE,
            KeySchema=[
                {"AttributeName": "task_id", "KeyType": "HASH"},
                {"AttributeName": "event_id", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "task_id", "AttributeType": "S"},
                {"AttributeName": "event_id", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        stream = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
        for name, key in ((TASK_TABLE, "task_id"), (REPO_TABLE, "repo")):
            self.ddb.create_table(
                TableName=name,
                KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
                **({"StreamSpecification": stream} if lookup_table_streams else {}),
            )
        self.stream_arn = events["TableDescription"]["LatestStreamArn"]
        self._stream = StreamReader(self.streams, self.stream_arn)
        return self

    # -- rows --------------------------------------------------------------------------------

    def put_task(self, task_id: str, **attributes: Any) -> None:
        self.ddb.put_item(TableName=TASK_TABLE, Item=_ddb_item({"task_id": task_id, **attributes}))

    def put_repo(self, repo: str, **attributes: Any) -> None:
        self.ddb.put_item(TableName=REPO_TABLE, Item=_ddb_item({"repo": repo, **attributes}))

    def task(self, task_id: str) -> dict[str, Any]:
        item = self.ddb.get_item(TableName=TASK_TABLE, Key={"task_id": {"S": task_id}}, ConsistentRead=True)["Item"]
        return {name: _deserializer.deserialize(value) for name, value in item.items()}

    def update_task(
        self, task_id: str, expression: str, names: dict[str, str], values: dict[str, Any] | None = None
    ) -> None:
        kwargs: dict[str, Any] = {"ExpressionAttributeNames": names}
        if values:
            kwargs["ExpressionAttributeValues"] = _ddb_item(values)
        self.ddb.update_item(
            TableName=TASK_TABLE, Key={"task_id": {"S": task_id}}, UpdateExpression=expression, **kwargs
        )

    def put_event(
        self,
        task_id: str,
        event_id: str,
        event_type: str,
        *,
        timestamp: str = "2026-11-23T10:00:00Z",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        row: dict[str, Any] = {
            "task_id": task_id,
            "event_id": event_id,
            "event_type": event_type,
            "timestamp": timestamp,
        }
        if metadata is not None:
            row["metadata"] = dict(metadata)
        self.put_raw_event(_ddb_item(row))

    def put_raw_event(self, item: dict[str, Any]) -> None:
        """An event row exactly as given in DynamoDB JSON (for malformed producers)."""
        self.ddb.put_item(TableName=TASK_EVENTS_TABLE, Item=item)

    def delete_event(self, task_id: str, event_id: str) -> None:
        self.ddb.delete_item(TableName=TASK_EVENTS_TABLE, Key={"task_id": {"S": task_id}, "event_id": {"S": event_id}})

    # -- the stream ----------------------------------------------------------------------------

    def read_stream(self) -> list[dict[str, Any]]:
        """Every stream record emitted since the previous read, in stream order."""
        return self._stream.read()

    def lambda_event(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return self._stream.lambda_event(records)

    def next_batch(self) -> dict[str, Any]:
        return self._stream.next_batch()


def sequence_numbers(event: Mapping[str, Any]) -> list[str]:
    return [record["dynamodb"]["SequenceNumber"] for record in event["Records"]]


def reported(response: Mapping[str, Any]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


def moto_sent_emails(endpoint: str) -> list[dict[str, Any]]:
    """Mails moto's SES accepted (moto's model inspection API, over HTTP)."""
    with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=10) as response:
        data = json.loads(response.read())
    return list(data.get("ses", {}).get("Message", []))


def fresh_handler_module() -> ModuleType:
    """Import handlers.fanout.handler anew, so its cold start reads the current environment."""
    sys.modules.pop("handlers.fanout.handler", None)
    return importlib.import_module("handlers.fanout.handler")


def redelivery(event: Mapping[str, Any], response: Mapping[str, Any]) -> dict[str, Any]:
    """What Lambda sends next after a partial failure: the batch from the lowest reported record on."""
    failed = reported(response)
    if not failed:
        return {"Records": []}
    checkpoint = min(int(seq) for seq in failed)
    return {"Records": [r for r in event["Records"] if int(r["dynamodb"]["SequenceNumber"]) >= checkpoint]}
