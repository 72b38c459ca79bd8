"""Shared pieces of the ExportRunner tests (and its benchmark's data generator).

- databases: one template database migrated by our own migration runner per session, and a
  fresh copy of it per test (CREATE DATABASE ... TEMPLATE, a fraction of a second), so tests
  are isolated although audit events can never be deleted;
- a bulk path that writes many audit events with a valid hash chain (hashes computed with
  chain.py, rows loaded with COPY) for tests that need megabytes of export;
- Lambda plumbing: the SQS event the Lambda poller would build from messages really received
  from the moto queue, and the context object the Lambda runtime passes.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import psycopg
import pytest

from handlers.export_runner import chain
from handlers.export_runner.db import Database, DatabaseSettings
from handlers.export_runner.migrate import apply_migrations
from tests.support.postgres import PostgresCluster

BUCKET = "compliance-exports-test"
QUEUE = "compliance-export-jobs-test"
WINDOW_START = datetime(2024, 3, 1, tzinfo=UTC)


def database_url(cluster: PostgresCluster, dbname: str) -> str:
    return f"postgresql://{cluster.user}@{cluster.host}:{cluster.port}/{dbname}"


@dataclass(frozen=True)
class ExportDatabase:
    cluster: PostgresCluster
    name: str

    @property
    def url(self) -> str:
        return database_url(self.cluster, self.name)

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=autocommit)

    def database(self) -> Database:
        return Database(DatabaseSettings(url=self.url, secret_arn=None, host=None, name=None, sslmode="disable"))

    # The least-privilege roles of migration 0004 (LOGIN; the test cluster trusts local logins).
    def url_as(self, role: str) -> str:
        return f"postgresql://{role}@{self.cluster.host}:{self.cluster.port}/{self.name}"

    def connect_as(self, role: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url_as(role), autocommit=autocommit)

    def database_as(self, role: str) -> Database:
        return Database(
            DatabaseSettings(url=self.url_as(role), secret_arn=None, host=None, name=None, sslmode="disable")
        )


def create_migrated_template(cluster: PostgresCluster) -> str:
    name = f"export_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(database_url(cluster, name), autocommit=True) as conn:
        apply_migrations(conn)
    return name


def drop_database(cluster: PostgresCluster, name: str) -> None:
    with psycopg.connect(cluster.url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_database(cluster: PostgresCluster, template: str) -> Iterator[ExportDatabase]:
    name = f"export_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield ExportDatabase(cluster, name)
    finally:
        drop_database(cluster, name)


# --- fixtures (imported by the export_runner conftest files) -------------------------------


@pytest.fixture(scope="session")
def export_template(postgres_cluster: PostgresCluster) -> Iterator[str]:
    name = create_migrated_template(postgres_cluster)
    yield name
    drop_database(postgres_cluster, name)


@pytest.fixture
def export_db(postgres_cluster: PostgresCluster, export_template: str) -> Iterator[ExportDatabase]:
    yield from fresh_database(postgres_cluster, export_template)


@pytest.fixture(autouse=True)
def fresh_export_clients() -> Iterator[None]:
    """Each test starts with new clients, like a new container (the endpoint may have moved)."""
    from handlers.export_runner.storage import s3_client

    s3_client.cache_clear()
    yield
    s3_client.cache_clear()


@pytest.fixture
def exports_bucket(aws: Any) -> str:
    from handlers.common.aws import client

    client("s3").create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture
def export_queue(aws: Any) -> str:
    from handlers.common.aws import client

    return str(client("sqs").create_queue(QueueName=QUEUE)["QueueUrl"])


@pytest.fixture
def runner_env(monkeypatch: pytest.MonkeyPatch, export_db: ExportDatabase, exports_bucket: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": export_db.url,
        "COMPLIANCE_EXPORTS_BUCKET": exports_bucket,
        "PRESIGN_TTL_SECONDS": "900",
        "POWERTOOLS_SERVICE_NAME": "export-runner-test",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DATABASE_SECRET_ARN", raising=False)
    return env


def cold_start(module_name: str) -> ModuleType:
    """Import a handler module as a new Lambda container would: settings are read now."""
    if module_name in sys.modules:
        return importlib.reload(sys.modules[module_name])
    return importlib.import_module(module_name)


# --- audit data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EventSpec:
    tenant_id: uuid.UUID
    occurred_at: datetime
    recorded_at: datetime
    actor: str = "user-1"
    actor_type: str = "user"
    source: str = "api"
    event_type: str = "data.record_viewed"
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    event_id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)

    def canonical(self) -> bytes:
        return chain.canonical_event(
            event_id=str(self.event_id),
            tenant_id=str(self.tenant_id),
            occurred_at=chain.format_timestamp(self.occurred_at),
            actor=self.actor,
            actor_type=self.actor_type,
            source=self.source,
            event_type=self.event_type,
            payload=self.payload,
        )


def bulk_append(
    conn: psycopg.Connection[Any], specs: Sequence[EventSpec], canonicals: Sequence[bytes] | None = None
) -> int:
    """Append events to empty or existing chains in one COPY, hashing them like the writer.

    Each tenant's events must be given in chain order (increasing recorded_at, later than the
    tenant's current tail). Payloads must survive a jsonb round trip unchanged (plain strings,
    integers within 2**53, floats without exponent growth), as generated data does.
    ``canonicals`` lets a caller compute the canonical forms elsewhere (in parallel).
    """
    tenants = sorted({spec.tenant_id for spec in specs})
    with conn.transaction():
        tails: dict[uuid.UUID, str | None] = {}
        for tenant in tenants:
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"compliance.audit_chain:{tenant}",))
            row = conn.execute(
                "SELECT event_hash FROM compliance.audit_events WHERE tenant_id = %s"
                " ORDER BY recorded_at DESC, event_id DESC LIMIT 1",
                (tenant,),
            ).fetchone()
            tails[tenant] = row[0] if row else None
        with (
            conn.cursor() as cursor,
            cursor.copy(
                "COPY compliance.audit_events (event_id, tenant_id, occurred_at, recorded_at, actor, actor_type,"
                " source, event_type, payload, prev_hash, event_hash) FROM STDIN"
            ) as copy,
        ):
            for index, spec in enumerate(specs):
                canonical = canonicals[index] if canonicals is not None else spec.canonical()
                prev_hash = tails[spec.tenant_id]
                event_hash = chain.event_hash(prev_hash, canonical)
                tails[spec.tenant_id] = event_hash
                copy.write_row(
                    (
                        spec.event_id,
                        spec.tenant_id,
                        spec.occurred_at,
                        spec.recorded_at,
                        spec.actor,
                        spec.actor_type,
                        spec.source,
                        spec.event_type,
                        canonical_payload_text(spec.payload),
                        prev_hash,
                        event_hash,
                    )
                )
    return len(specs)


def canonical_payload_text(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, allow_nan=False)


def spaced_events(
    tenant_id: uuid.UUID,
    count: int,
    *,
    start: datetime = WINDOW_START,
    step: timedelta = timedelta(minutes=1),
    payload_bytes: int = 0,
    **fields: Any,
) -> list[EventSpec]:
    """``count`` events of one tenant, one per ``step`` from ``start`` (recorded 1 s after)."""
    filler = "x" * payload_bytes
    return [
        EventSpec(
            tenant_id=tenant_id,
            occurred_at=start + step * i,
            recorded_at=start + step * i + timedelta(seconds=1),
            payload={"seq": i, "note": filler} if payload_bytes else {"seq": i},
            **fields,
        )
        for i in range(count)
    ]


def window_filter(start: datetime = WINDOW_START, days: int = 30) -> dict[str, str]:
    return {
        "since": start.isoformat().replace("+00:00", "Z"),
        "until": (start + timedelta(days=days)).isoformat().replace("+00:00", "Z"),
    }


def insert_job_row(
    conn: psycopg.Connection[Any],
    *,
    tenant_id: uuid.UUID,
    filter: dict[str, Any] | None = None,
    export_format: str = "csv",
    actor: str = "operator-1",
) -> uuid.UUID:
    """A queued job written straight to the table (the producer path has its own tests)."""
    from handlers.export_runner import jobs

    job = jobs.insert_job(
        conn,
        job_id=uuid.uuid4(),
        tenant_id=tenant_id,
        requested_by_actor_id=actor,
        filter=filter if filter is not None else window_filter(),
        export_format=export_format,
    )
    return job.job_id


# --- Lambda plumbing ----------------------------------------------------------------------


@dataclass
class LambdaContext:
    """The context object the Lambda runtime passes to a handler."""

    function_name: str = "export-runner"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:export-runner"
    aws_request_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    timeout_seconds: float = 900.0
    started: float = dataclasses.field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return int((self.timeout_seconds - (time.monotonic() - self.started)) * 1000)


def sqs_record(body: str, *, message_id: str | None = None, receive_count: int = 1) -> dict[str, Any]:
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": f"handle-{uuid.uuid4()}",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": str(int(time.time() * 1000)),
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000)),
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{QUEUE}",
        "awsRegion": "us-east-1",
    }


def sqs_event(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": list(records)}


def receive_as_lambda_event(queue_url: str, *, max_messages: int = 1) -> dict[str, Any]:
    """Receive messages from the (moto) queue and shape them as Lambda's SQS event."""
    from handlers.common.aws import client

    response = client("sqs").receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=max_messages, AttributeNames=["All"], WaitTimeSeconds=1
    )
    records = []
    queue_name = queue_url.rstrip("/").rsplit("/", 1)[-1]
    for message in response.get("Messages", []):
        record = sqs_record(
            message["Body"],
            message_id=message["MessageId"],
            receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
        )
        record["receiptHandle"] = message["ReceiptHandle"]
        record["md5OfBody"] = message["MD5OfBody"]
        record["eventSourceARN"] = f"arn:aws:sqs:us-east-1:123456789012:{queue_name}"
        records.append(record)
    return sqs_event(records)


# --- reading exports back -----------------------------------------------------------------


def download(url: str) -> tuple[bytes, dict[str, str]]:
    """GET a presigned URL over real HTTP, as an operator's browser would."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read(), {name.lower(): value for name, value in response.headers.items()}


def parse_csv_export(body: bytes) -> list[dict[str, Any]]:
    """Parse with Python's csv module; payload_json becomes ``payload`` and "" prev_hash None."""
    import csv
    import io

    from handlers.export_runner.filters import CSV_HEADER

    reader = csv.DictReader(io.StringIO(body.decode("utf-8"), newline=""))
    assert tuple(reader.fieldnames or ()) == CSV_HEADER
    rows = []
    for row in reader:
        record: dict[str, Any] = dict(row)
        record["payload"] = json.loads(record.pop("payload_json"))
        record["prev_hash"] = record["prev_hash"] or None
        rows.append(record)
    return rows


def parse_ndjson_export(body: bytes) -> list[dict[str, Any]]:
    # Split on LF only: JSON text may carry U+2028, U+0085 and friends raw, which
    # str.splitlines() would take for line breaks.
    text = body.decode("utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.split("\n")[:-1]]


def expected_export_rows(
    conn: psycopg.Connection[Any], *, tenant_id: uuid.UUID | None, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    """The rows an export must contain, read and rendered independently of the COPY path."""
    conditions = "occurred_at >= %(since)s AND occurred_at < %(until)s"
    if tenant_id is not None:
        conditions += " AND tenant_id = %(tenant_id)s"
    rows = conn.execute(
        "SELECT event_id, tenant_id, occurred_at, recorded_at, actor, actor_type, source, event_type, event_hash,"
        f" prev_hash, payload FROM compliance.audit_events WHERE {conditions} ORDER BY occurred_at, event_id",
        {"since": since, "until": until, "tenant_id": tenant_id},
    ).fetchall()
    return [
        {
            "event_id": str(row[0]),
            "tenant_id": str(row[1]),
            "occurred_at": chain.format_timestamp(row[2]),
            "recorded_at": chain.format_timestamp(row[3]),
            "actor": row[4],
            "actor_type": row[5],
            "source": row[6],
            "event_type": row[7],
            "event_hash": row[8],
            "prev_hash": row[9],
            "payload": row[10],
        }
        for row in rows
    ]
