"""checkov, a scanner outside our packs, finds nothing in the templates app.py synthesizes.

Which checkov runs: ``CHECKOV_BIN``, which ``make test`` and ``make infra`` set after installing
``.venv-checkov/`` from ``requirements-checkov.txt``; set but not runnable, the test fails. Unset
(pytest run by hand), the project's ``.venv-checkov/bin/checkov`` is used when it exists, and
otherwise the test fails with the command that installs it.

What it may skip is what ``infra.acknowledge`` wrote into ``Metadata.checkov.skip``, each with
its reason; the reviewed list is below, so a new skip shows up here as well as in the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT_CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
INSTALL = (
    "make infra, or: python3 -m venv .venv-checkov && "
    ".venv-checkov/bin/pip install --no-deps -r requirements-checkov.txt"
)
CDK_JSON_CONTEXT: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text())["context"]
# Every optional integration on: all three channels, an existing database, an operator topic.
EVERY_OPTION: dict[str, Any] = {
    "alarm_topic_arn": "arn:aws:sns:eu-west-1:123456789012:operators",
    "fanout": {
        "slack_secret_prefix": "bgagent/slack/",
        "github_token_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:github-AbCdEf",
        "github_repo_secret_prefix": "bgagent/github/",
        "email_sender": "agent@example.com",
        "github_api_url": "https://github.example.com/api/v3",
        "slack_api_url": "https://slack-gov.com/api/",
        "task_events_table_arn": "arn:aws:dynamodb:eu-west-1:123456789012:table/task-events",
        "task_events_stream_arn": (
            "arn:aws:dynamodb:eu-west-1:123456789012:table/task-events/stream/2026-01-01T00:00:00.000"
        ),
        "task_table_arn": "arn:aws:dynamodb:eu-west-1:123456789012:table/tasks",
        "tables_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/12121212-3434-5656-7878-909090909090",
        "secrets_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/abababab-cdcd-efef-0101-232323232323",
    },
    "export_runner": {
        "database_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:audit-db-AbCdEf",
        "database_cluster_identifier": "audit-log",
        "database_endpoint": "audit-log.cluster-abc123.eu-west-1.rds.amazonaws.com",
        "database_port": 6543,
        "database_security_group_id": "sg-0123456789abcdef0",
        "database_secret_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555",
        "database_name": "compliance",
        "vpc_id": "vpc-0123456789abcdef0",
        "subnet_ids": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
    },
    "stream_recovery": {
        f"{role}_table_arn": f"arn:aws:dynamodb:eu-west-1:123456789012:table/app-{role}"
        for role in ("tasks", "task_events", "push_configs", "pending_dispatches", "deliveries")
    }
    | {
        "pending_dispatches_stream_arn": (
            "arn:aws:dynamodb:eu-west-1:123456789012:table/app-pending_dispatches/stream/2026-01-01T00:00:00.000"
        ),
        "tables_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/66666666-7777-8888-9999-000000000000",
    },
    "execution_engine": {
        "credential_parameter_prefixes": ["/app/credentials/"],
        "credential_secret_prefixes": ["app/credentials/"],
        "code_bucket_arns": ["arn:aws:s3:::acme-order-code"],
        "sops_key_parameter_prefix": "/execution-engine/sops-keys/",
    },
}
CONFIGURATIONS = {"cdk-json": CDK_JSON_CONTEXT, "every-option": {**CDK_JSON_CONTEXT, **EVERY_OPTION}}
# The reviewed skips of every configuration, by template: (check id, logical id without its hash).
# Each one's reason is at its acknowledge() call and in the template.
REVIEWED_SKIPS = {
    "ExecutionEngine.template.json": {
        ("CKV_AWS_18", "ExecutionEngineInternalBucketAccessLogBucket"),
        ("CKV_AWS_18", "ExecutionEngineDoneBucketAccessLogBucket"),
    }
    | {
        (check, f"ExecutionEngine{name}Function")
        for check in ("CKV_AWS_116", "CKV_AWS_117")
        for name in ("Init", "Orchestrator", "WatchdogCheck", "Worker")
    },
    "ExportRunner.template.json": {("CKV_AWS_18", "ExportRunnerExportsAccessLogBucket")}
    | {
        (check, "AWSCDKTriggerCustomResourceProviderCustomResourceProviderHandler")
        for check in ("CKV_AWS_115", "CKV_AWS_116", "CKV_AWS_117")
    },
    "FanOutConsumer.template.json": {("CKV_AWS_117", "FanOutConsumerHandlerFunction")},
    "JobClaim.template.json": {("CKV_AWS_18", "JobClaimEmailAccessLogBucket")}
    | {
        ("CKV_AWS_117", f"JobClaim{name}Function")
        for name in (
            "Intake",
            "ParseEmail",
            "ProcessAttachment",
            "CheckActiveJob",
            "RequestClaim",
            "RecordInterruption",
            "HandleTimeout",
        )
    }
    | {
        ("CKV_AWS_116", f"JobClaim{name}Function")
        for name in (
            "ParseEmail",
            "ProcessAttachment",
            "CheckActiveJob",
            "RequestClaim",
            "RecordInterruption",
            "HandleTimeout",
        )
    },
    "StreamRecovery.template.json": {
        ("CKV_AWS_117", "StreamRecoveryStreamWorkerFunction"),
        ("CKV_AWS_117", "StreamRecoverySweeperFunction"),
    },
}


def _checkov() -> Path:
    configured = os.environ.get("CHECKOV_BIN")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"CHECKOV_BIN={configured} is not an executable checkov; install it with {INSTALL}")
        return Path(configured)
    if os.access(PROJECT_CHECKOV, os.X_OK):
        return PROJECT_CHECKOV
    pytest.fail(f"checkov is not installed: {INSTALL} (make test and make infra install it)")


@dataclass(frozen=True)
class Scan:
    templates: list[str]  # "<configuration>/<template file>", as checkov names them
    results: dict[str, list[dict[str, Any]]]  # passed_checks, failed_checks, skipped_checks
    summary: dict[str, Any]

    def template_of(self, check: dict[str, Any]) -> str:
        return check["file_path"].lstrip("/")


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Scan:
    """Synthesize every configuration (in parallel, no bundling), then one checkov run over all."""
    checkov = _checkov()
    root = tmp_path_factory.mktemp("checkov")
    synths = {name: _start_synth(root / name, context) for name, context in CONFIGURATIONS.items()}
    for name, process in synths.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"synth of {name} failed:\n{stderr[-3000:]}"
    templates = sorted(path.relative_to(root).as_posix() for path in root.glob("*/*.template.json"))
    assert len(templates) == 5 * len(CONFIGURATIONS), templates
    command = [
        str(checkov), "--framework", "cloudformation", "--output", "json", "--skip-download", "--file", *templates,
    ]  # fmt: skip
    # No request leaves the machine: --skip-download keeps checkov from fetching Prisma Cloud's
    # guidelines, and this variable from asking PyPI for a newer checkov.
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov exited {result.returncode} without a JSON report:\n{result.stderr[-3000:]}")
    assert isinstance(report, dict) and report["check_type"] == "cloudformation", str(report)[:3000]
    return Scan(templates=templates, results=report["results"], summary=report["summary"])


def _start_synth(outdir: Path, context: dict[str, Any]) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "CDK_OUTDIR": str(outdir),
        "CDK_CONTEXT_JSON": json.dumps({**context, "aws:cdk:bundling-stacks": []}),
        "PATH": f"{ROOT / 'node_modules' / '.bin'}:{os.environ['PATH']}",
    }
    return subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def test_checkov_fails_no_check(scan: Scan) -> None:
    counts = {
        outcome: Counter(scan.template_of(check) for check in scan.results[f"{outcome}_checks"])
        for outcome in ("passed", "failed", "skipped")
    }
    for template in scan.templates:
        print(
            f"checkov {scan.summary['checkov_version']} {template}: {counts['passed'][template]} passed, "
            f"{counts['failed'][template]} failed, {counts['skipped'][template]} skipped"
        )
    failures = [
        f"{check['check_id']} {check['resource']} in {scan.template_of(check)}: {check['check_name']}"
        for check in scan.results["failed_checks"]
    ]
    assert not failures, "checkov failed (fix the resource, or acknowledge() the check id with a reason):\n" + (
        "\n".join(failures)
    )


def test_checkov_read_every_template(scan: Scan) -> None:
    assert scan.summary["parsing_errors"] == 0, scan.results.get("parsing_errors")
    assert {scan.template_of(check) for check in scan.results["passed_checks"]} == set(scan.templates)


def test_checkov_skips_only_the_reviewed_acknowledgements(scan: Scan) -> None:
    for configuration in CONFIGURATIONS:
        skipped: dict[str, set[tuple[str, str]]] = {}
        for check in scan.results["skipped_checks"]:
            directory, template = scan.template_of(check).split("/")
            if directory != configuration:
                continue
            # Written by infra.acknowledge, whose reason check applies to checkov ids too.
            assert len(check["check_result"]["suppress_comment"].split()) >= 6, check
            logical_id = check["resource"].split(".", 1)[1]
            skipped.setdefault(template, set()).add((check["check_id"], logical_id[:-8]))
        assert skipped == REVIEWED_SKIPS, configuration
