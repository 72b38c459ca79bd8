"""Deploy a synthesized CloudFormation template into moto: the resources tests run end to end.

What the template says is what runs: table keys, queue attributes, function handlers and
environments, the state machine's definition and the bucket's notification all come from the
template (``Template.to_json()`` of the construct under test), with every intrinsic (``Ref``,
``Fn::GetAtt``, ``Fn::Join``, pseudo parameters) resolved to the moto resource created for it.
IAM, KMS, alarms and log groups are not created: moto does not enforce them (the infra tests and
cdk-nag check those). A function's ``AWS::Lambda::EventInvokeConfig`` (retries, on-failure
queue) is handed to the harness, which applies it when it runs asynchronous invokes in the
background; CDK's ``Custom::S3BucketNotifications`` is applied like a bucket's own
NotificationConfiguration.

Physical names are derived from logical ids, so every ARN is known before anything is created
and a state machine can name a function created after it (and the reverse).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3

from tests.support.moto_lambda import AsyncInvokeConfig, LambdaHarness

ACCOUNT = "123456789012"
REGION = "us-east-1"
_SUPPORTED = {
    "AWS::DynamoDB::Table",
    "AWS::SQS::Queue",
    "AWS::SNS::Topic",
    "AWS::S3::Bucket",
    "AWS::Lambda::Function",
    "AWS::StepFunctions::StateMachine",
    "AWS::KMS::Key",
}


def _physical_name(logical_id: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", logical_id)[:limit]


@dataclass
class Deployment:
    """The moto resources of one template, by logical id."""

    template: Mapping[str, Any]
    names: dict[str, str] = field(default_factory=dict)  # logical id -> table/queue/function/bucket name
    refs: dict[str, str] = field(default_factory=dict)  # logical id -> what Ref returns
    arns: dict[str, str] = field(default_factory=dict)

    def of_type(self, resource_type: str) -> dict[str, Mapping[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == resource_type}

    def logical_id(self, resource_type: str, contains: str) -> str:
        (match,) = [k for k in self.of_type(resource_type) if contains in k]
        return match

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((function, argument),) = value.items()
            if function == "Ref":
                return self._ref(argument)
            if function == "Fn::GetAtt":
                return self._get_att(argument[0], argument[1])
            if function == "Fn::Join":
                delimiter, items = argument
                return delimiter.join(str(self.resolve(item)) for item in items)
        return {key: self.resolve(item) for key, item in value.items()}

    def _ref(self, name: str) -> str:
        pseudo = {
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::URLSuffix": "amazonaws.com",
        }
        if name in pseudo:
            return pseudo[name]
        if name not in self.refs:
            raise KeyError(f"template refers to {name}, which this harness does not create")
        return self.refs[name]

    def _get_att(self, logical_id: str, attribute: str) -> str:
        if attribute == "Arn":
            return self.arns[logical_id]
        if attribute == "QueueName":
            return self.names[logical_id]
        if attribute == "StreamArn":
            raise KeyError("streams are not deployed by this harness")
        raise KeyError(f"unsupported attribute {logical_id}.{attribute}")


def deploy(template: Mapping[str, Any], harness: LambdaHarness) -> Deployment:
    deployment = Deployment(template)
    resources = template["Resources"]
    for logical_id, resource in resources.items():
        _name(deployment, logical_id, resource)
    for logical_id, resource in resources.items():
        kind = resource["Type"]
        # Only what the emulated resource uses is resolved (KMS keys, roles, alarms are not deployed).
        properties = resource.get("Properties", {})
        if kind == "AWS::DynamoDB::Table":
            _create_table(deployment.names[logical_id], properties)
        elif kind == "AWS::SQS::Queue":
            attributes = {"VisibilityTimeout": str(properties.get("VisibilityTimeout", 30))}
            if properties.get("FifoQueue"):
                attributes["FifoQueue"] = "true"
                attributes["ContentBasedDeduplication"] = str(bool(properties.get("ContentBasedDeduplication"))).lower()
            boto3.client("sqs").create_queue(QueueName=deployment.names[logical_id], Attributes=attributes)
        elif kind == "AWS::SNS::Topic":
            boto3.client("sns").create_topic(Name=deployment.names[logical_id])
        elif kind == "AWS::S3::Bucket":
            boto3.client("s3").create_bucket(Bucket=deployment.names[logical_id])
    for logical_id, resource in resources.items():
        if resource["Type"] == "AWS::Lambda::Function":
            properties = resource["Properties"]
            harness.create_function(
                deployment.names[logical_id],
                properties["Handler"],
                environment=deployment.resolve(properties.get("Environment", {}).get("Variables", {})),
                timeout=int(properties.get("Timeout", 30)),
            )
    for logical_id, resource in resources.items():
        if resource["Type"] == "AWS::StepFunctions::StateMachine":
            properties = resource["Properties"]
            boto3.client("stepfunctions").create_state_machine(
                name=deployment.names[logical_id],
                definition=deployment.resolve(properties["DefinitionString"]),
                roleArn=f"arn:aws:iam::{ACCOUNT}:role/state-machine",
                type=properties.get("StateMachineType", "STANDARD"),
            )
    for logical_id, resource in resources.items():
        if resource["Type"] == "AWS::S3::Bucket":
            notification = deployment.resolve(resource["Properties"].get("NotificationConfiguration"))
            if notification:
                _configure_notifications(deployment.names[logical_id], notification)
        elif resource["Type"] == "Custom::S3BucketNotifications":
            properties = deployment.resolve(resource["Properties"])
            _put_notifications(properties["BucketName"], properties["NotificationConfiguration"])
        elif resource["Type"] == "AWS::Lambda::EventInvokeConfig":
            properties = deployment.resolve(resource["Properties"])
            destination = properties.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
            harness.configure_async(
                str(properties["FunctionName"]),
                AsyncInvokeConfig(
                    maximum_retry_attempts=int(properties.get("MaximumRetryAttempts", 2)),
                    on_failure_queue_url=_queue_url_of(deployment, destination) if destination else None,
                ),
            )
    return deployment


def _queue_url_of(deployment: Deployment, arn: str) -> str:
    (logical_id,) = [k for k, v in deployment.arns.items() if v == arn]
    return deployment.refs[logical_id]


def _put_notifications(bucket: str, configuration: Mapping[str, Any]) -> None:
    """CDK's notifications custom resource carries the S3 API's own shape: put it as it is."""
    allowed = ("LambdaFunctionConfigurations", "QueueConfigurations", "TopicConfigurations")
    boto3.client("s3").put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={k: configuration[k] for k in allowed if k in configuration}
    )


def _name(deployment: Deployment, logical_id: str, resource: Mapping[str, Any]) -> None:
    kind = resource["Type"]
    if kind not in _SUPPORTED:
        return
    properties = resource.get("Properties", {})
    name = _physical_name(logical_id).lower() if kind == "AWS::S3::Bucket" else _physical_name(logical_id)
    if kind == "AWS::S3::Bucket" and "BucketName" in properties:
        name = str(deployment.resolve(properties["BucketName"]))
    if kind == "AWS::SQS::Queue" and properties.get("FifoQueue"):
        name = f"{_physical_name(logical_id, 75)}.fifo"
    if kind == "AWS::KMS::Key":
        # moto chooses key ids itself, so the key is created here, before anything refers to it.
        metadata = boto3.client("kms").create_key(Description=logical_id)["KeyMetadata"]
        deployment.names[logical_id] = metadata["KeyId"]
        deployment.arns[logical_id], deployment.refs[logical_id] = metadata["Arn"], metadata["KeyId"]
        return
    deployment.names[logical_id] = name
    arn_and_ref = {
        "AWS::DynamoDB::Table": (f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}", name),
        "AWS::SQS::Queue": (
            f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}",
            f"{_sqs_endpoint()}/{ACCOUNT}/{name}",
        ),
        "AWS::SNS::Topic": (f"arn:aws:sns:{REGION}:{ACCOUNT}:{name}",) * 2,
        "AWS::S3::Bucket": (f"arn:aws:s3:::{name}", name),
        "AWS::Lambda::Function": (f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}", name),
        "AWS::StepFunctions::StateMachine": (f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}",) * 2,
    }
    deployment.arns[logical_id], deployment.refs[logical_id] = arn_and_ref[kind]


def _sqs_endpoint() -> str:
    # Queue URLs as moto answers them (GetQueueUrl), so a URL from the template works as-is.
    return str(boto3.client("sqs").meta.endpoint_url).rstrip("/")


def _create_table(name: str, properties: Mapping[str, Any]) -> None:
    request: dict[str, Any] = {
        "TableName": name,
        "KeySchema": properties["KeySchema"],
        "AttributeDefinitions": properties["AttributeDefinitions"],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if properties.get("GlobalSecondaryIndexes"):
        request["GlobalSecondaryIndexes"] = [
            {"IndexName": i["IndexName"], "KeySchema": i["KeySchema"], "Projection": i["Projection"]}
            for i in properties["GlobalSecondaryIndexes"]
        ]
    if properties.get("StreamSpecification"):
        request["StreamSpecification"] = {"StreamEnabled": True, **properties["StreamSpecification"]}
    boto3.client("dynamodb").create_table(**request)


def _configure_notifications(bucket: str, notification: Mapping[str, Any]) -> None:
    configurations = []
    for entry in notification.get("LambdaConfigurations", []):
        rules = entry.get("Filter", {}).get("S3Key", {}).get("Rules", [])
        configuration: dict[str, Any] = {"LambdaFunctionArn": entry["Function"], "Events": [entry["Event"]]}
        if rules:
            configuration["Filter"] = {
                "Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in rules]}
            }
        configurations.append(configuration)
    boto3.client("s3").put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"LambdaFunctionConfigurations": configurations}
    )


def definition_of(deployment: Deployment, logical_id: str) -> dict[str, Any]:
    resource = deployment.template["Resources"][logical_id]
    return json.loads(deployment.resolve(resource["Properties"]["DefinitionString"]))
