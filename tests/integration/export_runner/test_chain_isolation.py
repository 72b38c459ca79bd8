"""Issue #9 item 4: a chain that cannot fork, a rate limit that holds, whatever the isolation level.

Before the fix, under ``default_transaction_isolation='repeatable read'`` 6 concurrent writers of
5 events each produced 6-8 forks in 30 rows, and 12 concurrent requests of one actor all got an
export where the limit is 10.
"""

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from handlers.export_runner.audit_writer import AuditEvent, IsolationLevelError, write_audit_event
from handlers.export_runner.migrate import MIGRATIONS_DIR, MigrationError, apply_migrations
from handlers.export_runner.producer import RATE_LIMIT, ExportRequest, ExportRequestError, create_export_job
from tests.integration.export_runner.test_audit_writer import assert_linear_chain, stored_chain
from tests.support.export_fixtures import ExportDatabase, window_filter

WRITERS, EVENTS_PER_WRITER = 6, 5
REQUESTS = 12


@pytest.fixture
def repeatable_read_db(export_db: ExportDatabase) -> Iterator[ExportDatabase]:
    """The test database with REPEATABLE READ as every new session's default."""
    with export_db.connect() as conn:
        conn.execute(f"ALTER DATABASE \"{export_db.name}\" SET default_transaction_isolation = 'repeatable read'")
    with export_db.connect() as conn:
        assert conn.execute("SHOW default_transaction_isolation").fetchone() == ("repeatable read",)
    yield export_db


def forks(conn: psycopg.Connection[Any], tenant: uuid.UUID) -> int:
    """Events beyond the first that share a predecessor (or a NULL head) in the tenant's chain."""
    row = conn.execute(
        "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM compliance.audit_events"
        " WHERE tenant_id = %s GROUP BY prev_hash) AS links",
        (tenant,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def run_concurrently(count: int, work: Callable[[int], None]) -> None:
    barrier = threading.Barrier(count)

    def run(n: int) -> None:
        barrier.wait()
        work(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def chain_event(tenant: uuid.UUID, worker: int, i: int) -> AuditEvent:
    return AuditEvent(
        tenant_id=tenant, actor=f"worker-{worker}", actor_type="user", source="api", event_type="auth.signin",
        payload={"i": i},
    )  # fmt: skip


def concurrent_writers(connect: Callable[[], psycopg.Connection[Any]], tenant: uuid.UUID) -> list[BaseException]:
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        with connect() as conn:
            for i in range(EVENTS_PER_WRITER):
                try:
                    write_audit_event(conn, chain_event(tenant, worker, i))
                except Exception as exc:
                    errors.append(exc)

    run_concurrently(WRITERS, writer)
    return errors


def test_writers_on_repeatable_read_connections_are_refused_clearly_and_never_fork(
    repeatable_read_db: ExportDatabase,
) -> None:
    tenant = uuid.uuid4()
    errors = concurrent_writers(repeatable_read_db.connect, tenant)
    assert len(errors) == WRITERS * EVENTS_PER_WRITER
    assert all(isinstance(error, IsolationLevelError) for error in errors), errors
    assert "needs READ COMMITTED isolation, but this transaction runs at REPEATABLE READ" in str(errors[0])
    with repeatable_read_db.connect() as conn:
        assert forks(conn, tenant) == 0
        assert stored_chain(conn, tenant) == []


def test_a_serializable_caller_transaction_is_refused(export_db: ExportDatabase) -> None:
    with export_db.connect() as conn:
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        with pytest.raises(IsolationLevelError, match="runs at SERIALIZABLE"):
            write_audit_event(conn, chain_event(uuid.uuid4(), 0, 0))


def test_the_products_connections_write_one_linear_chain_under_a_repeatable_read_default(
    repeatable_read_db: ExportDatabase,
) -> None:
    tenant = uuid.uuid4()
    database = repeatable_read_db.database()
    errors = concurrent_writers(lambda: database.connect(application_name="chain-test"), tenant)
    assert errors == []
    with repeatable_read_db.connect() as conn:
        links = stored_chain(conn, tenant)
        assert forks(conn, tenant) == 0
    assert len(links) == WRITERS * EVENTS_PER_WRITER
    assert_linear_chain(links)


def test_the_schema_refuses_a_fork_and_a_second_head(export_db: ExportDatabase) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        head = write_audit_event(conn, chain_event(tenant, 0, 0))
        write_audit_event(conn, chain_event(tenant, 0, 1))
        insert = (
            "INSERT INTO compliance.audit_events (event_id, tenant_id, occurred_at, recorded_at, actor, actor_type,"
            " source, event_type, payload, prev_hash, event_hash)"
            " VALUES (%s, %s, now(), now(), 'mallory', 'user', 'api', 'auth.signin', '{}', %s, %s)"
        )
        with pytest.raises(psycopg.errors.UniqueViolation, match="audit_events_one_successor"):
            conn.execute(insert, (uuid.uuid4(), tenant, head.event_hash, "a" * 64))
        with pytest.raises(psycopg.errors.UniqueViolation, match="audit_events_one_chain_head"):
            conn.execute(insert, (uuid.uuid4(), tenant, None, "b" * 64))
        # Another tenant's chain may start and may even share a predecessor value.
        conn.execute(insert, (uuid.uuid4(), uuid.uuid4(), None, "c" * 64))
        assert forks(conn, tenant) == 0


def test_the_fork_constraints_refuse_to_apply_over_an_already_forked_chain(
    postgres_cluster: Any, tmp_path: Path
) -> None:
    from tests.support.export_fixtures import drop_database

    name = f"export_forked_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_cluster.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        db = ExportDatabase(postgres_cluster, name)
        before = tmp_path / "before"
        before.mkdir()
        for migration in ("0001_compliance_schema.sql", "0002_audit_events_append_only.sql"):
            (before / migration).write_bytes((MIGRATIONS_DIR / migration).read_bytes())
        with db.connect() as conn:
            apply_migrations(conn, before)
            tenant = uuid.uuid4()
            for event_hash in ("a" * 64, "b" * 64):  # two heads: a fork at the start
                conn.execute(
                    "INSERT INTO compliance.audit_events (event_id, tenant_id, occurred_at, recorded_at, actor,"
                    " actor_type, source, event_type, payload, prev_hash, event_hash)"
                    " VALUES (%s, %s, now(), now(), 'a', 'user', 'api', 'auth.signin', '{}', NULL, %s)",
                    (uuid.uuid4(), tenant, event_hash),
                )
            with pytest.raises(MigrationError, match=r"0003_chain_cannot_fork failed: .*1 forked link"):
                apply_migrations(conn)
    finally:
        drop_database(postgres_cluster, name)


def request(actor: str) -> ExportRequest:
    return ExportRequest(tenant_id=uuid.uuid4(), requested_by_actor_id=actor, filter=window_filter(), format="csv")


def concurrent_requests(
    connect: Callable[[], psycopg.Connection[Any]], queue_url: str
) -> tuple[int, list[BaseException]]:
    created: list[uuid.UUID] = []
    errors: list[BaseException] = []

    def requester(_: int) -> None:
        with connect() as conn:
            try:
                created.append(create_export_job(conn, request("burst-actor"), queue_url=queue_url).job_id)
            except Exception as exc:
                errors.append(exc)

    run_concurrently(REQUESTS, requester)
    return len(created), errors


def test_the_rate_limit_holds_for_concurrent_requests_on_the_products_connections(
    repeatable_read_db: ExportDatabase, export_queue: str
) -> None:
    database = repeatable_read_db.database()
    created, errors = concurrent_requests(lambda: database.connect(application_name="rate-test"), export_queue)
    assert created == RATE_LIMIT
    assert len(errors) == REQUESTS - RATE_LIMIT
    assert all(isinstance(error, ExportRequestError) and error.code == "RATE_LIMIT_EXCEEDED" for error in errors)
    with repeatable_read_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM compliance.export_jobs").fetchone() == (RATE_LIMIT,)


def test_the_producer_refuses_repeatable_read_connections_clearly(
    repeatable_read_db: ExportDatabase, export_queue: str
) -> None:
    created, errors = concurrent_requests(repeatable_read_db.connect, export_queue)
    assert created == 0
    assert len(errors) == REQUESTS
    assert all(isinstance(error, IsolationLevelError) for error in errors), errors
    assert "the export rate limit needs READ COMMITTED isolation" in str(errors[0])
    with repeatable_read_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM compliance.export_jobs").fetchone() == (0,)
