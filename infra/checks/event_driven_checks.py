"""EventDrivenChecks: our policy-validation rule pack for event-driven infrastructure.

Registered like the cdk-nag v3 packs::

    Validations.of(app).add_plugins(AwsSolutionsChecks(app), EventDrivenChecks())

CDK calls ``validate`` after synthesis with the paths of all synthesized templates; the
rules read those templates, so they see exactly what CloudFormation will deploy.

Acknowledging a finding works like acknowledging a cdk-nag finding::

    Validations.of(construct).acknowledge(
        Acknowledgment(id="EventDriven-SingleStreamReader", reason="...")
    )

The acknowledgement covers the construct and everything below it. CDK records an
unqualified id as ``Annotation::<id>`` and core only matches ``<plugin>::<rule>`` ids, so,
like cdk-nag, this plugin filters unqualified acknowledgements itself (see
``AcknowledgedRules``). The qualified form ``EventDriven::<rule>`` (the one CDK's report
suggests) is left to core, which lists it under ``suppressedViolations`` with its reason.

Rules never guess: where an intrinsic function hides a value, a rule reports nothing
unless the missing knowledge itself is the violation (each case is commented below).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import (
    IPolicyValidationContext,
    IPolicyValidationPlugin,
    PolicyValidationPluginReport,
    PolicyViolatingResource,
    PolicyViolation,
    Validations,
)
from constructs import IConstruct

PLUGIN_NAME = "EventDriven"
PLUGIN_VERSION = "1.0.0"
ACKNOWLEDGED_RULES_KEY = Validations.ACKNOWLEDGED_RULES_METADATA_KEY  # "aws:cdk:acknowledged-rules"


@dataclass(frozen=True)
class Rule:
    id: str
    fix: str


SINGLE_STREAM_READER = Rule(
    "EventDriven-SingleStreamReader",
    fix=(
        "Read each stream with a single event source mapping and fan out from that consumer "
        "(SQS, SNS or EventBridge); readers of one stream share its per-shard read throughput "
        "and get throttled. If the shards can serve more readers, raise "
        "EventDrivenChecks(max_stream_readers=...)."
    ),
)
BATCH_ITEM_FAILURES = Rule(
    "EventDriven-BatchItemFailures",
    fix=(
        "Set FunctionResponseTypes: [ReportBatchItemFailures] on the event source mapping "
        "(CDK: report_batch_item_failures=True on the event source) and return "
        "batchItemFailures from the handler, so one bad record does not retry the whole batch."
    ),
)
STREAM_FAILURE_HANDLING = Rule(
    "EventDriven-StreamFailureHandling",
    fix=(
        "On the stream event source set on_failure=SqsDlq(queue) or SnsDlq(topic) "
        "(DestinationConfig.OnFailure), retry_attempts=<n> (MaximumRetryAttempts), "
        "max_record_age=Duration... (MaximumRecordAgeInSeconds) and bisect_batch_on_error=True, "
        "so a poison record ends in the on-failure destination instead of blocking its shard."
    ),
)
SQS_VISIBILITY = Rule(
    "EventDriven-SqsVisibility",
    fix=(
        "Set the queue's visibility_timeout to at least 6 x the consuming function's timeout "
        "(or shorten the function timeout); otherwise messages become visible again while "
        "Lambda is still processing or retrying them and are processed twice."
    ),
)
DLQ_ALARM = Rule(
    "EventDriven-DlqAlarm",
    fix=(
        "Add a CloudWatch alarm on the queue's depth, e.g. "
        "queue.metric_approximate_number_of_messages_visible().create_alarm(scope, id, "
        "threshold=0, evaluation_periods=1, "
        "comparison_operator=ComparisonOperator.GREATER_THAN_THRESHOLD), "
        "so failed messages are noticed."
    ),
)
NO_WILDCARD_ACTIONS = Rule(
    "EventDriven-NoWildcardActions",
    fix=(
        "Allow only the actions the principal needs: use the construct's grant_* methods or "
        "PolicyStatement(actions=[...]) with explicit action names. Wildcard actions are fine "
        "in Deny statements only."
    ),
)
ALL_RULES = (
    SINGLE_STREAM_READER,
    BATCH_ITEM_FAILURES,
    STREAM_FAILURE_HANDLING,
    SQS_VISIBILITY,
    DLQ_ALARM,
    NO_WILDCARD_ACTIONS,
)


@dataclass(frozen=True)
class Finding:
    rule: Rule
    logical_id: str | None  # None: the finding concerns the whole template
    message: str
    location: str = "Properties"


# --- Reading templates and intrinsic functions ---------------------------------------------

MISSING: Any = object()  # the key is absent
UNRESOLVED: Any = object()  # an intrinsic function stands where a nested value was expected
UNKNOWN_TEXT = "\x00"  # marks the parts of a rendered string that are not literal


def is_intrinsic(value: Any) -> bool:
    if not isinstance(value, Mapping) or len(value) != 1:
        return False
    (key,) = value
    return key == "Ref" or (isinstance(key, str) and key.startswith("Fn::"))


def nested(value: Any, *keys: str) -> Any:
    """Follow keys through nested mappings; MISSING or UNRESOLVED when that is impossible."""
    for key in keys:
        if is_intrinsic(value):
            return UNRESOLVED
        if not isinstance(value, Mapping) or key not in value:
            return MISSING
        value = value[key]
    return value


def referenced_resource(value: Any) -> tuple[str, str | None] | None:
    """(logical id, attribute) of a ``Ref`` or ``Fn::GetAtt``; None for anything else."""
    if not is_intrinsic(value):
        return None
    ref = value.get("Ref")
    if isinstance(ref, str) and not ref.startswith("AWS::"):
        return ref, None
    get_att = value.get("Fn::GetAtt")
    if isinstance(get_att, str) and "." in get_att:
        logical_id, _, attribute = get_att.partition(".")
        return logical_id, attribute
    if isinstance(get_att, list) and len(get_att) == 2 and all(isinstance(p, str) for p in get_att):
        return get_att[0], get_att[1]
    return None


def render_text(value: Any) -> str:
    """The text of a string expression; parts that are not literal become UNKNOWN_TEXT.

    Pseudo parameters stay recognisable (``${AWS::Region}``), so two identical ARNs built
    from literals and pseudo parameters compare equal.
    """
    if isinstance(value, str):
        return value
    if not is_intrinsic(value):
        return UNKNOWN_TEXT
    ((function, argument),) = value.items()
    if function == "Ref" and isinstance(argument, str) and argument.startswith("AWS::"):
        return "${" + argument + "}"
    if function == "Fn::Join" and _is_join_argument(argument):
        separator, parts = argument
        return separator.join(render_text(part) for part in parts)
    if function == "Fn::Sub" and isinstance(argument, str):
        return re.sub(r"\$\{(?!AWS::)[^}]*\}", UNKNOWN_TEXT, argument)
    return UNKNOWN_TEXT


def _is_join_argument(argument: Any) -> bool:
    return (
        isinstance(argument, list)
        and len(argument) == 2
        and isinstance(argument[0], str)
        and isinstance(argument[1], list)
    )


def as_number(value: Any) -> float | None:
    """A literal number (CloudFormation also accepts numeric strings); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def literal_strings(value: Any) -> list[str] | None:
    """A literal string or list of strings as a list; None if intrinsics are involved."""
    if value is None or value is MISSING:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    return None


def parse_json_string(value: Any) -> Any:
    """Raw templates may give policies as JSON strings; CDK gives objects."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


SQS = "sqs"
DYNAMODB = "dynamodb"
KINESIS = "kinesis"
STREAM_KINDS = frozenset({DYNAMODB, KINESIS})
ARN_SERVICE = re.compile(r"^arn:(?:\$\{AWS::Partition\}|[^:]*):(?P<service>sqs|kinesis|dynamodb):")


@dataclass(frozen=True)
class EventSource:
    kind: str | None = None  # SQS, DYNAMODB, KINESIS; None when unknown (MSK, MQ, intrinsics)
    stream_key: str | None = None  # identifies a shared-throughput stream for reader counting
    logical_id: str | None = None  # the source resource, if it is defined in the template


@dataclass(frozen=True)
class SourceMapping:
    logical_id: str
    properties: Mapping[str, Any]
    source: EventSource


class CfnTemplate:
    def __init__(self, body: Any) -> None:
        resources = nested(body, "Resources")
        self.resources: dict[str, Mapping[str, Any]] = (
            {lid: r for lid, r in resources.items() if isinstance(r, Mapping)} if isinstance(resources, Mapping) else {}
        )
        self.mappings = [
            SourceMapping(lid, props, self.describe_event_source(props.get("EventSourceArn")))
            for lid, props in self.of_type("AWS::Lambda::EventSourceMapping")
        ]

    @classmethod
    def load(cls, path: Path) -> CfnTemplate:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def type_of(self, logical_id: str | None) -> str | None:
        resource = self.resources.get(logical_id or "")
        return resource.get("Type") if resource else None

    def properties(self, logical_id: str) -> Mapping[str, Any]:
        props = nested(self.resources.get(logical_id), "Properties")
        return props if isinstance(props, Mapping) else {}

    def of_type(self, *resource_types: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for logical_id, resource in self.resources.items():
            if resource.get("Type") in resource_types:
                yield logical_id, self.properties(logical_id)

    def referenced_of_type(self, value: Any, resource_type: str) -> str | None:
        reference = referenced_resource(value)
        if reference and self.type_of(reference[0]) == resource_type:
            return reference[0]
        return None

    def describe_event_source(self, arn: Any) -> EventSource:
        reference = referenced_resource(arn)
        if reference:
            return self._source_from_reference(*reference)
        return _source_from_arn_text(render_text(arn))

    def _source_from_reference(self, logical_id: str, attribute: str | None) -> EventSource:
        resource_type = self.type_of(logical_id)
        if attribute == "StreamArn":  # only DynamoDB tables have a StreamArn attribute
            return EventSource(DYNAMODB, f"{logical_id}.StreamArn", logical_id)
        if resource_type == "AWS::Kinesis::Stream" and attribute in (None, "Arn"):
            return EventSource(KINESIS, logical_id, logical_id)
        if resource_type == "AWS::Kinesis::StreamConsumer":
            # Enhanced fan-out has its own throughput: it is not a shared reader of the stream.
            return EventSource(KINESIS, None, logical_id)
        if resource_type == "AWS::SQS::Queue" and attribute == "Arn":
            return EventSource(SQS, None, logical_id)
        return EventSource()

    def resolve_function(self, function_name: Any, hops: int = 2) -> str | None:
        """The AWS::Lambda::Function behind a FunctionName (directly or via an alias/version)."""
        reference = referenced_resource(function_name)
        if reference is None:
            return None  # a literal name or an import: the function is not in this template
        logical_id = reference[0]
        resource_type = self.type_of(logical_id)
        if resource_type == "AWS::Lambda::Function":
            return logical_id
        if resource_type in ("AWS::Lambda::Alias", "AWS::Lambda::Version") and hops > 0:
            return self.resolve_function(self.properties(logical_id).get("FunctionName"), hops - 1)
        return None


def _source_from_arn_text(text: str) -> EventSource:
    match = ARN_SERVICE.match(text)
    if match is None:
        return EventSource()
    exact = UNKNOWN_TEXT not in text
    service = match["service"]
    if service == KINESIS and "/consumer/" in text:
        return EventSource(KINESIS)  # enhanced fan-out consumer, see _source_from_reference
    if service in STREAM_KINDS:
        return EventSource(service, text if exact else None)
    return EventSource(SQS)


# --- Rules ---------------------------------------------------------------------------------


def check_single_stream_reader(template: CfnTemplate, max_readers: int) -> Iterator[Finding]:
    # Mappings whose stream cannot be identified (imports, partly unknown ARNs) are not
    # counted: we cannot prove that two of them read the same stream.
    readers: dict[str, list[SourceMapping]] = defaultdict(list)
    for mapping in template.mappings:
        if mapping.source.kind in STREAM_KINDS and mapping.source.stream_key:
            readers[mapping.source.stream_key].append(mapping)
    for stream_key, mappings in readers.items():
        if len(mappings) > max_readers:
            yield from _too_many_readers(stream_key, mappings, max_readers)


def _too_many_readers(stream_key: str, mappings: list[SourceMapping], max_readers: int) -> Iterator[Finding]:
    names = ", ".join(mapping.logical_id for mapping in mappings)
    message = (
        f"stream {stream_key} is read by {len(mappings)} event source mappings ({names}); "
        f"at most {max_readers} allowed."
    )
    stream_resource = mappings[0].source.logical_id
    if stream_resource:  # name the stream, so one acknowledgement on it covers all its readers
        yield Finding(SINGLE_STREAM_READER, stream_resource, message)
        return
    for mapping in mappings:
        yield Finding(SINGLE_STREAM_READER, mapping.logical_id, message, "Properties/EventSourceArn")


def check_batch_item_failures(template: CfnTemplate) -> Iterator[Finding]:
    for mapping in template.mappings:
        if mapping.source.kind is None:
            continue  # unknown source (MSK, MQ, an intrinsic): it may not support the setting
        response_types = literal_strings(mapping.properties.get("FunctionResponseTypes"))
        if response_types is None:
            continue  # an intrinsic may resolve to the right value at deploy time
        if "ReportBatchItemFailures" not in response_types:
            yield Finding(
                BATCH_ITEM_FAILURES,
                mapping.logical_id,
                f"the {mapping.source.kind} event source mapping does not report batch item "
                "failures (FunctionResponseTypes lacks ReportBatchItemFailures).",
                "Properties/FunctionResponseTypes",
            )


def check_stream_failure_handling(template: CfnTemplate) -> Iterator[Finding]:
    for mapping in template.mappings:
        if mapping.source.kind not in STREAM_KINDS:
            continue
        missing = _missing_failure_handling(mapping.properties)
        if missing:
            yield Finding(
                STREAM_FAILURE_HANDLING,
                mapping.logical_id,
                f"the {mapping.source.kind} stream event source mapping lacks " + ", ".join(missing) + ".",
            )


def _missing_failure_handling(props: Mapping[str, Any]) -> list[str]:
    # Values hidden behind intrinsics count as present: we cannot prove them wrong.
    missing = []
    if nested(props, "DestinationConfig", "OnFailure", "Destination") is MISSING:
        missing.append("an on-failure destination (DestinationConfig.OnFailure.Destination)")
    if _is_unbounded(props.get("MaximumRetryAttempts")):
        missing.append("bounded retries (MaximumRetryAttempts, not -1)")
    if _is_unbounded(props.get("MaximumRecordAgeInSeconds")):
        missing.append("a maximum record age (MaximumRecordAgeInSeconds, not -1)")
    if not _is_true_or_unresolved(props.get("BisectBatchOnFunctionError")):
        missing.append("BisectBatchOnFunctionError: true")
    return missing


def _is_unbounded(value: Any) -> bool:
    return value is None or as_number(value) == -1


def _is_true_or_unresolved(value: Any) -> bool:
    return str(value).lower() == "true" or is_intrinsic(value)


DEFAULT_VISIBILITY_TIMEOUT = 30  # seconds, SQS default
DEFAULT_FUNCTION_TIMEOUT = 3  # seconds, Lambda default
VISIBILITY_TO_TIMEOUT_RATIO = 6


def check_sqs_visibility(template: CfnTemplate) -> Iterator[Finding]:
    # Only queues and functions defined in this template, with literal numbers, are
    # compared: anything else cannot be proven too short.
    for mapping in template.mappings:
        queue_id = mapping.source.logical_id if mapping.source.kind == SQS else None
        function_id = template.resolve_function(mapping.properties.get("FunctionName"))
        if queue_id is None or function_id is None:
            continue
        visibility = as_number(template.properties(queue_id).get("VisibilityTimeout", DEFAULT_VISIBILITY_TIMEOUT))
        timeout = as_number(template.properties(function_id).get("Timeout", DEFAULT_FUNCTION_TIMEOUT))
        if visibility is None or timeout is None:
            continue
        if visibility < VISIBILITY_TO_TIMEOUT_RATIO * timeout:
            yield Finding(
                SQS_VISIBILITY,
                queue_id,
                f"queue {queue_id} has a visibility timeout of {visibility:g}s but feeds "
                f"function {function_id} with a timeout of {timeout:g}s "
                f"(needs >= {VISIBILITY_TO_TIMEOUT_RATIO * timeout:g}s).",
                "Properties/VisibilityTimeout",
            )


DEPTH_METRIC = "ApproximateNumberOfMessagesVisible"


def check_dlq_alarm(template: CfnTemplate) -> Iterator[Finding]:
    # Fails closed: an alarm counts only if its QueueName dimension provably names the queue,
    # because the missing alarm is itself the violation (acknowledge it if it lives elsewhere).
    alarmed = alarmed_queues(template)
    for queue_id, uses in dead_letter_queues(template).items():
        if queue_id not in alarmed:
            yield Finding(
                DLQ_ALARM,
                queue_id,
                f"queue {queue_id} is used as {', '.join(uses)} but no alarm watches its "
                f"{DEPTH_METRIC} (namespace AWS/SQS, dimension QueueName).",
            )


def dead_letter_queues(template: CfnTemplate) -> dict[str, list[str]]:
    """Queue logical id -> what it catches. Only queues defined in the template count."""
    uses: dict[str, list[str]] = defaultdict(list)

    def record(target: Any, use: str) -> None:
        queue_id = template.referenced_of_type(target, "AWS::SQS::Queue")
        if queue_id:
            uses[queue_id].append(use)

    for logical_id, props in template.of_type("AWS::SQS::Queue"):
        redrive = parse_json_string(props.get("RedrivePolicy"))
        record(nested(redrive, "deadLetterTargetArn"), f"dead-letter queue of {logical_id}")
    for logical_id, props in template.of_type("AWS::Lambda::Function"):
        record(nested(props, "DeadLetterConfig", "TargetArn"), f"dead-letter queue of {logical_id}")
    for mapping in template.mappings:
        destination = nested(mapping.properties, "DestinationConfig", "OnFailure", "Destination")
        record(destination, f"on-failure destination of {mapping.logical_id}")
    return uses


def alarmed_queues(template: CfnTemplate) -> set[str]:
    alarmed: set[str] = set()
    for _, props in template.of_type("AWS::CloudWatch::Alarm"):
        for metric in _alarm_metrics(props):
            if metric.get("MetricName") == DEPTH_METRIC and metric.get("Namespace") == "AWS/SQS":
                alarmed.update(_queues_named_by(template, metric.get("Dimensions")))
    return alarmed


def _alarm_metrics(props: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield props  # a plain alarm carries MetricName/Namespace/Dimensions itself
    queries = props.get("Metrics")
    for query in queries if isinstance(queries, list) else []:
        metric = nested(query, "MetricStat", "Metric")
        if isinstance(metric, Mapping):
            yield metric


def _queues_named_by(template: CfnTemplate, dimensions: Any) -> Iterator[str]:
    for dimension in dimensions if isinstance(dimensions, list) else []:
        if nested(dimension, "Name") != "QueueName":
            continue
        value = nested(dimension, "Value")
        reference = referenced_resource(value)
        if reference and reference[1] == "QueueName":
            yield reference[0]
        elif isinstance(value, str):  # a literal name matches a queue with that literal QueueName
            yield from (
                queue_id for queue_id, props in template.of_type("AWS::SQS::Queue") if props.get("QueueName") == value
            )


POLICY_DOCUMENT_TYPES = frozenset(
    {
        "AWS::IAM::Policy",
        "AWS::IAM::ManagedPolicy",
        "AWS::SQS::QueuePolicy",
        "AWS::SNS::TopicPolicy",
        "AWS::S3::BucketPolicy",
    }
)
INLINE_POLICY_TYPES = frozenset({"AWS::IAM::Role", "AWS::IAM::User", "AWS::IAM::Group"})
WILDCARD_ACTION = re.compile(r"^(\*|[A-Za-z0-9-]+:\*)$")


def check_no_wildcard_actions(template: CfnTemplate) -> Iterator[Finding]:
    for logical_id, resource in template.resources.items():
        documents = list(policy_documents(resource.get("Type"), template.properties(logical_id)))
        grants = [(location, grant) for location, doc in documents for grant in wildcard_grants(doc)]
        if grants:
            yield Finding(
                NO_WILDCARD_ACTIONS,
                logical_id,
                f"{logical_id} allows " + "; ".join(grant for _, grant in grants) + ".",
                grants[0][0],
            )


def policy_documents(resource_type: Any, props: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    if resource_type in POLICY_DOCUMENT_TYPES:
        yield "Properties/PolicyDocument", props.get("PolicyDocument")
    elif resource_type in INLINE_POLICY_TYPES and isinstance(props.get("Policies"), list):
        for index, policy in enumerate(props["Policies"]):
            yield f"Properties/Policies/{index}/PolicyDocument", nested(policy, "PolicyDocument")


def wildcard_grants(document: Any) -> Iterator[str]:
    # Statements, actions or effects hidden behind intrinsics are skipped: cannot prove them.
    statements = nested(parse_json_string(document), "Statement")
    for statement in statements if isinstance(statements, list) else [statements]:
        if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
            continue  # Deny statements with wildcards restrict, which is fine
        actions = literal_strings(statement.get("Action")) or []
        yield from (f"action {action}" for action in actions if WILDCARD_ACTION.match(action))
        if "NotAction" in statement:  # Allow + NotAction grants every action not listed
            yield "every action except its NotAction list"


# --- Evaluation ----------------------------------------------------------------------------


def evaluate_template(template: CfnTemplate, *, max_stream_readers: int = 1) -> list[Finding]:
    checks: tuple[tuple[Rule, Callable[[CfnTemplate], Iterator[Finding]]], ...] = (
        (SINGLE_STREAM_READER, lambda t: check_single_stream_reader(t, max_stream_readers)),
        (BATCH_ITEM_FAILURES, check_batch_item_failures),
        (STREAM_FAILURE_HANDLING, check_stream_failure_handling),
        (SQS_VISIBILITY, check_sqs_visibility),
        (DLQ_ALARM, check_dlq_alarm),
        (NO_WILDCARD_ACTIONS, check_no_wildcard_actions),
    )
    findings: list[Finding] = []
    for rule, check in checks:
        try:
            findings.extend(check(template))
        # Template shapes no rule anticipated must fail that rule, not hide the other rules.
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
            findings.append(Finding(rule, None, f"the rule could not evaluate this template: {error!r}.", ""))
    return findings


class AcknowledgedRules:
    """Rule ids acknowledged on a construct or its ancestors, read as cdk-nag v3 reads them.

    ``Validations.of(c).acknowledge(Acknowledgment(id="X", reason=...))`` adds construct
    metadata ``{"Annotation::X": reason}`` under ``ACKNOWLEDGED_RULES_KEY``
    (CDK < 2.262.1 wrote ``annotation::X``). Core CDK only suppresses ``EventDriven::X``,
    so the unqualified form is matched here, on the construct tree CDK hands to plugins.
    """

    ANNOTATION_PREFIX = "annotation::"

    def __init__(self, app: IConstruct | None) -> None:
        self._app = app
        self._by_path: dict[str, tuple[IConstruct | None, frozenset[str]]] = {}

    def covers(self, construct_path: str | None, rule_id: str) -> bool:
        return construct_path is not None and rule_id in self._lookup(construct_path)[1]

    def _lookup(self, path: str) -> tuple[IConstruct | None, frozenset[str]]:
        if path not in self._by_path:
            if path == "":
                self._by_path[path] = (self._app, self._acknowledged_on(self._app))
            else:
                parent_path, _, child_id = path.rpartition("/")
                parent, inherited = self._lookup(parent_path)
                child = parent.node.try_find_child(child_id) if parent is not None else None
                self._by_path[path] = (child, inherited | self._acknowledged_on(child))
        return self._by_path[path]

    @classmethod
    def _acknowledged_on(cls, construct: IConstruct | None) -> frozenset[str]:
        if construct is None:
            return frozenset()
        ids: set[str] = set()
        for entry in construct.node.metadata:
            if entry.type == ACKNOWLEDGED_RULES_KEY and isinstance(entry.data, Mapping):
                ids.update(cls._unqualified(key) for key in entry.data)
        return frozenset(ids)

    @classmethod
    def _unqualified(cls, acknowledged_id: str) -> str:
        if acknowledged_id.lower().startswith(cls.ANNOTATION_PREFIX):
            return acknowledged_id[len(cls.ANNOTATION_PREFIX) :]
        return acknowledged_id


def construct_paths(template_path: Path, template: CfnTemplate) -> dict[str, str]:
    """Logical id -> construct path, from ``aws:cdk:path`` metadata or else the assembly."""
    from_template = {
        logical_id: path
        for logical_id, resource in template.resources.items()
        if isinstance(path := nested(resource, "Metadata", "aws:cdk:path"), str)
    }
    if len(from_template) == len(template.resources):
        return from_template
    # Path metadata is only on when the CDK CLI runs the app (not for `python app.py` or
    # tests); the stack's assembly metadata always records each resource's logical id.
    return {**_construct_paths_from_assembly(template_path), **from_template}


def _construct_paths_from_assembly(template_path: Path) -> dict[str, str]:
    assembly = template_path.parent
    try:
        manifest = json.loads((assembly / "manifest.json").read_text(encoding="utf-8"))
        artifact = next(
            a for a in manifest["artifacts"].values() if nested(a, "properties", "templateFile") == template_path.name
        )
        metadata = dict(artifact.get("metadata") or {})
        if "additionalMetadataFile" in artifact:
            extra = (assembly / artifact["additionalMetadataFile"]).read_text(encoding="utf-8")
            metadata.update(json.loads(extra))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration):
        return {}
    return {
        entry["data"]: path.lstrip("/")
        for path, entries in metadata.items()
        for entry in entries
        if isinstance(entry, Mapping)
        and entry.get("type") == "aws:cdk:logicalId"
        and isinstance(entry.get("data"), str)
    }


@jsii.implements(IPolicyValidationPlugin)
class EventDrivenChecks:
    """Policy-validation plugin enforcing our event-driven conventions (see module doc)."""

    def __init__(self, *, max_stream_readers: int = 1) -> None:
        if max_stream_readers < 1:
            raise ValueError(f"max_stream_readers must be at least 1, got {max_stream_readers}")
        self._max_stream_readers = max_stream_readers

    # jsii reads these through property getters; plain class attributes are invisible to it.
    @property
    def name(self) -> str:
        return PLUGIN_NAME

    @property
    def version(self) -> str:
        return PLUGIN_VERSION

    @property
    def rule_ids(self) -> list[str]:
        return [rule.id for rule in ALL_RULES]

    def validate(self, context: IPolicyValidationContext) -> PolicyValidationPluginReport:
        # Without the construct tree, unqualified acknowledgements cannot be read: fail closed.
        acknowledged = AcknowledgedRules(getattr(context, "app_construct", None))
        stack_paths = {s.template_path: s.stack_construct_path for s in context.stack_templates}
        violations = [
            violation
            for template_path in context.template_paths
            for violation in self._validate_template(Path(template_path), stack_paths.get(template_path), acknowledged)
        ]
        return PolicyValidationPluginReport(success=not violations, violations=violations)

    def _validate_template(
        self, template_path: Path, stack_path: str | None, acknowledged: AcknowledgedRules
    ) -> list[PolicyViolation]:
        template = CfnTemplate.load(template_path)
        findings = evaluate_template(template, max_stream_readers=self._max_stream_readers)
        paths = construct_paths(template_path, template) if findings else {}
        violations = []
        for finding in findings:
            construct_path = paths.get(finding.logical_id) if finding.logical_id else stack_path
            # A resource without a known path can still be acknowledged on its stack or above.
            if not acknowledged.covers(construct_path or stack_path, finding.rule.id):
                violations.append(_violation(finding, template_path, construct_path))
        return violations


def _violation(finding: Finding, template_path: Path, construct_path: str | None) -> PolicyViolation:
    resource = PolicyViolatingResource(
        locations=[finding.location] if finding.location else [],
        template_path=str(template_path),
        resource_logical_id=finding.logical_id,
        construct_path=construct_path,
    )
    return PolicyViolation(
        rule_name=finding.rule.id,
        # CDK's text report prints the description but not the rule name: lead with it.
        description=f"{finding.rule.id}: {finding.message}",
        fix=finding.rule.fix,
        severity="error",
        violating_resources=[resource],
    )
