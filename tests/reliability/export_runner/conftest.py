import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from tests.support.export_fixtures import ExportDatabase, bulk_append, fresh_database, spaced_events
from tests.support.postgres import PostgresCluster

BIG_EXPORT_ROWS = 12_000
BIG_PAYLOAD_BYTES = 6_000  # ~75 MB of CSV: nine 8 MiB parts, far more than socket buffers hold


@dataclass(frozen=True)
class BigExport:
    db: ExportDatabase
    tenant_id: uuid.UUID


@pytest.fixture(scope="module")
def big_export(postgres_cluster: PostgresCluster, export_template: str) -> Iterator[BigExport]:
    """One database per module holding an export large enough to fail in the middle of."""
    for db in fresh_database(postgres_cluster, export_template):
        tenant = uuid.uuid4()
        with db.connect() as conn:
            bulk_append(
                conn,
                spaced_events(tenant, BIG_EXPORT_ROWS, step=timedelta(seconds=30), payload_bytes=BIG_PAYLOAD_BYTES),
            )
        yield BigExport(db, tenant)
