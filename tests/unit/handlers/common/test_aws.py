"""boto3 clients: one per service per container, retry config, endpoint from the environment."""

from __future__ import annotations

import pytest

from handlers.common.aws import DEFAULT_RETRY_CONFIG, client, reset_clients


@pytest.fixture(autouse=True)
def _fresh_clients(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    reset_clients()
    yield
    reset_clients()


def test_clients_are_cached_per_service() -> None:
    assert client("sqs") is client("sqs")
    assert client("sqs") is not client("s3")


def test_retry_config_is_applied() -> None:
    sqs = client("sqs")
    assert sqs.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert DEFAULT_RETRY_CONFIG.connect_timeout == 3
    assert sqs.meta.config.read_timeout == 10


def test_endpoint_comes_from_the_standard_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert client("s3").meta.endpoint_url.startswith("https://s3.")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    reset_clients()
    assert client("s3").meta.endpoint_url == "http://127.0.0.1:4566"
