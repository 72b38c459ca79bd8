"""ExportRunner at synth level: queue, runner, sweeper, bucket, network, IAM, database modes.

Three apps go through app.py's ``build_app`` (every compliance pack and EventDrivenChecks
enforced): a created database, an existing one (with an operator topic), and a created one
with deletion protection off. Construct-level stacks (no packs) cover the props app.py never
passes: a bucket given, a VPC given, no alarm topic. Each app is synthesized once per module.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Match, Template

from app import build_app
from handlers.export_runner.migration_digest import migrations_digest
from infra.config import ConfigError, ExportRunnerConfig, load_config
from infra.constructs.export_runner import (
    MIGRATOR_HANDLER,
    RUNNER_HANDLER,
    SWEEPER_HANDLER,
    ExportDatabase,
    ExportRunner,
)
from tests.infra.synth import app_without_bundling

ROOT = Path(__file__).resolve().parents[2]
FEATURE_FLAGS = {
    key: value for key, value in json.loads((ROOT / "cdk.json").read_text())["context"].items() if key.startswith("@")
}
TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:operators"
SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:audit-db-AbCdEf"
SECRET_KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
EXISTING = {
    "database_secret_arn": SECRET_ARN,
    "database_cluster_identifier": "audit-log",
    "database_endpoint": "audit-log.cluster-abc123.eu-west-1.rds.amazonaws.com",
    "database_port": 6543,
    "database_security_group_id": "sg-0123456789abcdef0",
    "database_secret_kms_key_arn": SECRET_KEY_ARN,
    "database_name": "compliance",
    "vpc_id": "vpc-0123456789abcdef0",
    "subnet_ids": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
}
# An operator's CA bundle (the construct ships the file; it does not parse it).
CA_BUNDLE = str(Path(tempfile.mkdtemp(prefix="export-runner-ca-")) / "rds-global-bundle.pem")
Path(CA_BUNDLE).write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
CLUSTER_RESOURCE_ID = "cluster-ABCDEFGHIJKLMNOPQRSTUVWXY0"
RUNNER_TIMEOUT = 900
TRIGGER_PROVIDER = "AWSCDKTriggerCustomResourceProvider"
VPC_DESCRIBE_ACTIONS = {"ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"}
NETWORK_INTERFACE_ACTIONS = {
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}
VPC_ACTIONS = {"ec2:CreateNetworkInterface", *VPC_DESCRIBE_ACTIONS, *NETWORK_INTERFACE_ACTIONS}
XRAY_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
CONSUME_ACTIONS = {
    "sqs:ReceiveMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueUrl",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
}
OBJECT_ACTIONS = {
    "s3:PutObject",
    "s3:GetObject",
    "s3:AbortMultipartUpload",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
}
SECRET_READ = {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}


# --- Apps ----------------------------------------------------------------------------------------


class Synthesized:
    def __init__(self, assembly: cdk.cx_api.CloudAssembly, outdir: Path) -> None:
        self.raw: dict[str, Any] = assembly.get_stack_by_name("ExportRunner").template
        self.template = Template.from_json(self.raw)
        self.outdir = outdir


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return _synth(tmp_path_factory, "created", {"database_ca_bundle": CA_BUNDLE})


@pytest.fixture(scope="module")
def existing(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return _synth(tmp_path_factory, "existing", EXISTING, alarm_topic_arn=TOPIC_ARN)


@pytest.fixture(scope="module")
def unprotected(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return _synth(tmp_path_factory, "unprotected", {"deletion_protection": False})


def _synth(
    factory: pytest.TempPathFactory, name: str, export_runner: dict[str, Any], alarm_topic_arn: str | None = None
) -> Synthesized:
    outdir = factory.mktemp(name)
    app = cdk.App(outdir=str(outdir), context={"aws:cdk:bundling-stacks": [], **FEATURE_FLAGS})
    context: dict[str, Any] = {"subsystems": ["export_runner"], "export_runner": export_runner}
    if alarm_topic_arn:
        context["alarm_topic_arn"] = alarm_topic_arn
    build_app(app, load_config(context))
    try:
        assembly = app.synth()
    except RuntimeError as error:
        report = outdir / "validation-report.json"
        details = report.read_text()[:4000] if report.exists() else ""
        raise AssertionError(f"synth with every pack failed: {error}\n{details}") from error
    return Synthesized(assembly, outdir)


def _construct_template(**props: Any) -> Template:
    """An ExportRunner alone in a stack (no packs), for the props the app never passes."""
    app = app_without_bundling(**FEATURE_FLAGS)
    stack = cdk.Stack(app, "Test", env=cdk.Environment(account="123456789012", region="eu-west-1"))
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    if props.pop("given_bucket", False):
        bucket_key = kms.Key.from_key_arn(stack, "BucketKey", SECRET_KEY_ARN)
        props["bucket"] = s3.Bucket.from_bucket_attributes(
            stack, "GivenBucket", bucket_name="existing-exports", encryption_key=bucket_key
        )
    if props.pop("given_vpc", False):
        props["vpc"] = ec2.Vpc(
            stack,
            "GivenVpc",
            max_azs=2,
            nat_gateways=1,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC),
                ec2.SubnetConfiguration(name="app", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
                ec2.SubnetConfiguration(name="data", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            ],
        )
    if props.pop("topic", False):
        props["alarm_topic"] = sns.Topic(stack, "Alarms")
    if resource_id := props.pop("existing_cluster", None):
        props["database"] = _existing_database(stack, resource_id)
    api_role = props.pop("api_role", False)
    producer_role = props.pop("producer_role", False)
    props.setdefault("database_ca_bundle", CA_BUNDLE)
    exports = ExportRunner(stack, "Exports", encryption_key=key, code=lambda_.Code.from_inline("# synth only"), **props)
    if api_role:
        role = iam.Role(stack, "ApiRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
        exports.grant_enqueue(role)
        exports.grant_download(role)
    if producer_role:
        exports.grant_produce(iam.Role(stack, "ProducerRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com")))
    return Template.from_stack(stack)


def _existing_database(stack: cdk.Stack, resource_id: str | bool) -> ExportDatabase:
    vpc = ec2.Vpc.from_vpc_attributes(stack, "ExistingVpc", vpc_id="vpc-0123456789abcdef0", availability_zones=["a"])
    cluster = rds.DatabaseCluster.from_database_cluster_attributes(
        stack,
        "ExistingCluster",
        cluster_identifier="audit-log",
        cluster_endpoint_address=EXISTING["database_endpoint"],
        port=6543,
        security_groups=[ec2.SecurityGroup.from_security_group_id(stack, "DbSg", "sg-0123456789abcdef0")],
        cluster_resource_identifier=resource_id if isinstance(resource_id, str) else None,
    )
    return ExportDatabase(
        cluster=cluster,
        secret=secretsmanager.Secret.from_secret_complete_arn(stack, "ExistingSecret", SECRET_ARN),
        vpc=vpc,
        database_name="compliance",
        vpc_subnets=ec2.SubnetSelection(
            subnets=[ec2.Subnet.from_subnet_id(stack, "ExistingSubnet", "subnet-0123456789abcdef0")]
        ),
    )


@pytest.fixture(scope="module")
def given_bucket() -> Template:
    return _construct_template(given_bucket=True)


@pytest.fixture(scope="module")
def given_vpc() -> Template:
    return _construct_template(given_vpc=True, topic=True, api_role=True)


# --- Template helpers ----------------------------------------------------------------------------


def _ids(template: Template, resource_type: str, prefix: str = "") -> list[str]:
    return [
        logical_id
        for logical_id in template.find_resources(resource_type)
        if re.fullmatch(rf"{prefix}[0-9A-F]{{8}}", logical_id) or (not prefix)
    ]


def _id(template: Template, resource_type: str, prefix: str) -> str:
    (logical_id,) = _ids(template, resource_type, prefix)
    return logical_id


def _function(template: Template, handler: str) -> dict[str, Any]:
    (function,) = [
        f for f in template.find_resources("AWS::Lambda::Function").values() if f["Properties"]["Handler"] == handler
    ]
    return function


def _role_statements(template: Template, handler: str) -> list[dict[str, Any]]:
    role_id = _function(template, handler)["Properties"]["Role"]["Fn::GetAtt"][0]
    return [
        statement
        for policy in template.find_resources("AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _allowed(statements: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Allowed action -> the resources it is allowed on."""
    allowed: dict[str, list[Any]] = {}
    for statement in statements:
        if statement["Effect"] == "Allow":
            for action in _as_list(statement["Action"]):
                allowed.setdefault(action, []).extend(_as_list(statement["Resource"]))
    return allowed


def _secret_ref(template: Template) -> dict[str, Any]:
    return {"Ref": _id(template, "AWS::SecretsManager::SecretTargetAttachment", "ExportRunnerDatabaseSecretAttachment")}


def _arn(logical_id: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


def _ec2_arn(resource: str, name: Any) -> dict[str, Any]:
    """An EC2 ARN in this stack's partition, region and account, as Stack.format_arn writes it."""
    prefix = ["arn:", {"Ref": "AWS::Partition"}, ":ec2:", {"Ref": "AWS::Region"}, ":", {"Ref": "AWS::AccountId"}]
    if isinstance(name, str):
        return {"Fn::Join": ["", [*prefix, f":{resource}/{name}"]]}
    return {"Fn::Join": ["", [*prefix, f":{resource}/", name]]}


def _objects_of(bucket_arn: Any) -> dict[str, Any]:
    return {"Fn::Join": ["", [bucket_arn, "/*"]]}


def _all_policy_actions(template: Template) -> list[str]:
    return [
        action
        for policy in template.find_resources("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Allow"
        for action in _as_list(statement["Action"])
    ]


# --- Queue, DLQ, alarms --------------------------------------------------------------------------


def test_queue_is_encrypted_tls_only_short_lived_and_redrives_to_the_dlq(created: Synthesized) -> None:
    template = created.template
    queue_id = _id(template, "AWS::SQS::Queue", "ExportRunnerQueue")
    dlq_id = _id(template, "AWS::SQS::Queue", "ExportRunnerDlqQueue")
    template.has_resource_properties(
        "AWS::SQS::Queue",
        {
            "KmsMasterKeyId": _arn(_id(template, "AWS::KMS::Key", "EncryptionKey")),
            "MessageRetentionPeriod": 24 * 3600,
            "VisibilityTimeout": 6 * RUNNER_TIMEOUT,
            "RedrivePolicy": {"deadLetterTargetArn": _arn(dlq_id), "maxReceiveCount": 3},
        },
    )
    queue_policies = [
        p
        for p in template.find_resources("AWS::SQS::QueuePolicy").values()
        if {"Ref": queue_id} in p["Properties"]["Queues"]
    ]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for p in queue_policies
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    )
    dlq = template.find_resources("AWS::SQS::Queue")[dlq_id]["Properties"]
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert "KmsMasterKeyId" in dlq


def test_visibility_is_at_least_six_times_the_consumer_timeout(created: Synthesized, existing: Synthesized) -> None:
    for synthesized in (created, existing):
        template = synthesized.template
        (mapping,) = template.find_resources("AWS::Lambda::EventSourceMapping").values()
        queue_id = mapping["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
        function_id = mapping["Properties"]["FunctionName"]["Ref"]
        visibility = template.find_resources("AWS::SQS::Queue")[queue_id]["Properties"]["VisibilityTimeout"]
        timeout = template.find_resources("AWS::Lambda::Function")[function_id]["Properties"]["Timeout"]
        assert timeout == RUNNER_TIMEOUT
        assert visibility >= 6 * timeout


def test_every_dlq_has_a_depth_alarm_and_functions_alarm_on_errors(created: Synthesized) -> None:
    template = created.template
    alarms = template.find_resources("AWS::CloudWatch::Alarm").values()
    depth_alarmed = {
        dimension["Value"]["Fn::GetAtt"][0]
        for alarm in alarms
        if alarm["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
        for dimension in alarm["Properties"]["Dimensions"]
    }
    assert depth_alarmed == {
        _id(template, "AWS::SQS::Queue", "ExportRunnerDlqQueue"),
        _id(template, "AWS::SQS::Queue", "ExportRunnerSweeperDlqQueue"),
        _id(template, "AWS::SQS::Queue", "ExportRunnerMigratorDlqQueue"),
    }
    error_alarmed = {
        alarm["Properties"]["Dimensions"][0]["Value"]["Ref"]
        for alarm in alarms
        if alarm["Properties"]["MetricName"] == "Errors"
    }
    # Every function of the product; CDK's trigger provider reports its failures as a failed deploy.
    functions = {
        logical_id
        for logical_id in template.find_resources("AWS::Lambda::Function")
        if not logical_id.startswith(TRIGGER_PROVIDER)
    }
    assert error_alarmed == functions
    (age,) = [a for a in alarms if a["Properties"]["MetricName"] == "ApproximateAgeOfOldestMessage"]
    assert age["Properties"]["Threshold"] == 6 * RUNNER_TIMEOUT
    assert age["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0] == _id(
        template, "AWS::SQS::Queue", "ExportRunnerQueue"
    )


def test_alarms_go_to_the_operator_topic_when_one_is_given(existing: Synthesized) -> None:
    alarms = existing.template.find_resources("AWS::CloudWatch::Alarm").values()
    assert len(alarms) == 7  # runner, sweeper, migrator: errors + DLQ depth each; queue age
    for alarm in alarms:
        assert alarm["Properties"]["AlarmActions"] == [TOPIC_ARN]
        assert alarm["Properties"]["OKActions"] == [TOPIC_ARN]
    existing.template.resource_count_is("AWS::SNS::Topic", 0)


def test_alarms_have_no_action_without_a_topic(given_bucket: Template) -> None:
    alarms = given_bucket.find_resources("AWS::CloudWatch::Alarm").values()
    assert len(alarms) == 7  # runner, sweeper, migrator: errors + DLQ depth each; queue age
    for alarm in alarms:
        assert "AlarmActions" not in alarm["Properties"] and "OKActions" not in alarm["Properties"]


def test_construct_routes_alarms_to_a_given_topic(given_vpc: Template) -> None:
    topic_id = _id(given_vpc, "AWS::SNS::Topic", "Alarms")
    for alarm in given_vpc.find_resources("AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic_id}]


# --- Runner ----------------------------------------------------------------------------------------


def test_runner_function_settings(created: Synthesized) -> None:
    template = created.template
    runner = _function(template, RUNNER_HANDLER)["Properties"]
    assert runner["Timeout"] == RUNNER_TIMEOUT
    assert runner["ReservedConcurrentExecutions"] == 5
    assert runner["Runtime"] == "python3.14" and runner["Architectures"] == ["arm64"]
    assert runner["TracingConfig"] == {"Mode": "Active"}
    assert runner["KmsKeyArn"] == _arn(_id(template, "AWS::KMS::Key", "EncryptionKey"))
    assert runner["DeadLetterConfig"]["TargetArn"] == _arn(_id(template, "AWS::SQS::Queue", "ExportRunnerDlqQueue"))
    variables = runner["Environment"]["Variables"]
    bucket = _id(template, "AWS::S3::Bucket", "ExportRunnerExportsBucket")
    assert variables["COMPLIANCE_EXPORTS_BUCKET"] == {"Ref": bucket}
    assert variables["PRESIGN_TTL_SECONDS"] == "900"
    assert variables["DATABASE_NAME"] == "audit"
    cluster_id = _id(template, "AWS::RDS::DBCluster", "ExportRunnerDatabase")
    assert variables["DATABASE_HOST"] == {"Fn::GetAtt": [cluster_id, "Endpoint.Address"]}
    # IAM login as the least-privilege role, TLS verified against the operator's CA bundle.
    assert variables["DATABASE_AUTH"] == "iam" and variables["DATABASE_USER"] == "export_runner"
    assert variables["DATABASE_PORT"] == "5432"
    assert variables["DATABASE_SSLMODE"] == "verify-full"
    assert variables["DATABASE_CA_BUNDLE"] == "/opt/rds-global-bundle.pem"
    assert "DATABASE_SECRET_ARN" not in variables
    assert runner["Layers"] == [{"Ref": _id(template, "AWS::Lambda::LayerVersion", "ExportRunnerDatabaseCaBundle")}]
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "BatchSize": 1,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "ScalingConfig": {"MaximumConcurrency": 5},
        },
    )


def test_runner_runs_in_the_isolated_subnets_with_its_own_security_group(created: Synthesized) -> None:
    template = created.template
    vpc_config = _function(template, RUNNER_HANDLER)["Properties"]["VpcConfig"]
    isolated = {
        logical_id
        for logical_id, subnet in template.find_resources("AWS::EC2::Subnet").items()
        if subnet["Properties"]["MapPublicIpOnLaunch"] is False
    }
    assert len(isolated) == 2
    assert {ref["Ref"] for ref in vpc_config["SubnetIds"]} == isolated
    function_sg = _id(template, "AWS::EC2::SecurityGroup", "ExportRunnerFunctionSecurityGroup")
    assert vpc_config["SecurityGroupIds"] == [{"Fn::GetAtt": [function_sg, "GroupId"]}]
    # No way out of the VPC but the endpoints.
    for resource_type in ("AWS::EC2::InternetGateway", "AWS::EC2::NatGateway", "AWS::EC2::EgressOnlyInternetGateway"):
        template.resource_count_is(resource_type, 0)
    egress = template.find_resources("AWS::EC2::SecurityGroup")[function_sg]["Properties"]["SecurityGroupEgress"]
    assert egress == [
        {
            "CidrIp": "0.0.0.0/0",
            "Description": "HTTPS to AWS endpoints",
            "FromPort": 443,
            "IpProtocol": "tcp",
            "ToPort": 443,
        }
    ]


def test_vpc_endpoints_reach_s3_sqs_and_secrets_manager(created: Synthesized) -> None:
    template = created.template
    endpoints = template.find_resources("AWS::EC2::VPCEndpoint")
    services = {
        endpoint["Properties"]["ServiceName"]["Fn::Join"][1][-1]: endpoint["Properties"]
        for endpoint in endpoints.values()
    }
    assert set(services) == {".s3", ".sqs", ".secretsmanager"}
    assert services[".s3"]["VpcEndpointType"] == "Gateway"
    bucket_id = _id(template, "AWS::S3::Bucket", "ExportRunnerExportsBucket")
    (statement,) = services[".s3"]["PolicyDocument"]["Statement"]
    assert statement["Resource"] == _objects_of(_arn(bucket_id))
    assert set(statement["Action"]) == OBJECT_ACTIONS
    endpoint_sg = _id(template, "AWS::EC2::SecurityGroup", "ExportRunnerEndpointSecurityGroup")
    for name in (".sqs", ".secretsmanager"):
        assert services[name]["VpcEndpointType"] == "Interface"
        assert services[name]["PrivateDnsEnabled"] is True
        assert services[name]["SecurityGroupIds"] == [{"Fn::GetAtt": [endpoint_sg, "GroupId"]}]
    sources = {
        ingress["Properties"]["SourceSecurityGroupId"]["Fn::GetAtt"][0]
        for ingress in template.find_resources("AWS::EC2::SecurityGroupIngress").values()
        if ingress["Properties"]["GroupId"] == {"Fn::GetAtt": [endpoint_sg, "GroupId"]}
        and ingress["Properties"]["FromPort"] == 443
    }
    assert sources == {
        _id(template, "AWS::EC2::SecurityGroup", "ExportRunnerFunctionSecurityGroup"),
        _id(template, "AWS::EC2::SecurityGroup", "ExportRunnerRotationSecurityGroup"),
    }
    template.has_resource_properties("AWS::EC2::FlowLog", {"ResourceType": "VPC", "TrafficType": "ALL"})


# --- Bucket ----------------------------------------------------------------------------------------


def test_exports_bucket_settings(created: Synthesized) -> None:
    template = created.template
    bucket_id = _id(template, "AWS::S3::Bucket", "ExportRunnerExportsBucket")
    log_bucket_id = _id(template, "AWS::S3::Bucket", "ExportRunnerExportsAccessLogBucket")
    bucket = template.find_resources("AWS::S3::Bucket")[bucket_id]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {
            "BucketKeyEnabled": True,
            "ServerSideEncryptionByDefault": {
                "KMSMasterKeyID": _arn(_id(template, "AWS::KMS::Key", "EncryptionKey")),
                "SSEAlgorithm": "aws:kms",
            },
        }
    ]
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": log_bucket_id}
    rules = {rule["Id"]: rule for rule in bucket["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-exports"]["ExpirationInDays"] == 7
    assert rules["expire-exports"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert rules["expire-exports"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    assert rules["remove-expired-delete-markers"]["ExpiredObjectDeleteMarker"] is True
    policies = {
        p["Properties"]["Bucket"]["Ref"]: p["Properties"]["PolicyDocument"]["Statement"]
        for p in template.find_resources("AWS::S3::BucketPolicy").values()
    }
    for bucket_ref in (bucket_id, log_bucket_id):
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            for s in policies[bucket_ref]
        )
    # Server access logs are delivered under the log bucket's policy, from this bucket only.
    assert any(
        s["Effect"] == "Allow"
        and s["Principal"] == {"Service": "logging.s3.amazonaws.com"}
        and s["Condition"]["ArnLike"]["aws:SourceArn"] == _arn(bucket_id)
        for s in policies[log_bucket_id]
    )
    log_bucket = template.find_resources("AWS::S3::Bucket")[log_bucket_id]["Properties"]
    assert log_bucket["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True
    assert "AccessControl" not in log_bucket


def test_a_given_bucket_is_used_not_created(given_bucket: Template) -> None:
    given_bucket.resource_count_is("AWS::S3::Bucket", 0)
    runner = _function(given_bucket, RUNNER_HANDLER)["Properties"]
    assert runner["Environment"]["Variables"]["COMPLIANCE_EXPORTS_BUCKET"] == "existing-exports"
    allowed = _allowed(_role_statements(given_bucket, RUNNER_HANDLER))
    objects = {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":s3:::existing-exports/*"]]}
    for action in OBJECT_ACTIONS:
        assert allowed[action] == [objects]
    # The given bucket's own key: encrypt the parts, decrypt for completion and presigned GETs.
    assert SECRET_KEY_ARN in allowed["kms:Decrypt"] and SECRET_KEY_ARN in allowed["kms:GenerateDataKey"]
    (deny,) = [s for s in _role_statements(given_bucket, RUNNER_HANDLER) if s["Effect"] == "Deny"]
    assert deny["NotResource"] == objects


# --- IAM -----------------------------------------------------------------------------------------


def test_runner_permissions_are_exactly_the_spec(created: Synthesized) -> None:
    template = created.template
    statements = _role_statements(template, RUNNER_HANDLER)
    bucket_objects = _objects_of(_arn(_id(template, "AWS::S3::Bucket", "ExportRunnerExportsBucket")))
    key = _arn(_id(template, "AWS::KMS::Key", "EncryptionKey"))
    expected: dict[str, list[Any]] = {
        **{action: [bucket_objects] for action in OBJECT_ACTIONS},
        # The database login: exactly the export_runner user of this cluster, no secret.
        "rds-db:connect": [_db_user_arn(template, "export_runner")],
        **{action: [_arn(_id(template, "AWS::SQS::Queue", "ExportRunnerQueue"))] for action in CONSUME_ACTIONS},
        # Lambda's own use of the role: async DLQ, logs, network interfaces, traces.
        "sqs:SendMessage": [_arn(_id(template, "AWS::SQS::Queue", "ExportRunnerDlqQueue"))],
        "logs:CreateLogStream": [_arn(_id(template, "AWS::Logs::LogGroup", "ExportRunnerLogGroup"))],
        "logs:PutLogEvents": [_arn(_id(template, "AWS::Logs::LogGroup", "ExportRunnerLogGroup"))],
        **{action: ["*"] for action in VPC_DESCRIBE_ACTIONS | XRAY_ACTIONS},
        **_network_interface_rights(template, _function(template, RUNNER_HANDLER)),
        # SSE-KMS on the bucket, the queue and the DLQ all use the subsystem key.
        "kms:Decrypt": [key],
        "kms:GenerateDataKey": [key],
    }
    allowed = {action: sorted(map(json.dumps, resources)) for action, resources in _allowed(statements).items()}
    assert allowed == {action: sorted({json.dumps(r) for r in resources}) for action, resources in expected.items()}
    (deny,) = [s for s in statements if s["Effect"] == "Deny"]
    assert deny["NotResource"] == bucket_objects
    assert "Resource" not in deny
    assert OBJECT_ACTIONS | {"s3:DeleteObject", "s3:GetObjectVersion"} <= set(deny["Action"])


def _db_user_arn(template: Template, db_user: str) -> dict[str, Any]:
    """rds-db:connect's resource for ``db_user`` of the created cluster (its resource id, not its name)."""
    cluster_id = _id(template, "AWS::RDS::DBCluster", "ExportRunnerDatabase")
    return {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":rds-db:",
                {"Ref": "AWS::Region"},
                ":",
                {"Ref": "AWS::AccountId"},
                ":dbuser:",
                {"Fn::GetAtt": [cluster_id, "DBClusterResourceId"]},
                f"/{db_user}",
            ],
        ]
    }


def _network_interface_rights(template: Template, function: dict[str, Any]) -> dict[str, list[Any]]:
    """Create only in the function's own subnets with its security groups; the rest on its interfaces."""
    vpc_config = function["Properties"]["VpcConfig"]
    network_interfaces = _ec2_arn("network-interface", "*")
    create_on = [
        network_interfaces,
        *(_ec2_arn("subnet", subnet) for subnet in vpc_config["SubnetIds"]),
        *(_ec2_arn("security-group", group) for group in vpc_config["SecurityGroupIds"]),
    ]
    return {
        "ec2:CreateNetworkInterface": create_on,
        **{action: [network_interfaces] for action in NETWORK_INTERFACE_ACTIONS},
    }


def test_network_interface_writes_are_scoped_in_every_database_mode(
    created: Synthesized, existing: Synthesized
) -> None:
    for synthesized in (created, existing):
        template = synthesized.template
        for handler in (RUNNER_HANDLER, SWEEPER_HANDLER):
            allowed = _allowed(_role_statements(template, handler))
            for action, resources in _network_interface_rights(template, _function(template, handler)).items():
                assert sorted(map(json.dumps, allowed[action])) == sorted(map(json.dumps, resources)), action
    # An existing VPC: the configured subnet ids, literally.
    create_on = _allowed(_role_statements(existing.template, RUNNER_HANDLER))["ec2:CreateNetworkInterface"]
    for subnet_id in EXISTING["subnet_ids"]:
        assert _ec2_arn("subnet", subnet_id) in create_on


def test_sweeper_permissions_are_database_only(created: Synthesized) -> None:
    template = created.template
    allowed = _allowed(_role_statements(template, SWEEPER_HANDLER))
    assert allowed["rds-db:connect"] == [_db_user_arn(template, "export_runner")]
    assert set(allowed) == VPC_ACTIONS | XRAY_ACTIONS | {
        "rds-db:connect",
        "sqs:SendMessage",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "kms:Decrypt",
        "kms:GenerateDataKey",
    }
    assert allowed["sqs:SendMessage"] == [_arn(_id(template, "AWS::SQS::Queue", "ExportRunnerSweeperDlqQueue"))]


def test_no_wildcard_actions_and_no_s3_star(created: Synthesized, existing: Synthesized) -> None:
    for synthesized in (created, existing):
        for action in _all_policy_actions(synthesized.template):
            assert "*" not in action, action


def test_existing_secret_key_is_granted_through_secrets_manager_only(existing: Synthesized) -> None:
    statements = _role_statements(existing.template, RUNNER_HANDLER)
    (decrypt,) = [s for s in statements if s["Effect"] == "Allow" and s.get("Resource") == SECRET_KEY_ARN]
    assert decrypt["Action"] == "kms:Decrypt"
    assert decrypt["Condition"]["StringEquals"]["kms:ViaService"] == {
        "Fn::Join": ["", ["secretsmanager.", {"Ref": "AWS::Region"}, ".amazonaws.com"]]
    }
    assert _allowed(statements)["secretsmanager:GetSecretValue"] == [SECRET_ARN]


# --- Database ------------------------------------------------------------------------------------


def test_created_database_is_aurora_serverless_v2_encrypted_with_iam_auth(created: Synthesized) -> None:
    template = created.template
    template.resource_count_is("AWS::RDS::DBCluster", 1)
    key = _arn(_id(template, "AWS::KMS::Key", "EncryptionKey"))
    (cluster,) = template.find_resources("AWS::RDS::DBCluster").values()
    properties = cluster["Properties"]
    assert properties["Engine"] == "aurora-postgresql"
    assert properties["StorageEncrypted"] is True and properties["KmsKeyId"] == key
    assert properties["EnableIAMDatabaseAuthentication"] is True
    assert properties["DeletionProtection"] is True
    assert properties["EnableCloudwatchLogsExports"] == ["postgresql"]
    assert properties["BackupRetentionPeriod"] == 7
    assert properties["ServerlessV2ScalingConfiguration"] == {"MinCapacity": 0.5, "MaxCapacity": 4}
    assert cluster["DeletionPolicy"] == "Snapshot"
    (instance,) = template.find_resources("AWS::RDS::DBInstance").values()
    assert instance["Properties"]["DBInstanceClass"] == "db.serverless"
    assert instance["Properties"]["PubliclyAccessible"] is False
    template.has_resource_properties(
        "AWS::RDS::DBClusterParameterGroup",
        {"Parameters": {"rds.force_ssl": "1"}, "Family": Match.string_like_regexp("^aurora-postgresql")},
    )
    # Its log group exists first, with retention and encryption, under the name RDS writes to.
    log_group = template.find_resources("AWS::Logs::LogGroup")[
        _id(template, "AWS::Logs::LogGroup", "ExportRunnerDatabaseLogGroup")
    ]
    assert log_group["Properties"]["LogGroupName"] == f"/aws/rds/cluster/{properties['DBClusterIdentifier']}/postgresql"
    assert log_group["Properties"]["RetentionInDays"] == 365 and log_group["Properties"]["KmsKeyId"] == key
    template.has_resource_properties("AWS::SecretsManager::Secret", {"KmsKeyId": key})
    template.has_resource_properties(
        "AWS::SecretsManager::RotationSchedule",
        {
            "HostedRotationLambda": Match.object_like({"RotationType": "PostgreSQLSingleUser", "KmsKeyArn": key}),
            "RotationRules": {"ScheduleExpression": "rate(30 days)"},
        },
    )


def test_created_database_accepts_postgres_only_from_the_functions_and_rotation(created: Synthesized) -> None:
    template = created.template
    database_sg = _id(template, "AWS::EC2::SecurityGroup", "ExportRunnerDatabaseSecurityGroup")
    ingress = [
        rule["Properties"]
        for rule in template.find_resources("AWS::EC2::SecurityGroupIngress").values()
        if rule["Properties"]["GroupId"] == {"Fn::GetAtt": [database_sg, "GroupId"]}
    ]
    assert {(rule["FromPort"], rule["ToPort"], rule["SourceSecurityGroupId"]["Fn::GetAtt"][0]) for rule in ingress} == {
        (5432, 5432, _id(template, "AWS::EC2::SecurityGroup", "ExportRunnerFunctionSecurityGroup")),
        (5432, 5432, _id(template, "AWS::EC2::SecurityGroup", "ExportRunnerRotationSecurityGroup")),
    }
    assert "SecurityGroupIngress" not in template.find_resources("AWS::EC2::SecurityGroup")[database_sg]["Properties"]


def test_deletion_protection_follows_the_config(unprotected: Synthesized) -> None:
    (cluster,) = unprotected.template.find_resources("AWS::RDS::DBCluster").values()
    assert cluster["Properties"]["DeletionProtection"] is False


def test_an_existing_database_is_used_and_nothing_is_created(existing: Synthesized) -> None:
    template = existing.template
    for resource_type in (
        "AWS::RDS::DBCluster",
        "AWS::RDS::DBInstance",
        "AWS::SecretsManager::Secret",
        "AWS::SecretsManager::RotationSchedule",
        "AWS::EC2::VPC",
        "AWS::EC2::VPCEndpoint",
    ):
        template.resource_count_is(resource_type, 0)
    for handler in (RUNNER_HANDLER, SWEEPER_HANDLER):
        properties = _function(template, handler)["Properties"]
        variables = properties["Environment"]["Variables"]
        # No cluster resource id configured: the secret's login (IAM needs the id for rds-db:connect).
        assert variables["DATABASE_AUTH"] == "secret" and "DATABASE_USER" not in variables
        assert variables["DATABASE_SECRET_ARN"] == SECRET_ARN
        assert variables["DATABASE_PORT"] == "6543"
        # No CA bundle configured: cdk.json's explicit "require", nothing shipped to verify with.
        assert variables["DATABASE_SSLMODE"] == "require" and "DATABASE_CA_BUNDLE" not in variables
        assert "Layers" not in properties
        assert "rds-db:connect" not in _allowed(_role_statements(template, handler))
        assert variables["DATABASE_HOST"] == EXISTING["database_endpoint"]
        assert variables["DATABASE_NAME"] == "compliance"
        assert properties["VpcConfig"]["SubnetIds"] == EXISTING["subnet_ids"]
    (ingress,) = template.find_resources("AWS::EC2::SecurityGroupIngress").values()
    assert ingress["Properties"]["GroupId"] == EXISTING["database_security_group_id"]
    assert (ingress["Properties"]["FromPort"], ingress["Properties"]["ToPort"]) == (6543, 6543)
    template.has_resource_properties(
        "AWS::EC2::SecurityGroup",
        {"VpcId": EXISTING["vpc_id"], "GroupDescription": Match.string_like_regexp("Export runner")},
    )


def test_a_given_vpc_gets_the_database_but_no_endpoints(given_vpc: Template) -> None:
    given_vpc.resource_count_is("AWS::EC2::VPC", 1)
    given_vpc.resource_count_is("AWS::EC2::VPCEndpoint", 0)
    given_vpc.resource_count_is("AWS::RDS::DBCluster", 1)
    subnets = given_vpc.find_resources("AWS::EC2::Subnet")
    private = {i for i in subnets if re.match(r"GivenVpcappSubnet\d", i)}
    isolated = {i for i in subnets if re.match(r"GivenVpcdataSubnet\d", i)}
    runner = _function(given_vpc, RUNNER_HANDLER)["Properties"]
    assert {ref["Ref"] for ref in runner["VpcConfig"]["SubnetIds"]} == private
    (subnet_group,) = given_vpc.find_resources("AWS::RDS::DBSubnetGroup").values()
    assert {ref["Ref"] for ref in subnet_group["Properties"]["SubnetIds"]} == isolated


def test_callers_get_send_and_download_rights_only_when_granted(given_vpc: Template, given_bucket: Template) -> None:
    api_policies = [
        policy
        for policy in given_vpc.find_resources("AWS::IAM::Policy").values()
        if {"Ref": _id(given_vpc, "AWS::IAM::Role", "ApiRole")} in policy["Properties"]["Roles"]
    ]
    allowed = _allowed([s for policy in api_policies for s in policy["Properties"]["PolicyDocument"]["Statement"]])
    bucket_id = _id(given_vpc, "AWS::S3::Bucket", "ExportsBucket")
    assert allowed["sqs:SendMessage"] == [_arn(_id(given_vpc, "AWS::SQS::Queue", "ExportsQueue"))]
    assert allowed["s3:GetObject"] == [_objects_of(_arn(bucket_id))]
    assert allowed["kms:Decrypt"] == [_arn(_id(given_vpc, "AWS::KMS::Key", "Key"))]
    assert not {a for a in allowed if a.startswith("s3:") and a != "s3:GetObject"}
    # Without the grants nobody may send export requests (the functions only send to their DLQs).
    queue = _arn(_id(given_bucket, "AWS::SQS::Queue", "ExportsQueue"))
    for policy in given_bucket.find_resources("AWS::IAM::Policy").values():
        assert queue not in _allowed(policy["Properties"]["PolicyDocument"]["Statement"]).get("sqs:SendMessage", [])


def test_secret_rotation_runs_where_the_functions_run(given_vpc: Template) -> None:
    (rotation,) = given_vpc.find_resources("AWS::SecretsManager::RotationSchedule").values()
    subnet_ids = rotation["Properties"]["HostedRotationLambda"]["VpcSubnetIds"]["Fn::Join"][1]
    runner = _function(given_vpc, RUNNER_HANDLER)["Properties"]
    assert [ref for ref in subnet_ids if ref != ","] == runner["VpcConfig"]["SubnetIds"]


# --- Sweeper -------------------------------------------------------------------------------------


def test_sweeper_runs_every_five_minutes_with_its_own_dlq(created: Synthesized) -> None:
    template = created.template
    sweeper_id = next(
        i
        for i, f in template.find_resources("AWS::Lambda::Function").items()
        if f["Properties"]["Handler"] == SWEEPER_HANDLER
    )
    sweeper_dlq = _arn(_id(template, "AWS::SQS::Queue", "ExportRunnerSweeperDlqQueue"))
    (rule,) = template.find_resources("AWS::Events::Rule").values()
    assert rule["Properties"]["ScheduleExpression"] == "rate(5 minutes)"
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == _arn(sweeper_id)
    assert target["DeadLetterConfig"] == {"Arn": sweeper_dlq}
    assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 300, "MaximumRetryAttempts": 2}
    sweeper = _function(template, SWEEPER_HANDLER)["Properties"]
    assert sweeper["DeadLetterConfig"] == {"TargetArn": sweeper_dlq}
    assert sweeper["ReservedConcurrentExecutions"] == 1
    # A job is stuck once the runner's timeout has passed, plus a margin.
    assert sweeper["Environment"]["Variables"]["EXPORT_STUCK_AFTER_SECONDS"] == str(RUNNER_TIMEOUT + 300)
    # A queued job whose message outlived the queue's one-day retention can never run.
    assert sweeper["Environment"]["Variables"]["EXPORT_QUEUED_EXPIRY_SECONDS"] == str(24 * 3600 + 3600)
    assert "COMPLIANCE_EXPORTS_BUCKET" not in sweeper["Environment"]["Variables"]
    assert sweeper["VpcConfig"] == _function(template, RUNNER_HANDLER)["Properties"]["VpcConfig"]
    # EventBridge may send to the sweeper's DLQ and use the key to encrypt there, for this rule only.
    rule_id = _id(template, "AWS::Events::Rule", "ExportRunnerSweepSchedule")
    (dlq_policy,) = [
        policy["Properties"]["PolicyDocument"]["Statement"]
        for policy in template.find_resources("AWS::SQS::QueuePolicy").values()
        if policy["Properties"]["Queues"] == [{"Ref": sweeper_dlq["Fn::GetAtt"][0]}]
    ]
    assert any(
        statement["Principal"] == {"Service": "events.amazonaws.com"}
        and statement["Action"] == "sqs:SendMessage"
        and statement["Condition"] == {"ArnEquals": {"aws:SourceArn": _arn(rule_id)}}
        for statement in dlq_policy
    )
    (key,) = template.find_resources("AWS::KMS::Key").values()
    (events_statement,) = [
        s
        for s in key["Properties"]["KeyPolicy"]["Statement"]
        if s.get("Principal") == {"Service": "events.amazonaws.com"}
    ]
    source_arn = events_statement["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Join"][1]
    assert source_arn[-1] == f":rule/{rule['Properties']['Name']}"


# --- Compliance ----------------------------------------------------------------------------------


def _acknowledged(raw: dict[str, Any]) -> set[tuple[str, str]]:
    found = set()
    for logical_id, resource in raw["Resources"].items():
        for entry in (resource.get("Metadata") or {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            found.add((logical_id, entry["id"]))
    return found


# Every acknowledgement the ExportRunner stack carries, by rule (cdk-nag writes them into the
# metadata of the acknowledged resource and its children). A new finding must be fixed or
# acknowledged on purpose, and an acknowledgement nothing needs any more shows up here too.
COMMON_ACKNOWLEDGEMENTS = {
    # HandlerFunction and DeadLetterQueue (shared building blocks)
    "NIST.800.53.R5-IAMNoInlinePolicy",
    "HIPAA.Security-IAMNoInlinePolicy",
    "AwsSolutions-SQS3",
    "Serverless-SQSRedrivePolicy",
    # this construct
    "AwsSolutions-IAM5[Resource::*]",
    "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:network-interface/*]",
    "AwsSolutions-IAM5[Resource::<ExportRunnerExportsBucket727DEEAC.Arn>/*]",
    "Serverless-LambdaEventSourceMappingDestination",
    "NIST.800.53.R5-S3BucketReplicationEnabled",
    "HIPAA.Security-S3BucketReplicationEnabled",
    "NIST.800.53.R5-S3DefaultEncryptionKMS",
    "HIPAA.Security-S3DefaultEncryptionKMS",
}
CREATED_DATABASE_ACKNOWLEDGEMENTS = {
    "NIST.800.53.R5-VPCDefaultSecurityGroupClosed",
    "HIPAA.Security-VPCDefaultSecurityGroupClosed",
    "NIST.800.53.R5-RDSInBackupPlan",
    "HIPAA.Security-RDSInBackupPlan",
    "AwsSolutions-RDS11",
    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole]",
}
DELETION_PROTECTION_OFF_ACKNOWLEDGEMENTS = {
    "AwsSolutions-RDS10",
    "NIST.800.53.R5-RDSInstanceDeletionProtectionEnabled",
    "HIPAA.Security-RDSInstanceDeletionProtectionEnabled",
}


def _acknowledged_rules(synthesized: Synthesized) -> set[str]:
    # CloudFormation-Validate acknowledgements come from CDK's own constructs, not ours.
    return {rule for _, rule in _acknowledged(synthesized.raw) if not rule.startswith("CloudFormation-Validate::")}


def test_every_pack_passes_with_exactly_the_reviewed_acknowledgements(
    created: Synthesized, existing: Synthesized, unprotected: Synthesized
) -> None:
    # The synth in each fixture raised nothing: every pack passed. The acknowledgements in the
    # metadata show the packs ran with write_suppressions_to_cloud_formation.
    assert _acknowledged_rules(created) == COMMON_ACKNOWLEDGEMENTS | CREATED_DATABASE_ACKNOWLEDGEMENTS
    assert _acknowledged_rules(existing) == COMMON_ACKNOWLEDGEMENTS
    assert (
        _acknowledged_rules(unprotected)
        == COMMON_ACKNOWLEDGEMENTS | CREATED_DATABASE_ACKNOWLEDGEMENTS | DELETION_PROTECTION_OFF_ACKNOWLEDGEMENTS
    )
    for synthesized in (created, existing, unprotected):
        report = synthesized.outdir / "validation-report.json"
        reports = json.loads(report.read_text())["pluginReports"] if report.exists() else []
        assert all(plugin.get("conclusion") == "success" for plugin in reports), reports


def test_every_acknowledgement_carries_a_specific_reason(created: Synthesized) -> None:
    for resource in created.raw["Resources"].values():
        for entry in (resource.get("Metadata") or {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            assert len(entry["reason"].split()) >= 6, entry


# --- Construct and config validation -------------------------------------------------------------


def test_rejects_both_vpc_and_database() -> None:
    stack = cdk.Stack(app_without_bundling(), "Bad")
    database = ExportDatabase(
        cluster=rds.DatabaseCluster.from_database_cluster_attributes(
            stack, "Cluster", cluster_identifier="audit", cluster_endpoint_address="audit.example.com", port=5432
        ),
        secret=secretsmanager.Secret.from_secret_complete_arn(stack, "Secret", SECRET_ARN),
        vpc=ec2.Vpc(stack, "DatabaseVpc"),
        database_name="audit",
    )
    with pytest.raises(ValueError, match="not both"):
        ExportRunner(stack, "E", encryption_key=kms.Key(stack, "Key"), database=database, vpc=ec2.Vpc(stack, "Other"))


def test_rejects_an_unbounded_or_too_small_concurrency() -> None:
    stack = cdk.Stack(app_without_bundling(), "Bad")
    with pytest.raises(ValueError, match="runner_concurrency"):
        ExportRunner(stack, "E", encryption_key=kms.Key(stack, "Key"), runner_concurrency=1)


def test_config_reads_an_existing_database() -> None:
    config = load_config({"subsystems": ["export_runner"], "export_runner": EXISTING}).export_runner
    assert config.existing_database is not None
    assert config.existing_database.port == 6543
    assert config.existing_database.subnet_ids == tuple(EXISTING["subnet_ids"])
    assert config.database_name == "compliance"
    assert load_config({"subsystems": ["export_runner"]}).export_runner == ExportRunnerConfig()


@pytest.mark.parametrize(
    ("export_runner", "message"),
    [
        ({"database_secret_arn": SECRET_ARN}, "missing database_cluster_identifier, database_endpoint"),
        ({**EXISTING, "subnet_ids": []}, "missing subnet_ids"),
        ({**EXISTING, "subnet_ids": "subnet-0123456789abcdef0"}, "subnet_ids must be a list"),
        ({**EXISTING, "subnet_ids": ["subnet-1"]}, "'subnet-1' is not a subnet id"),
        ({**EXISTING, "vpc_id": "my-vpc"}, "vpc_id must be an id like vpc-"),
        ({**EXISTING, "database_security_group_id": "sg-XYZ"}, "database_security_group_id must be an id like sg-"),
        ({**EXISTING, "database_port": "5432"}, "database_port must be an integer"),
        ({**EXISTING, "database_port": 80}, "between 1150 and 65535"),
        ({**EXISTING, "database_endpoint": "http://db"}, "database_endpoint must be a host name"),
        ({**EXISTING, "database_cluster_identifier": "1db"}, "not a DB cluster identifier"),
        ({**EXISTING, "database_secret_kms_key_arn": SECRET_ARN}, "must be an ARN of kms"),
        ({"database_port": 5433}, "describe an existing database"),
        ({"database_name": "audit-log"}, "database_name must be a PostgreSQL identifier"),
        ({"deletion_protection": "no"}, "deletion_protection must be true or false"),
        ({**EXISTING, "database_cluster_resource_id": "audit-log"}, "must be a cluster resource id like cluster-"),
        ({"database_cluster_resource_id": CLUSTER_RESOURCE_ID}, "describe an existing database"),
        ({"database_sslmode": "disable"}, "database_sslmode must be require, verify-ca or verify-full"),
        ({"database_sslmode": "prefer"}, "database_sslmode must be require, verify-ca or verify-full"),
    ],
)
def test_malformed_export_runner_config_is_one_clear_line(export_runner: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({"export_runner": export_runner})
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


# --- Database login (IAM) and TLS (issue #9 items 2 and 3) -------------------------------------


@pytest.fixture(scope="module")
def existing_iam(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return _synth(
        tmp_path_factory,
        "existing-iam",
        {**EXISTING, "database_cluster_resource_id": CLUSTER_RESOURCE_ID, "database_ca_bundle": CA_BUNDLE},
    )


def _literal_db_user_arn(db_user: str, region: str = "eu-west-1") -> dict[str, Any]:
    return {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                f":rds-db:{region}:123456789012:dbuser:{CLUSTER_RESOURCE_ID}/{db_user}",
            ],
        ]
    }


def _principal_allowed(template: Template, role_prefix: str) -> dict[str, list[Any]]:
    role = {"Ref": _id(template, "AWS::IAM::Role", role_prefix)}
    return _allowed(
        [
            statement
            for policy in template.find_resources("AWS::IAM::Policy").values()
            if role in policy["Properties"]["Roles"]
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        ]
    )


def test_an_existing_cluster_with_its_resource_id_gets_iam_logins_and_passes_every_pack(
    existing_iam: Synthesized,
) -> None:
    template = existing_iam.template
    for handler in (RUNNER_HANDLER, SWEEPER_HANDLER):
        variables = _function(template, handler)["Properties"]["Environment"]["Variables"]
        assert (variables["DATABASE_AUTH"], variables["DATABASE_USER"]) == ("iam", "export_runner")
        assert variables["DATABASE_SSLMODE"] == "verify-full"
        assert "DATABASE_SECRET_ARN" not in variables
        allowed = _allowed(_role_statements(template, handler))
        assert allowed["rds-db:connect"] == [
            {
                "Fn::Join": [
                    "",
                    [
                        "arn:",
                        {"Ref": "AWS::Partition"},
                        ":rds-db:",
                        {"Ref": "AWS::Region"},
                        ":",
                        {"Ref": "AWS::AccountId"},
                        f":dbuser:{CLUSTER_RESOURCE_ID}/export_runner",
                    ],
                ]
            }
        ]
        assert not {action for action in allowed if action.startswith("secretsmanager:")}
        assert SECRET_KEY_ARN not in allowed.get("kms:Decrypt", [])


def test_iam_logins_name_exactly_their_database_user() -> None:
    template = _construct_template(existing_cluster=CLUSTER_RESOURCE_ID, producer_role=True)
    runner = _allowed(_role_statements(template, RUNNER_HANDLER))
    sweeper = _allowed(_role_statements(template, SWEEPER_HANDLER))
    assert runner["rds-db:connect"] == sweeper["rds-db:connect"] == [_literal_db_user_arn("export_runner")]
    producer = _principal_allowed(template, "ProducerRole")
    assert producer["rds-db:connect"] == [_literal_db_user_arn("export_producer")]
    assert producer["sqs:SendMessage"] == [_arn(_id(template, "AWS::SQS::Queue", "ExportsQueue"))]
    for allowed in (runner, sweeper, producer):
        assert not {action for action in allowed if action.startswith("secretsmanager:")}
    # Nobody else may log in as any database user.
    for policy in template.find_resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if "rds-db:connect" in _as_list(statement["Action"]):
                assert statement["Resource"] in (
                    _literal_db_user_arn("export_runner"),
                    _literal_db_user_arn("export_producer"),
                )


def test_secret_logins_read_the_secret_and_get_no_iam_login() -> None:
    template = _construct_template(existing_cluster=CLUSTER_RESOURCE_ID, database_auth="secret", producer_role=True)
    for handler in (RUNNER_HANDLER, SWEEPER_HANDLER):
        variables = _function(template, handler)["Properties"]["Environment"]["Variables"]
        assert variables["DATABASE_AUTH"] == "secret" and variables["DATABASE_SECRET_ARN"] == SECRET_ARN
        assert "DATABASE_USER" not in variables
        allowed = _allowed(_role_statements(template, handler))
        assert allowed["secretsmanager:GetSecretValue"] == [SECRET_ARN]
        assert "rds-db:connect" not in allowed
    producer = _principal_allowed(template, "ProducerRole")
    assert producer["secretsmanager:GetSecretValue"] == [SECRET_ARN] and "rds-db:connect" not in producer


def test_iam_on_an_existing_cluster_needs_its_resource_id() -> None:
    with pytest.raises(ValueError, match="needs its resource id"):
        _construct_template(existing_cluster=True)


def test_the_ca_bundle_ships_as_a_layer_holding_only_the_bundle(tmp_path: Path) -> None:
    app = cdk.App(outdir=str(tmp_path), context={"aws:cdk:bundling-stacks": [], **FEATURE_FLAGS})
    stack = cdk.Stack(app, "Test", env=cdk.Environment(account="123456789012", region="eu-west-1"))
    (tmp_path / "bundle").mkdir()
    bundle = tmp_path / "bundle" / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "bundle" / "secret-key.pem").write_text("not to be shipped")
    ExportRunner(
        stack,
        "Exports",
        encryption_key=kms.Key(stack, "Key", enable_key_rotation=True),
        code=lambda_.Code.from_inline("# synth only"),
        database_ca_bundle=str(bundle),
    )
    assembly = app.synth()
    template = Template.from_json(assembly.get_stack_by_name("Test").template)
    (layer,) = template.find_resources("AWS::Lambda::LayerVersion").values()
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    staged = [path for path in Path(assembly.directory).glob("asset.*") if path.is_dir()]
    holding = [sorted(file.name for file in path.iterdir()) for path in staged if (path / "ca.pem").exists()]
    assert holding == [["ca.pem"]]
    assert not list(Path(assembly.directory).glob("asset.*/secret-key.pem"))
    for handler in (RUNNER_HANDLER, SWEEPER_HANDLER):
        variables = _function(template, handler)["Properties"]["Environment"]["Variables"]
        assert variables["DATABASE_CA_BUNDLE"] == "/opt/ca.pem"


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"database_ca_bundle": None}, "database_sslmode verify-full needs database_ca_bundle"),
        ({"database_ca_bundle": None, "database_sslmode": "verify-ca"}, "verify-ca needs database_ca_bundle"),
        ({"database_sslmode": "disable"}, "database_sslmode must be one of require, verify-ca, verify-full"),
        ({"database_sslmode": "prefer"}, "database_sslmode must be one of require, verify-ca, verify-full"),
        ({"database_ca_bundle": "/no/such/bundle.pem"}, "is not a file"),
        ({"database_auth": "password"}, "database_auth must be one of iam, secret"),
        ({"presign_ttl": cdk.Duration.days(8)}, "presign_ttl must be between 1 second and 7 days"),
    ],
)
def test_tls_and_login_props_are_checked(props: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _construct_template(**props)


def test_require_is_used_only_when_chosen_and_ships_no_bundle() -> None:
    template = _construct_template(database_ca_bundle=None, database_sslmode="require")
    template.resource_count_is("AWS::Lambda::LayerVersion", 0)
    for handler in (RUNNER_HANDLER, SWEEPER_HANDLER):
        properties = _function(template, handler)["Properties"]
        assert properties["Environment"]["Variables"]["DATABASE_SSLMODE"] == "require"
        assert "DATABASE_CA_BUNDLE" not in properties["Environment"]["Variables"]
        assert "Layers" not in properties


def test_config_reads_the_tls_and_login_keys() -> None:
    config = load_config(
        {
            "subsystems": ["export_runner"],
            "export_runner": {
                **EXISTING,
                "database_cluster_resource_id": CLUSTER_RESOURCE_ID,
                "database_ca_bundle": CA_BUNDLE,
                "database_sslmode": "verify-ca",
            },
        }
    ).export_runner
    assert config.existing_database is not None
    assert config.existing_database.cluster_resource_id == CLUSTER_RESOURCE_ID
    assert (config.database_ca_bundle, config.database_sslmode) == (CA_BUNDLE, "verify-ca")
    # cdk.json chooses "require" explicitly until an operator gives the CA bundle.
    shipped = json.loads((ROOT / "cdk.json").read_text())["context"]["export_runner"]
    assert shipped["database_sslmode"] == "require" and shipped["database_ca_bundle"] is None


# --- Migrations on deploy (issue #9 item 1) ------------------------------------------------------

MIGRATOR_ACTIONS = {
    *SECRET_READ,
    *VPC_ACTIONS,
    *XRAY_ACTIONS,
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "sqs:SendMessage",  # its async DLQ
    "kms:Decrypt",
    "kms:GenerateDataKey",
}


def _trigger(template: Template) -> tuple[str, dict[str, Any]]:
    ((logical_id, trigger),) = template.find_resources("Custom::Trigger").items()
    return logical_id, trigger


def _migrator_version(template: Template) -> str:
    migrator = _id(template, "AWS::Lambda::Function", "ExportRunnerMigratorFunction")
    (version,) = [
        logical_id
        for logical_id, resource in template.find_resources("AWS::Lambda::Version").items()
        if resource["Properties"]["FunctionName"] == {"Ref": migrator}
    ]
    return version


def test_migrations_run_on_deploy_after_the_database_and_before_the_functions(created: Synthesized) -> None:
    template = created.template
    trigger_id, trigger = _trigger(template)
    # Invoked synchronously (a failure fails the deployment), on the migrator's current version:
    # a new version (changed code, migrations or settings) runs it again.
    assert trigger["Properties"]["InvocationType"] == "RequestResponse"
    assert trigger["Properties"]["ExecuteOnHandlerChange"] is True
    assert trigger["Properties"]["HandlerArn"] == {"Ref": _migrator_version(template)}
    assert int(trigger["Properties"]["Timeout"]) == 300_000
    after = set(trigger["DependsOn"])
    for resource_type, prefix in (
        ("AWS::RDS::DBCluster", "ExportRunnerDatabase"),
        ("AWS::RDS::DBInstance", "ExportRunnerDatabaseWriter"),
        ("AWS::SecretsManager::SecretTargetAttachment", "ExportRunnerDatabaseSecretAttachment"),
        ("AWS::EC2::VPCEndpoint", "ExportRunnerVpcSecretsManagerEndpoint"),
        ("AWS::IAM::Policy", "ExportRunnerMigratorRoleDefaultPolicy"),
    ):
        assert _id(template, resource_type, prefix) in after, prefix
    # PostgreSQL to the database and HTTPS to the endpoints, from the functions' security group.
    from_functions = {
        rule["Properties"]["FromPort"]: logical_id
        for logical_id, rule in template.find_resources("AWS::EC2::SecurityGroupIngress").items()
        if rule["Properties"]["SourceSecurityGroupId"]
        == {"Fn::GetAtt": [_id(template, "AWS::EC2::SecurityGroup", "ExportRunnerFunctionSecurityGroup"), "GroupId"]}
    }
    assert {from_functions[5432], from_functions[443]} <= after
    for handler in (RUNNER_HANDLER, SWEEPER_HANDLER):
        (function_id,) = [
            logical_id
            for logical_id, function in template.find_resources("AWS::Lambda::Function").items()
            if function["Properties"].get("Handler") == handler
        ]
        assert trigger_id in template.to_json()["Resources"][function_id]["DependsOn"]


def test_migrator_logs_in_with_the_admin_secret_in_the_vpc(created: Synthesized) -> None:
    template = created.template
    migrator = _function(template, MIGRATOR_HANDLER)["Properties"]
    runner = _function(template, RUNNER_HANDLER)["Properties"]
    variables = migrator["Environment"]["Variables"]
    assert variables["DATABASE_AUTH"] == "secret" and "DATABASE_USER" not in variables
    assert variables["DATABASE_SECRET_ARN"] == _secret_ref(template)
    assert variables["MIGRATIONS_SHA256"] == migrations_digest()
    for key in ("DATABASE_HOST", "DATABASE_PORT", "DATABASE_NAME", "DATABASE_SSLMODE", "DATABASE_CA_BUNDLE"):
        assert variables[key] == runner["Environment"]["Variables"][key], key
    assert migrator["VpcConfig"] == runner["VpcConfig"]
    assert migrator["Layers"] == runner["Layers"]
    assert migrator["ReservedConcurrentExecutions"] == 1


def test_migrator_has_only_the_grants_it_needs_and_is_the_only_reader_of_the_admin_secret(
    created: Synthesized,
) -> None:
    template = created.template
    allowed = _allowed(_role_statements(template, MIGRATOR_HANDLER))
    assert set(allowed) == MIGRATOR_ACTIONS
    assert allowed["secretsmanager:GetSecretValue"] == [_secret_ref(template)]
    assert "rds-db:connect" not in allowed
    for handler in (RUNNER_HANDLER, SWEEPER_HANDLER):
        assert not any(action.startswith("secretsmanager:") for action in _allowed(_role_statements(template, handler)))
    # CDK's trigger provider may invoke the migrator's versions, and nothing else.
    provider_role = _id(template, "AWS::IAM::Role", "AWSCDKTriggerCustomResourceProviderCustomResourceProviderRole")
    role = template.to_json()["Resources"][provider_role]["Properties"]
    ((policy,),) = [role["Policies"]]
    (statement,) = policy["PolicyDocument"]["Statement"]
    migrator = _id(template, "AWS::Lambda::Function", "ExportRunnerMigratorFunction")
    assert statement == {
        "Effect": "Allow",
        "Action": ["lambda:InvokeFunction"],
        "Resource": [{"Fn::Join": ["", [{"Fn::GetAtt": [migrator, "Arn"]}, ":*"]]}],
    }


@pytest.mark.parametrize("which", ["existing", "existing_iam"])
def test_migrations_run_on_deploy_against_an_existing_database(which: str, request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue(which).template
    _, trigger = _trigger(template)
    assert trigger["Properties"]["HandlerArn"] == {"Ref": _migrator_version(template)}
    migrator = _function(template, MIGRATOR_HANDLER)["Properties"]
    variables = migrator["Environment"]["Variables"]
    assert (variables["DATABASE_AUTH"], variables["DATABASE_SECRET_ARN"]) == ("secret", SECRET_ARN)
    assert variables["DATABASE_HOST"] == EXISTING["database_endpoint"]
    assert (variables["DATABASE_PORT"], variables["DATABASE_NAME"]) == ("6543", "compliance")
    assert migrator["VpcConfig"]["SubnetIds"] == EXISTING["subnet_ids"]
    # After the rule that opens the existing database's security group to the functions.
    (ingress,) = template.find_resources("AWS::EC2::SecurityGroupIngress")
    assert ingress in trigger["DependsOn"]
    allowed = _allowed(_role_statements(template, MIGRATOR_HANDLER))
    assert allowed["secretsmanager:GetSecretValue"] == [SECRET_ARN]
    # The existing secret's key, usable through Secrets Manager only.
    assert SECRET_KEY_ARN in allowed["kms:Decrypt"]


def test_a_changed_migration_changes_the_migrator_so_the_trigger_runs_again(tmp_path: Path) -> None:
    import shutil

    from handlers.export_runner.migration_digest import MIGRATIONS_DIR

    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    before = migrations_digest(directory)
    (directory / "0004_least_privilege_roles.sql").write_text(
        (directory / "0004_least_privilege_roles.sql").read_text() + "\n-- edited\n"
    )
    edited = migrations_digest(directory)
    (directory / "0999_new.sql").write_text("SELECT 1;\n")
    assert len({before, edited, migrations_digest(directory)}) == 3
    assert before == migrations_digest()


def test_the_trigger_provider_carries_exactly_three_reviewed_checkov_skips(created: Synthesized) -> None:
    """CDK's provider runs outside the VPC with no DLQ or reserved concurrency: skipped with reasons."""
    provider = _id(
        created.template, "AWS::Lambda::Function", "AWSCDKTriggerCustomResourceProviderCustomResourceProviderHandler"
    )
    skips = created.raw["Resources"][provider]["Metadata"]["checkov"]["skip"]
    assert {skip["id"] for skip in skips} == {"CKV_AWS_115", "CKV_AWS_116", "CKV_AWS_117"}
    assert all("trigger provider" in skip["comment"] for skip in skips)
