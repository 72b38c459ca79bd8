"""ExecutionEngine at synth level: storage, the four functions and their IAM, the watchdog, the API, alarms."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Template

from handlers.execution_engine import schema
from handlers.execution_engine.settings import SERVICE
from infra.constructs.execution_engine import WATCHDOG_MARGIN, ExecutionEngine
from tests.infra.synth import app_without_bundling

ENV = cdk.Environment(account="123456789012", region="eu-west-1")
PARAMETER_PREFIXES = ("/app/credentials/", "/shared/tokens/")
SECRET_PREFIXES = ("app/credentials/",)
CODE_BUCKET = "arn:aws:s3:::acme-order-code"
EVERY_OPTION: dict[str, Any] = {
    "credential_parameter_prefixes": PARAMETER_PREFIXES,
    "credential_secret_prefixes": SECRET_PREFIXES,
    "code_bucket_arns": (CODE_BUCKET,),
}
SSM_ARN = "arn:<AWS::Partition>:ssm:eu-west-1:123456789012:parameter/"
VIA = "{}.eu-west-1.amazonaws.com"


class Built:
    def __init__(self, **props: Any) -> None:
        self.stack = cdk.Stack(app_without_bundling(), "Test", env=ENV)
        self.key = kms.Key(self.stack, "Key", enable_key_rotation=True)
        if props.pop("topic", False):
            props["alarm_topic"] = sns.Topic(self.stack, "Alarms")
        self.engine = ExecutionEngine(self.stack, "Engine", encryption_key=self.key, **props)
        self.caller = iam.Role(self.stack, "CallerRole", assumed_by=iam.AccountRootPrincipal())
        self.engine.grant_submit(self.caller)
        self.engine.grant_read_runs(self.caller)
        self.template = Template.from_stack(self.stack)
        self.resources: dict[str, Any] = self.template.to_json()["Resources"]

    def logical_id(self, construct: Any) -> str:
        return self.stack.get_logical_id(construct.node.default_child)

    def arn(self, construct: Any, attribute: str = "Arn") -> str:
        return f"<{self.logical_id(construct)}.{attribute}>"

    @property
    def internal(self) -> str:
        return f"arn:<AWS::Partition>:s3:::{self.engine.internal_bucket_name}"

    def function_properties(self, name: str) -> dict[str, Any]:
        return dict(self.resources[self.logical_id(self.engine.functions[name].function)]["Properties"])

    def statements(self, role: iam.IRole) -> list[dict[str, Any]]:
        role_id = self.logical_id(role)
        return [
            statement
            for policy in self.template.find_resources("AWS::IAM::Policy").values()
            if {"Ref": role_id} in policy["Properties"]["Roles"]
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        ]

    def grants(self, role: iam.IRole) -> set[tuple[str, str, str]]:
        """(action, resource, condition) of every Allow statement of the role, tokens rendered."""
        found = set()
        for statement in self.statements(role):
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            condition = json.dumps(statement.get("Condition", {}), sort_keys=True)
            found |= {(action, _text(resource), condition) for action in actions for resource in resources}
        return found

    def business_grants(self, name: str) -> set[tuple[str, str, str]]:
        """A function's grants without its log writing and X-Ray (checked on their own)."""
        function = self.engine.functions[name]
        grants = self.grants(function.role)
        log_group = self.arn(function.log_group)
        assert {(a, r) for a, r, _ in grants if a.startswith("logs:")} == {
            ("logs:CreateLogStream", log_group),
            ("logs:PutLogEvents", log_group),
        }
        assert {(a, r) for a, r, _ in grants if a.startswith("xray:")} == {
            ("xray:PutTraceSegments", "*"),
            ("xray:PutTelemetryRecords", "*"),
        }
        return {grant for grant in grants if not grant[0].startswith(("logs:", "xray:"))}


def _text(value: Any) -> str:
    """An intrinsic rendered as text: ``<Logical.Attribute>``, ``<Ref>``, joins concatenated."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return f"<{value['Fn::GetAtt'][0]}.{value['Fn::GetAtt'][1]}>"
    if "Fn::Join" in value:
        delimiter, parts = value["Fn::Join"]
        return str(delimiter).join(_text(part) for part in parts)
    raise AssertionError(value)


def _via(*services: str) -> str:
    return json.dumps({"StringEquals": {"kms:ViaService": [VIA.format(s) for s in services]}}, sort_keys=True)


NO_CONDITION = json.dumps({})


@pytest.fixture(scope="module")
def full() -> Built:
    return Built(topic=True, **EVERY_OPTION)


@pytest.fixture(scope="module")
def minimal() -> Built:
    return Built()


# --- storage ---------------------------------------------------------------------------------


def test_tables_come_from_the_schema_encrypted_with_pitr(full: Built) -> None:
    full.template.resource_count_is("AWS::DynamoDB::Table", len(schema.ALL_TABLES))
    key = {"Fn::GetAtt": [full.logical_id(full.key), "Arn"]}
    for table_schema, table in (
        (schema.ORDERS, full.engine.orders_table),
        (schema.ORDER_EVENTS, full.engine.order_events_table),
        (schema.LOCKS, full.engine.locks_table),
    ):
        properties = full.resources[full.logical_id(table)]["Properties"]
        keys = [{"AttributeName": table_schema.partition_key.name, "KeyType": "HASH"}]
        if table_schema.sort_key:
            keys.append({"AttributeName": table_schema.sort_key.name, "KeyType": "RANGE"})
        assert properties["KeySchema"] == keys
        assert properties["TimeToLiveSpecification"] == {"AttributeName": schema.TTL_ATTRIBUTE, "Enabled": True}
        assert properties["SSESpecification"] == {"KMSMasterKeyId": key, "SSEEnabled": True, "SSEType": "KMS"}
        assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert properties["BillingMode"] == "PAY_PER_REQUEST"
        indexes = {
            index["IndexName"]: [k["AttributeName"] for k in index["KeySchema"]]
            for index in properties.get("GlobalSecondaryIndexes", [])
        }
        assert indexes == {
            index.name: [index.partition_key.name] + ([index.sort_key.name] if index.sort_key else [])
            for index in table_schema.indexes
        }
    assert full.engine.tables == {
        "orders": full.engine.orders_table,
        "order_events": full.engine.order_events_table,
        "locks": full.engine.locks_table,
    }


def test_both_buckets_are_encrypted_tls_only_private_and_expire_after_a_day(full: Built) -> None:
    full.template.resource_count_is("AWS::S3::Bucket", 4)  # internal, done and their access-log buckets
    key = {"Fn::GetAtt": [full.logical_id(full.key), "Arn"]}
    for bucket in (full.engine.internal_bucket, full.engine.done_bucket):
        properties = full.resources[full.logical_id(bucket)]["Properties"]
        (encryption,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert encryption["ServerSideEncryptionByDefault"] == {"KMSMasterKeyID": key, "SSEAlgorithm": "aws:kms"}
        assert properties["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        (rule,) = properties["LifecycleConfiguration"]["Rules"]
        assert rule["ExpirationInDays"] == 1 and rule["Status"] == "Enabled"
        assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
        assert "LoggingConfiguration" in properties
        policies = [
            p["Properties"]["PolicyDocument"]["Statement"]
            for p in full.template.find_resources("AWS::S3::BucketPolicy").values()
            if p["Properties"]["Bucket"] == {"Ref": full.logical_id(bucket)}
        ]
        (statements,) = policies
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements
        )
    # Results are written once: the internal bucket refuses a result.json PUT without If-None-Match.
    (internal_policy,) = [
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in full.template.find_resources("AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": full.logical_id(full.engine.internal_bucket)}
    ]
    (first_wins,) = [s for s in internal_policy if s.get("Sid") == "FirstResultWins"]
    assert first_wins["Effect"] == "Deny" and first_wins["Principal"] == {"AWS": "*"}
    assert first_wins["Action"] == "s3:PutObject"
    assert _text(first_wins["Resource"]) == f"{full.arn(full.engine.internal_bucket)}/tmp/callbacks/runs/*"
    assert first_wins["Condition"] == {"Null": {"s3:if-none-match": "true"}}
    # The internal bucket has a fixed name (its notification and grants name it before it exists).
    internal = full.resources[full.logical_id(full.engine.internal_bucket)]["Properties"]
    assert internal["BucketName"] == full.engine.internal_bucket_name
    assert full.engine.internal_bucket_name.endswith("-internal-123456789012-eu-west-1")
    assert len(full.engine.internal_bucket_name) <= 63


def test_result_callbacks_notify_the_orchestrator_directly(full: Built) -> None:
    bucket = full.resources[full.logical_id(full.engine.internal_bucket)]
    (configuration,) = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    assert configuration["Event"] == "s3:ObjectCreated:*"
    assert configuration["Filter"]["S3Key"]["Rules"] == [
        {"Name": "prefix", "Value": "tmp/callbacks/runs/"},
        {"Name": "suffix", "Value": "result.json"},
    ]
    orchestrator = full.logical_id(full.engine.orchestrator_function.function)
    assert configuration["Function"] == {"Fn::GetAtt": [orchestrator, "Arn"]}
    # S3 may invoke the orchestrator for this bucket of this account only, and the permission exists first.
    (permission_id,) = [
        lid
        for lid, r in full.resources.items()
        if r["Type"] == "AWS::Lambda::Permission" and r["Properties"]["Principal"] == "s3.amazonaws.com"
    ]
    permission = full.resources[permission_id]["Properties"]
    assert permission["FunctionName"] == {"Fn::GetAtt": [orchestrator, "Arn"]}
    assert permission["SourceAccount"] == "123456789012"
    assert _text(permission["SourceArn"]) == full.internal
    assert permission_id in bucket["DependsOn"]
    assert not full.template.find_resources("Custom::S3BucketNotifications")
    done = full.resources[full.logical_id(full.engine.done_bucket)]["Properties"]
    assert "NotificationConfiguration" not in done


# --- functions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "handler", "memory", "timeout", "concurrency"),
    [
        ("init", schema.INIT_HANDLER, 1024, 30, 10),
        ("orchestrator", schema.ORCHESTRATOR_HANDLER, 1024, 300, 10),
        ("watchdog_check", schema.WATCHDOG_CHECK_HANDLER, 256, 30, 20),
        ("worker", schema.WORKER_HANDLER, 2048, 900, 20),
    ],
)
def test_each_function_states_its_settings(
    full: Built, name: str, handler: str, memory: int, timeout: int, concurrency: int
) -> None:
    properties = full.function_properties(name)
    assert properties["Handler"] == handler
    assert properties["Architectures"] == ["arm64"]
    assert properties["Runtime"] == "python3.14"
    assert (properties["MemorySize"], properties["Timeout"]) == (memory, timeout)
    assert properties["ReservedConcurrentExecutions"] == concurrency
    assert properties["TracingConfig"] == {"Mode": "Active"}
    assert properties["KmsKeyArn"] == {"Fn::GetAtt": [full.logical_id(full.key), "Arn"]}
    log_group = full.resources[full.logical_id(full.engine.functions[name].log_group)]["Properties"]
    assert log_group["RetentionInDays"] == 365 and "KmsKeyId" in log_group
    assert properties["LoggingConfig"]["LogGroup"] == {"Ref": full.logical_id(full.engine.functions[name].log_group)}


def _environment(built: Built, name: str) -> dict[str, str]:
    variables = dict(built.function_properties(name)["Environment"]["Variables"])
    assert variables.pop("POWERTOOLS_SERVICE_NAME") == SERVICE
    # The stuck-orders alarms read this namespace (Powertools takes it from the variable).
    assert variables.pop("POWERTOOLS_METRICS_NAMESPACE") == schema.METRICS_NAMESPACE
    return {name: _text(value) for name, value in variables.items()}


def test_each_function_gets_exactly_the_variables_it_reads(full: Built, minimal: Built) -> None:
    engine = full.engine
    tables = {
        schema.ENV_ORDERS_TABLE: f"<{full.logical_id(engine.orders_table)}>",
        schema.ENV_ORDER_EVENTS_TABLE: f"<{full.logical_id(engine.order_events_table)}>",
    }
    common = {
        schema.ENV_INTERNAL_BUCKET: engine.internal_bucket_name,
        schema.ENV_DONE_BUCKET: f"<{full.logical_id(engine.done_bucket)}>",
        schema.ENV_SOPS_KEY_PARAMETER_PREFIX: "/execution-engine/sops-keys/",
    }
    init = {**tables, **common, schema.ENV_SOPS_KEY_KMS_KEY_ID: full.arn(full.key)}
    assert _environment(full, "init") == {
        **init,
        schema.ENV_CREDENTIAL_PARAMETER_PREFIXES: "/app/credentials/,/shared/tokens/",
        schema.ENV_CREDENTIAL_SECRET_PREFIXES: "app/credentials/",
    }
    assert _environment(full, "orchestrator") == {
        **tables,
        **common,
        schema.ENV_LOCKS_TABLE: f"<{full.logical_id(engine.locks_table)}>",
        schema.ENV_WORKER_FUNCTION: full.arn(engine.worker_function.function),
        schema.ENV_WATCHDOG_STATE_MACHINE_ARN: f"<{full.logical_id(engine.watchdog)}>",
    }
    assert _environment(full, "watchdog_check") == {schema.ENV_INTERNAL_BUCKET: engine.internal_bucket_name}
    # The worker's event names its bundle and key parameter: it reads no ExecutionEngine variable.
    assert _environment(full, "worker") == {}
    # Without the credential prefixes, init has neither variable (and, below, neither grant).
    minimal_init = _environment(minimal, "init")
    assert schema.ENV_CREDENTIAL_PARAMETER_PREFIXES not in minimal_init
    assert schema.ENV_CREDENTIAL_SECRET_PREFIXES not in minimal_init
    assert set(minimal_init) == set(init)


def test_init_may_do_only_its_part(full: Built) -> None:
    engine = full.engine
    assert full.business_grants("init") == {
        ("dynamodb:PutItem", full.arn(engine.orders_table), NO_CONDITION),
        ("dynamodb:BatchWriteItem", full.arn(engine.orders_table), NO_CONDITION),
        ("dynamodb:PutItem", full.arn(engine.order_events_table), NO_CONDITION),
        ("s3:PutObject", f"{full.internal}/tmp/exec/*", NO_CONDITION),
        ("s3:PutObject", f"{full.internal}/tmp/callbacks/runs/*", NO_CONDITION),
        ("ssm:PutParameter", f"{SSM_ARN}execution-engine/sops-keys/*", NO_CONDITION),
        ("ssm:AddTagsToResource", f"{SSM_ARN}execution-engine/sops-keys/*", NO_CONDITION),
        ("kms:Encrypt", full.arn(full.key), _via("ssm")),
        ("kms:GenerateDataKey", full.arn(full.key), _via("ssm")),
        ("kms:Decrypt", full.arn(full.key), _via("dynamodb", "s3")),
        ("kms:GenerateDataKey", full.arn(full.key), _via("dynamodb", "s3")),
        ("ssm:GetParameter", f"{SSM_ARN}app/credentials/*", NO_CONDITION),
        ("ssm:GetParameter", f"{SSM_ARN}shared/tokens/*", NO_CONDITION),
        (
            "secretsmanager:GetSecretValue",
            "arn:<AWS::Partition>:secretsmanager:eu-west-1:123456789012:secret:app/credentials/*",
            NO_CONDITION,
        ),
        ("s3:GetObject", f"{CODE_BUCKET}/*", NO_CONDITION),
    }


def test_init_reads_credentials_and_code_only_when_their_props_are_given(minimal: Built) -> None:
    grants = minimal.business_grants("init")
    actions = {action for action, _, _ in grants}
    assert "ssm:GetParameter" not in actions
    assert "secretsmanager:GetSecretValue" not in actions
    assert "s3:GetObject" not in actions
    assert ("s3:PutObject", f"{minimal.internal}/tmp/exec/*", NO_CONDITION) in grants


def test_orchestrator_may_do_only_its_part(full: Built) -> None:
    engine = full.engine
    executions = (
        f"arn:<AWS::Partition>:states:eu-west-1:123456789012:execution:<{full.logical_id(engine.watchdog)}.Name>:*"
    )
    assert full.business_grants("orchestrator") == {
        ("dynamodb:GetItem", full.arn(engine.orders_table), NO_CONDITION),
        ("dynamodb:BatchGetItem", full.arn(engine.orders_table), NO_CONDITION),
        ("dynamodb:UpdateItem", full.arn(engine.orders_table), NO_CONDITION),
        ("dynamodb:PutItem", full.arn(engine.order_events_table), NO_CONDITION),
        ("dynamodb:GetItem", full.arn(engine.locks_table), NO_CONDITION),
        ("dynamodb:PutItem", full.arn(engine.locks_table), NO_CONDITION),
        ("dynamodb:UpdateItem", full.arn(engine.locks_table), NO_CONDITION),
        ("dynamodb:DeleteItem", full.arn(engine.locks_table), NO_CONDITION),
        ("s3:GetObject", f"{full.internal}/tmp/callbacks/runs/*", NO_CONDITION),
        ("s3:PutObject", f"{full.internal}/tmp/callbacks/runs/*", NO_CONDITION),
        ("s3:ListBucket", full.internal, NO_CONDITION),  # a missing result.json answers 404
        ("s3:PutObject", f"{full.arn(engine.done_bucket)}/*", NO_CONDITION),
        ("lambda:InvokeFunction", full.arn(engine.worker_function.function), NO_CONDITION),
        ("states:StartExecution", f"<{full.logical_id(engine.watchdog)}>", NO_CONDITION),
        ("states:DescribeExecution", executions, NO_CONDITION),
        ("ssm:DeleteParameter", f"{SSM_ARN}execution-engine/sops-keys/*", NO_CONDITION),
        ("ssm:DeleteParameters", f"{SSM_ARN}execution-engine/sops-keys/*", NO_CONDITION),
        ("kms:Decrypt", full.arn(full.key), _via("dynamodb", "s3")),
        ("kms:GenerateDataKey", full.arn(full.key), _via("dynamodb", "s3")),
        # Lambda's delivery of a failed invocation to the on-failure queue.
        ("sqs:SendMessage", full.arn(engine.orchestrator_dlq.queue), NO_CONDITION),
        ("kms:Decrypt", full.arn(full.key), _via("sqs")),
        ("kms:GenerateDataKey", full.arn(full.key), _via("sqs")),
    }


def test_watchdog_check_may_only_read_and_write_results(full: Built) -> None:
    assert full.business_grants("watchdog_check") == {
        ("s3:GetObject", f"{full.internal}/tmp/callbacks/runs/*", NO_CONDITION),
        ("s3:PutObject", f"{full.internal}/tmp/callbacks/runs/*", NO_CONDITION),
        ("s3:ListBucket", full.internal, NO_CONDITION),  # HeadObject of a missing result answers 404
        ("kms:Decrypt", full.arn(full.key), _via("s3")),
        ("kms:GenerateDataKey", full.arn(full.key), _via("s3")),
    }


def test_worker_may_only_read_its_bundle_and_key(full: Built) -> None:
    assert full.business_grants("worker") == {
        ("s3:GetObject", f"{full.internal}/tmp/exec/*", NO_CONDITION),
        ("ssm:GetParameter", f"{SSM_ARN}execution-engine/sops-keys/*", NO_CONDITION),
        ("kms:Decrypt", full.arn(full.key), _via("ssm", "s3")),
        ("sqs:SendMessage", full.arn(full.engine.worker_dlq.queue), NO_CONDITION),
        ("kms:Decrypt", full.arn(full.key), _via("sqs")),
        ("kms:GenerateDataKey", full.arn(full.key), _via("sqs")),
    }


@pytest.mark.parametrize("built", ["full", "minimal"])
def test_the_worker_has_no_dynamodb_rights_at_all(built: str, request: pytest.FixtureRequest) -> None:
    construct: Built = request.getfixturevalue(built)
    worker = construct.engine.worker_function
    actions = {action for action, _, _ in construct.grants(worker.role)}
    assert actions and not [action for action in actions if action.lower().startswith("dynamodb:")]
    role = construct.resources[construct.logical_id(worker.role)]["Properties"]
    assert "ManagedPolicyArns" not in role and "Policies" not in role
    # Nothing else names a table for the worker's role either.
    rendered = json.dumps(construct.statements(worker.role))
    for table in construct.engine.tables.values():
        assert construct.logical_id(table) not in rendered


def test_no_role_allows_a_wildcard_action(full: Built) -> None:
    for policy in full.template.find_resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert not [a for a in actions if a == "*" or a.endswith(":*") or "*" in a.split(":")[1]], statement


# --- asynchronous invocations ----------------------------------------------------------------


def _invoke_config(built: Built, name: str) -> dict[str, Any]:
    function_id = built.logical_id(built.engine.functions[name].function)
    (config,) = [
        r["Properties"]
        for r in built.template.find_resources("AWS::Lambda::EventInvokeConfig").values()
        if r["Properties"]["FunctionName"] == {"Ref": function_id}
    ]
    return dict(config)


def test_async_invocations_retry_the_orchestrator_twice_and_never_the_worker(full: Built) -> None:
    full.template.resource_count_is("AWS::Lambda::EventInvokeConfig", 2)
    orchestrator = _invoke_config(full, "orchestrator")
    assert orchestrator["MaximumRetryAttempts"] == 2
    assert orchestrator["MaximumEventAgeInSeconds"] == 6 * 3600
    assert orchestrator["DestinationConfig"] == {
        "OnFailure": {"Destination": {"Fn::GetAtt": [full.logical_id(full.engine.orchestrator_dlq.queue), "Arn"]}}
    }
    worker = _invoke_config(full, "worker")
    assert worker["MaximumRetryAttempts"] == 0
    assert worker["MaximumEventAgeInSeconds"] == 3600
    assert worker["DestinationConfig"] == {
        "OnFailure": {"Destination": {"Fn::GetAtt": [full.logical_id(full.engine.worker_dlq.queue), "Arn"]}}
    }
    for dlq in (full.engine.orchestrator_dlq, full.engine.worker_dlq):
        queue = full.resources[full.logical_id(dlq.queue)]["Properties"]
        assert queue["KmsMasterKeyId"] == {"Fn::GetAtt": [full.logical_id(full.key), "Arn"]}


def test_event_ages_are_props() -> None:
    built = Built(orchestrator_max_event_age=cdk.Duration.hours(2), worker_max_event_age=cdk.Duration.minutes(20))
    assert _invoke_config(built, "orchestrator")["MaximumEventAgeInSeconds"] == 7200
    assert _invoke_config(built, "worker")["MaximumEventAgeInSeconds"] == 1200


# --- watchdog --------------------------------------------------------------------------------


def _definition(built: Built) -> dict[str, Any]:
    machine = built.resources[built.logical_id(built.engine.watchdog)]["Properties"]
    return dict(json.loads(_text(machine["DefinitionString"])))


def test_the_watchdog_loops_check_choice_wait(full: Built) -> None:
    definition = _definition(full)
    check_function = full.arn(full.engine.watchdog_check_function.function)
    assert definition["StartAt"] == "CheckResult"
    states = definition["States"]
    assert set(states) == {"CheckResult", "IsDone", "Wait", "Done"}
    check = states["CheckResult"]
    assert check["Type"] == "Task" and check["Resource"] == "arn:<AWS::Partition>:states:::lambda:invoke"
    assert check["Parameters"] == {"FunctionName": check_function, "Payload.$": "$"}
    assert check["OutputPath"] == "$.Payload"
    assert check["Next"] == "IsDone"
    (retry,) = check["Retry"]
    assert set(retry["ErrorEquals"]) == {
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "Lambda.TooManyRequestsException",
    }
    assert "Catch" not in check
    assert states["IsDone"] == {
        "Type": "Choice",
        "Choices": [{"Variable": "$.done", "BooleanEquals": True, "Next": "Done"}],
        "Default": "Wait",
    }
    assert states["Wait"] == {"Type": "Wait", "SecondsPath": "$.wait_seconds", "Next": "CheckResult"}
    assert states["Done"] == {"Type": "Succeed"}
    # 2 x the longest order timeout (1 h) + the margin.
    assert definition["TimeoutSeconds"] == 2 * 3600 + WATCHDOG_MARGIN.to_seconds()


def test_the_watchdog_is_standard_logged_and_traced(full: Built) -> None:
    machine = full.resources[full.logical_id(full.engine.watchdog)]["Properties"]
    assert machine["StateMachineType"] == "STANDARD"
    assert machine["TracingConfiguration"] == {"Enabled": True}
    logging = machine["LoggingConfiguration"]
    assert logging["Level"] == "ALL" and logging["IncludeExecutionData"] is True
    assert logging["Destinations"] == [
        {
            "CloudWatchLogsLogGroup": {
                "LogGroupArn": {"Fn::GetAtt": [full.logical_id(full.engine.watchdog_log_group), "Arn"]}
            }
        }
    ]
    log_group = full.resources[full.logical_id(full.engine.watchdog_log_group)]["Properties"]
    assert log_group["KmsKeyId"] == {"Fn::GetAtt": [full.logical_id(full.key), "Arn"]}
    # Its role may invoke the check function (and its versions) and nothing else of ours.
    invokes = {r for a, r, _ in full.grants(full.engine.watchdog.role) if a == "lambda:InvokeFunction"}
    check = full.arn(full.engine.watchdog_check_function.function)
    assert invokes == {check, f"{check}:*"}


def test_the_watchdog_bound_follows_the_longest_order_timeout() -> None:
    built = Built(max_order_timeout=cdk.Duration.hours(3))
    assert _definition(built)["TimeoutSeconds"] == 6 * 3600 + WATCHDOG_MARGIN.to_seconds()
    assert built.engine.watchdog_timeout.to_seconds() == 6 * 3600 + WATCHDOG_MARGIN.to_seconds()


# --- API -------------------------------------------------------------------------------------


def test_post_init_is_the_one_route_and_needs_iam(full: Built) -> None:
    full.template.resource_count_is("AWS::ApiGatewayV2::Api", 1)
    full.template.has_resource_properties("AWS::ApiGatewayV2::Api", {"ProtocolType": "HTTP"})
    (route,) = full.template.find_resources("AWS::ApiGatewayV2::Route").values()
    assert route["Properties"]["RouteKey"] == "POST /init"
    assert route["Properties"]["AuthorizationType"] == "AWS_IAM"
    (integration,) = full.template.find_resources("AWS::ApiGatewayV2::Integration").values()
    assert integration["Properties"]["IntegrationType"] == "AWS_PROXY"
    assert integration["Properties"]["IntegrationUri"] == {
        "Fn::GetAtt": [full.logical_id(full.engine.init_function.function), "Arn"]
    }
    full.template.has_resource_properties(
        "AWS::Lambda::Permission",
        {
            "Principal": "apigateway.amazonaws.com",
            "FunctionName": {"Fn::GetAtt": [full.logical_id(full.engine.init_function.function), "Arn"]},
        },
    )


def test_the_stage_is_throttled_and_access_logged_as_json(full: Built) -> None:
    (stage,) = full.template.find_resources("AWS::ApiGatewayV2::Stage").values()
    properties = stage["Properties"]
    assert properties["StageName"] == "$default" and properties["AutoDeploy"] is True
    assert properties["DefaultRouteSettings"] == {"ThrottlingBurstLimit": 20, "ThrottlingRateLimit": 10}
    settings = properties["AccessLogSettings"]
    assert settings["DestinationArn"] == {"Fn::GetAtt": [full.logical_id(full.engine.api_log_group), "Arn"]}
    fields = json.loads(settings["Format"])
    assert fields["requestId"] == "$context.requestId" and fields["userArn"] == "$context.identity.userArn"
    log_group = full.resources[full.logical_id(full.engine.api_log_group)]["Properties"]
    assert log_group["KmsKeyId"] == {"Fn::GetAtt": [full.logical_id(full.key), "Arn"]}
    assert _text(full.stack.resolve(full.engine.init_url)).endswith("/init")


def test_throttling_is_a_prop() -> None:
    built = Built(api_rate_limit=2, api_burst_limit=5)
    built.template.has_resource_properties(
        "AWS::ApiGatewayV2::Stage", {"DefaultRouteSettings": {"ThrottlingBurstLimit": 5, "ThrottlingRateLimit": 2}}
    )


def test_callers_can_be_granted_submit_and_read(full: Built) -> None:
    api = full.logical_id(full.engine.api)
    grants = full.grants(full.caller)
    assert grants == {
        (
            "execute-api:Invoke",
            f"arn:<AWS::Partition>:execute-api:eu-west-1:123456789012:<{api}>/$default/POST/init",
            NO_CONDITION,
        ),
        ("dynamodb:Query", f"{full.arn(full.engine.orders_table)}/index/{schema.ORDERS_INDEX}", NO_CONDITION),
        ("kms:Decrypt", full.arn(full.key), _via("dynamodb")),
    }


# --- alarms ----------------------------------------------------------------------------------


def _alarms(built: Built) -> list[dict[str, Any]]:
    return [a["Properties"] for a in built.template.find_resources("AWS::CloudWatch::Alarm").values()]


def test_alarms_cover_functions_dlqs_stuck_orders_and_the_watchdog(full: Built) -> None:
    alarms = _alarms(full)
    names = sorted(a["MetricName"] for a in alarms)
    assert names.count("Errors") == 4
    assert names.count("ApproximateNumberOfMessagesVisible") == 2  # orchestrator and worker DLQs
    assert {"ExecutionsFailed", "ExecutionsTimedOut"} <= set(names)
    assert len(alarms) == 10
    topic = {"Ref": full.logical_id(full.stack.node.find_child("Alarms"))}
    assert all(a["AlarmActions"] == [topic] and a["OKActions"] == [topic] for a in alarms)
    errors = {_text(d["Value"]) for a in alarms if a["MetricName"] == "Errors" for d in a["Dimensions"]}
    assert errors == {f"<{full.logical_id(f.function)}>" for f in full.engine.functions.values()}
    for metric_name in (schema.METRIC_HARD_CAP_REACHED, schema.METRIC_ORDERS_TIMED_OUT):
        (stuck,) = [a for a in alarms if a["MetricName"] == metric_name]
        assert stuck["Namespace"] == schema.METRICS_NAMESPACE
        assert stuck["Dimensions"] == [{"Name": "service", "Value": SERVICE}]
        assert (stuck["Threshold"], stuck["ComparisonOperator"]) == (0, "GreaterThanThreshold")
        assert stuck["Statistic"] == "Sum" and stuck["TreatMissingData"] == "notBreaching"
    for metric_name in ("ExecutionsFailed", "ExecutionsTimedOut"):
        (watchdog,) = [a for a in alarms if a["MetricName"] == metric_name]
        assert watchdog["Namespace"] == "AWS/States"
        assert watchdog["Dimensions"] == [
            {"Name": "StateMachineArn", "Value": {"Ref": full.logical_id(full.engine.watchdog)}}
        ]
    queues = {_text(d["Value"]) for a in alarms if a["Namespace"] == "AWS/SQS" for d in a["Dimensions"]}
    assert queues == {
        f"<{full.logical_id(full.engine.orchestrator_dlq.queue)}.QueueName>",
        f"<{full.logical_id(full.engine.worker_dlq.queue)}.QueueName>",
    }


def test_without_a_topic_the_alarms_exist_without_actions(minimal: Built) -> None:
    alarms = _alarms(minimal)
    assert len(alarms) == 10
    assert not [a for a in alarms if a.get("AlarmActions") or a.get("OKActions")]


# --- props -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"credential_parameter_prefixes": ["app/credentials/"]}, "credential_parameter_prefixes entry must be"),
        ({"credential_parameter_prefixes": ["/"]}, "credential_parameter_prefixes entry must be"),
        ({"credential_parameter_prefixes": ["//"]}, "credential_parameter_prefixes entry must be"),
        ({"credential_parameter_prefixes": ["/app/*"]}, "credential_parameter_prefixes entry must be"),
        ({"credential_parameter_prefixes": ["/a/", "/a/"]}, "credential_parameter_prefixes lists an entry twice"),
        ({"credential_secret_prefixes": ["app/*"]}, "credential_secret_prefixes entry must be a secret name prefix"),
        ({"credential_secret_prefixes": [""]}, "credential_secret_prefixes entry must be a secret name prefix"),
        ({"code_bucket_arns": ["my-bucket"]}, "code_bucket_arns entry must be the ARN of an S3 bucket"),
        ({"code_bucket_arns": ["arn:aws:s3:::bucket/prefix"]}, "code_bucket_arns entry must be the ARN"),
        ({"sops_key_parameter_prefix": "/keys"}, "sops_key_parameter_prefix must end with /"),
        ({"sops_key_parameter_prefix": "keys/"}, "sops_key_parameter_prefix must be an SSM parameter name prefix"),
        ({"worker_timeout": cdk.Duration.minutes(16)}, "worker_timeout must be between"),
        ({"orchestrator_timeout": cdk.Duration.minutes(20)}, "orchestrator_timeout must be between"),
        ({"init_timeout": cdk.Duration.seconds(31)}, "init_timeout must be between"),
        ({"max_order_timeout": cdk.Duration.hours(13)}, "max_order_timeout must be between"),
        ({"max_order_timeout": cdk.Duration.seconds(30)}, "max_order_timeout must be between"),
        ({"orchestrator_max_event_age": cdk.Duration.hours(7)}, "orchestrator_max_event_age must be between"),
        ({"worker_max_event_age": cdk.Duration.seconds(30)}, "worker_max_event_age must be between"),
        ({"worker_memory_mib": 64}, "worker_memory_mib must be an integer between 128 and 10240"),
        ({"init_memory_mib": 1024.5}, "init_memory_mib must be an integer between 128 and 10240"),
        ({"orchestrator_reserved_concurrency": 0}, "orchestrator_reserved_concurrency must be an integer between 1"),
        ({"worker_reserved_concurrency": True}, "worker_reserved_concurrency must be an integer between 1"),
        ({"api_rate_limit": 0}, "api_rate_limit must be positive"),
        ({"api_burst_limit": 0}, "api_burst_limit must be a positive integer"),
    ],
)
def test_props_are_validated_with_clear_errors(props: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=r"^ExecutionEngine: ") as raised:
        Built(**props)
    assert message in str(raised.value)


def test_every_invalid_prop_is_named_in_one_error() -> None:
    with pytest.raises(ValueError) as raised:
        Built(worker_memory_mib=1, credential_secret_prefixes=["x*"], init_timeout=cdk.Duration.minutes(1))
    message = str(raised.value)
    assert "worker_memory_mib" in message and "credential_secret_prefixes" in message and "init_timeout" in message


def test_sizes_are_props() -> None:
    built = Built(
        worker_timeout=cdk.Duration.minutes(10),
        worker_memory_mib=4096,
        worker_reserved_concurrency=5,
        orchestrator_reserved_concurrency=3,
        sops_key_parameter_prefix="/ci/keys/",
    )
    worker = built.function_properties("worker")
    assert (worker["Timeout"], worker["MemorySize"], worker["ReservedConcurrentExecutions"]) == (600, 4096, 5)
    assert built.function_properties("orchestrator")["ReservedConcurrentExecutions"] == 3
    assert _environment(built, "init")[schema.ENV_SOPS_KEY_PARAMETER_PREFIX] == "/ci/keys/"
    assert ("ssm:GetParameter", f"{SSM_ARN}ci/keys/*", NO_CONDITION) in built.business_grants("worker")
