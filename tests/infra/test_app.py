"""app.py as the CDK CLI runs it: malformed context stops the synth with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_app(tmp_path: Path, context: dict[str, object]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CDK_OUTDIR": str(tmp_path / "out"),
        "CDK_CONTEXT_JSON": json.dumps({**context, "aws:cdk:bundling-stacks": []}),
        "PATH": f"{ROOT / 'node_modules' / '.bin'}:{os.environ['PATH']}",
    }
    return subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("context", "line"),
    [
        ({"subsystems": ["fanout", "billing"]}, "error: context subsystems: unknown subsystem 'billing'"),
        ({"alarm_topic_arn": "my-topic"}, "error: context alarm_topic_arn must be an ARN of sns"),
        (
            {"subsystems": ["execution_engine"], "execution_engine": {"code_bucket_arns": ["my-bucket"]}},
            "error: context execution_engine.code_bucket_arns: 'my-bucket' is not an S3 bucket ARN",
        ),
    ],
)
def test_malformed_context_is_one_line_and_exit_1(tmp_path: Path, context: dict[str, object], line: str) -> None:
    result = _run_app(tmp_path, context)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(line)
    assert "Traceback" not in result.stderr and "jsii" not in result.stderr


def test_fanout_stack_synthesizes_with_every_pack(tmp_path: Path) -> None:
    result = _run_app(tmp_path, {"subsystems": ["fanout"], "fanout": {"slack_secret_prefix": "bgagent/slack/"}})
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "FanOutConsumer" in manifest["artifacts"]
    report = json.loads((tmp_path / "out" / "validation-report.json").read_text())
    assert not [v for plugin in report["pluginReports"] for v in plugin.get("violations", [])]
    # The packs ran: their acknowledgements were written into the template metadata.
    template = json.loads((tmp_path / "out" / "FanOutConsumer.template.json").read_text())
    acknowledged = {
        rule["id"]
        for resource in template["Resources"].values()
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    }
    assert {"AwsSolutions-SQS3", "Serverless-SQSRedrivePolicy", "NIST.800.53.R5-LambdaInsideVPC"} <= acknowledged
    assert "HIPAA.Security-IAMNoInlinePolicy" in acknowledged


def test_stream_recovery_stack_synthesizes_with_every_pack(tmp_path: Path) -> None:
    result = _run_app(tmp_path, {"subsystems": ["stream_recovery"]})
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "StreamRecovery" in manifest["artifacts"] and "FanOutConsumer" not in manifest["artifacts"]
    report = json.loads((tmp_path / "out" / "validation-report.json").read_text())
    assert not [v for plugin in report["pluginReports"] for v in plugin.get("violations", [])]
    template = json.loads((tmp_path / "out" / "StreamRecovery.template.json").read_text())
    types = [resource["Type"] for resource in template["Resources"].values()]
    assert types.count("AWS::DynamoDB::Table") == 5 and types.count("AWS::Scheduler::Schedule") == 1
    # What the application's writer needs is an output of the stack.
    assert {"StreamRecoveryTasksTable", "StreamRecoveryDeliveriesTable"} <= set(template["Outputs"])


def test_execution_engine_stack_synthesizes_with_every_pack(tmp_path: Path) -> None:
    options = {
        "credential_parameter_prefixes": ["/app/credentials/"],
        "credential_secret_prefixes": ["app/credentials/"],
        "code_bucket_arns": ["arn:aws:s3:::acme-order-code"],
    }
    result = _run_app(tmp_path, {"subsystems": ["execution_engine"], "execution_engine": options})
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    stacks = {name for name, a in manifest["artifacts"].items() if a["type"] == "aws:cloudformation:stack"}
    assert stacks == {"ExecutionEngine"}
    report = json.loads((tmp_path / "out" / "validation-report.json").read_text())
    assert not [v for plugin in report["pluginReports"] for v in plugin.get("violations", [])]
    template = json.loads((tmp_path / "out" / "ExecutionEngine.template.json").read_text())
    types = [resource["Type"] for resource in template["Resources"].values()]
    assert types.count("AWS::Lambda::Function") == 4 and types.count("AWS::StepFunctions::StateMachine") == 1
    assert types.count("AWS::ApiGatewayV2::Route") == 1
    # The context reached the construct: init may read the configured credentials and code bucket.
    rendered = json.dumps(template["Resources"])
    assert ":parameter/app/credentials/*" in rendered and ":secret:app/credentials/*" in rendered
    assert "arn:aws:s3:::acme-order-code/*" in rendered
    # Where to POST and where runs live (the CLI's --api-url and EXECUTION_ENGINE_ORDERS_TABLE).
    assert {"ApiUrl", "InitUrl", "DoneBucket", "ExecutionEngineOrdersTable"} <= set(template["Outputs"])
