from datetime import timedelta
from pathlib import Path

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


def test_secret_based_database_settings_verify_the_server_by_default(tmp_path: Path) -> None:
    bundle = tmp_path / "rds-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {
        "COMPLIANCE_EXPORTS_BUCKET": "b",
        "DATABASE_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:1:secret:db",
        "DATABASE_HOST": "cluster.example",
        "DATABASE_NAME": "compliance",
    }
    # verify-full is the default, and it needs the CA bundle: no silent downgrade to "require".
    with pytest.raises(ConfigurationError, match="DATABASE_CA_BUNDLE is required"):
        runner_settings(env)
    settings = runner_settings({**env, "DATABASE_CA_BUNDLE": str(bundle)})
    assert (settings.database.host, settings.database.name, settings.database.sslmode) == (
        "cluster.example",
        "compliance",
        "verify-full",
    )
    assert settings.database.auth_mode == "secret" and settings.database.ca_bundle == str(bundle)
    explicit = runner_settings({**env, "DATABASE_SSLMODE": "require"})
    assert (explicit.database.sslmode, explicit.database.ca_bundle) == ("require", None)


def test_iam_database_settings(tmp_path: Path) -> None:
    bundle = tmp_path / "rds-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {
        "COMPLIANCE_EXPORTS_BUCKET": "b",
        "DATABASE_AUTH": "iam",
        "DATABASE_HOST": "cluster.example",
        "DATABASE_PORT": "6543",
        "DATABASE_NAME": "audit",
        "DATABASE_USER": "export_runner",
        "DATABASE_CA_BUNDLE": str(bundle),
    }
    database = runner_settings(env).database
    assert (database.auth_mode, database.host, database.port, database.name, database.user) == (
        "iam",
        "cluster.example",
        6543,
        "audit",
        "export_runner",
    )
    assert (database.sslmode, database.secret_arn, database.url) == ("verify-full", None, None)
    with pytest.raises(ConfigurationError) as caught:
        runner_settings({"COMPLIANCE_EXPORTS_BUCKET": "b", "DATABASE_AUTH": "iam"})
    for name in ("DATABASE_HOST", "DATABASE_NAME", "DATABASE_USER", "DATABASE_CA_BUNDLE"):
        assert f"{name} is required" in str(caught.value)
    for mode in ("disable", "allow", "prefer"):
        with pytest.raises(ConfigurationError, match="IAM authentication needs TLS"):
            runner_settings({**env, "DATABASE_SSLMODE": mode})
    with pytest.raises(ConfigurationError, match="no readable CA bundle file"):
        runner_settings({**env, "DATABASE_CA_BUNDLE": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigurationError, match="DATABASE_AUTH is malformed: must be one of iam, secret, url"):
        runner_settings({**env, "DATABASE_AUTH": "password"})


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
