"""Issue #9 items 2 and 3: IAM token logins as the function's role, TLS that verifies the server.

A PostgreSQL cluster of its own serves TLS with a certificate from a throwaway CA. It trusts
every local login, so it cannot check an IAM token; what is checked here is that the password
the client sends is the token RDS's signer made for exactly that user, over a verified TLS
session, and that the runner does its work through that login.
"""

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aws_lambda_powertools import Logger

from handlers.common.aws import client
from handlers.common.config import EnvReader
from handlers.export_runner.db import Database, DatabaseSettings, read_database_settings
from handlers.export_runner.export_job import Outcome, RunnerDependencies, run_export_job
from handlers.export_runner.storage import s3_client
from tests.support.export_fixtures import (
    ExportDatabase,
    bulk_append,
    create_migrated_template,
    drop_database,
    fresh_database,
    insert_job_row,
    spaced_events,
)
from tests.support.postgres import PostgresCluster, start_postgres, write_server_certificate


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[PostgresCluster]:
    yield from start_postgres(tls=True)


@pytest.fixture(scope="module")
def tls_template(tls_cluster: PostgresCluster) -> Iterator[str]:
    name = create_migrated_template(tls_cluster)
    yield name
    drop_database(tls_cluster, name)


@pytest.fixture
def tls_db(tls_cluster: PostgresCluster, tls_template: str) -> Iterator[ExportDatabase]:
    yield from fresh_database(tls_cluster, tls_template)


class RecordingRds:
    """The real boto3 RDS client (its signer runs locally), keeping the tokens it issued."""

    def __init__(self) -> None:
        self.client = client("rds")
        self.tokens: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def generate_db_auth_token(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        token = str(self.client.generate_db_auth_token(**kwargs))
        self.tokens.append(token)
        return token


def settings(db: ExportDatabase, **env: str) -> DatabaseSettings:
    reader = EnvReader(
        {
            "DATABASE_HOST": db.cluster.host,
            "DATABASE_PORT": str(db.cluster.port),
            "DATABASE_NAME": db.name,
            **env,
        }
    )
    result = read_database_settings(reader)
    reader.check("test")
    return result


def session(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = conn.execute("SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    return tuple(row)


def test_iam_logins_send_a_fresh_token_for_exactly_the_role_over_verified_tls(
    tls_db: ExportDatabase, aws: Any, exports_bucket: str
) -> None:
    assert tls_db.cluster.ca_bundle is not None
    rds = RecordingRds()
    database = Database(
        settings(
            tls_db,
            DATABASE_AUTH="iam",
            DATABASE_USER="export_runner",
            DATABASE_CA_BUNDLE=tls_db.cluster.ca_bundle,
        ),
        rds_client=lambda: rds,
    )
    with database.connect(application_name="iam-test") as conn:
        assert session(conn) == ("export_runner", True)
        assert conn.info.password == rds.tokens[-1]
        assert conn.info.user == "export_runner"
    assert rds.calls == [{"DBHostname": "127.0.0.1", "Port": tls_db.cluster.port, "DBUsername": "export_runner"}]
    token = rds.tokens[0]
    assert token.startswith(f"127.0.0.1:{tls_db.cluster.port}/?Action=connect&DBUser=export_runner&")
    assert "X-Amz-Signature=" in token and "X-Amz-Expires=900" in token

    # The runner's whole job through that login: claim, COPY, outcome (a token per connection).
    tenant = uuid.uuid4()
    with tls_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 5))
        job_id = insert_job_row(conn, tenant_id=tenant)
    deps = RunnerDependencies(database=database, s3=s3_client(), bucket=exports_bucket, presign_ttl_seconds=900)
    report = run_export_job(job_id, deps, logger=Logger(service="iam-test"))
    assert report.outcome is Outcome.COMPLETED and report.result is not None and report.result.rows == 5
    assert len(rds.tokens) >= 4


def test_verify_full_refuses_a_server_the_ca_bundle_did_not_sign(tls_db: ExportDatabase, tmp_path: Path) -> None:
    other_ca = write_server_certificate(tmp_path)  # a CA of its own, not the server's
    database = Database(settings(tls_db, DATABASE_SECRET_ARN="unused", DATABASE_CA_BUNDLE=str(other_ca)))
    conninfo = database._tls()  # the TLS options of the secret and IAM logins
    assert conninfo == {"sslmode": "verify-full", "sslrootcert": str(other_ca)}
    with pytest.raises(psycopg.OperationalError, match=r"SSL error: (certificate verify failed|provider signature)"):
        psycopg.connect(tls_db.url, **conninfo)
    # The right bundle, the same options: verified.
    assert tls_db.cluster.ca_bundle is not None
    with psycopg.connect(tls_db.url, sslmode="verify-full", sslrootcert=tls_db.cluster.ca_bundle) as conn:
        assert session(conn)[1] is True


def test_verify_full_refuses_a_certificate_for_another_host(tls_db: ExportDatabase) -> None:
    assert tls_db.cluster.ca_bundle is not None
    tls = {"sslmode": "verify-full", "sslrootcert": tls_db.cluster.ca_bundle}
    address = {"hostaddr": tls_db.cluster.host, "port": tls_db.cluster.port, "dbname": tls_db.name}
    # The same server at the same address, reached under a name its certificate does not carry.
    with pytest.raises(psycopg.OperationalError, match=r'does not match host name "db\.example\.invalid"'):
        psycopg.connect(host="db.example.invalid", user=tls_db.cluster.user, **address, **tls)
    with psycopg.connect(host="localhost", user=tls_db.cluster.user, **address, **tls) as conn:
        assert session(conn)[1] is True


def test_require_is_an_explicit_choice_that_encrypts_without_verifying(tls_db: ExportDatabase, aws: Any) -> None:
    rds = RecordingRds()
    database = Database(
        settings(tls_db, DATABASE_AUTH="iam", DATABASE_USER="export_runner", DATABASE_SSLMODE="require"),
        rds_client=lambda: rds,
    )
    with database.connect(application_name="require-test") as conn:
        assert session(conn) == ("export_runner", True)
