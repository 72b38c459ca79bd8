"""What an export contains: every row of its scope, byte-exact values, nothing else."""

import csv
import io
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aws_lambda_powertools import Logger

from handlers.common.aws import client
from handlers.export_runner import jobs
from handlers.export_runner.audit_writer import AuditEvent, write_audit_event
from handlers.export_runner.export_job import Outcome, RunnerDependencies, run_export_job
from handlers.export_runner.filters import ALL_TENANTS
from handlers.export_runner.storage import s3_client
from handlers.export_runner.verify import verify_file
from tests.support.export_fixtures import (
    WINDOW_START,
    ExportDatabase,
    bulk_append,
    download,
    expected_export_rows,
    insert_job_row,
    parse_csv_export,
    parse_ndjson_export,
    spaced_events,
    window_filter,
)

WINDOW_END = WINDOW_START + timedelta(days=30)
PARSERS = {"csv": parse_csv_export, "json": parse_ndjson_export}
NASTY = [
    'he said "hi", then left',
    "a,b,,c,",
    "line one\nline two",
    "carriage\rreturn\r\nand crlf",
    "tab\tseparated",
    "back\\slash and \\\\ double, \\n not a newline",
    "\\N",
    "\\.",
    "ends with a backslash\\",
    '"',
    '""',
    ",",
    "\n",
    "'; DROP TABLE compliance.audit_events; --",
    "%s %(since)s $1 {} \\x00",
    "unicode: é ñ 中文 🚀 👩‍👩‍👧 \u202eRTL\u202c e\u0301",
    "\u2028line separators\u2029",
    "control \x01\x02\x07\x1b\x1e\x1f\x7f characters",
    "\x89PNG\r\n\x1a\n\x00\x00"[:-2] + "\xff\xfe binary-looking",
    '{"looks": ["like", "json"]}',
    " leading and trailing spaces ",
    "null",
    "NULL",
]


@pytest.fixture
def deps(export_db: ExportDatabase, exports_bucket: str) -> RunnerDependencies:
    return RunnerDependencies(
        database=export_db.database(), s3=s3_client(), bucket=exports_bucket, presign_ttl_seconds=900
    )


LOGGER = Logger(service="export-runner-test")
last_download: list[bytes] = []


def run(deps: RunnerDependencies, job_id: uuid.UUID) -> Any:
    return run_export_job(job_id, deps, logger=LOGGER)


def export_rows(
    deps: RunnerDependencies, export_db: ExportDatabase, job_id: uuid.UUID, export_format: str
) -> list[dict[str, Any]]:
    report = run(deps, job_id)
    assert report.outcome is Outcome.COMPLETED, report.error
    with export_db.connect() as conn:
        job = jobs.get_job(conn, job_id)
    assert job is not None and job.presigned_url is not None
    body, _ = download(job.presigned_url)
    last_download[:] = [body]
    return PARSERS[export_format](body)


@pytest.mark.parametrize("export_format", ["csv", "json"])
def test_hostile_strings_in_every_string_field_come_back_verbatim(
    deps: RunnerDependencies, export_db: ExportDatabase, export_format: str, tmp_path: Path
) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        for i, text in enumerate(NASTY):
            write_audit_event(
                conn,
                AuditEvent(
                    tenant_id=tenant,
                    actor=text,
                    actor_type="agent",
                    source=text,
                    event_type="mcp.tool_called",
                    payload={"value": text, text: [text, i, None, True, 1.5], "nested": {"text": text}},
                    occurred_at=WINDOW_START + timedelta(minutes=i),
                ),
            )
        job_id = insert_job_row(conn, tenant_id=tenant, export_format=export_format)
        expected = expected_export_rows(conn, tenant_id=tenant, since=WINDOW_START, until=WINDOW_END)

    rows = export_rows(deps, export_db, job_id, export_format)

    assert rows == expected
    assert [row["actor"] for row in rows] == NASTY
    assert [row["source"] for row in rows] == NASTY
    assert [row["payload"]["value"] for row in rows] == NASTY
    assert [row["payload"][text][0] for row, text in zip(rows, NASTY, strict=True)] == NASTY
    downloaded = tmp_path / f"export.{'csv' if export_format == 'csv' else 'ndjson'}"
    downloaded.write_bytes(last_download[0])
    assert verify_file(downloaded).ok


def test_ndjson_lines_are_single_json_objects_with_nulls_kept(
    deps: RunnerDependencies, export_db: ExportDatabase
) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 3))
        job_id = insert_job_row(conn, tenant_id=tenant, export_format="json")
    run(deps, job_id)
    with export_db.connect() as conn:
        job = jobs.get_job(conn, job_id)
    body, _ = download(job.presigned_url)  # type: ignore[union-attr,arg-type]
    lines = body.decode().split("\n")
    assert lines[-1] == "" and len(lines) == 4
    first = parse_ndjson_export(body)[0]
    assert list(first) == [
        "event_id",
        "tenant_id",
        "occurred_at",
        "recorded_at",
        "actor",
        "actor_type",
        "source",
        "event_type",
        "event_hash",
        "prev_hash",
        "payload",
    ]
    assert first["prev_hash"] is None and isinstance(first["payload"], dict)
    assert first["occurred_at"] == "2024-03-01T00:00:00.000000Z"


def test_csv_quotes_only_what_rfc_4180_requires(deps: RunnerDependencies, export_db: ExportDatabase) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 2, actor='say "a,b"', source="plain"))
        job_id = insert_job_row(conn, tenant_id=tenant)
    run(deps, job_id)
    with export_db.connect() as conn:
        job = jobs.get_job(conn, job_id)
    body, _ = download(job.presigned_url)  # type: ignore[union-attr,arg-type]
    header, first, second = body.decode().splitlines()
    assert header == (
        "event_id,tenant_id,occurred_at,recorded_at,actor,actor_type,source,event_type,event_hash,prev_hash,payload_json"
    )
    fields = first.split(",")
    assert fields[2] == "2024-03-01T00:00:00.000000Z" and fields[3] == "2024-03-01T00:00:01.000000Z"
    assert '"say ""a,b"""' in first and ",plain," in first
    assert ",," in first  # the first event's prev_hash is NULL: an empty, unquoted field
    assert first.endswith(',"{""seq"": 0}"') and second.endswith(',"{""seq"": 1}"')


@pytest.mark.parametrize("export_format", ["csv", "json"])
def test_a_tenant_export_contains_no_row_of_another_tenant(
    deps: RunnerDependencies, export_db: ExportDatabase, export_format: str
) -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 10) + spaced_events(other, 10, actor="intruder"))
        job_id = insert_job_row(conn, tenant_id=tenant, export_format=export_format)
    rows = export_rows(deps, export_db, job_id, export_format)
    assert len(rows) == 10 and {row["tenant_id"] for row in rows} == {str(tenant)}
    assert "intruder" not in {row["actor"] for row in rows}


def test_all_tenants_exports_span_tenants_under_a_multi_tenant_key(
    deps: RunnerDependencies, export_db: ExportDatabase
) -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 4) + spaced_events(other, 6))
        everything = insert_job_row(conn, tenant_id=ALL_TENANTS, export_format="json")
        narrowed = insert_job_row(
            conn, tenant_id=ALL_TENANTS, filter={**window_filter(), "tenantId": str(other)}, export_format="json"
        )
        expected_all = expected_export_rows(conn, tenant_id=None, since=WINDOW_START, until=WINDOW_END)
    rows = export_rows(deps, export_db, everything, "json")
    assert rows == expected_all and {row["tenant_id"] for row in rows} == {str(tenant), str(other)}
    assert len(export_rows(deps, export_db, narrowed, "json")) == 6
    with export_db.connect() as conn:
        assert jobs.get_job(conn, everything).s3_key == f"multi-tenant/{everything}.ndjson"  # type: ignore[union-attr]


def test_filters_select_by_window_actor_type_and_event_type(
    deps: RunnerDependencies, export_db: ExportDatabase
) -> None:
    tenant = uuid.uuid4()
    start = WINDOW_START
    with export_db.connect() as conn:
        bulk_append(
            conn,
            spaced_events(tenant, 4, start=start - timedelta(minutes=2))  # two before since, two inside
            + spaced_events(tenant, 3, start=start + timedelta(hours=1), actor_type="system", event_type="auth.signin")
            + spaced_events(tenant, 2, start=start + timedelta(days=30))  # at until (exclusive) and after
            + spaced_events(tenant, 1, start=start + timedelta(hours=2), event_type="auth.signin"),
        )
        window = insert_job_row(conn, tenant_id=tenant)
        by_actor_type = insert_job_row(conn, tenant_id=tenant, filter={**window_filter(), "actorType": "SYSTEM"})
        by_event_type = insert_job_row(conn, tenant_id=tenant, filter={**window_filter(), "eventType": "AUTH_SIGNIN"})
    window_rows = export_rows(deps, export_db, window, "csv")
    assert [row["occurred_at"] for row in window_rows][:2] == [
        "2024-03-01T00:00:00.000000Z",
        "2024-03-01T00:01:00.000000Z",
    ]
    assert len(window_rows) == 6
    assert {row["actor_type"] for row in export_rows(deps, export_db, by_actor_type, "csv")} == {"system"}
    assert len(export_rows(deps, export_db, by_event_type, "csv")) == 4


@pytest.mark.parametrize(("export_format", "expected_body"), [("csv", 1), ("json", 0)])
def test_an_empty_export_is_still_a_file(
    deps: RunnerDependencies, export_db: ExportDatabase, export_format: str, expected_body: int
) -> None:
    with export_db.connect() as conn:
        job_id = insert_job_row(conn, tenant_id=uuid.uuid4(), export_format=export_format)
    report = run(deps, job_id)
    assert report.outcome is Outcome.COMPLETED and report.result is not None and report.result.rows == 0
    obj = client("s3").get_object(Bucket=deps.bucket, Key=report.s3_key)
    assert len(obj["Body"].read().splitlines()) == expected_body  # the CSV header line only


def test_a_job_with_an_invalid_stored_filter_fails_with_the_reason(
    deps: RunnerDependencies, export_db: ExportDatabase
) -> None:
    with export_db.connect() as conn:
        job_id = insert_job_row(conn, tenant_id=uuid.uuid4(), filter={**window_filter(), "where": "1=1"})
    report = run(deps, job_id)
    assert report.outcome is Outcome.FAILED
    with export_db.connect() as conn:
        job = jobs.get_job(conn, job_id)
    assert job is not None and job.status == "failed" and job.completed_at is not None
    assert job.job_error == (
        "invalid job: FILTER_UNKNOWN_FIELD: unknown filter field(s) where;"
        " allowed: since, until, tenantId, actorType, eventType"
    )


def test_a_job_row_deleted_after_the_claim_is_acknowledged_as_vanished(
    deps: RunnerDependencies, export_db: ExportDatabase, exports_bucket: str
) -> None:
    with export_db.connect() as conn:
        # Another session (say, a retention job) deletes the row right behind the claim.
        conn.execute(
            """
            CREATE FUNCTION delete_claimed_job() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN DELETE FROM compliance.export_jobs WHERE job_id = NEW.job_id; RETURN NULL; END $$;
            CREATE TRIGGER delete_claimed_job AFTER UPDATE ON compliance.export_jobs
                FOR EACH ROW WHEN (NEW.status = 'running') EXECUTE FUNCTION delete_claimed_job();
            """
        )
        job_id = insert_job_row(conn, tenant_id=uuid.uuid4())
    report = run(deps, job_id)
    assert report.outcome is Outcome.JOB_VANISHED and report.error == "job row disappeared"
    with export_db.connect() as conn:
        assert jobs.get_job(conn, job_id) is None
    assert client("s3").list_objects_v2(Bucket=exports_bucket).get("KeyCount") == 0


def test_large_exports_stream_in_parts_and_verify(deps: RunnerDependencies, export_db: ExportDatabase) -> None:
    from handlers.export_runner.verify import verify_records

    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 5000, step=timedelta(seconds=10), payload_bytes=4000))
        job_id = insert_job_row(conn, tenant_id=tenant)
    report = run(deps, job_id)
    assert report.outcome is Outcome.COMPLETED and report.result is not None
    assert report.result.rows == 5000 and report.result.parts >= 3 and report.result.bytes > 16 * 1024 * 1024
    with export_db.connect() as conn:
        body, _ = download(jobs.get_job(conn, job_id).presigned_url)  # type: ignore[union-attr,arg-type]
    assert len(body) == report.result.bytes
    rows = parse_csv_export(body)
    assert [row["payload"]["seq"] for row in rows] == list(range(5000))
    assert verify_records(rows).ok


def test_secret_based_connections_follow_a_changed_secret(export_db: ExportDatabase, aws: Any) -> None:
    from handlers.export_runner.db import Database, DatabaseSettings

    secrets = client("secretsmanager")
    login = {"username": export_db.cluster.user, "password": "trust-auth-ignores-it", "port": export_db.cluster.port}
    arn = secrets.create_secret(
        Name="export-db", SecretString=json.dumps({**login, "host": "127.0.0.1", "dbname": "no_such_db"})
    )["ARN"]
    database = Database(DatabaseSettings(url=None, secret_arn=arn, host=None, name=None, sslmode="disable"))
    with pytest.raises(psycopg.OperationalError, match="no_such_db"):
        database.connect(application_name="test")
    # "Rotation": the secret now names the right database; the next connect re-reads it once.
    secrets.put_secret_value(
        SecretId=arn, SecretString=json.dumps({**login, "host": "127.0.0.1", "dbname": export_db.name})
    )
    with database.connect(application_name="test") as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (export_db.name,)
    overridden = Database(
        DatabaseSettings(url=None, secret_arn=arn, host="127.0.0.1", name="postgres", sslmode="disable")
    )
    with overridden.connect(application_name="test") as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)


def test_copy_parameters_are_merged_client_side_as_safe_literals(
    export_db: ExportDatabase, exports_bucket: str
) -> None:
    """COPY takes no bind parameters: psycopg merges them as escaped literals. Prove it is safe."""
    from psycopg import sql

    from handlers.export_runner.exporter import stream_copy_to_s3

    injections = [
        "'; DROP TABLE compliance.audit_events; --",
        "\\'; DROP TABLE compliance.audit_events; --",
        "$$; DROP TABLE compliance.audit_events; $$",
        "') TO PROGRAM 'touch /tmp/pwned'; --",
        "%s %(value)s {value}",
        "E'\\x27' || chr(39)",
        "back\\slash\\",
        'multi\nline\r\nvalue, "quoted"',
    ]
    statement = sql.SQL("COPY (SELECT %(value)s::text AS value) TO STDOUT WITH (FORMAT csv)")
    with export_db.connect() as conn:
        for index, value in enumerate(injections):
            key = f"injection-{index}.csv"
            stream_copy_to_s3(
                conn,
                statement,
                {"value": value},
                s3=s3_client(),
                bucket=exports_bucket,
                key=key,
                content_type="text/csv",
            )
            body = client("s3").get_object(Bucket=exports_bucket, Key=key)["Body"].read().decode()
            assert next(csv.reader(io.StringIO(body, newline=""))) == [value]
        assert conn.execute("SELECT to_regclass('compliance.audit_events')::text").fetchone() == (
            "compliance.audit_events",
        )
