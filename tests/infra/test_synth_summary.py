"""The `make synth` summary reads stacks, resource counts and acknowledgements from cdk.out."""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_sqs as sqs
from cdk_nag import AwsSolutionsChecks, ServerlessChecks

from infra.acknowledge import acknowledge
from infra.synth_summary import main, pack_of, summarize


def test_pack_of_rule_ids() -> None:
    assert pack_of("AwsSolutions-IAM5[Resource::*]") == "AwsSolutions"
    assert pack_of("NIST.800.53.R5-LambdaDLQ") == "NIST 800-53 R5"
    assert pack_of("HIPAA.Security::HIPAA.Security-LambdaDLQ") == "HIPAA Security"
    assert pack_of("EventDriven-DlqAlarm") == "EventDrivenChecks"
    assert pack_of("CloudFormation-Validate::W3010") == "CDK built-in"
    assert pack_of("CKV_AWS_117") == "checkov"
    assert pack_of("CKV2_AWS_5") == "checkov"


def test_summary_counts_each_acknowledgement_once(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Summary")
    dlq = sqs.Queue(stack, "Dlq", enforce_ssl=True)
    sqs.Queue(stack, "Work", enforce_ssl=True, dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=3))
    # Acknowledged on the queue construct: inherited by its policy child too, still one acknowledgement.
    for rule_id in ("AwsSolutions-SQS3", "Serverless-SQSRedrivePolicy", "CKV_AWS_27"):
        acknowledge(dlq, rule_id, "This queue is the dead-letter queue of the Work queue in this test stack.")
    cdk.Validations.of(app).add_plugins(
        AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True),
        ServerlessChecks(app, write_suppressions_to_cloud_formation=True),
    )
    app.synth()

    stacks = summarize(tmp_path)
    assert stacks["Summary"]["resources"] == 4
    assert dict(stacks["Summary"]["acknowledgements"]) == {"AwsSolutions": 1, "Serverless": 1, "checkov": 1}
    assert main(["synth_summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Summary: 4 resources; acknowledgements: AwsSolutions 1, Serverless 1, checkov 1" in out
