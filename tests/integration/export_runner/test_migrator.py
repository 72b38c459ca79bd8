"""Issue #9 item 1: the deploy-time migrator, run as Lambda runs it, against the test Postgres.

It logs in with a Secrets Manager secret (the cluster's admin login, as the construct deploys
it), applies every migration to an empty database, is a no-op on the next deploy, applies only a
new migration, and raises with the migration's own error so the trigger fails the deployment.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from handlers.common.aws import client
from handlers.export_runner.migrate import MIGRATIONS_DIR, MigrationError, discover
from handlers.export_runner.migration_digest import migrations_digest
from tests.support.export_fixtures import ExportDatabase, LambdaContext, cold_start, drop_database
from tests.support.postgres import PostgresCluster


@pytest.fixture
def empty_db(postgres_cluster: PostgresCluster) -> Iterator[ExportDatabase]:
    name = f"export_migrator_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_cluster.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield ExportDatabase(postgres_cluster, name)
    drop_database(postgres_cluster, name)


@pytest.fixture
def migrator_env(monkeypatch: pytest.MonkeyPatch, empty_db: ExportDatabase, aws: Any) -> dict[str, str]:
    """What the construct sets: the admin secret (host and dbname from the environment)."""
    cluster = empty_db.cluster
    secret = {"username": cluster.user, "password": "trust-auth-ignores-it", "port": cluster.port, "host": "nowhere"}
    arn = client("secretsmanager").create_secret(
        Name=f"audit-admin-{uuid.uuid4().hex[:6]}", SecretString=json.dumps(secret)
    )["ARN"]
    env = {
        "DATABASE_AUTH": "secret",
        "DATABASE_SECRET_ARN": arn,
        "DATABASE_HOST": cluster.host,
        "DATABASE_NAME": empty_db.name,
        "DATABASE_SSLMODE": "disable",
        "MIGRATIONS_SHA256": migrations_digest(),
        "POWERTOOLS_SERVICE_NAME": "export-migrator-test",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return env


def _recorded(db: ExportDatabase) -> list[str]:
    with db.connect() as conn:
        return [row[0] for row in conn.execute("SELECT version FROM compliance.schema_migrations ORDER BY 1")]


def test_migrator_applies_every_migration_with_the_admin_secret_then_is_a_no_op(
    migrator_env: dict[str, str], empty_db: ExportDatabase
) -> None:
    migrator = cold_start("handlers.export_runner.migrator")
    versions = [m.version for m in discover()]

    first = migrator.handler({"RequestType": "Create"}, LambdaContext())
    assert first == {"applied": versions, "migrationsSha256": migrations_digest()}
    assert _recorded(empty_db) == versions
    with empty_db.connect() as conn:
        roles = {
            row[0]
            for row in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'e%' OR rolname = 'audit_writer'")
        }
        assert {"audit_writer", "export_runner", "export_producer"} <= roles
        assert conn.execute("SELECT count(*) FROM compliance.audit_events").fetchone() == (0,)

    # The next deploy (or a re-run of the same one) changes nothing.
    assert migrator.handler({}, LambdaContext())["applied"] == []
    assert _recorded(empty_db) == versions


def test_migrator_applies_only_a_new_migration(
    migrator_env: dict[str, str], empty_db: ExportDatabase, tmp_path: Path
) -> None:
    migrator = cold_start("handlers.export_runner.migrator")
    migrator.handler({}, LambdaContext())
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    (directory / "0999_added_later.sql").write_text("CREATE TABLE compliance.added_later (id int);\n")
    result = migrator.migrate(migrator.DATABASE, logger=migrator.logger, directory=directory)
    assert result["applied"] == ["0999_added_later"]
    assert result["migrationsSha256"] == migrations_digest(directory) != migrations_digest()


def test_a_failed_migration_raises_its_own_error_and_leaves_the_schema_as_it_was(
    migrator_env: dict[str, str], empty_db: ExportDatabase, tmp_path: Path
) -> None:
    migrator = cold_start("handlers.export_runner.migrator")
    migrator.handler({}, LambdaContext())
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    (directory / "0998_fine.sql").write_text("CREATE TABLE compliance.fine (id int);\n")
    (directory / "0999_broken.sql").write_text("ALTER TABLE compliance.no_such_table ADD COLUMN x int;\n")
    with pytest.raises(MigrationError, match=r"migration 0999_broken failed: .*no_such_table"):
        migrator.migrate(migrator.DATABASE, logger=migrator.logger, directory=directory)
    with empty_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('compliance.fine')").fetchone() == (None,)
    assert "0998_fine" not in _recorded(empty_db)


def test_migrator_refuses_migrations_other_than_the_ones_it_was_built_with(
    migrator_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, empty_db: ExportDatabase
) -> None:
    monkeypatch.setenv("MIGRATIONS_SHA256", "0" * 64)
    migrator = cold_start("handlers.export_runner.migrator")
    with pytest.raises(RuntimeError, match="not the ones this deployment was built with"):
        migrator.handler({}, LambdaContext())
    with empty_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('compliance.schema_migrations')").fetchone() == (None,)


def test_migrator_cold_start_names_the_missing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers.common.config import ConfigurationError

    for key in ("DATABASE_URL", "DATABASE_SECRET_ARN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DATABASE_AUTH", "secret")
    with pytest.raises(ConfigurationError, match="DATABASE_SECRET_ARN"):
        cold_start("handlers.export_runner.migrator")
