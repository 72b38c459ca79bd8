"""Acknowledgements need a rule id and a specific reason, and land in the template metadata."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_sqs as sqs
from cdk_nag import AwsSolutionsChecks

from infra.acknowledge import AcknowledgementError, acknowledge


def test_rejects_generic_reasons_and_bad_ids() -> None:
    stack = cdk.Stack(cdk.App(), "S")
    with pytest.raises(AcknowledgementError, match="reason specific"):
        acknowledge(stack, "AwsSolutions-SQS3", "not needed")
    with pytest.raises(AcknowledgementError, match="reason specific"):
        acknowledge(stack, "AwsSolutions-SQS3", "false positive")
    with pytest.raises(AcknowledgementError, match="not a rule id"):
        acknowledge(stack, "SQS3", "This queue is a dead-letter queue for the orders service")


def test_acknowledgement_is_written_into_the_template_metadata() -> None:
    app = cdk.App()
    stack = cdk.Stack(app, "S")
    queue = sqs.Queue(stack, "Q", enforce_ssl=True)
    reason = "This queue is itself the dead-letter queue of the orders consumer in this test stack."
    acknowledge(queue, "AwsSolutions-SQS3", reason)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True))
    template = app.synth().get_stack_by_name("S").template
    (resource,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::SQS::Queue"]
    assert {"id": "AwsSolutions-SQS3", "reason": reason} in resource["Metadata"]["cdk_nag"]["rules_to_suppress"]
