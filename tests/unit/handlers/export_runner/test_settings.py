from datetime import timedelta

import pytest

from handlers.common.config import ConfigurationError
from handlers.export_runner.settings import runner_settings, sweeper_settings


def test_runner_needs_a_bucket_and_a_database() -> None:
    with pytest.raises(ConfigurationError) as caught:
        runner_settings({})
    assert "COMPLIANCE_EXPORTS_BUCKET is required" in str(caught.value)
    assert "DATABASE_SECRET_ARN is required" in str(caught.value)


def test_runner_defaults() -> None:
    settings = runner_settings({"COMPLIANCE_EXPORTS_BUCKET": "b", "DATABASE_URL": "postgresql://x@h/db"})
    assert settings.presign_ttl_seconds == 900
    assert settings.database.url == "postgresql://x@h/db" and settings.database.secret_arn is None


def test_secret_based_database_settings() -> None:
    settings = runner_settings(
        {
            "COMPLIANCE_EXPORTS_BUCKET": "b",
            "DATABASE_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:1:secret:db",
            "DATABASE_HOST": "cluster.example",
            "DATABASE_NAME": "compliance",
        }
    )
    assert (settings.database.host, settings.database.name, settings.database.sslmode) == (
        "cluster.example",
        "compliance",
        "require",
    )


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("PRESIGN_TTL_SECONDS", "soon", "must be an integer"),
        ("PRESIGN_TTL_SECONDS", "0", "must be between 1 and 604800"),
        ("PRESIGN_TTL_SECONDS", "604801", "must be between 1 and 604800"),
        ("DATABASE_SSLMODE", "sometimes", "must be one of"),
    ],
)
def test_malformed_values_fail_loudly(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        runner_settings({"COMPLIANCE_EXPORTS_BUCKET": "b", "DATABASE_URL": "postgresql://x@h/db", name: value})


def test_sweeper_defaults_cover_the_function_timeout_and_queue_retention() -> None:
    settings = sweeper_settings({"DATABASE_URL": "postgresql://x@h/db"})
    assert settings.stuck_after == timedelta(seconds=960)
    assert settings.queued_expiry == timedelta(seconds=90_000)
    with pytest.raises(ConfigurationError, match="DATABASE_SECRET_ARN"):
        sweeper_settings({})
