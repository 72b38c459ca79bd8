"""JobClaim at synth level: the flow of the spec in the synthesized definition, storage, IAM per function."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Match, Template

from handlers.job_claim import schema
from infra.constructs.job_claim import JobClaim
from tests.infra.synth import app_without_bundling

ENV = cdk.Environment(account="123456789012", region="eu-west-1")


def _build(**props: Any) -> tuple[cdk.Stack, JobClaim]:
    stack = cdk.Stack(app_without_bundling(), "Test", env=ENV)
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    if props.pop("topic", False):
        props["alarm_topic"] = sns.Topic(stack, "Alarms")
    return stack, JobClaim(stack, "JobClaim", encryption_key=key, **props)


@pytest.fixture(scope="module")
def built() -> tuple[cdk.Stack, JobClaim, Template]:
    stack, construct = _build(topic=True, email_domain="jobs.example.com")
    worker = iam.Role(stack, "WorkerRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"))
    construct.grant_worker(worker)
    return stack, construct, Template.from_stack(stack)


@pytest.fixture(scope="module")
def template(built: tuple[cdk.Stack, JobClaim, Template]) -> Template:
    return built[2]


def _logical_id(stack: cdk.Stack, construct: Any) -> str:
    return stack.get_logical_id(construct.node.default_child)


def _definition(template: Template) -> dict[str, Any]:
    """The state machine definition with every token replaced by its logical id."""
    (machine,) = template.find_resources("AWS::StepFunctions::StateMachine").values()

    def text(part: Any) -> str:
        if isinstance(part, str):
            return part
        if "Fn::GetAtt" in part:
            return f"<{part['Fn::GetAtt'][0]}>"
        if part.get("Ref") == "AWS::Partition":
            return "aws"
        if "Ref" in part:
            return f"<{part['Ref']}>"
        raise AssertionError(part)

    delimiter, parts = machine["Properties"]["DefinitionString"]["Fn::Join"]
    return json.loads(delimiter.join(text(part) for part in parts))


def _states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every state, Map and Parallel branches included."""
    found: dict[str, dict[str, Any]] = {}

    def walk(states: dict[str, Any]) -> None:
        for name, state in states.items():
            found[name] = state
            for branch in state.get("Branches", []):
                walk(branch["States"])
            processor = state.get("ItemProcessor") or state.get("Iterator")
            if processor:
                walk(processor["States"])

    walk(definition["States"])
    return found


def test_the_flow_of_the_spec(template: Template) -> None:
    definition = _definition(template)
    states = _states(definition)
    assert definition["StartAt"] == "ParseEmail"
    assert states["ParseEmail"]["Next"] == "CheckAttachments"
    assert states["ProcessAttachments"]["Type"] == "Map" and states["ProcessAttachments"]["MaxConcurrency"] == 4
    assert states["CheckOwnership"]["Resource"] == "arn:aws:states:::dynamodb:getItem"
    assert states["CheckOwnership"]["Next"] == "ReadActiveJob"
    assert states["ReadActiveJob"]["Next"] == "HasOtherActiveJob"
    assert states["CheckActiveJob"]["Next"] == "DetermineRouting"
    assert states["DetermineRouting"]["Type"] == "Choice"
    for send in ("RouteToProjectQueue", "RouteUnownedToProjectQueue"):
        assert states[send]["Resource"] == "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
        assert (states[send]["HeartbeatSeconds"], states[send]["TimeoutSeconds"]) == (60, 3600)
        assert states[send]["Parameters"]["MessageGroupId.$"] == "$.pair"
        assert states[send]["Parameters"]["MessageBody"]["taskToken.$"] == "$$.Task.Token"
    assert states["RouteUnowned"]["Type"] == "Parallel"
    for routed in ("RouteToProjectQueue", "RouteUnowned"):
        catches = [(c["ErrorEquals"], c["Next"]) for c in states[routed]["Catch"]]
        assert catches == [
            (["States.Timeout"], "HandleTimeout"),
            ([schema.PREEMPTED], "HandleInterruption"),
            (["States.ALL"], "SendToEmailDlq"),
        ]
    assert states["HandleInterruption"]["Next"] == "InterruptionComplete"
    assert states["InterruptionComplete"]["Type"] == "Succeed"
    assert states["SendToEmailDlq"]["Resource"] == "arn:aws:states:::sqs:sendMessage"
    assert set(states["SendToEmailDlq"]["Parameters"]["MessageBody"]) == {
        "error.$",
        "input.$",
        "execution.$",
        "timestamp.$",
    }
    assert states["SendToEmailDlq"]["Next"] == "IntakeProcessingFailed"
    assert states["IntakeProcessingFailed"]["Type"] == "Fail"
    # Every Lambda step retries Lambda's service errors, and a parse failure takes the DLQ path.
    for name, state in states.items():
        if state.get("Resource") == "arn:aws:states:::lambda:invoke":
            assert "Lambda.ServiceException" in state["Retry"][0]["ErrorEquals"], name
    assert states["ParseEmail"]["Catch"][0]["Next"] == "SendToEmailDlq"


def test_an_owned_message_without_attachments_costs_one_lambda_invocation(template: Template) -> None:
    states = _states(_definition(template))
    path = ["ParseEmail", "CheckAttachments", "CheckOwnership", "ReadActiveJob", "HasOtherActiveJob"]
    path += ["DetermineRouting", "RouteToProjectQueue", "JobCompleted"]
    lambdas = [name for name in path if states[name].get("Resource") == "arn:aws:states:::lambda:invoke"]
    assert lambdas == ["ParseEmail"]
    assert states["CheckAttachments"]["Default"] == "CheckOwnership"
    assert states["HasOtherActiveJob"]["Default"] == "DetermineRouting"
    assert states["DetermineRouting"]["Choices"][0]["Next"] == "RouteToProjectQueue"


def test_state_machine_is_standard_logged_and_traced(template: Template) -> None:
    template.has_resource_properties(
        "AWS::StepFunctions::StateMachine",
        {
            "StateMachineType": "STANDARD",
            "TracingConfiguration": {"Enabled": True},
            "LoggingConfiguration": Match.object_like({"Level": "ALL", "IncludeExecutionData": True}),
        },
    )
    template.has_resource_properties("AWS::Logs::LogGroup", {"KmsKeyId": Match.any_value(), "RetentionInDays": 365})


def test_tables_queues_topic_and_bucket(built: tuple[cdk.Stack, JobClaim, Template]) -> None:
    stack, construct, template = built
    template.resource_count_is("AWS::DynamoDB::Table", len(schema.ALL_TABLES))
    for table_schema in schema.ALL_TABLES:
        expected: dict[str, Any] = {
            "KeySchema": [{"AttributeName": table_schema.partition_key.name, "KeyType": "HASH"}],
            "SSESpecification": Match.object_like({"SSEEnabled": True, "SSEType": "KMS"}),
        }
        if table_schema.ttl_attribute:
            expected["TimeToLiveSpecification"] = {"AttributeName": table_schema.ttl_attribute, "Enabled": True}
        template.has_resource_properties("AWS::DynamoDB::Table", expected)
    queues = template.find_resources("AWS::SQS::Queue")
    fifo = queues[_logical_id(stack, construct.input_queue)]["Properties"]
    assert fifo["FifoQueue"] is True and fifo["ContentBasedDeduplication"] is True
    assert fifo["VisibilityTimeout"] == 300
    assert all(q["Properties"].get("KmsMasterKeyId") for q in queues.values())
    template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    # S3 invokes the intake for new mail under incoming/ (the bucket's own configuration).
    bucket = template.find_resources("AWS::S3::Bucket")[_logical_id(stack, construct.email_bucket)]
    (configuration,) = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    assert configuration["Event"] == "s3:ObjectCreated:*"
    assert configuration["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": "incoming/"}]
    intake = _logical_id(stack, construct.functions["IntakeFunction"].function)
    assert configuration["Function"] == {"Fn::GetAtt": [intake, "Arn"]}
    template.has_resource_properties(
        "AWS::Lambda::Permission", {"Principal": "s3.amazonaws.com", "SourceAccount": "123456789012"}
    )
    assert not template.find_resources("Custom::S3BucketNotifications")


def _role_actions(template: Template, stack: cdk.Stack, role: iam.IRole) -> set[str]:
    logical_id = _logical_id(stack, role)
    actions: set[str] = set()
    for policy in template.find_resources("AWS::IAM::Policy").values():
        if {"Ref": logical_id} in policy["Properties"]["Roles"]:
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                value = statement["Action"]
                actions.update([value] if isinstance(value, str) else value)
    return actions


def test_each_function_may_do_only_its_part(built: tuple[cdk.Stack, JobClaim, Template]) -> None:
    stack, construct, template = built
    expected = {
        "IntakeFunction": {"s3:GetObject", "states:StartExecution"},
        "ParseEmailFunction": {"s3:GetObject"},
        "ProcessAttachmentFunction": {"s3:GetObject", "s3:PutObject"},
        "CheckActiveJobFunction": {"dynamodb:GetItem", "dynamodb:UpdateItem", "sns:Publish"},
        "RequestClaimFunction": {"dynamodb:GetItem", "dynamodb:UpdateItem", "sqs:SendMessage"},
        "RecordInterruptionFunction": {
            "dynamodb:GetItem",
            "dynamodb:DeleteItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
        },
        "HandleTimeoutFunction": {"dynamodb:DeleteItem", "dynamodb:PutItem", "sqs:SendMessage"},
    }
    for name, actions in expected.items():
        granted = _role_actions(template, stack, construct.functions[name].role)
        business = {a for a in granted if not a.startswith(("logs:", "xray:", "kms:"))}
        if name == "IntakeFunction":
            business -= {"sqs:SendMessage"}  # its DLQ, for failed asynchronous invokes
        assert business == actions, name
    # Nothing but a worker ever writes ownership.
    ownership_arn = {"Fn::GetAtt": [_logical_id(stack, construct.tables["ownership"]), "Arn"]}
    for name, function in construct.functions.items():
        statements = [
            s
            for p in template.find_resources("AWS::IAM::Policy").values()
            if {"Ref": _logical_id(stack, function.role)} in p["Properties"]["Roles"]
            for s in p["Properties"]["PolicyDocument"]["Statement"]
        ]
        assert not [s for s in statements if s["Resource"] == ownership_arn], name


def test_a_worker_gets_its_queue_the_token_calls_and_its_two_tables(
    built: tuple[cdk.Stack, JobClaim, Template],
) -> None:
    stack, _, template = built
    worker = next(child for child in stack.node.children if child.node.id == "WorkerRole")
    actions = _role_actions(template, stack, worker)  # type: ignore[arg-type]
    assert {"states:SendTaskSuccess", "states:SendTaskFailure", "states:SendTaskHeartbeat"} <= actions
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"} <= actions
    assert "states:StartExecution" not in actions and "dynamodb:Scan" not in actions


def test_alarms_cover_executions_dlqs_and_functions(template: Template) -> None:
    alarms = [a["Properties"] for a in template.find_resources("AWS::CloudWatch::Alarm").values()]
    names = sorted(a["MetricName"] for a in alarms)
    assert names.count("Errors") == 7
    assert {"ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"} <= set(names)
    assert names.count("ApproximateNumberOfMessagesVisible") == 2  # email DLQ, intake DLQ
    assert all(a["AlarmActions"] for a in alarms)


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"heartbeat": cdk.Duration.hours(2)}, "heartbeat must be shorter than task_timeout"),
        ({"input_visibility_timeout": cdk.Duration.seconds(30)}, "input_visibility_timeout must exceed heartbeat"),
        ({"attachment_concurrency": 0}, "attachment_concurrency must be between 1 and 40"),
        ({"lambda_retry_attempts": 11}, "lambda_retry_attempts must be between 0 and 10"),
    ],
)
def test_props_are_validated_at_synth(props: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^JobClaim: {message}"):
        _build(**props)


def test_heartbeat_timeout_and_concurrency_are_props() -> None:
    stack, _ = _build(
        heartbeat=cdk.Duration.seconds(30), task_timeout=cdk.Duration.minutes(20), attachment_concurrency=2
    )
    states = _states(_definition(Template.from_stack(stack)))
    assert (states["RouteToProjectQueue"]["HeartbeatSeconds"], states["RouteToProjectQueue"]["TimeoutSeconds"]) == (
        30,
        1200,
    )
    assert states["ProcessAttachments"]["MaxConcurrency"] == 2
