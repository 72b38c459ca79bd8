import shutil
import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from handlers.export_runner.migrate import MIGRATIONS_DIR, MigrationError, apply_migrations, discover
from tests.support.export_fixtures import ExportDatabase, drop_database
from tests.support.postgres import PostgresCluster


@pytest.fixture
def empty_db(postgres_cluster: PostgresCluster):
    name = f"export_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_cluster.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield ExportDatabase(postgres_cluster, name)
    drop_database(postgres_cluster, name)


def test_migrations_apply_once_and_are_recorded(empty_db: ExportDatabase) -> None:
    versions = [m.version for m in discover()]
    with empty_db.connect() as conn:
        assert apply_migrations(conn) == versions
        assert apply_migrations(conn) == []
        recorded = [row[0] for row in conn.execute("SELECT version FROM compliance.schema_migrations ORDER BY 1")]
    assert recorded == versions
    assert versions[:3] == ["0001_compliance_schema", "0002_audit_events_append_only", "0003_chain_cannot_fork"]


def test_concurrent_migrators_apply_each_file_once(empty_db: ExportDatabase) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            with psycopg.connect(empty_db.url, autocommit=True) as conn:
                results.append(apply_migrations(conn))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results, key=len) == [[], [], [m.version for m in discover()]]


def test_an_edited_migration_is_refused(empty_db: ExportDatabase, tmp_path: Path) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    with empty_db.connect() as conn:
        apply_migrations(conn, copy)
        edited = copy / "0002_audit_events_append_only.sql"
        edited.write_text(edited.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="0002_audit_events_append_only was changed"):
            apply_migrations(conn, copy)


def test_a_failing_migration_leaves_the_schema_as_it_was(empty_db: ExportDatabase, tmp_path: Path) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    (copy / "9999_broken.sql").write_text("CREATE TABLE compliance.extra (id int);\nSELECT no_such_function();\n")
    with empty_db.connect() as conn:
        with pytest.raises(MigrationError, match="9999_broken failed"):
            apply_migrations(conn, copy)
        assert conn.execute("SELECT to_regclass('compliance.audit_events')").fetchone() == (None,)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE compliance.audit_events SET actor = 'mallory'",
        "DELETE FROM compliance.audit_events",
        "TRUNCATE compliance.audit_events",
    ],
)
def test_audit_events_are_append_only(export_db: ExportDatabase, statement: str) -> None:
    from handlers.export_runner.audit_writer import AuditEvent, write_audit_event

    with export_db.connect() as conn:
        write_audit_event(
            conn,
            AuditEvent(
                tenant_id=uuid.uuid4(), actor="alice", actor_type="user", source="api", event_type="auth.signin"
            ),
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
        assert conn.execute("SELECT count(*), min(actor) FROM compliance.audit_events").fetchone() == (1, "alice")
