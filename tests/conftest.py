"""Session-wide real services: one moto server, one throwaway PostgreSQL cluster.

Both start lazily, only when a test asks for them, so `pytest tests/unit` needs neither.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from handlers.common.aws import reset_clients
from tests.support.moto_server import MotoServer, start_moto_server
from tests.support.postgres import PostgresCluster, start_postgres

# Subsystem fixtures (moto tables, stubs, databases), registered once for every test layer
# that needs them instead of re-exported from each layer's conftest.
pytest_plugins = ["tests.support.fanout_fixtures", "tests.support.export_fixtures", "tests.support.moto_harness"]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    yield from start_moto_server()


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """A clean moto account, reached the way an operator's local run reaches it."""
    moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    monkeypatch.setenv("MOTO_PORT", str(moto_server.port))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    reset_clients()
    yield moto_server
    reset_clients()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    yield from start_postgres()


@pytest.fixture(autouse=True, scope="session")
def _no_real_aws() -> None:
    # Nothing in the test run may reach a real AWS account, whatever the developer's shell has.
    os.environ.pop("AWS_PROFILE", None)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "EventDrivenSubsystemsTest")
