import json
import uuid
from datetime import timedelta

import psycopg
import pytest

from handlers.common.aws import client
from handlers.export_runner import jobs
from handlers.export_runner.filters import ALL_TENANTS
from handlers.export_runner.producer import ExportRequest, ExportRequestError, create_export_job
from tests.support.export_fixtures import WINDOW_START, ExportDatabase, bulk_append, spaced_events, window_filter

METACHARACTERS = "o'brien\"; DROP TABLE compliance.export_jobs; -- \\ %s %(x)s $1"


def request(tenant: uuid.UUID | str, actor: str = "alice", **overrides: object) -> ExportRequest:
    fields: dict[str, object] = {
        "tenant_id": tenant,
        "requested_by_actor_id": actor,
        "filter": {**window_filter(), "eventType": "AUTH_SIGNIN"},
        "format": "csv",
    }
    fields.update(overrides)
    return ExportRequest(**fields)  # type: ignore[arg-type]


def queued_bodies(queue_url: str) -> list[dict[str, str]]:
    messages = client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [json.loads(message["Body"]) for message in messages.get("Messages", [])]


def test_a_job_is_recorded_audited_and_enqueued(export_db: ExportDatabase, export_queue: str) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        job = create_export_job(conn, request(tenant, actor=METACHARACTERS), queue_url=export_queue)
        stored = jobs.get_job(conn, job.job_id)
        audit = conn.execute(
            "SELECT tenant_id, actor, actor_type, source, event_type, payload, prev_hash FROM compliance.audit_events"
        ).fetchall()
    assert stored is not None and stored.status == "queued"
    assert stored.requested_by_actor_id == METACHARACTERS
    assert stored.filter == {**window_filter(), "eventType": "auth.signin"}
    assert stored.tenant_id == tenant and stored.format == "csv"
    assert audit == [
        (
            tenant,
            METACHARACTERS,
            "user",
            "compliance-export",
            "data.export_initiated",
            {"jobId": str(job.job_id), "format": "csv", "filter": stored.filter},
            None,
        )
    ]
    assert queued_bodies(export_queue) == [{"jobId": str(job.job_id)}]


def test_all_tenants_jobs_are_audited_on_the_sentinel_chain(export_db: ExportDatabase, export_queue: str) -> None:
    with export_db.connect() as conn:
        job = create_export_job(conn, request("ALL_TENANTS", format="json", cross_tenant=True), queue_url=export_queue)
        audited = conn.execute("SELECT tenant_id FROM compliance.audit_events").fetchall()
    assert job.tenant_id == ALL_TENANTS and audited == [(ALL_TENANTS,)]


def test_an_all_tenants_export_is_audited_in_the_chain_of_every_tenant_it_reads(
    export_db: ExportDatabase, export_queue: str
) -> None:
    """Issue #9 item 9: each tenant's own log shows that a cross-tenant export read it."""
    read_a, read_b, outside, other_type = (uuid.uuid4() for _ in range(4))
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(read_a, 3, event_type="auth.signin"))
        bulk_append(conn, spaced_events(read_b, 2, event_type="auth.signin"))
        # Outside the window, or of another event type: not read, not notified.
        bulk_append(conn, spaced_events(outside, 2, start=WINDOW_START - timedelta(days=60), event_type="auth.signin"))
        bulk_append(conn, spaced_events(other_type, 2))
        job = create_export_job(conn, request("ALL_TENANTS", cross_tenant=True), queue_url=export_queue)
        audited = conn.execute(
            "SELECT tenant_id, payload FROM compliance.audit_events WHERE event_type = 'data.export_initiated'"
            " ORDER BY recorded_at"
        ).fetchall()
    assert [tenant for tenant, _ in audited] == [ALL_TENANTS, *sorted([read_a, read_b])]
    for _, payload in audited:
        assert payload == {"jobId": str(job.job_id), "format": "csv", "filter": job.filter, "scope": "ALL_TENANTS"}


@pytest.mark.parametrize(
    ("overrides", "allowed"),
    [
        ({}, False),  # the caller did not authorise a cross-tenant export
        ({"cross_tenant": True, "actor_type": "agent"}, False),
        ({"cross_tenant": True, "actor_type": "system"}, False),
        ({"cross_tenant": True}, True),
    ],
)
def test_who_may_request_an_all_tenants_export_is_checked(
    export_db: ExportDatabase, export_queue: str, overrides: dict[str, object], allowed: bool
) -> None:
    with export_db.connect() as conn:
        if allowed:
            assert create_export_job(conn, request("ALL_TENANTS", **overrides), queue_url=export_queue)
            return
        with pytest.raises(ExportRequestError) as caught:
            create_export_job(conn, request("ALL_TENANTS", **overrides), queue_url=export_queue)
        assert caught.value.code == "CROSS_TENANT_NOT_ALLOWED"
        assert conn.execute("SELECT count(*) FROM compliance.export_jobs").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM compliance.audit_events").fetchone() == (0,)
    assert queued_bodies(export_queue) == []


def test_the_producer_role_learns_tenant_ids_only(export_db: ExportDatabase) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 2))
    with export_db.connect_as("export_producer") as conn:
        rows = conn.execute(
            "SELECT * FROM compliance.tenants_in_export_scope(%s, %s, NULL, NULL, NULL)",
            (WINDOW_START, WINDOW_START + timedelta(days=30)),
        ).fetchall()
        assert rows == [(tenant,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM compliance.audit_events")


def test_a_refused_request_leaves_no_trace(export_db: ExportDatabase, export_queue: str) -> None:
    with export_db.connect() as conn:
        with pytest.raises(ExportRequestError) as caught:
            create_export_job(
                conn,
                request(uuid.uuid4(), filter={"since": "2024-01-01T00:00:00Z", "until": "2024-09-01T00:00:00Z"}),
                queue_url=export_queue,
            )
        assert caught.value.code == "FILTER_RANGE_TOO_WIDE"
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM compliance.export_jobs), (SELECT count(*) FROM compliance.audit_events)"
        ).fetchone()
    assert counts == (0, 0)
    assert queued_bodies(export_queue) == []


def test_ten_exports_per_hour_per_actor(export_db: ExportDatabase, export_queue: str) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        for _ in range(10):
            create_export_job(conn, request(tenant), queue_url=export_queue)
        with pytest.raises(ExportRequestError) as caught:
            create_export_job(conn, request(uuid.uuid4()), queue_url=export_queue)  # another tenant, same actor
        assert caught.value.code == "RATE_LIMIT_EXCEEDED"
        assert caught.value.details == {"current": 10, "limit": 10, "window": "1h", "windowSeconds": 3600}
        create_export_job(conn, request(tenant, actor="bob"), queue_url=export_queue)
        assert conn.execute("SELECT count(*) FROM compliance.export_jobs").fetchone() == (11,)


def test_a_failed_send_marks_the_job_failed(export_db: ExportDatabase, export_queue: str) -> None:
    missing_queue = export_queue.rsplit("/", 1)[0] + "/no-such-queue"
    with export_db.connect() as conn:
        with pytest.raises(ExportRequestError) as caught:
            create_export_job(conn, request(uuid.uuid4()), queue_url=missing_queue)
        assert caught.value.code == "QUEUE_SEND_FAILED"
        job = jobs.get_job(conn, uuid.UUID(caught.value.details["jobId"]))
    assert job is not None and job.status == "failed" and job.completed_at is not None
    assert job.job_error is not None and job.job_error.startswith("could not enqueue the export:")
    assert "NonExistentQueue" in job.job_error or "does not exist" in job.job_error


def test_the_producer_refuses_to_enqueue_inside_a_callers_transaction(
    export_db: ExportDatabase, export_queue: str
) -> None:
    with export_db.connect(autocommit=False) as conn, pytest.raises(ValueError, match="autocommit"):
        create_export_job(conn, request(uuid.uuid4()), queue_url=export_queue)
