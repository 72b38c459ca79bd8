"""Issue #9 item 2: least-privilege database roles (migration 0004).

Each role does its real work (the writer appends, the producer creates and fails jobs, the runner
exports and the sweeper sweeps, each logged in as its role) and is refused everything else,
above all what would let it rewrite history: UPDATE of audit_events, DROP, TRUNCATE, ALTER,
disabling the append-only triggers, replacing the functions.
"""

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from handlers.export_runner import jobs
from handlers.export_runner.audit_writer import AuditEvent, write_audit_event
from handlers.export_runner.export_job import Outcome, RunnerDependencies, run_export_job
from handlers.export_runner.migrate import apply_migrations
from handlers.export_runner.producer import ExportRequest, ExportRequestError, create_export_job
from handlers.export_runner.storage import s3_client
from tests.integration.export_runner.test_audit_writer import assert_linear_chain, stored_chain
from tests.support.export_fixtures import (
    ExportDatabase,
    bulk_append,
    drop_database,
    insert_job_row,
    spaced_events,
    window_filter,
)
from tests.support.postgres import PostgresCluster

ROLES = ("audit_writer", "export_runner", "export_producer")
PERMISSION_DENIED = r"permission denied|must be owner"


def event(tenant: uuid.UUID) -> AuditEvent:
    return AuditEvent(tenant_id=tenant, actor="alice", actor_type="user", source="api", event_type="auth.signin")


def refused(db: ExportDatabase, role: str, statement: str, params: tuple[Any, ...] = ()) -> str:
    """Run ``statement`` as ``role``; it must fail for lack of privilege. Returns the message."""
    with db.connect_as(role) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        conn.execute(statement, params)
    message = str(caught.value)
    assert caught.value.sqlstate == "42501"
    return message


@pytest.fixture
def seeded(export_db: ExportDatabase) -> Iterator[tuple[ExportDatabase, uuid.UUID, uuid.UUID]]:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 3))
        job_id = insert_job_row(conn, tenant_id=tenant)
    yield export_db, tenant, job_id


def test_the_roles_exist_with_no_special_attributes(export_db: ExportDatabase) -> None:
    with export_db.connect() as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls"
            " FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname",
            (list(ROLES),),
        ).fetchall()
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relnamespace = 'compliance'::regnamespace"
        ).fetchall()
        members = conn.execute(
            "SELECT r.rolname, m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid"
            " JOIN pg_roles m ON m.oid = a.member WHERE m.rolname = ANY(%s)",
            (list(ROLES),),
        ).fetchall()
    assert rows == [(role, True, False, False, False, False, False) for role in sorted(ROLES)]
    assert owners == [(export_db.cluster.user,)]  # the migrating login owns everything
    assert members == [("audit_writer", "export_producer")]  # the test cluster has no rds_iam


def test_audit_writer_appends_to_the_chain_and_can_do_nothing_else(seeded: Any) -> None:
    db, tenant, _ = seeded
    with db.database_as("audit_writer").connect(application_name="writer") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("audit_writer",)
        write_audit_event(conn, event(tenant))
        write_audit_event(conn, event(uuid.uuid4()))
    with db.connect() as conn:
        assert_linear_chain(stored_chain(conn, tenant))
        assert len(stored_chain(conn, tenant)) == 4
    for statement in (
        "SELECT * FROM compliance.audit_events",
        "UPDATE compliance.audit_events SET actor = 'mallory'",
        "DELETE FROM compliance.audit_events",
        "SELECT * FROM compliance.export_jobs",
        "INSERT INTO compliance.export_jobs (job_id, tenant_id, requested_by_actor_id, format)"
        " VALUES (gen_random_uuid(), gen_random_uuid(), 'x', 'csv')",
        "SELECT compliance.lock_export_rate('x', interval '1 hour')",
        "SELECT compliance.fail_unsent_export_job(gen_random_uuid(), 'x')",
        "SELECT * FROM compliance.schema_migrations",
    ):
        assert "permission denied" in refused(db, "audit_writer", statement)


def test_export_runner_runs_and_sweeps_jobs_and_cannot_change_the_audit_log(seeded: Any, exports_bucket: str) -> None:
    db, tenant, job_id = seeded
    deps = RunnerDependencies(
        database=db.database_as("export_runner"), s3=s3_client(), bucket=exports_bucket, presign_ttl_seconds=900
    )
    from aws_lambda_powertools import Logger

    report = run_export_job(job_id, deps, logger=Logger(service="roles-test"))
    assert report.outcome is Outcome.COMPLETED and report.result is not None and report.result.rows == 3
    with db.connect() as conn:
        stuck = insert_job_row(conn, tenant_id=tenant)
        conn.execute(
            "UPDATE compliance.export_jobs SET status = 'running', started_at = now() - interval '2 hours'"
            " WHERE job_id = %s",
            (stuck,),
        )
    with db.database_as("export_runner").connect(application_name="export-sweeper") as conn:
        swept = jobs.sweep_jobs(conn, running_longer_than=timedelta(minutes=16), queued_longer_than=timedelta(days=1))
    assert [job.job_id for job in swept] == [stuck]

    # An UPDATE of audit_events is refused by privilege, before the append-only trigger is reached.
    message = refused(db, "export_runner", "UPDATE compliance.audit_events SET actor = 'mallory'")
    assert "permission denied for table audit_events" in message
    for statement in (
        "INSERT INTO compliance.audit_events (event_id, tenant_id, occurred_at, recorded_at, actor, actor_type,"
        " source, event_type, payload, prev_hash, event_hash) SELECT gen_random_uuid(), tenant_id, occurred_at,"
        " recorded_at, actor, actor_type, source, event_type, payload, event_hash, event_hash"
        " FROM compliance.audit_events LIMIT 1",
        "DELETE FROM compliance.audit_events",
        "DELETE FROM compliance.export_jobs",
        "INSERT INTO compliance.export_jobs (job_id, tenant_id, requested_by_actor_id, format)"
        " VALUES (gen_random_uuid(), gen_random_uuid(), 'x', 'csv')",
        "SELECT * FROM compliance.lock_audit_chain(gen_random_uuid())",
        "SELECT compliance.lock_export_rate('x', interval '1 hour')",
    ):
        assert "permission denied" in refused(db, "export_runner", statement)
    with db.connect() as conn:
        assert conn.execute("SELECT count(*), min(actor) FROM compliance.audit_events").fetchone() == (3, "user-1")


def test_export_producer_creates_and_fails_jobs_and_can_do_nothing_else(seeded: Any, export_queue: str) -> None:
    db, tenant, job_id = seeded
    database = db.database_as("export_producer")
    request = ExportRequest(tenant_id=tenant, requested_by_actor_id="op", filter=window_filter(), format="csv")
    with database.connect(application_name="producer") as conn:
        job = create_export_job(conn, request, queue_url=export_queue)
        with pytest.raises(ExportRequestError) as caught:
            create_export_job(conn, request, queue_url=export_queue.rsplit("/", 1)[0] + "/no-such-queue")
    assert caught.value.code == "QUEUE_SEND_FAILED"
    with db.connect() as conn:
        created = jobs.get_job(conn, job.job_id)
        unsent = jobs.get_job(conn, uuid.UUID(caught.value.details["jobId"]))
        audited = conn.execute(
            "SELECT count(*) FROM compliance.audit_events WHERE event_type = 'data.export_initiated'"
        ).fetchone()
    assert created is not None and created.status == "queued"
    assert unsent is not None and unsent.status == "failed"
    assert unsent.job_error is not None and unsent.job_error.startswith("could not enqueue")
    assert audited == (2,)
    for statement, params in (
        ("UPDATE compliance.export_jobs SET status = 'complete'", ()),
        ("DELETE FROM compliance.export_jobs", ()),
        ("SELECT * FROM compliance.audit_events", ()),
        ("UPDATE compliance.audit_events SET actor = 'mallory'", ()),
    ):
        assert "permission denied" in refused(db, "export_producer", statement, params)
    # Its one change to a job is queued -> failed; a running or complete job is left alone.
    with db.connect() as conn:
        assert jobs.claim_job(conn, job_id)
    with db.connect_as("export_producer") as conn:
        assert jobs.fail_unsent_job(conn, job_id, "not mine to fail") is False


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE compliance.audit_events",
        "DROP TABLE compliance.export_jobs",
        "TRUNCATE compliance.audit_events",
        "TRUNCATE compliance.export_jobs",
        "ALTER TABLE compliance.audit_events DISABLE TRIGGER audit_events_reject_update_delete",
        "ALTER TABLE compliance.audit_events DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_events_reject_truncate ON compliance.audit_events",
        "ALTER TABLE compliance.audit_events DROP CONSTRAINT audit_events_one_successor",
        "ALTER TABLE compliance.audit_events ADD COLUMN note text",
        "ALTER TABLE compliance.export_jobs OWNER TO CURRENT_USER",
        "CREATE TABLE compliance.shadow (id int)",
        "CREATE OR REPLACE FUNCTION compliance.reject_audit_event_change() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "DROP FUNCTION compliance.lock_audit_chain(uuid)",
        "DROP SCHEMA compliance CASCADE",
        "DROP INDEX compliance.audit_events_one_chain_head",
    ],
)
def test_no_role_may_alter_drop_truncate_or_disable_triggers(
    export_db: ExportDatabase, role: str, statement: str
) -> None:
    assert refused(export_db, role, statement)
    with export_db.connect() as conn:
        enabled = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'compliance.audit_events'::regclass"
            " AND NOT tgisinternal AND tgenabled = 'O'"
        ).fetchone()
    assert enabled == (2,)


def test_the_roles_get_rds_iam_where_it_exists(postgres_cluster: PostgresCluster) -> None:
    """On RDS the migration grants rds_iam (IAM token logins); elsewhere it makes no grant."""
    name = f"export_iam_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_cluster.url, autocommit=True) as admin:
        admin.execute("CREATE ROLE rds_iam NOLOGIN")
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(ExportDatabase(postgres_cluster, name).url, autocommit=True) as conn:
            apply_migrations(conn)
            members = conn.execute(
                "SELECT m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid"
                " JOIN pg_roles m ON m.oid = a.member WHERE r.rolname = 'rds_iam' ORDER BY 1"
            ).fetchall()
        assert members == [(role,) for role in sorted(ROLES)]
    finally:
        with psycopg.connect(postgres_cluster.url, autocommit=True) as admin:
            for role in ROLES:
                admin.execute(f"REVOKE rds_iam FROM {role}")
            admin.execute("DROP ROLE rds_iam")
        drop_database(postgres_cluster, name)
