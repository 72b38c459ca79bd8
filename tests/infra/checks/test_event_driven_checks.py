"""EventDrivenChecks as CDK runs it: registered on an app, evaluated at synth.

Synthesizing is the slow part, so the stacks are grouped into four apps synthesized once per
module: every rule-breaking stack, every rule-satisfying stack, the breaking stacks with
acknowledgements, and two readers under max_stream_readers=2. Each breaking stack breaks
exactly one rule, which the tests check, so a shared failing synth still proves each rule.
Raw-template tests (no synth) cover the intrinsic-function edge cases.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.checks import EventDrivenChecks
from infra.checks import event_driven_checks as checks
from infra.checks.event_driven_checks import CfnTemplate, evaluate_template

SINGLE_STREAM_READER = "EventDriven-SingleStreamReader"
BATCH_ITEM_FAILURES = "EventDriven-BatchItemFailures"
STREAM_FAILURE_HANDLING = "EventDriven-StreamFailureHandling"
SQS_VISIBILITY = "EventDriven-SqsVisibility"
DLQ_ALARM = "EventDriven-DlqAlarm"
NO_WILDCARD_ACTIONS = "EventDriven-NoWildcardActions"


# --- Building blocks that satisfy every rule unless told otherwise ---------------------------


def function(scope: Construct, id: str, *, timeout_seconds: int = 10) -> lambda_.Function:
    return lambda_.Function(
        scope,
        id,
        runtime=lambda_.Runtime.PYTHON_3_14,
        architecture=lambda_.Architecture.ARM_64,
        handler="index.handler",
        code=lambda_.Code.from_inline("def handler(event, context):\n    return {}\n"),
        timeout=cdk.Duration.seconds(timeout_seconds),
    )


def depth_alarm(queue: sqs.Queue) -> cloudwatch.Alarm:
    return queue.metric_approximate_number_of_messages_visible().create_alarm(
        queue,
        "DepthAlarm",
        threshold=0,
        evaluation_periods=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
    )


def alarmed_queue(scope: Construct, id: str) -> sqs.Queue:
    queue = sqs.Queue(scope, id)
    depth_alarm(queue)
    return queue


def stream_options(dlq: sqs.IQueue) -> dict[str, Any]:
    return {
        "starting_position": lambda_.StartingPosition.TRIM_HORIZON,
        "report_batch_item_failures": True,
        "on_failure": sources.SqsDlq(dlq),
        "retry_attempts": 3,
        "max_record_age": cdk.Duration.hours(1),
        "bisect_batch_on_error": True,
    }


def table_with_stream(scope: Construct, id: str) -> dynamodb.Table:
    return dynamodb.Table(
        scope,
        id,
        partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
        stream=dynamodb.StreamViewType.NEW_IMAGE,
    )


def table_reader(scope: Construct, id: str, table: dynamodb.Table, dlq: sqs.IQueue) -> None:
    function(scope, id).add_event_source(sources.DynamoEventSource(table, **stream_options(dlq)))


def queue_consumer(
    scope: Construct,
    *,
    visibility_seconds: int = 60,
    timeout_seconds: int = 10,
    dlq: sqs.IQueue | None = None,
    report_batch_item_failures: bool = True,
) -> lambda_.Function:
    queue = sqs.Queue(
        scope,
        "Queue",
        visibility_timeout=cdk.Duration.seconds(visibility_seconds),
        dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=3, queue=dlq or alarmed_queue(scope, "Dlq")),
    )
    consumer = function(scope, "Consumer", timeout_seconds=timeout_seconds)
    consumer.add_event_source(sources.SqsEventSource(queue, report_batch_item_failures=report_batch_item_failures))
    return consumer


def role_with_statements(scope: Construct, *statements: iam.PolicyStatement) -> iam.Role:
    return iam.Role(
        scope,
        "Role",
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        inline_policies={"Access": iam.PolicyDocument(statements=list(statements))},
    )


# --- One stack per rule that breaks exactly that rule ----------------------------------------


def breaks_single_stream_reader(stack: cdk.Stack) -> None:
    table = table_with_stream(stack, "Table")
    dlq = alarmed_queue(stack, "Dlq")
    table_reader(stack, "ReaderA", table, dlq)
    table_reader(stack, "ReaderB", table, dlq)


def breaks_batch_item_failures(stack: cdk.Stack) -> None:
    queue_consumer(stack, report_batch_item_failures=False)


def breaks_stream_failure_handling(stack: cdk.Stack) -> None:
    stream = kinesis.Stream(stack, "Stream")
    function(stack, "Consumer").add_event_source(
        sources.KinesisEventSource(
            stream,
            starting_position=lambda_.StartingPosition.LATEST,
            report_batch_item_failures=True,
        )
    )


def breaks_sqs_visibility(stack: cdk.Stack) -> None:
    queue_consumer(stack, visibility_seconds=59, timeout_seconds=10)


def breaks_dlq_alarm(stack: cdk.Stack) -> None:
    queue_consumer(stack, dlq=sqs.Queue(stack, "SilentDlq"))


def breaks_no_wildcard_actions(stack: cdk.Stack) -> None:
    role_with_statements(
        stack,
        iam.PolicyStatement(actions=["s3:*"], resources=["*"]),
    )


BREAKING_STACKS: dict[str, Callable[[cdk.Stack], None]] = {
    SINGLE_STREAM_READER: breaks_single_stream_reader,
    BATCH_ITEM_FAILURES: breaks_batch_item_failures,
    STREAM_FAILURE_HANDLING: breaks_stream_failure_handling,
    SQS_VISIBILITY: breaks_sqs_visibility,
    DLQ_ALARM: breaks_dlq_alarm,
    NO_WILDCARD_ACTIONS: breaks_no_wildcard_actions,
}

# The construct each breaking stack's violation is reported on (below the stack).
VIOLATING_CONSTRUCT = {
    SINGLE_STREAM_READER: "Table/Resource",
    BATCH_ITEM_FAILURES: "Consumer/SqsEventSource:",
    STREAM_FAILURE_HANDLING: "Consumer/KinesisEventSource:",
    SQS_VISIBILITY: "Queue/Resource",
    DLQ_ALARM: "SilentDlq/Resource",
    NO_WILDCARD_ACTIONS: "Role/Resource",
}


def stack_name(rule_id: str, prefix: str) -> str:
    return prefix + rule_id.removeprefix("EventDriven-")


# --- One stack per rule that satisfies it, each exercising the rule's edges -----------------


def satisfies_single_stream_reader(stack: cdk.Stack) -> None:
    dlq = alarmed_queue(stack, "Dlq")
    for name in ("Orders", "Invoices"):  # two streams, one reader each
        table_reader(stack, f"{name}Reader", table_with_stream(stack, name), dlq)


def satisfies_batch_item_failures(stack: cdk.Stack) -> None:
    queue_consumer(stack)
    dlq = alarmed_queue(stack, "StreamDlq")
    table_reader(stack, "TableReader", table_with_stream(stack, "Table"), dlq)
    function(stack, "StreamReader").add_event_source(
        sources.KinesisEventSource(kinesis.Stream(stack, "Stream"), **stream_options(dlq))
    )


def satisfies_stream_failure_handling(stack: cdk.Stack) -> None:
    dlq = alarmed_queue(stack, "Dlq")
    function(stack, "StreamReader").add_event_source(
        sources.KinesisEventSource(kinesis.Stream(stack, "Stream"), **stream_options(dlq))
    )


def satisfies_sqs_visibility(stack: cdk.Stack) -> None:
    queue_consumer(stack, visibility_seconds=60, timeout_seconds=10)  # exactly 6 x


def satisfies_dlq_alarm(stack: cdk.Stack) -> None:
    # All three ways to be a DLQ; the function DLQ is watched through metric math.
    consumer = queue_consumer(stack)
    async_dlq = sqs.Queue(stack, "AsyncDlq")
    lambda_.Function(
        stack,
        "AsyncWorker",
        runtime=lambda_.Runtime.PYTHON_3_14,
        handler="index.handler",
        code=lambda_.Code.from_inline("def handler(event, context):\n    return {}\n"),
        dead_letter_queue=async_dlq,
    )
    cloudwatch.MathExpression(
        expression="depth",
        using_metrics={"depth": async_dlq.metric_approximate_number_of_messages_visible()},
    ).create_alarm(stack, "AsyncDlqDepth", threshold=0, evaluation_periods=1)
    table = table_with_stream(stack, "Table")
    consumer.add_event_source(sources.DynamoEventSource(table, **stream_options(alarmed_queue(stack, "StreamDlq"))))


def satisfies_no_wildcard_actions(stack: cdk.Stack) -> None:
    bucket = s3.Bucket(stack, "Bucket", enforce_ssl=True)  # a Deny s3:* bucket policy
    role_with_statements(
        stack,
        iam.PolicyStatement(actions=["s3:GetObject"], resources=[bucket.arn_for_objects("*")]),
        iam.PolicyStatement(effect=iam.Effect.DENY, actions=["*"], resources=["*"]),
    )


SATISFYING_STACKS: dict[str, Callable[[cdk.Stack], None]] = {
    SINGLE_STREAM_READER: satisfies_single_stream_reader,
    BATCH_ITEM_FAILURES: satisfies_batch_item_failures,
    STREAM_FAILURE_HANDLING: satisfies_stream_failure_handling,
    SQS_VISIBILITY: satisfies_sqs_visibility,
    DLQ_ALARM: satisfies_dlq_alarm,
    NO_WILDCARD_ACTIONS: satisfies_no_wildcard_actions,
}


# --- Synthesizing and reading CDK's validation report -----------------------------------------


@dataclass(frozen=True)
class Violation:
    rule: str
    construct_path: str
    logical_id: str


@dataclass(frozen=True)
class SynthOutcome:
    error: str | None  # the synth exception's message; None when the synth passed
    report: dict[str, Any]  # the cloud assembly's validation-report.json
    outdir: Path

    @property
    def plugin_report(self) -> dict[str, Any]:
        reports = [r for r in self.report["pluginReports"] if r["pluginName"] == "EventDriven"]
        return reports[0] if reports else {}

    def violations(self, key: str = "violations") -> list[Violation]:
        return [
            Violation(v["ruleName"], c["constructPath"], c["cloudFormationResource"]["logicalId"])
            for v in self.plugin_report.get(key) or []
            for c in v["violatingConstructs"]
        ]

    def violations_in(self, stack: str) -> list[Violation]:
        return [v for v in self.violations() if v.construct_path.startswith(f"{stack}/")]

    def template(self, stack: str) -> dict[str, Any]:
        return json.loads((self.outdir / f"{stack}.template.json").read_text())


def new_app(outdir: Path, **context: Any) -> cdk.App:
    # The in-memory app mode makes a failed validation raise with the whole report; it is
    # what CDK picks under pytest anyway, pinned so the tests do not depend on detection.
    return cdk.App(
        outdir=str(outdir),
        builtin_cloud_formation_validation=False,
        context={"@aws-cdk/core:appMode": "inmemory", **context},
    )


def synth(app: cdk.App, outdir: Path) -> SynthOutcome:
    try:
        app.synth()
        error = None
    except RuntimeError as exc:  # jsii surfaces CDK's ValidationError as RuntimeError
        error = str(exc)
    report_file = outdir / "validation-report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {"pluginReports": []}
    return SynthOutcome(error, report, outdir)


def synth_stacks(
    outdir: Path,
    builders: dict[str, Callable[[cdk.Stack], None]],
    prefix: str,
    plugin: EventDrivenChecks,
    acknowledge: Callable[[str, cdk.Stack], None] | None = None,
    context: dict[str, Any] | None = None,
) -> SynthOutcome:
    app = new_app(outdir, **(context or {}))
    for rule_id, build in builders.items():
        stack = cdk.Stack(app, stack_name(rule_id, prefix))
        build(stack)
        if acknowledge:
            acknowledge(rule_id, stack)
    cdk.Validations.of(app).add_plugins(plugin)
    return synth(app, outdir)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> SynthOutcome:
    # Path metadata on, as under the CDK CLI: construct paths come from aws:cdk:path.
    outdir = tmp_path_factory.mktemp("broken")
    return synth_stacks(
        outdir,
        BREAKING_STACKS,
        "Breaks",
        EventDrivenChecks(),
        context={"aws:cdk:enable-path-metadata": True},
    )


@pytest.fixture(scope="module")
def compliant(tmp_path_factory: pytest.TempPathFactory) -> SynthOutcome:
    outdir = tmp_path_factory.mktemp("compliant")
    return synth_stacks(outdir, SATISFYING_STACKS, "Satisfies", EventDrivenChecks())


def acknowledge_on_violating_construct(rule_id: str, stack: cdk.Stack) -> None:
    construct_id = VIOLATING_CONSTRUCT[rule_id].split("/")[0]
    # NoWildcardActions uses the namespaced id CDK's report suggests; core suppresses that form.
    ack_id = f"EventDriven::{rule_id}" if rule_id == NO_WILDCARD_ACTIONS else rule_id
    cdk.Validations.of(stack.node.find_child(construct_id)).acknowledge(
        cdk.Acknowledgment(id=ack_id, reason=f"test: {rule_id} is intended here")
    )


@pytest.fixture(scope="module")
def acknowledged(tmp_path_factory: pytest.TempPathFactory) -> SynthOutcome:
    # Path metadata off, as for `python app.py`: paths come from the assembly metadata.
    outdir = tmp_path_factory.mktemp("acknowledged")
    return synth_stacks(
        outdir,
        BREAKING_STACKS,
        "Acknowledged",
        EventDrivenChecks(),
        acknowledge=acknowledge_on_violating_construct,
    )


# --- The synth fails on each broken rule, naming the rule and the resource ------------------


@pytest.mark.parametrize("rule_id", list(BREAKING_STACKS))
def test_breaking_stack_fails_synth_naming_rule_and_resource(broken: SynthOutcome, rule_id: str) -> None:
    stack = stack_name(rule_id, "Breaks")
    expected_path = f"{stack}/{VIOLATING_CONSTRUCT[rule_id]}"

    assert broken.error is not None
    assert broken.error.startswith("ValidationFailed:")
    violations = broken.violations_in(stack)
    assert {v.rule for v in violations} == {rule_id}  # the stack breaks this rule and no other
    assert all(v.construct_path.startswith(expected_path) for v in violations)
    assert f"{rule_id}: " in broken.error
    for violation in violations:
        assert violation.construct_path in broken.error
        assert violation.logical_id in broken.template(stack)["Resources"]
    assert broken.plugin_report["conclusion"] == "failure"


def test_failure_messages_say_how_to_fix(broken: SynthOutcome) -> None:
    reported = broken.plugin_report["violations"]
    fixes = {v["ruleName"]: v["suggestedFix"] for v in reported}

    assert set(fixes) == set(BREAKING_STACKS)
    assert "report_batch_item_failures=True" in fixes[BATCH_ITEM_FAILURES]
    assert "visibility_timeout" in fixes[SQS_VISIBILITY]
    assert "Suggested fix: " in (broken.error or "")


def test_single_stream_reader_names_the_stream_and_its_readers(broken: SynthOutcome) -> None:
    (violation,) = broken.violations_in("BreaksSingleStreamReader")
    reported = next(v for v in broken.plugin_report["violations"] if v["ruleName"] == SINGLE_STREAM_READER)
    mapping_ids = [
        lid
        for lid, r in broken.template("BreaksSingleStreamReader")["Resources"].items()
        if r["Type"] == "AWS::Lambda::EventSourceMapping"
    ]

    assert violation.logical_id.startswith("Table")
    assert len(mapping_ids) == 2
    assert "read by 2 event source mappings" in reported["description"]
    assert all(lid in reported["description"] for lid in mapping_ids)


def test_stream_failure_handling_lists_everything_missing(broken: SynthOutcome) -> None:
    reported = next(v for v in broken.plugin_report["violations"] if v["ruleName"] == STREAM_FAILURE_HANDLING)

    for missing in (
        "DestinationConfig.OnFailure.Destination",
        "MaximumRetryAttempts",
        "MaximumRecordAgeInSeconds",
        "BisectBatchOnFunctionError",
    ):
        assert missing in reported["description"]


# --- The synth passes when each rule is satisfied --------------------------------------------


def test_compliant_stacks_synthesize(compliant: SynthOutcome) -> None:
    assert compliant.error is None
    assert compliant.violations() == []


def properties_of(template: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [r.get("Properties", {}) for r in template["Resources"].values() if r["Type"] == resource_type]


def mappings(template: dict[str, Any]) -> list[dict[str, Any]]:
    return properties_of(template, "AWS::Lambda::EventSourceMapping")


def test_single_stream_reader_passes_with_one_reader_per_stream(compliant: SynthOutcome) -> None:
    template = compliant.template("SatisfiesSingleStreamReader")
    streams = [json.dumps(m["EventSourceArn"], sort_keys=True) for m in mappings(template)]

    assert compliant.error is None
    assert len(streams) == 2
    assert len(set(streams)) == 2


def test_batch_item_failures_passes_for_sqs_dynamodb_and_kinesis(compliant: SynthOutcome) -> None:
    template = compliant.template("SatisfiesBatchItemFailures")

    assert compliant.error is None
    assert len(mappings(template)) == 3
    assert all(m["FunctionResponseTypes"] == ["ReportBatchItemFailures"] for m in mappings(template))


def test_stream_failure_handling_passes_when_configured(compliant: SynthOutcome) -> None:
    (mapping,) = mappings(compliant.template("SatisfiesStreamFailureHandling"))

    assert compliant.error is None
    assert mapping["MaximumRetryAttempts"] == 3
    assert mapping["BisectBatchOnFunctionError"] is True
    assert "OnFailure" in mapping["DestinationConfig"]


def test_sqs_visibility_passes_at_exactly_six_times_the_timeout(compliant: SynthOutcome) -> None:
    template = compliant.template("SatisfiesSqsVisibility")

    assert compliant.error is None
    assert [p.get("VisibilityTimeout") for p in properties_of(template, "AWS::SQS::Queue")] == [
        None,  # the DLQ, not consumed
        60,
    ]
    assert [p["Timeout"] for p in properties_of(template, "AWS::Lambda::Function")] == [10]


def test_dlq_alarm_passes_with_plain_and_metric_math_alarms(compliant: SynthOutcome) -> None:
    template = compliant.template("SatisfiesDlqAlarm")
    alarms = properties_of(template, "AWS::CloudWatch::Alarm")

    assert compliant.error is None
    assert len(properties_of(template, "AWS::SQS::Queue")) == 4  # source + 3 kinds of DLQ
    assert any("Metrics" in alarm for alarm in alarms)
    assert any("MetricName" in alarm for alarm in alarms)


def test_no_wildcard_actions_passes_with_deny_wildcards(compliant: SynthOutcome) -> None:
    template = compliant.template("SatisfiesNoWildcardActions")
    (bucket_policy,) = properties_of(template, "AWS::S3::BucketPolicy")
    (role,) = properties_of(template, "AWS::IAM::Role")
    statements = bucket_policy["PolicyDocument"]["Statement"]
    statements += role["Policies"][0]["PolicyDocument"]["Statement"]

    assert compliant.error is None
    assert {(st["Effect"], st["Action"]) for st in statements} == {
        ("Deny", "s3:*"),
        ("Deny", "*"),
        ("Allow", "s3:GetObject"),
    }


# --- Acknowledgements and the configurable limit ---------------------------------------------


def test_acknowledged_breaking_stacks_synthesize(acknowledged: SynthOutcome) -> None:
    assert acknowledged.error is None
    assert acknowledged.violations() == []
    assert acknowledged.plugin_report["conclusion"] == "success"


def test_namespaced_acknowledgement_is_recorded_with_its_reason(acknowledged: SynthOutcome) -> None:
    suppressed = acknowledged.plugin_report["suppressedViolations"]

    assert [v["ruleName"] for v in suppressed] == [NO_WILDCARD_ACTIONS]
    assert suppressed[0]["reason"] == f"test: {NO_WILDCARD_ACTIONS} is intended here"
    assert suppressed[0]["acknowledgedAt"] == "AcknowledgedNoWildcardActions/Role"


def test_acknowledgements_cover_the_construct_and_its_children_for_that_rule_only() -> None:
    app = cdk.App()
    stack = cdk.Stack(app, "Stack")
    queue = sqs.Queue(stack, "Queue")
    sqs.Queue(stack, "Sibling")
    cdk.Validations.of(queue).acknowledge(cdk.Acknowledgment(id=DLQ_ALARM, reason="watched elsewhere"))
    cdk.Validations.of(app).acknowledge(
        cdk.Acknowledgment(id=f"EventDriven::{SQS_VISIBILITY}", reason="left to core CDK")
    )
    acknowledged = checks.AcknowledgedRules(app)

    assert acknowledged.covers("Stack/Queue/Resource", DLQ_ALARM)
    assert not acknowledged.covers("Stack/Queue/Resource", NO_WILDCARD_ACTIONS)
    assert not acknowledged.covers("Stack/Sibling/Resource", DLQ_ALARM)
    assert not acknowledged.covers("Stack/Queue/Resource", SQS_VISIBILITY)
    assert not acknowledged.covers("Stack/Missing/Resource", DLQ_ALARM)


def test_two_readers_pass_when_the_limit_is_two(tmp_path: Path) -> None:
    outcome = synth_stacks(
        tmp_path,
        {SINGLE_STREAM_READER: breaks_single_stream_reader},
        "TwoReaders",
        EventDrivenChecks(max_stream_readers=2),
    )

    assert outcome.error is None
    assert len(mappings(outcome.template("TwoReadersSingleStreamReader"))) == 2


# --- Raw templates: intrinsics the rules do not understand ---------------------------------


def template(**resources: dict[str, Any]) -> CfnTemplate:
    return CfnTemplate({"Resources": resources})


def mapping(arn: Any, **properties: Any) -> dict[str, Any]:
    return {
        "Type": "AWS::Lambda::EventSourceMapping",
        "Properties": {"EventSourceArn": arn, "FunctionName": {"Ref": "Fn"}, **properties},
    }


COMPLETE_STREAM_MAPPING = {
    "FunctionResponseTypes": ["ReportBatchItemFailures"],
    "DestinationConfig": {"OnFailure": {"Destination": "arn:aws:sqs:eu-west-1:1:dlq"}},
    "MaximumRetryAttempts": 3,
    "MaximumRecordAgeInSeconds": 3600,
    "BisectBatchOnFunctionError": True,
}
IMPORTED = {"Fn::ImportValue": "Shared-StreamArn"}
CONDITIONAL = {"Fn::If": ["IsProd", "a", "b"]}


def rules_of(findings: list[checks.Finding]) -> list[str]:
    return sorted(f.rule.id for f in findings)


def test_readers_of_a_literal_stream_arn_are_counted_against_the_limit() -> None:
    arn = "arn:aws:dynamodb:eu-west-1:111111111111:table/orders/stream/2024-01-01T00:00:00.000"
    readers = {f"Reader{i}": mapping(arn, **COMPLETE_STREAM_MAPPING) for i in range(3)}

    findings = evaluate_template(template(**readers), max_stream_readers=2)

    assert rules_of(findings) == [SINGLE_STREAM_READER] * 3  # no stream resource: each mapping
    assert {f.logical_id for f in findings} == set(readers)
    assert evaluate_template(template(**readers), max_stream_readers=3) == []


def test_arns_built_from_pseudo_parameters_identify_the_same_stream() -> None:
    arn = {"Fn::Sub": "arn:${AWS::Partition}:kinesis:${AWS::Region}:${AWS::AccountId}:stream/s"}
    joined = {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":kinesis:",
                {"Ref": "AWS::Region"},
                ":",
                {"Ref": "AWS::AccountId"},
                ":stream/s",
            ],
        ]
    }
    readers = template(A=mapping(arn, **COMPLETE_STREAM_MAPPING), B=mapping(joined, **COMPLETE_STREAM_MAPPING))

    assert rules_of(evaluate_template(readers)) == [SINGLE_STREAM_READER] * 2


@pytest.mark.parametrize(
    "resources",
    [
        pytest.param({"A": mapping(IMPORTED), "B": mapping(IMPORTED)}, id="imported-event-source"),
        pytest.param(
            {"A": mapping("arn:aws:sqs:eu-west-1:1:q", FunctionResponseTypes=CONDITIONAL)},
            id="conditional-response-types",
        ),
        pytest.param(
            {
                "A": mapping(
                    {"Fn::GetAtt": ["T", "StreamArn"]},
                    **{
                        **COMPLETE_STREAM_MAPPING,
                        "DestinationConfig": CONDITIONAL,
                        "MaximumRetryAttempts": {"Ref": "Retries"},
                        "BisectBatchOnFunctionError": CONDITIONAL,
                    },
                )
            },
            id="conditional-failure-handling",
        ),
        pytest.param(
            {
                "Q": {"Type": "AWS::SQS::Queue", "Properties": {"VisibilityTimeout": {"Ref": "V"}}},
                "Fn": {"Type": "AWS::Lambda::Function", "Properties": {"Timeout": 900}},
                "A": mapping({"Fn::GetAtt": ["Q", "Arn"]}, FunctionResponseTypes=["ReportBatchItemFailures"]),
            },
            id="parameterised-visibility",
        ),
        pytest.param(
            {
                "Q": {"Type": "AWS::SQS::Queue", "Properties": {"RedrivePolicy": CONDITIONAL}},
                "F": {"Type": "AWS::Lambda::Function", "Properties": {"DeadLetterConfig": CONDITIONAL}},
            },
            id="conditional-dead-letter-targets",
        ),
        pytest.param(
            {
                "P": {"Type": "AWS::IAM::Policy", "Properties": {"PolicyDocument": CONDITIONAL}},
                "R": {
                    "Type": "AWS::IAM::Role",
                    "Properties": {
                        "Policies": [
                            {
                                "PolicyDocument": {
                                    "Statement": [
                                        CONDITIONAL,
                                        {"Effect": "Allow", "Action": [CONDITIONAL, "s3:GetObject"]},
                                    ]
                                }
                            }
                        ]
                    },
                },
            },
            id="conditional-policies",
        ),
        pytest.param({"X": {"Type": "AWS::SQS::Queue", "Properties": "not-a-mapping"}}, id="malformed"),
    ],
)
def test_unknown_intrinsics_do_not_crash_or_prove_a_violation(resources: dict[str, Any]) -> None:
    assert evaluate_template(template(**resources)) == []


def test_dlq_alarm_fails_closed_when_the_alarm_cannot_be_tied_to_the_queue() -> None:
    resources = template(
        Dlq={"Type": "AWS::SQS::Queue"},
        Main={
            "Type": "AWS::SQS::Queue",
            "Properties": {"RedrivePolicy": json.dumps({"deadLetterTargetArn": {"Fn::GetAtt": ["Dlq", "Arn"]}})},
        },
        Alarm={
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "MetricName": "ApproximateNumberOfMessagesVisible",
                "Namespace": "AWS/SQS",
                "Dimensions": [{"Name": "QueueName", "Value": IMPORTED}],
            },
        },
    )

    (finding,) = evaluate_template(resources)

    assert (finding.rule.id, finding.logical_id) == (DLQ_ALARM, "Dlq")
    assert "dead-letter queue of Main" in finding.message


def test_allow_wildcards_are_found_in_resource_policies_and_json_documents() -> None:
    resources = template(
        QueuePolicy={
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {"PolicyDocument": {"Statement": {"Effect": "Allow", "Action": "sqs:*"}}},
        },
        ManagedPolicy={
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {"PolicyDocument": json.dumps({"Statement": [{"Effect": "Allow", "Action": ["*"]}]})},
        },
        NotActionPolicy={
            "Type": "AWS::IAM::Policy",
            "Properties": {"PolicyDocument": {"Statement": [{"Effect": "Allow", "NotAction": "iam:*"}]}},
        },
        DenyPolicy={
            "Type": "AWS::SNS::TopicPolicy",
            "Properties": {"PolicyDocument": {"Statement": [{"Effect": "Deny", "Action": "*"}]}},
        },
    )

    findings = evaluate_template(resources)

    assert {f.logical_id for f in findings} == {"QueuePolicy", "ManagedPolicy", "NotActionPolicy"}
    assert all(f.rule.id == NO_WILDCARD_ACTIONS for f in findings)


def test_sqs_visibility_follows_an_alias_to_its_function() -> None:
    resources = template(
        Q={"Type": "AWS::SQS::Queue"},  # default visibility 30s
        Fn={"Type": "AWS::Lambda::Function", "Properties": {"Timeout": 6}},
        Live={"Type": "AWS::Lambda::Alias", "Properties": {"FunctionName": {"Ref": "Fn"}}},
        M={
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {
                "EventSourceArn": {"Fn::GetAtt": ["Q", "Arn"]},
                "FunctionName": {"Ref": "Live"},
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
            },
        },
    )

    (finding,) = evaluate_template(resources)

    assert (finding.rule.id, finding.logical_id) == (SQS_VISIBILITY, "Q")
    assert "needs >= 36s" in finding.message


def test_a_rule_that_breaks_on_a_template_reports_itself_and_spares_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_rule(template: CfnTemplate) -> Iterator[checks.Finding]:
        raise KeyError("unexpected shape")

    monkeypatch.setattr(checks, "check_dlq_alarm", broken_rule)
    resources = template(
        P={
            "Type": "AWS::IAM::Policy",
            "Properties": {"PolicyDocument": {"Statement": [{"Effect": "Allow", "Action": "*"}]}},
        },
    )

    findings = evaluate_template(resources)

    assert rules_of(findings) == [DLQ_ALARM, NO_WILDCARD_ACTIONS]
    assert "could not evaluate" in next(f.message for f in findings if f.rule.id == DLQ_ALARM)


def test_max_stream_readers_must_allow_at_least_one_reader() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EventDrivenChecks(max_stream_readers=0)


def test_plugin_declares_its_name_and_rules() -> None:
    plugin = EventDrivenChecks()

    assert plugin.name == "EventDriven"
    assert sorted(plugin.rule_ids) == sorted(BREAKING_STACKS)
