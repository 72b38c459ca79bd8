"""``python -m handlers.fanout redrive``: run the records named by the on-failure DLQ again.

What the stream's on-failure destination holds is not the records: Lambda sends one message
per batch it gave up on (retries exhausted, record too old), a *failure record* whose
``DDBStreamBatchInfo`` names the shard and the range: ``shardId``, ``startSequenceNumber``,
``endSequenceNumber``, ``streamArn`` (and ``batchSize``). The records themselves stay in the
stream, for its 24 h retention only.

For each DLQ message this command re-reads that range from the stream (GetShardIterator
``AT_SEQUENCE_NUMBER`` start, GetRecords up to end), wraps the records as the event source
mapping would, and runs them through the handler's own batch logic
(``handlers.fanout.handler.process``: same parsing, routing, claims and dedup markers -- so
records that had succeeded in the failed batch are absorbed, not notified twice). The message
is deleted only when every record of its range succeeded; otherwise it is left (it becomes
visible again after its visibility timeout) and the failed sequence numbers are printed.

It refuses, without running anything, a range whose records are gone from the stream:
``TrimmedDataAccessException`` (older than the retention), an iterator that starts past the
range, or a first record that is not the range's start (the start was trimmed). The message
names the shard and the range; the DLQ message is kept for the operator.

Run it with the function's environment (``TASK_TABLE_NAME``, the channel variables, AWS
credentials that may read the stream and the DLQ): the handler module reads it at import.

Exit status: 0 every message redriven (or, with ``--dry-run``, readable); 1 some records failed
again (their messages are kept); 2 a range has expired or cannot be read (refused).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from botocore.exceptions import ClientError

from handlers.common.aws import client

EXIT_OK, EXIT_RECORDS_FAILED, EXIT_REFUSED = 0, 1, 2
EXPIRED_CODES = frozenset({"TrimmedDataAccessException", "ExpiredIteratorException", "ResourceNotFoundException"})
GET_RECORDS_LIMIT = 1000


class RangeUnavailableError(Exception):
    """The records of a DLQ message's range can no longer be read from the stream."""


@dataclass(frozen=True)
class BatchInfo:
    stream_arn: str
    shard_id: str
    start: str
    end: str

    @classmethod
    def from_message(cls, body: str) -> BatchInfo:
        try:
            info = json.loads(body)["DDBStreamBatchInfo"]
            return cls(
                str(info["streamArn"]),
                str(info["shardId"]),
                str(info["startSequenceNumber"]),
                str(info["endSequenceNumber"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a DynamoDB stream failure record (DDBStreamBatchInfo): {exc}") from exc

    def describe(self) -> str:
        return f"shard {self.shard_id} sequence numbers {self.start}..{self.end} of {self.stream_arn}"


def read_range(info: BatchInfo, streams: Any = None) -> list[dict[str, Any]]:
    """The stream records from ``info.start`` to ``info.end`` inclusive, in stream order."""
    streams = streams or client("dynamodbstreams")
    try:
        iterator: str | None = streams.get_shard_iterator(
            StreamArn=info.stream_arn,
            ShardId=info.shard_id,
            ShardIteratorType="AT_SEQUENCE_NUMBER",
            SequenceNumber=info.start,
        )["ShardIterator"]
        records: list[dict[str, Any]] = []
        while iterator:
            response = streams.get_records(ShardIterator=iterator, Limit=GET_RECORDS_LIMIT)
            batch = response.get("Records") or []
            if not batch:
                break  # caught up with an open shard (or the shard is closed)
            for record in batch:
                if int(record["dynamodb"]["SequenceNumber"]) > int(info.end):
                    return _checked(info, records)
                records.append(record)
            iterator = response.get("NextShardIterator")
        return _checked(info, records)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in EXPIRED_CODES:
            raise RangeUnavailableError(f"{info.describe()}: {code} (past the stream's 24 h retention?)") from exc
        raise


def _checked(info: BatchInfo, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not records:
        raise RangeUnavailableError(f"{info.describe()}: the stream has no record in this range any more")
    first = records[0]["dynamodb"]["SequenceNumber"]
    if int(first) != int(info.start):
        raise RangeUnavailableError(f"{info.describe()}: the range starts at {first}; its beginning was trimmed")
    return records


def lambda_event(info: BatchInfo, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The records as Lambda's DynamoDB event source mapping delivers them."""
    wrapped = []
    for record in records:
        approximate = record["dynamodb"].get("ApproximateCreationDateTime")
        copy = json.loads(json.dumps(record, default=str))
        if isinstance(approximate, datetime):
            copy["dynamodb"]["ApproximateCreationDateTime"] = int(approximate.timestamp())
        copy["eventSourceARN"] = info.stream_arn
        wrapped.append(copy)
    return {"Records": wrapped}


def _default_process(event: dict[str, Any]) -> dict[str, Any]:
    from handlers.fanout import handler  # the cold start reads the function's environment

    return handler.process(event)


def redrive(
    dlq_url: str,
    *,
    dry_run: bool = False,
    process: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    out: TextIO = sys.stdout,
    max_messages: int = 1000,
) -> int:
    sqs = client("sqs")
    run = process or _default_process
    status = EXIT_OK
    seen: set[str] = set()
    while len(seen) < max_messages:
        messages = sqs.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=300
        ).get("Messages", [])
        fresh = [m for m in messages if m["MessageId"] not in seen]
        if not fresh:
            break
        for message in fresh:
            seen.add(message["MessageId"])
            status = max(status, _redrive_message(sqs, dlq_url, message, dry_run=dry_run, run=run, out=out))
    print(f"redrive: {len(seen)} DLQ message(s) handled; exit status {status}", file=out)
    return status


def _redrive_message(
    sqs: Any, dlq_url: str, message: Mapping[str, Any], *, dry_run: bool, run: Callable[..., Any], out: TextIO
) -> int:
    try:
        info = BatchInfo.from_message(message["Body"])
    except ValueError as exc:
        print(f"REFUSED message {message['MessageId']}: {exc}; kept in the DLQ", file=out)
        return EXIT_REFUSED
    try:
        records = read_range(info)
    except RangeUnavailableError as exc:
        print(f"REFUSED {exc}; the records have expired and cannot be redriven; message kept", file=out)
        return EXIT_REFUSED
    if dry_run:
        print(f"would redrive {len(records)} record(s) of {info.describe()}", file=out)
        return EXIT_OK
    response = run(lambda_event(info, records))
    failed = [item["itemIdentifier"] for item in response.get("batchItemFailures", [])]
    if failed:
        print(
            f"FAILED {len(failed)} of {len(records)} record(s) of {info.describe()}: {', '.join(failed)}; message kept",
            file=out,
        )
        return EXIT_RECORDS_FAILED
    sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
    print(f"redriven {len(records)} record(s) of {info.describe()}; message deleted", file=out)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handlers.fanout", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("redrive", help="re-read the DLQ's stream ranges and run them again")
    command.add_argument("--dlq-url", required=True, help="the on-failure SQS queue URL of the stream mapping")
    command.add_argument("--dry-run", action="store_true", help="read and report the ranges; run and delete nothing")
    args = parser.parse_args(argv)
    return redrive(args.dlq_url, dry_run=args.dry_run)
