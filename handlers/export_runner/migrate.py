"""Apply the ordered SQL files in ``migrations/`` exactly once each.

Applied versions are recorded in ``compliance.schema_migrations`` with a checksum of the file,
so running again applies only what is new, and a migration edited after it was applied is
refused (it would mean two databases with the same version and different schemas). Everything
runs in one transaction under an advisory lock: two migrators started at once apply each file
once, and a failing file leaves the schema as it was.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# An arbitrary constant shared by every migrator of this schema.
MIGRATION_LOCK_KEY = 0x636F6D706C6961  # "complia"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        if not MIGRATION_FILE.match(path.name):
            raise MigrationError(f"migration file name must look like 0001_name.sql: {path.name}")
        migrations.append(Migration(version=path.stem, path=path))
    numbers = [m.version[:4] for m in migrations]
    if len(set(numbers)) != len(numbers):
        raise MigrationError(f"two migrations share a number in {directory}")
    return migrations


def apply_migrations(conn: psycopg.Connection[Any], directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the versions applied now (empty when up to date)."""
    migrations = discover(directory)
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS compliance")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS compliance.schema_migrations ("
            " version text PRIMARY KEY, checksum char(64) NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = conn.execute("SELECT version, checksum FROM compliance.schema_migrations").fetchall()
        recorded = {version: checksum for version, checksum in rows}
        for migration in migrations:
            if migration.version in recorded:
                if recorded[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version} was changed after it was applied; add a new migration instead"
                    )
                continue
            try:
                conn.execute(migration.sql.encode("utf-8"))
            except psycopg.Error as exc:
                raise MigrationError(f"migration {migration.version} failed: {exc}") from exc
            conn.execute(
                "INSERT INTO compliance.schema_migrations (version, checksum) VALUES (%s, %s)",
                (migration.version, migration.checksum),
            )
            applied_now.append(migration.version)
    return applied_now
