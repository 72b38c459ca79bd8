"""The credential resolver against moto: prefixes enforced before any call, each reference read once."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from handlers.execution_engine.credentials import CredentialError, CredentialResolver
from handlers.execution_engine.jobs import parse_credential_reference
from tests.support.moto_server import MotoServer


class CountingClient:
    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            self.calls += 1
            return getattr(self.inner, name)(**kwargs)

        return call


@pytest.fixture
def resolver(aws: MotoServer) -> CredentialResolver:
    ssm, secrets = boto3.client("ssm"), boto3.client("secretsmanager")
    ssm.put_parameter(Name="/jobs/git/token", Value="ghp_token_value", Type="SecureString")
    ssm.put_parameter(Name="/other/thing", Value="not for jobs", Type="SecureString")
    secrets.create_secret(Name="jobs/deploy", SecretString=json.dumps({"DEPLOY_KEY": "k-1", "REGION": "eu"}))
    return CredentialResolver(
        ssm=CountingClient(ssm),
        secretsmanager=CountingClient(secrets),
        parameter_prefixes=("/jobs/",),
        secret_prefixes=("jobs/",),
    )


def test_references_resolve_once_per_job(resolver: CredentialResolver) -> None:
    reference = parse_credential_reference("aws:::ssm:/jobs/git/token")
    assert resolver.resolve(reference) == "ghp_token_value"
    assert resolver.resolve(reference) == "ghp_token_value"
    assert resolver.order_env(["/jobs/git/token"], ["jobs/deploy"]) == {
        "TOKEN": "ghp_token_value",
        "DEPLOY_KEY": "k-1",
        "REGION": "eu",
    }
    assert resolver.order_env([], ["jobs/deploy"])["DEPLOY_KEY"] == "k-1"
    assert resolver.ssm.calls == 1 and resolver.secretsmanager.calls == 1  # type: ignore[attr-defined]


def test_a_reference_outside_the_prefixes_is_refused_before_any_call(resolver: CredentialResolver) -> None:
    with pytest.raises(CredentialError, match="outside the prefixes"):
        resolver.parameter("/other/thing")
    with pytest.raises(CredentialError, match="outside the prefixes"):
        resolver.secret("prod/db")
    assert resolver.ssm.calls == 0 and resolver.secretsmanager.calls == 0  # type: ignore[attr-defined]


def test_a_missing_reference_is_named_and_no_value_is_shown(resolver: CredentialResolver) -> None:
    with pytest.raises(CredentialError, match="/jobs/missing does not exist"):
        resolver.parameter("/jobs/missing")
    with pytest.raises(CredentialError, match="jobs/nothing does not exist"):
        resolver.secret("jobs/nothing")
