"""JobClaim settings: each handler needs only its own variables; a missing one names itself."""

from __future__ import annotations

import pytest

from handlers.common.config import ConfigurationError
from handlers.job_claim import schema
from handlers.job_claim.settings import load
from handlers.job_claim.worker import config_from_env


def test_only_the_named_variables_are_required() -> None:
    settings = load("intake", schema.ENV_STATE_MACHINE_ARN, environ={schema.ENV_STATE_MACHINE_ARN: "arn"})
    assert settings[schema.ENV_STATE_MACHINE_ARN] == "arn" and settings.email_domain is None


def test_a_missing_variable_fails_naming_every_one() -> None:
    with pytest.raises(ConfigurationError, match=r"JOB_CLAIM_ACTIVE_JOBS_TABLE.*JOB_CLAIM_INTERRUPTS_TOPIC_ARN"):
        load("check-active-job", schema.ENV_ACTIVE_JOBS_TABLE, schema.ENV_INTERRUPTS_TOPIC_ARN, environ={})


def test_the_email_domain_is_optional() -> None:
    assert load("parse-email", environ={schema.ENV_EMAIL_DOMAIN: "jobs.example.com"}).email_domain == "jobs.example.com"


def test_the_worker_needs_its_tables_and_queue() -> None:
    with pytest.raises(ConfigurationError, match="JOB_CLAIM_OWNERSHIP_TABLE"):
        config_from_env({})
    config = config_from_env(
        {schema.ENV_OWNERSHIP_TABLE: "o", schema.ENV_ACTIVE_JOBS_TABLE: "a", schema.ENV_INPUT_QUEUE_URL: "q"}
    )
    assert config.heartbeat_seconds == 20 and config.ownership_lease_ms == 3600 * 1000
