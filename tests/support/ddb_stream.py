"""Read a moto DynamoDB stream with GetRecords and wrap it the way Lambda's mapping would.

moto's own stream -> Lambda mapping is broken (it invokes inside PutItem and ignores batch
sizes and batch item failures), so stream handlers are driven from here instead.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any


class StreamReader:
    """Every record of one table's (single-shard) stream, from TRIM_HORIZON, batch by batch."""

    def __init__(self, streams: Any, stream_arn: str) -> None:
        self._streams = streams
        self.stream_arn = stream_arn
        shard = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0]["ShardId"]
        self._iterator: str | None = streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]

    def read(self) -> list[dict[str, Any]]:
        """Every stream record emitted since the previous read, in stream order."""
        records: list[dict[str, Any]] = []
        while True:
            response = self._streams.get_records(ShardIterator=self._iterator)
            self._iterator = response.get("NextShardIterator")
            if not response["Records"]:
                return records
            records.extend(response["Records"])

    def lambda_event(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Wrap stream records the way the event source mapping does."""
        wrapped = []
        for record in records:
            approximate = record["dynamodb"].get("ApproximateCreationDateTime")
            record = json.loads(json.dumps(record, default=str))
            if isinstance(approximate, datetime):
                record["dynamodb"]["ApproximateCreationDateTime"] = int(approximate.timestamp())  # Lambda: epoch
            record["eventSourceARN"] = self.stream_arn
            wrapped.append(record)
        return {"Records": wrapped}

    def next_batch(self) -> dict[str, Any]:
        return self.lambda_event(self.read())
