"""ExecutionEngineStack: the cdk.json section reaches the construct, and the stack outputs what callers need."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Template

from infra.config import load_config
from infra.stacks.execution_engine_stack import ExecutionEngineStack
from tests.infra.synth import app_without_bundling

ALARMS = "arn:aws:sns:eu-west-1:123456789012:operators"


def _template(section: dict[str, Any], alarm_topic_arn: str | None = None) -> dict[str, Any]:
    config = load_config({"subsystems": ["execution_engine"], "execution_engine": section})
    stack = ExecutionEngineStack(
        app_without_bundling(),
        "ExecutionEngine",
        config=config.execution_engine,
        alarm_topic_arn=alarm_topic_arn,
        env=cdk.Environment(account="123456789012", region="eu-west-1"),
    )
    return dict(Template.from_stack(stack).to_json())


def _init_environment(template: dict[str, Any]) -> dict[str, Any]:
    (init,) = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function" and r["Properties"]["Handler"].endswith(".init_job.handler")
    ]
    return dict(init["Environment"]["Variables"])


def test_the_context_section_reaches_the_construct() -> None:
    template = _template(
        {
            "credential_parameter_prefixes": ["/app/credentials/"],
            "credential_secret_prefixes": ["app/credentials/"],
            "code_bucket_arns": ["arn:aws:s3:::acme-order-code"],
            "sops_key_parameter_prefix": "/ci/sops/",
        },
        alarm_topic_arn=ALARMS,
    )
    env = _init_environment(template)
    assert env["EXECUTION_ENGINE_CREDENTIAL_PARAMETER_PREFIXES"] == "/app/credentials/"
    assert env["EXECUTION_ENGINE_CREDENTIAL_SECRET_PREFIXES"] == "app/credentials/"
    assert env["EXECUTION_ENGINE_SOPS_KEY_PARAMETER_PREFIX"] == "/ci/sops/"
    policies = json.dumps([r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Policy"])
    assert "arn:aws:s3:::acme-order-code/*" in policies and ":parameter/ci/sops/*" in policies
    # The operator topic is used, not created.
    assert not [r for r in template["Resources"].values() if r["Type"] == "AWS::SNS::Topic"]
    alarms = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert alarms and all(a["AlarmActions"] == [ALARMS] for a in alarms)


def test_the_cdk_json_defaults_grant_no_credentials_and_create_the_alarm_topic() -> None:
    template = _template(
        {"credential_parameter_prefixes": [], "credential_secret_prefixes": [], "code_bucket_arns": []}
    )
    env = _init_environment(template)
    assert "EXECUTION_ENGINE_CREDENTIAL_PARAMETER_PREFIXES" not in env
    assert "EXECUTION_ENGINE_CREDENTIAL_SECRET_PREFIXES" not in env
    assert env["EXECUTION_ENGINE_SOPS_KEY_PARAMETER_PREFIX"] == "/execution-engine/sops-keys/"
    statements = [
        statement
        for r in template["Resources"].values()
        if r["Type"] == "AWS::IAM::Policy"
        for statement in r["Properties"]["PolicyDocument"]["Statement"]
    ]
    actions = {a for s in statements for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    assert not [a for a in actions if a.startswith("secretsmanager:")]
    # The one ssm:GetParameter is the worker's, on the SOPS identities.
    (read,) = [s for s in statements if "ssm:GetParameter" in s["Action"]]
    assert json.dumps(read["Resource"]).endswith(':parameter/execution-engine/sops-keys/*"]]}')
    # s3:GetObject only on the internal bucket's bundles and results: no code bucket without the key.
    reads = [json.dumps(s["Resource"]) for s in statements if "s3:GetObject" in s["Action"]]
    assert reads and all(r.endswith(('tmp/exec/*"]]}', 'tmp/callbacks/runs/*"]]}')) for r in reads), reads
    topics = [r for r in template["Resources"].values() if r["Type"] == "AWS::SNS::Topic"]
    assert len(topics) == 1 and "KmsMasterKeyId" in topics[0]["Properties"]
    assert {"ApiUrl", "InitUrl", "DoneBucket", "ExecutionEngineOrdersTable", "ExecutionEngineOrderEventsTable"} <= set(
        template["Outputs"]
    )
