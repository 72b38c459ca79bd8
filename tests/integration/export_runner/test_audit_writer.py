import json
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from handlers.export_runner import chain
from handlers.export_runner.audit_writer import AuditEvent, AuditEventError, write_audit_event
from tests.support.export_fixtures import ExportDatabase


def event(tenant: uuid.UUID, **overrides: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "tenant_id": tenant,
        "actor": "alice",
        "actor_type": "user",
        "source": "api",
        "event_type": "auth.signin",
        "payload": {},
    }
    fields.update(overrides)
    return AuditEvent(**fields)


def stored_chain(conn: psycopg.Connection[Any], tenant: uuid.UUID) -> list[tuple[Any, ...]]:
    """(event_id, prev_hash, event_hash, recomputed hash) in chain order, straight from the table."""
    rows = conn.execute(
        "SELECT event_id, tenant_id, occurred_at, actor, actor_type, source, event_type, payload::text,"
        " prev_hash, event_hash FROM compliance.audit_events WHERE tenant_id = %s ORDER BY recorded_at, event_id",
        (tenant,),
    ).fetchall()
    out = []
    for event_id, tenant_id, occurred_at, actor, actor_type, source, event_type, payload, prev_hash, event_hash in rows:
        canonical = chain.canonical_event(
            event_id=str(event_id),
            tenant_id=str(tenant_id),
            occurred_at=chain.format_timestamp(occurred_at),
            actor=actor,
            actor_type=actor_type,
            source=source,
            event_type=event_type,
            payload=json.loads(payload),
        )
        out.append((event_id, prev_hash, event_hash, chain.event_hash(prev_hash, canonical)))
    return out


def assert_linear_chain(links: list[tuple[Any, ...]]) -> None:
    previous = None
    for event_id, prev_hash, event_hash, recomputed in links:
        assert recomputed == event_hash, event_id
        assert prev_hash == previous, event_id
        previous = event_hash


def test_events_of_a_tenant_form_one_chain(export_db: ExportDatabase) -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    with export_db.connect() as conn:
        first = write_audit_event(conn, event(tenant, payload={"n": 1.0, "s": "x"}))
        write_audit_event(conn, event(other))
        second = write_audit_event(conn, event(tenant, occurred_at=datetime(2020, 1, 1, tzinfo=UTC)))
        assert first.prev_hash is None and second.prev_hash == first.event_hash
        assert second.recorded_at > first.recorded_at
        assert_linear_chain(stored_chain(conn, tenant))
        assert [link[1] for link in stored_chain(conn, other)] == [None]


def test_concurrent_writers_of_one_tenant_never_fork_the_chain(export_db: ExportDatabase) -> None:
    tenant = uuid.uuid4()
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            with export_db.connect() as conn:
                for i in range(5):
                    write_audit_event(conn, event(tenant, actor=f"worker-{worker}", payload={"i": i}))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with export_db.connect() as conn:
        links = stored_chain(conn, tenant)
    assert len(links) == 30
    assert_linear_chain(links)


def test_a_rolled_back_write_leaves_no_link(export_db: ExportDatabase) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        kept = write_audit_event(conn, event(tenant))
        with pytest.raises(RuntimeError), conn.transaction():
            write_audit_event(conn, event(tenant, actor="ghost"))
            raise RuntimeError("caller changes its mind")
        after = write_audit_event(conn, event(tenant))
        assert after.prev_hash == kept.event_hash
        assert_linear_chain(stored_chain(conn, tenant))


def test_the_hash_covers_the_payload_as_postgres_returns_it(export_db: ExportDatabase) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        write_audit_event(conn, event(tenant, payload={"float": 1.0, "small": 1e-7, "exp": 1.5e3, "é": "✓"}))
        assert_linear_chain(stored_chain(conn, tenant))


@pytest.mark.parametrize(
    "payload",
    [
        {"huge": 1e20},  # jsonb prints 100000000000000000000: an integer beyond JSON's safe range
        {"big": 2**60},
    ],
)
def test_payloads_without_a_canonical_form_are_refused_and_leave_nothing(
    export_db: ExportDatabase, payload: dict[str, Any]
) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        with pytest.raises(AuditEventError, match="canonical"):
            write_audit_event(conn, event(tenant, payload=payload))
        assert conn.execute("SELECT count(*) FROM compliance.audit_events").fetchone() == (0,)
        assert write_audit_event(conn, event(tenant)).prev_hash is None


def test_unserialisable_payloads_are_refused(export_db: ExportDatabase) -> None:
    with export_db.connect() as conn, pytest.raises(AuditEventError, match="JSON-serialisable"):
        write_audit_event(conn, event(uuid.uuid4(), payload={"when": datetime.now(UTC)}))
