"""Acknowledgements need a rule id and a specific reason, and land in the template metadata."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
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


def test_checkov_id_becomes_an_inline_skip_on_the_resource_and_its_children() -> None:
    app = cdk.App()
    stack = cdk.Stack(app, "S")
    bucket = s3.Bucket(stack, "Logs", enforce_ssl=True)
    reason = "This bucket receives the access logs of the exports bucket and cannot log into itself."
    acknowledge(bucket, "CKV_AWS_18", reason)
    acknowledge(bucket, "AwsSolutions-S1", reason)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True))
    resources = app.synth().get_stack_by_name("S").template["Resources"]
    by_type = {resource["Type"]: resource for resource in resources.values()}
    # One reason for both tools: checkov's inline skip and cdk-nag's acknowledgement, on the bucket
    # and (as cdk-nag does) its policy child.
    for resource_type in ("AWS::S3::Bucket", "AWS::S3::BucketPolicy"):
        metadata = by_type[resource_type]["Metadata"]
        assert metadata["checkov"] == {"skip": [{"id": "CKV_AWS_18", "comment": reason}]}
        assert {r["id"] for r in metadata["cdk_nag"]["rules_to_suppress"]} == {"AwsSolutions-S1"}


def test_checkov_skips_accumulate_once_each() -> None:
    app = cdk.App()
    stack = cdk.Stack(app, "S")
    queue = sqs.Queue(stack, "Q", enforce_ssl=True)
    first = "This queue is itself the dead-letter queue of the orders consumer in this test stack."
    second = "The queue holds only message ids of the orders consumer, never message bodies at all."
    acknowledge(queue, "CKV_AWS_27", first)
    acknowledge(queue, "CKV_AWS_27", first)
    acknowledge(queue, "CKV2_AWS_99", second)
    resources = app.synth().get_stack_by_name("S").template["Resources"].values()
    (resource,) = [r for r in resources if r["Type"] == "AWS::SQS::Queue"]
    assert resource["Metadata"]["checkov"]["skip"] == [
        {"id": "CKV_AWS_27", "comment": first},
        {"id": "CKV2_AWS_99", "comment": second},
    ]


def test_checkov_skips_need_the_same_specific_reason_and_a_resource() -> None:
    app = cdk.App()
    stack = cdk.Stack(app, "S")
    bucket = s3.Bucket(stack, "B")
    for reason in ("not needed", "false positive", "Logging is not wanted here."):
        with pytest.raises(AcknowledgementError, match="reason specific"):
            acknowledge(bucket, "CKV_AWS_18", reason)
    for rule_id in ("CKV_18", "ckv_aws_18", "CKV_AWS_"):
        with pytest.raises(AcknowledgementError, match="not a rule id"):
            acknowledge(bucket, rule_id, "This bucket receives the access logs of the exports bucket.")
    imported = s3.Bucket.from_bucket_name(stack, "Imported", "someone-elses-bucket")
    with pytest.raises(AcknowledgementError, match="no CloudFormation resource"):
        acknowledge(imported, "CKV_AWS_18", "This bucket belongs to another team and its logging is theirs to set.")
    resources = app.synth().get_stack_by_name("S").template["Resources"].values()
    assert not [r for r in resources if "checkov" in r.get("Metadata", {})]
