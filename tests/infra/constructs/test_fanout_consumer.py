"""FanOutConsumer at synth level: one reader, stream failure handling, conditional grants."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Match, Template

from infra.constructs.fanout_consumer import FanOutConsumer
from tests.infra.synth import app_without_bundling

GITHUB_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:github-token-AbCdEf"


def _template(**props: Any) -> Template:
    app = app_without_bundling()
    stack = cdk.Stack(app, "Test", env=cdk.Environment(account="123456789012", region="us-east-1"))
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    events = dynamodb.Table(
        stack,
        "Events",
        partition_key=dynamodb.Attribute(name="task_id", type=dynamodb.AttributeType.STRING),
        sort_key=dynamodb.Attribute(name="event_id", type=dynamodb.AttributeType.STRING),
        stream=dynamodb.StreamViewType.NEW_IMAGE,
    )
    tables = {}
    for name in ("task_table", "repo_table"):
        if props.pop(name, False):
            tables[name] = dynamodb.Table(
                stack, name, partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING)
            )
    if props.pop("github", False):
        props["github_token_secret"] = secretsmanager.Secret.from_secret_complete_arn(stack, "Gh", GITHUB_SECRET_ARN)
    if props.pop("topic", False):
        props["alarm_topic"] = sns.Topic(stack, "Alarms")
    FanOutConsumer(stack, "FanOut", task_events_table=events, encryption_key=key, **tables, **props)
    return Template.from_stack(stack)


@pytest.fixture(scope="module")
def email_only() -> Template:
    return _template(task_table=True, email_sender="agent@example.com")


@pytest.fixture(scope="module")
def full() -> Template:
    return _template(
        task_table=True,
        repo_table=True,
        github=True,
        github_repo_secret_prefix="bgagent/github/",
        slack_secret_prefix="bgagent/slack/",
        email_sender="agent@example.com",
        topic=True,
    )


def _statements(template: Template) -> list[dict[str, Any]]:
    return [
        statement
        for policy in template.find_resources("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _actions(template: Template) -> set[str]:
    actions: set[str] = set()
    for statement in _statements(template):
        value = statement["Action"]
        actions.update([value] if isinstance(value, str) else value)
    return actions


def test_exactly_one_reader_on_the_task_events_stream(full: Template) -> None:
    full.resource_count_is("AWS::Lambda::EventSourceMapping", 1)
    full.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {"EventSourceArn": {"Fn::GetAtt": [Match.string_like_regexp("^Events"), "StreamArn"]}},
    )


def test_stream_mapping_handles_failures(full: Template) -> None:
    full.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "BisectBatchOnFunctionError": True,
            "MaximumRetryAttempts": 10,
            "MaximumRecordAgeInSeconds": 6 * 3600,
            "StartingPosition": "TRIM_HORIZON",
            "ParallelizationFactor": 1,
            "DestinationConfig": {
                "OnFailure": {"Destination": {"Fn::GetAtt": [Match.string_like_regexp("Dlq"), "Arn"]}}
            },
            "FilterCriteria": {
                "Filters": [
                    {"Pattern": json.dumps({"eventName": ["INSERT"]}, separators=(",", ":"))},
                    {"Pattern": json.dumps({"eventName": ["MODIFY"]}, separators=(",", ":"))},
                ]
            },
        },
    )


def test_function_settings(full: Template) -> None:
    (key_id,) = full.find_resources("AWS::KMS::Key")
    full.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "handlers.fanout.handler.handler",
            # Environment variables encrypted with the subsystem key, not Lambda's default key.
            "KmsKeyArn": {"Fn::GetAtt": [key_id, "Arn"]},
            "Runtime": "python3.14",
            "Architectures": ["arm64"],
            "MemorySize": 512,
            "Timeout": 60,
            "TracingConfig": {"Mode": "Active"},
            "ReservedConcurrentExecutions": 10,
            "DeadLetterConfig": {"TargetArn": Match.any_value()},
        },
    )
    full.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": 365, "KmsKeyId": Match.any_value()})
    # No AWS managed policy: the role holds only what the construct grants, which includes
    # writing its own logs and using the DLQ's key for failed asynchronous events.
    full.has_resource_properties("AWS::IAM::Role", {"ManagedPolicyArns": Match.absent()})
    assert {"logs:CreateLogStream", "logs:PutLogEvents", "kms:GenerateDataKey", "kms:Decrypt"} <= _actions(full)


def test_dlq_encrypted_tls_only_with_alarms_routed(full: Template) -> None:
    full.has_resource_properties(
        "AWS::SQS::Queue", {"KmsMasterKeyId": Match.any_value(), "MessageRetentionPeriod": 14 * 24 * 3600}
    )
    full.has_resource_properties(
        "AWS::SQS::QueuePolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]
                )
            }
        },
    )
    alarms = full.find_resources("AWS::CloudWatch::Alarm")
    assert {a["Properties"].get("MetricName") for a in alarms.values()} == {
        "ApproximateNumberOfMessagesVisible",
        "Errors",
        "IteratorAge",
    }
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"], "every alarm is routed to the topic"


def test_alarms_have_no_action_without_a_topic(email_only: Template) -> None:
    for alarm in email_only.find_resources("AWS::CloudWatch::Alarm").values():
        assert "AlarmActions" not in alarm["Properties"]


def test_channels_not_configured_bring_no_env_and_no_grant(email_only: Template) -> None:
    (function,) = email_only.find_resources("AWS::Lambda::Function").values()
    variables = function["Properties"]["Environment"]["Variables"]
    for name in ("REPO_TABLE_NAME", "GITHUB_TOKEN_SECRET_ARN", "GITHUB_REPO_SECRET_ARN_PREFIX", "SLACK_SECRET_PREFIX"):
        assert name not in variables
    actions = _actions(email_only)
    assert not {a for a in actions if a.startswith("secretsmanager:")}
    assert {"dynamodb:GetItem", "dynamodb:UpdateItem", "ses:SendEmail"} <= actions


def test_github_with_repo_table_reads_repo_rows_and_only_the_stack_wide_secret() -> None:
    template = _template(task_table=True, repo_table=True, github=True)
    (function,) = template.find_resources("AWS::Lambda::Function").values()
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables["GITHUB_TOKEN_SECRET_ARN"] == GITHUB_SECRET_ARN
    assert "REPO_TABLE_NAME" in variables
    assert not {"SLACK_SECRET_PREFIX", "EMAIL_SENDER"} & set(variables)
    rendered = json.dumps(_statements(template))
    assert GITHUB_SECRET_ARN in rendered and "repotable" in rendered
    # Without github_repo_secret_prefix a repo row's own secret is refused, so none is readable.
    assert _secret_resources(template) == [GITHUB_SECRET_ARN]
    assert "ses:SendEmail" not in _actions(template)


def _secret_resources(template: Template) -> list[Any]:
    return [
        statement["Resource"]
        for statement in _statements(template)
        if "secretsmanager:GetSecretValue" in json.dumps(statement["Action"])
    ]


def test_github_repo_secret_prefix_grants_its_secrets_and_tells_the_handler() -> None:
    template = _template(task_table=True, repo_table=True, github=True, github_repo_secret_prefix="bgagent/github/")
    (function,) = template.find_resources("AWS::Lambda::Function").values()
    variables = function["Properties"]["Environment"]["Variables"]
    # The handler refuses a repo row's secret outside exactly what the role may read: the same ARN
    # prefix, with this stack's partition, region and account.
    arn_prefix = {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":secretsmanager:us-east-1:123456789012:secret:bgagent/github/",
            ],
        ]
    }
    assert variables["GITHUB_REPO_SECRET_ARN_PREFIX"] == arn_prefix
    resources = json.dumps(_secret_resources(template))
    assert ":secretsmanager:us-east-1:123456789012:secret:bgagent/github/*" in resources
    assert GITHUB_SECRET_ARN in resources


def test_without_github_repo_secret_prefix_only_the_stack_wide_secret_is_readable() -> None:
    template = _template(task_table=True, repo_table=True, github=True)
    (function,) = template.find_resources("AWS::Lambda::Function").values()
    assert "GITHUB_REPO_SECRET_ARN_PREFIX" not in function["Properties"]["Environment"]["Variables"]
    resources = _secret_resources(template)
    assert resources and all(GITHUB_SECRET_ARN in json.dumps(resource) for resource in resources)
    assert "*" not in json.dumps(resources)


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"task_table": True, "github": True, "github_repo_secret_prefix": "bgagent/github/"}, "needs repo_table"),
        (
            {"task_table": True, "repo_table": True, "github": True, "github_repo_secret_prefix": " "},
            "github_repo_secret_prefix must be a secret name prefix",
        ),
        (
            {"task_table": True, "repo_table": True, "github": True, "github_repo_secret_prefix": "bgagent/*"},
            "github_repo_secret_prefix must be a secret name prefix",
        ),
        (
            {
                "task_table": True,
                "repo_table": True,
                "github": True,
                "github_repo_secret_prefix": "bgagent/",
                "slack_secret_prefix": "bgagent/slack/",
            },
            "overlap",
        ),
    ],
)
def test_refuses_a_github_repo_secret_prefix_it_cannot_honour(props: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _template(**props)


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"task_table": True}, "configure at least one channel"),
        ({"email_sender": "agent@example.com"}, "task_table is required"),
        ({"task_table": True, "repo_table": True, "email_sender": "a@example.com"}, "repo_table only serves"),
    ],
)
def test_refuses_shapes_the_handler_cannot_start_with(props: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _template(**props)


def test_each_integration_brings_its_env_and_grant(full: Template) -> None:
    (function,) = full.find_resources("AWS::Lambda::Function").values()
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables["SLACK_SECRET_PREFIX"] == "bgagent/slack/"
    assert variables["EMAIL_SENDER"] == "agent@example.com"
    assert variables["GITHUB_TOKEN_SECRET_ARN"] == GITHUB_SECRET_ARN
    assert {"TASK_TABLE_NAME", "REPO_TABLE_NAME"} <= set(variables)
    assert variables["FANOUT_MAX_CONCURRENCY"] == "32"
    statements = _statements(full)
    rendered = json.dumps(statements)
    assert "secret:bgagent/slack/*" in rendered
    assert "secret:bgagent/github/*" in rendered
    assert GITHUB_SECRET_ARN in rendered
    assert "GITHUB_REPO_SECRET_ARN_PREFIX" in variables
    assert "identity/agent@example.com" in rendered and "identity/example.com" in rendered
    actions = _actions(full)
    assert {"dynamodb:GetItem", "dynamodb:UpdateItem", "secretsmanager:GetSecretValue", "ses:SendEmail"} <= actions
    assert not [a for a in actions if a == "*" or a.endswith(":*")]


@pytest.mark.parametrize(
    ("prop", "variable", "action"),
    [
        ("slack_secret_prefix", "SLACK_SECRET_PREFIX", "secretsmanager:GetSecretValue"),
        ("email_sender", "EMAIL_SENDER", "ses:SendEmail"),
    ],
)
def test_one_integration_alone(prop: str, variable: str, action: str) -> None:
    value = "bgagent/slack/" if prop == "slack_secret_prefix" else "agent@example.com"
    template = _template(task_table=True, **{prop: value})
    (function,) = template.find_resources("AWS::Lambda::Function").values()
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables[variable] == value
    others = {"SLACK_SECRET_PREFIX", "EMAIL_SENDER", "GITHUB_TOKEN_SECRET_ARN", "REPO_TABLE_NAME"} - {variable}
    assert not others & set(variables)
    assert action in _actions(template)


def test_rejects_a_table_without_stream() -> None:
    app = app_without_bundling()
    stack = cdk.Stack(app, "NoStream")
    table = dynamodb.Table(stack, "T", partition_key=dynamodb.Attribute(name="k", type=dynamodb.AttributeType.STRING))
    with pytest.raises(ValueError, match="must have a stream"):
        FanOutConsumer(stack, "F", task_events_table=table, encryption_key=kms.Key(stack, "K"))


@pytest.mark.parametrize("view_type", [dynamodb.StreamViewType.KEYS_ONLY, dynamodb.StreamViewType.OLD_IMAGE])
def test_rejects_a_stream_whose_records_carry_no_new_image(view_type: dynamodb.StreamViewType) -> None:
    app = app_without_bundling()
    stack = cdk.Stack(app, "WrongView")
    table = dynamodb.Table(
        stack, "T", partition_key=dynamodb.Attribute(name="k", type=dynamodb.AttributeType.STRING), stream=view_type
    )
    with pytest.raises(ValueError, match=f"stream view type is {view_type.value}.*NEW_IMAGE or NEW_AND_OLD_IMAGES"):
        FanOutConsumer(
            stack,
            "F",
            task_events_table=table,
            encryption_key=kms.Key(stack, "K"),
            task_table=table,
            email_sender="agent@example.com",
        )


@pytest.mark.parametrize("view_type", [dynamodb.StreamViewType.NEW_IMAGE, dynamodb.StreamViewType.NEW_AND_OLD_IMAGES])
def test_accepts_streams_with_the_new_image(view_type: dynamodb.StreamViewType) -> None:
    app = app_without_bundling()
    stack = cdk.Stack(app, "RightView")
    table = dynamodb.Table(
        stack, "T", partition_key=dynamodb.Attribute(name="k", type=dynamodb.AttributeType.STRING), stream=view_type
    )
    FanOutConsumer(
        stack, "F", task_events_table=table, encryption_key=kms.Key(stack, "K"), task_table=table, email_sender="a@b.co"
    )


def test_an_imported_stream_of_unknown_view_type_is_accepted() -> None:
    # The view type of a table imported by ARN is not known at synth: nothing to check.
    app = app_without_bundling()
    stack = cdk.Stack(app, "Imported", env=cdk.Environment(account="123456789012", region="us-east-1"))
    events = dynamodb.Table.from_table_attributes(
        stack,
        "Events",
        table_name="events",
        table_stream_arn="arn:aws:dynamodb:us-east-1:123456789012:table/events/stream/2026-01-01T00:00:00.000",
    )
    tasks = dynamodb.Table(
        stack, "Tasks", partition_key=dynamodb.Attribute(name="k", type=dynamodb.AttributeType.STRING)
    )
    FanOutConsumer(
        stack,
        "F",
        task_events_table=events,
        encryption_key=kms.Key(stack, "K"),
        task_table=tasks,
        email_sender="a@b.co",
    )


def _keyed_template(**props: Any) -> tuple[Template, dict[str, str]]:
    """Tables and prefixed secrets encrypted with their own keys (not the subsystem key)."""
    app = app_without_bundling()
    stack = cdk.Stack(app, "Keyed", env=cdk.Environment(account="123456789012", region="us-east-1"))
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    keys = {name: kms.Key(stack, name, enable_key_rotation=True) for name in ("EventsKey", "TasksKey", "ReposKey")}
    secrets_key = kms.Key.from_key_arn(stack, "SecretsKey", SECRETS_KEY_ARN)

    def table(name: str, key_name: str, **extra: Any) -> dynamodb.Table:
        return dynamodb.Table(
            stack,
            name,
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=keys[key_name],
            **extra,
        )

    FanOutConsumer(
        stack,
        "FanOut",
        task_events_table=table("Events", "EventsKey", stream=dynamodb.StreamViewType.NEW_IMAGE),
        task_table=table("Tasks", "TasksKey"),
        repo_table=table("Repos", "ReposKey"),
        github_token_secret=secretsmanager.Secret.from_secret_complete_arn(stack, "Gh", GITHUB_SECRET_ARN),
        github_repo_secret_prefix="bgagent/github/",
        slack_secret_prefix="bgagent/slack/",
        secrets_encryption_keys=[secrets_key],
        encryption_key=key,
        **props,
    )
    logical = {name: stack.get_logical_id(k.node.default_child) for name, k in keys.items()}  # type: ignore[arg-type]
    return Template.from_stack(stack), logical


SECRETS_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/99999999-8888-7777-6666-555555555555"


def _key_statements(template: Template, resource: Any) -> list[dict[str, Any]]:
    return [s for s in _statements(template) if s["Resource"] == resource]


def test_customer_managed_keys_are_granted_each_only_through_its_service() -> None:
    template, logical = _keyed_template()
    tasks = _key_statements(template, {"Fn::GetAtt": [logical["TasksKey"], "Arn"]})
    assert [(set(s["Action"]), s["Condition"]) for s in tasks] == [
        (
            {"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"},
            {"StringEquals": {"kms:ViaService": "dynamodb.us-east-1.amazonaws.com"}},
        )
    ]
    repos = _key_statements(template, {"Fn::GetAtt": [logical["ReposKey"], "Arn"]})
    assert [(set(s["Action"]), s["Condition"]) for s in repos] == [
        ({"kms:Decrypt", "kms:DescribeKey"}, {"StringEquals": {"kms:ViaService": "dynamodb.us-east-1.amazonaws.com"}})
    ]
    secrets = _key_statements(template, SECRETS_KEY_ARN)
    assert [(s["Action"], s["Condition"]) for s in secrets] == [
        ("kms:Decrypt", {"StringEquals": {"kms:ViaService": "secretsmanager.us-east-1.amazonaws.com"}})
    ]
    # The stream's records are decrypted with the events table's key (the event source's grant).
    events = _key_statements(template, {"Fn::GetAtt": [logical["EventsKey"], "Arn"]})
    assert any("kms:Decrypt" in json.dumps(s["Action"]) for s in events)


def test_api_base_urls_reach_the_handler_only_when_given() -> None:
    template = _template(
        task_table=True,
        github=True,
        slack_secret_prefix="bgagent/slack/",
        github_api_url="https://github.example.com/api/v3/",
        slack_api_url="https://slack-gov.com/api",
    )
    (function,) = template.find_resources("AWS::Lambda::Function").values()
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables["GITHUB_API_URL"] == "https://github.example.com/api/v3"
    assert variables["SLACK_API_URL"] == "https://slack-gov.com/api/"
    (default,) = _template(task_table=True, github=True).find_resources("AWS::Lambda::Function").values()
    assert not {"GITHUB_API_URL", "SLACK_API_URL"} & set(default["Properties"]["Environment"]["Variables"])


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"github": True, "github_api_url": "http://github.example.com/api/v3"}, "github_api_url must be an https://"),
        (
            {"email_sender": "a@example.com", "github_api_url": "https://ghe.example.com/api/v3"},
            "give github_token_secret",
        ),
        (
            {"email_sender": "a@example.com", "slack_api_url": "https://slack.example.com/api/"},
            "give slack_secret_prefix",
        ),
        ({"slack_secret_prefix": "s/", "slack_api_url": "https://slack.example.com/api/?x=1"}, "without query"),
    ],
)
def test_base_urls_are_validated_at_synth(props: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="FanOutConsumer: ") as raised:
        _template(task_table=True, **props)
    assert message in str(raised.value)


def test_secrets_keys_without_prefixed_secrets_are_refused() -> None:
    app = app_without_bundling()
    stack = cdk.Stack(app, "T", env=cdk.Environment(account="123456789012", region="us-east-1"))
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    table = dynamodb.Table(
        stack,
        "Events",
        partition_key=dynamodb.Attribute(name="task_id", type=dynamodb.AttributeType.STRING),
        stream=dynamodb.StreamViewType.NEW_IMAGE,
    )
    tasks = dynamodb.Table(
        stack, "Tasks", partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING)
    )
    with pytest.raises(ValueError, match="secrets_encryption_keys are the keys of prefixed secrets"):
        FanOutConsumer(
            stack,
            "FanOut",
            task_events_table=table,
            task_table=tasks,
            email_sender="a@example.com",
            secrets_encryption_keys=[key],
            encryption_key=key,
        )
