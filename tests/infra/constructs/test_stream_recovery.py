"""StreamRecovery at synth level: tables from the schema, one filtered reader, schedule, alarms, IAM per function."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Match, Template

from handlers.common.config import ConfigurationError
from handlers.stream_recovery import schema, writer
from handlers.stream_recovery.settings import load_settings
from infra.constructs.stream_recovery import StreamRecovery, StreamRecoveryTables
from tests.infra.synth import app_without_bundling

ENV = cdk.Environment(account="123456789012", region="eu-west-1")
TABLE_ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/app-{}"
TABLES_KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/66666666-7777-8888-9999-000000000000"


def _stack() -> tuple[cdk.Stack, kms.Key]:
    stack = cdk.Stack(app_without_bundling(), "Test", env=ENV)
    return stack, kms.Key(stack, "Key", enable_key_rotation=True)


def _build(**props: Any) -> tuple[cdk.Stack, StreamRecovery]:
    stack, key = _stack()
    if props.pop("topic", False):
        props["alarm_topic"] = sns.Topic(stack, "Alarms")
    return stack, StreamRecovery(stack, "StreamRecovery", encryption_key=key, **props)


@pytest.fixture(scope="module")
def built() -> tuple[cdk.Stack, StreamRecovery, Template]:
    stack, construct = _build(topic=True)
    app_role = iam.Role(stack, "AppRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    construct.grant_writer(app_role)
    return stack, construct, Template.from_stack(stack)


@pytest.fixture(scope="module")
def template(built: tuple[cdk.Stack, StreamRecovery, Template]) -> Template:
    return built[2]


def _logical_id(stack: cdk.Stack, construct: Any) -> str:
    return stack.get_logical_id(construct.node.default_child)


def _statements_of(template: Template, role_logical_id: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in template.find_resources("AWS::IAM::Policy").values()
        if {"Ref": role_logical_id} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _actions_by_resource(template: Template, role_logical_id: str) -> dict[str, set[str]]:
    """{resource (rendered) -> actions} of the DynamoDB statements of one role."""
    granted: dict[str, set[str]] = {}
    for statement in _statements_of(template, role_logical_id):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for resource in resources:
            for action in actions:
                if action.startswith("dynamodb:"):
                    granted.setdefault(json.dumps(resource, sort_keys=True), set()).add(action)
    return granted


def _table_arn(stack: cdk.Stack, table: dynamodb.ITable, suffix: str = "") -> str:
    arn: Any = {"Fn::GetAtt": [stack.get_logical_id(table.node.default_child), "Arn"]}  # type: ignore[arg-type]
    if suffix:
        arn = {"Fn::Join": ["", [arn, suffix]]}
    return json.dumps(arn, sort_keys=True)


def test_the_five_tables_come_from_the_schema(template: Template) -> None:
    template.resource_count_is("AWS::DynamoDB::Table", 5)
    for table_schema in schema.ALL_TABLES:
        keys = [{"AttributeName": table_schema.partition_key.name, "KeyType": "HASH"}]
        if table_schema.sort_key:
            keys.append({"AttributeName": table_schema.sort_key.name, "KeyType": "RANGE"})
        expected: dict[str, Any] = {
            "KeySchema": keys,
            "BillingMode": "PAY_PER_REQUEST",
            "SSESpecification": {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": Match.any_value()},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "DeletionProtectionEnabled": True,
        }
        if table_schema.indexes:
            expected["GlobalSecondaryIndexes"] = [
                Match.object_like({"IndexName": index.name}) for index in table_schema.indexes
            ]
        template.has_resource_properties("AWS::DynamoDB::Table", expected)
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "StreamSpecification": {"StreamViewType": "NEW_IMAGE"},
            "TimeToLiveSpecification": {"AttributeName": schema.MARKER_TTL, "Enabled": True},
            "GlobalSecondaryIndexes": [
                Match.object_like(
                    {
                        "IndexName": schema.MARKER_SWEEP_INDEX,
                        "KeySchema": [
                            {"AttributeName": schema.MARKER_SWEEP_SHARD, "KeyType": "HASH"},
                            {"AttributeName": schema.MARKER_RECORDED_AT_MICROS, "KeyType": "RANGE"},
                        ],
                    }
                )
            ],
        },
    )


def test_one_reader_on_the_markers_stream_for_inserts_only(built: tuple[cdk.Stack, StreamRecovery, Template]) -> None:
    stack, construct, template = built
    template.resource_count_is("AWS::Lambda::EventSourceMapping", 1)
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "EventSourceArn": {"Fn::GetAtt": [_logical_id(stack, construct.tables.pending_dispatches), "StreamArn"]},
            "FunctionName": {"Ref": _logical_id(stack, construct.stream_function)},
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "BisectBatchOnFunctionError": True,
            "MaximumRetryAttempts": 5,
            "MaximumRecordAgeInSeconds": 6 * 3600,
            "StartingPosition": "TRIM_HORIZON",
            "ParallelizationFactor": 1,
            "DestinationConfig": {
                "OnFailure": {"Destination": {"Fn::GetAtt": [_logical_id(stack, construct.stream_dlq.queue), "Arn"]}}
            },
            "FilterCriteria": {"Filters": [{"Pattern": json.dumps({"eventName": ["INSERT"]}, separators=(",", ":"))}]},
        },
    )


def test_functions_have_bounded_concurrency_and_timeouts_the_handlers_accept(
    built: tuple[cdk.Stack, StreamRecovery, Template],
) -> None:
    stack, construct, template = built
    functions = template.find_resources("AWS::Lambda::Function")
    stream = functions[_logical_id(stack, construct.stream_function)]["Properties"]
    sweeper = functions[_logical_id(stack, construct.sweeper_function)]["Properties"]
    assert (stream["ReservedConcurrentExecutions"], stream["Timeout"]) == (10, 90)
    assert (sweeper["ReservedConcurrentExecutions"], sweeper["Timeout"]) == (1, 240)
    for function in (stream, sweeper):
        variables = function["Environment"]["Variables"]
        assert int(variables["FUNCTION_TIMEOUT_SECONDS"]) == function["Timeout"]
        # The cold-start check accepts what the construct wrote (names stand in for the tokens).
        concrete = {name: value if isinstance(value, str) else "table-name" for name, value in variables.items()}
        settings = load_settings(concrete)
        assert settings.claim_expiry_seconds == 300 and settings.policy.retry_horizon_seconds == 60
        assert "DELIVERY_ALLOW_HTTP" not in variables and "DELIVERY_ALLOW_PRIVATE_TARGETS" not in variables


def test_the_sweeper_runs_on_a_scheduler_schedule_every_5_minutes(
    built: tuple[cdk.Stack, StreamRecovery, Template],
) -> None:
    stack, construct, template = built
    template.has_resource_properties(
        "AWS::Scheduler::Schedule",
        {
            "ScheduleExpression": "rate(5 minutes)",
            "State": "ENABLED",
            "KmsKeyArn": Match.any_value(),
            "Target": {
                "Arn": {"Fn::GetAtt": [_logical_id(stack, construct.sweeper_function), "Arn"]},
                "RoleArn": {"Fn::GetAtt": [_logical_id(stack, construct.schedule_role), "Arn"]},
                "DeadLetterConfig": {"Arn": {"Fn::GetAtt": [_logical_id(stack, construct.sweeper_dlq.queue), "Arn"]}},
                "RetryPolicy": {"MaximumEventAgeInSeconds": 300, "MaximumRetryAttempts": 2},
            },
        },
    )
    schedule_actions = {
        action
        for statement in _statements_of(template, _logical_id(stack, construct.schedule_role))
        for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    }
    assert "lambda:InvokeFunction" in schedule_actions and "sqs:SendMessage" in schedule_actions
    assert not {a for a in schedule_actions if a.startswith("dynamodb:")}


def test_every_alarm_is_there_and_routed(template: Template) -> None:
    alarms = [alarm["Properties"] for alarm in template.find_resources("AWS::CloudWatch::Alarm").values()]
    metrics = sorted(alarm.get("MetricName") for alarm in alarms)
    # Two DLQ depths, two function error alarms, the stream's iterator age, the sweep errors.
    assert metrics == sorted(
        ["ApproximateNumberOfMessagesVisible"] * 2 + ["Errors"] * 2 + ["IteratorAge", "sweep_errors"]
    )
    sweep_errors = next(alarm for alarm in alarms if alarm.get("MetricName") == "sweep_errors")
    assert sweep_errors["Namespace"] == "EventDrivenSubsystems"
    assert sweep_errors["Dimensions"] == [{"Name": "service", "Value": "stream-recovery"}]
    for alarm in alarms:
        assert alarm["AlarmActions"], "every alarm is routed to the topic"


def test_each_function_may_call_exactly_what_its_code_calls(built: tuple[cdk.Stack, StreamRecovery, Template]) -> None:
    stack, construct, template = built
    tables = construct.tables
    dispatch = {
        _table_arn(stack, tables.tasks): {"dynamodb:GetItem"},
        _table_arn(stack, tables.task_events): {"dynamodb:GetItem"},
        _table_arn(stack, tables.push_configs): {"dynamodb:Query"},
        _table_arn(stack, tables.pending_dispatches): {"dynamodb:UpdateItem", "dynamodb:DeleteItem"},
        _table_arn(stack, tables.deliveries): {"dynamodb:GetItem", "dynamodb:UpdateItem"},
    }
    stream_grants = _actions_by_resource(template, _logical_id(stack, construct.stream_worker.role))
    stream_table_grants = {
        resource: actions for resource, actions in stream_grants.items() if "StreamArn" not in resource
    }
    # ListStreams (added by the event source) has no resource-level permission.
    assert stream_table_grants == dispatch | {'"*"': {"dynamodb:ListStreams"}}
    assert {"dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:DescribeStream"} <= set().union(
        *(actions for resource, actions in stream_grants.items() if "StreamArn" in resource)
    )
    sweeper_grants = _actions_by_resource(template, _logical_id(stack, construct.sweeper.role))
    sweep = dict(dispatch)
    sweep[_table_arn(stack, tables.pending_dispatches)] = {
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:GetItem",
    }
    sweep[_table_arn(stack, tables.pending_dispatches, f"/index/{schema.MARKER_SWEEP_INDEX}")] = {"dynamodb:Query"}
    sweep[_table_arn(stack, tables.deliveries, f"/index/{schema.DELIVERY_CLAIM_INDEX}")] = {"dynamodb:Query"}
    assert sweeper_grants == sweep
    rendered = json.dumps(template.to_json())
    assert "dynamodb:Scan" not in rendered and "/index/*" not in rendered


def test_table_key_use_is_only_through_dynamodb(built: tuple[cdk.Stack, StreamRecovery, Template]) -> None:
    stack, construct, template = built
    for role in (construct.stream_worker.role, construct.sweeper.role):
        via_dynamodb = [
            statement
            for statement in _statements_of(template, _logical_id(stack, role))
            if statement.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
            == "dynamodb.eu-west-1.amazonaws.com"
        ]
        assert len(via_dynamodb) == 1
        assert set(via_dynamodb[0]["Action"]) == {
            "kms:Decrypt",
            "kms:DescribeKey",
            "kms:Encrypt",
            "kms:GenerateDataKey",
        }


def test_grant_writer_gives_the_application_the_writer_library_rights(
    built: tuple[cdk.Stack, StreamRecovery, Template],
) -> None:
    stack, construct, template = built
    app_role = next(child for child in stack.node.children if child.node.id == "AppRole")
    tables = construct.tables
    assert _actions_by_resource(template, _logical_id(stack, app_role)) == {
        _table_arn(stack, tables.tasks): {"dynamodb:GetItem", "dynamodb:UpdateItem"},
        _table_arn(stack, tables.task_events): {"dynamodb:GetItem", "dynamodb:PutItem"},
        _table_arn(stack, tables.push_configs): {"dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query"},
        _table_arn(stack, tables.pending_dispatches): {"dynamodb:PutItem", "dynamodb:GetItem"},
    }
    environment = construct.writer_environment()
    assert environment[writer.ENV_PUSH_DISPATCH] == "true"
    assert set(environment) == {
        writer.ENV_TASKS_TABLE,
        writer.ENV_TASK_EVENTS_TABLE,
        writer.ENV_PUSH_CONFIGS_TABLE,
        writer.ENV_PENDING_DISPATCHES_TABLE,
        writer.ENV_DELIVERIES_TABLE,
        writer.ENV_PUSH_DISPATCH,
    }


def test_alarms_have_no_action_without_a_topic() -> None:
    stack, _ = _build()
    for alarm in Template.from_stack(stack).find_resources("AWS::CloudWatch::Alarm").values():
        assert "AlarmActions" not in alarm["Properties"]


def _given_tables(stack: cdk.Stack, *, stream: bool = True, key: kms.IKey | None = None) -> StreamRecoveryTables:
    def imported(role: str, stream_arn: str | None = None) -> dynamodb.ITable:
        return dynamodb.Table.from_table_attributes(
            stack, f"Given{role}", table_arn=TABLE_ARN.format(role), table_stream_arn=stream_arn, encryption_key=key
        )

    markers_stream = TABLE_ARN.format("pending_dispatches") + "/stream/2026-01-01T00:00:00.000" if stream else None
    return StreamRecoveryTables(
        tasks=imported("tasks"),
        task_events=imported("task_events"),
        push_configs=imported("push_configs"),
        pending_dispatches=imported("pending_dispatches", markers_stream),
        deliveries=imported("deliveries"),
    )


def test_given_tables_are_used_not_created_and_their_key_only_through_dynamodb() -> None:
    stack, key = _stack()
    tables_key = kms.Key.from_key_arn(stack, "TablesKey", TABLES_KEY_ARN)
    construct = StreamRecovery(
        stack,
        "StreamRecovery",
        encryption_key=key,
        tables=_given_tables(stack, key=tables_key),
        tables_encryption_key=tables_key,
    )
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::DynamoDB::Table", 0)
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {"EventSourceArn": TABLE_ARN.format("pending_dispatches") + "/stream/2026-01-01T00:00:00.000"},
    )
    grants = _actions_by_resource(template, _logical_id(stack, construct.sweeper.role))
    assert grants[json.dumps(TABLE_ARN.format("deliveries"))] == {"dynamodb:GetItem", "dynamodb:UpdateItem"}
    assert grants[json.dumps(TABLE_ARN.format("deliveries") + f"/index/{schema.DELIVERY_CLAIM_INDEX}")] == {
        "dynamodb:Query"
    }
    key_statements = [
        s
        for s in _statements_of(template, _logical_id(stack, construct.sweeper.role))
        if s.get("Resource") == TABLES_KEY_ARN
    ]
    assert [s["Condition"]["StringEquals"]["kms:ViaService"] for s in key_statements] == [
        "dynamodb.eu-west-1.amazonaws.com"
    ]


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"claim_expiry": cdk.Duration.seconds(60)}, "claim expiry (60s) must exceed the retry horizon (60s)"),
        (
            {"timeout": cdk.Duration.seconds(20)},
            "function timeout (20s) must exceed one attempt (connect + read timeout = 20.0s) (the timeout prop)",
        ),
        (
            {"claim_expiry": cdk.Duration.seconds(90)},
            "claim expiry (90s) must exceed the function timeout (90s) (the timeout prop)",
        ),
        (
            {"retry_horizon": cdk.Duration.seconds(10)},
            "retry_horizon_seconds (10) must hold one attempt (connect + read timeout = 20.0)",
        ),
        ({"sweep_interval": cdk.Duration.minutes(3)}, "sweeper_timeout must be shorter than sweep_interval"),
        ({"max_concurrency": 0}, "max_concurrency must be between 1 and 64"),
    ],
)
def test_timing_rules_and_limits_fail_at_synth(props: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=r"^StreamRecovery: ") as raised:
        _build(**props)
    assert message in str(raised.value)


def test_given_markers_table_without_a_stream_is_refused() -> None:
    stack, key = _stack()
    with pytest.raises(ValueError, match="pending_dispatches needs its stream"):
        StreamRecovery(stack, "StreamRecovery", encryption_key=key, tables=_given_tables(stack, stream=False))


def test_the_handlers_refuse_what_the_construct_refuses() -> None:
    """The same rule at cold start: a hand-edited environment cannot slip past synth's check."""
    _, construct = _build()
    environment = {name: "table" for name in construct.tables.environment()} | {
        "DELIVERY_CLAIM_EXPIRY_SECONDS": "60",
        "FUNCTION_TIMEOUT_SECONDS": "90",
    }
    with pytest.raises(ConfigurationError, match="claim expiry"):
        load_settings(environment)
