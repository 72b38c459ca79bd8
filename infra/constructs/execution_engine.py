"""ExecutionEngine: jobs of dependent orders, run by an event-driven orchestrator (``../shared/specs/04``).

What it builds (names, keys and variables from ``handlers/execution_engine/schema.py``)::

    POST /init (HTTP API, IAM auth) -> init -> orders (queued) + tmp/exec/<run>/<num>/exec.zip
                                            -> tmp/callbacks/runs/<run>/0000/result.json
    S3 ObjectCreated tmp/callbacks/runs/**/result.json -> orchestrator (async, 2 retries, DLQ)
        -> worker (async invoke, no retry)    -> result.json through its presigned PUT
        -> watchdog execution per order:  CheckResult -> IsDone? -> Wait -> CheckResult
                                          (writes timed_out / hard-cap result.json)
        -> finalize: job status, SOPS keys deleted, s3://<done>/<run>/done

- the three tables (orders, order_events, locks), encrypted with the subsystem key, PITR on;
- the internal bucket (exec bundles and callbacks) and the done bucket, both 1-day lifecycles;
- four functions with least-privilege roles: each gets exactly the actions its handler calls, on
  exactly its tables, object prefixes and parameters; the worker, which runs the order's own
  commands, has no DynamoDB rights at all and reads only ``tmp/exec/*`` and the SOPS keys;
- the watchdog, a STANDARD state machine (logging ALL, X-Ray);
- alarms: every function's errors, both DLQs' depth, orders that timed out or hit the hard cap
  (the watchdog's EMF metrics), and failed or timed-out watchdog executions.

A grant and an environment variable exist only when the prop that needs it is given: the
credential parameter and secret prefixes, and the code buckets of S3 code locations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import jsii
from aws_cdk import ArnFormat, Duration, Names, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_authorizers as apigwv2_authorizers
from aws_cdk import aws_apigatewayv2_integrations as apigwv2_integrations
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from handlers.execution_engine import schema
from handlers.execution_engine.settings import SERVICE  # the ``service`` dimension of the handlers' EMF metrics
from infra.acknowledge import acknowledge
from infra.constructs.alarm_routing import route_alarm
from infra.constructs.bucket_notification import notify_on_object_created
from infra.constructs.dead_letter_queue import DeadLetterQueue
from infra.constructs.encrypted_table import encrypted_table
from infra.constructs.function_alarms import FunctionAlarms
from infra.constructs.handler_function import HandlerFunction
from infra.constructs.logged_bucket import LoggedBucket

DEFAULT_SOPS_KEY_PARAMETER_PREFIX = "/execution-engine/sops-keys/"
# Lambda's invocation window for async events (MaximumEventAge) and its largest function timeout.
_MIN_EVENT_AGE = Duration.minutes(1)
_MAX_EVENT_AGE = Duration.hours(6)
_MAX_LAMBDA_TIMEOUT = Duration.minutes(15)
# API Gateway HTTP APIs end every integration after 30 s; an init still running then would
# create a job whose run_id the caller never learns.
_MAX_API_INTEGRATION_TIMEOUT = Duration.seconds(30)
# The watchdog writes the hard-cap result at 2 x the order's timeout, at most one check wait
# (jittered 50-70 s) after crossing it; the margin covers that wait, the check's own retries
# and a late start.
WATCHDOG_MARGIN = Duration.minutes(10)
# A STANDARD execution keeps at most 25,000 history events; one check loop costs 9 (task
# entered/scheduled/started/succeeded/exited, choice entered/exited, wait entered/exited), and
# with the shortest wait (50 s) 2 x 12 h needs 15,552 of them.
_MAX_ORDER_TIMEOUT = Duration.hours(12)
# A hierarchy path whose first level is named: "/" or "//" would cover every parameter.
_SSM_PREFIX = re.compile(r"^/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]*)*$")
_SECRET_PREFIX = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,256}$")
_S3_BUCKET_ARN = re.compile(r"^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_LAMBDA_SERVICE_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
_NO_VPC_REASON = (
    "Calls only S3, DynamoDB, SSM, Secrets Manager, Lambda and Step Functions through their public "
    "endpoints (and, for the worker, the git hosts and APIs an order's commands use): a VPC would need a "
    "NAT gateway and isolate nothing the role does not already restrict."
)


def validate_ssm_prefix(value: str, what: str, *, trailing_slash: bool = False) -> str | None:
    """Why ``value`` is not an SSM parameter name prefix (None when it is one)."""
    if not isinstance(value, str) or not _SSM_PREFIX.match(value):
        return (
            f"{what} must be an SSM parameter name prefix such as /app/credentials/ (starting with /, then "
            f"letters, digits and _.-/, no wildcard), got {value!r}"
        )
    if trailing_slash and not value.endswith("/"):
        return f"{what} must end with / (parameter names are <prefix><run_id>), got {value!r}"
    return None


def validate_secret_prefix(value: str, what: str) -> str | None:
    if not isinstance(value, str) or not _SECRET_PREFIX.match(value):
        return (
            f"{what} must be a secret name prefix such as app/credentials/ (letters, digits and /_+=.@-, "
            f"no wildcard), got {value!r}"
        )
    return None


def validate_bucket_arn(value: str, what: str) -> str | None:
    if not isinstance(value, str) or not _S3_BUCKET_ARN.match(value):
        return f"{what} must be the ARN of an S3 bucket (arn:aws:s3:::<bucket>, no key), got {value!r}"
    return None


@jsii.implements(apigwv2.IAccessLogSettings)
class _AccessLogSettings:
    """HTTP API access logs into ``log_group``, one JSON object per request."""

    def __init__(self, log_group: logs.ILogGroup) -> None:
        self._destination = apigwv2.LogGroupLogDestination(log_group)
        self._format = apigateway.AccessLogFormat.custom(
            json.dumps(
                {
                    "requestId": "$context.requestId",
                    "requestTime": "$context.requestTime",
                    "sourceIp": "$context.identity.sourceIp",
                    "caller": "$context.identity.caller",
                    "userArn": "$context.identity.userArn",
                    "routeKey": "$context.routeKey",
                    "status": "$context.status",
                    "protocol": "$context.protocol",
                    "responseLength": "$context.responseLength",
                    "integrationLatency": "$context.integrationLatency",
                    "integrationError": "$context.integrationErrorMessage",
                    "error": "$context.error.message",
                },
                separators=(",", ":"),
            )
        )

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigateway.AccessLogFormat:
        return self._format


@jsii.implements(lambda_.IDestination)
class _QueueDestination:
    """An SQS on-failure destination granting exactly what Lambda's delivery needs.

    CDK's ``SqsDestination`` grants ``queue.grant_send_messages`` (``kms:ReEncrypt*``,
    ``kms:GenerateDataKey*``); delivery to an encrypted queue needs ``sqs:SendMessage`` and
    ``kms:GenerateDataKey`` + ``kms:Decrypt`` through SQS only.
    """

    def __init__(self, queue: sqs.IQueue, key: kms.IKey) -> None:
        self._queue = queue
        self._key = key

    def bind(self, scope: Construct, fn: lambda_.IFunction, *, type: Any = None) -> lambda_.DestinationConfig:
        iam.Grant.add_to_principal(grantee=fn, actions=["sqs:SendMessage"], resource_arns=[self._queue.queue_arn])
        _grant_key_via(fn, self._key, ["kms:Decrypt", "kms:GenerateDataKey"], "sqs")
        return lambda_.DestinationConfig(destination=self._queue.queue_arn)


class ExecutionEngine(Construct):
    """Tables, buckets, the four functions, the watchdog state machine, the HTTP API, DLQs and alarms.

    Props (keyword-only; every default below is the one in effect):

    - ``encryption_key``: encrypts the tables, buckets, queues, log groups, function environments
      and the SOPS identities (SSM SecureStrings).
    - ``alarm_topic``: where every alarm goes (None: the alarms have no action).
    - ``credential_parameter_prefixes`` / ``credential_secret_prefixes``: SSM parameter and Secrets
      Manager name prefixes init may resolve for a job (``git_token_location``, ``ssm_paths``,
      ``secret_manager_paths``); none given, init may read none.
    - ``code_bucket_arns``: buckets init may read S3 code locations from (``s3_location``).
    - ``sops_key_parameter_prefix``: SSM name prefix of the per-job age identities
      (``<prefix><run_id>``; starts and ends with ``/``).
    - ``max_order_timeout`` (1 h): the longest order timeout the engine is sized for; bounds the
      watchdog executions (2 x this + ``WATCHDOG_MARGIN``); at most 12 h (execution history).
    - ``worker_timeout`` (15 min), ``worker_memory_mib`` (2048), ``worker_reserved_concurrency`` (20),
      ``worker_max_event_age`` (1 h).
    - ``orchestrator_timeout`` (5 min), ``orchestrator_memory_mib`` (1024),
      ``orchestrator_reserved_concurrency`` (10), ``orchestrator_max_event_age`` (6 h).
    - ``init_timeout`` (30 s, at most the API's 30 s), ``init_memory_mib`` (1024),
      ``init_reserved_concurrency`` (10).
    - ``watchdog_check_memory_mib`` (256), ``watchdog_check_reserved_concurrency`` (20).
    - ``api_rate_limit`` (10 requests/s), ``api_burst_limit`` (20).
    - ``log_retention`` (1 year), ``removal_policy`` of the tables (RETAIN).

    Attributes: ``tables`` (role -> table), ``orders_table``, ``order_events_table``,
    ``locks_table``, ``internal_bucket`` (+ ``internal_bucket_name``), ``done_bucket``,
    ``functions`` (``init`` / ``orchestrator`` / ``watchdog_check`` / ``worker`` ->
    ``HandlerFunction``), ``init_function``, ``orchestrator_function``,
    ``watchdog_check_function``, ``worker_function``, ``orchestrator_dlq``, ``worker_dlq``,
    ``watchdog`` (the state machine), ``watchdog_timeout``, ``watchdog_log_group``, ``api``,
    ``api_stage``, ``api_url``, ``init_url``, ``api_log_group``, ``alarms`` (name -> alarm).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        encryption_key: kms.IKey,
        alarm_topic: sns.ITopic | None = None,
        credential_parameter_prefixes: Sequence[str] = (),
        credential_secret_prefixes: Sequence[str] = (),
        code_bucket_arns: Sequence[str] = (),
        sops_key_parameter_prefix: str = DEFAULT_SOPS_KEY_PARAMETER_PREFIX,
        max_order_timeout: Duration = Duration.hours(1),
        worker_timeout: Duration = Duration.minutes(15),
        worker_memory_mib: int = 2048,
        worker_reserved_concurrency: int = 20,
        worker_max_event_age: Duration = Duration.hours(1),
        orchestrator_timeout: Duration = Duration.minutes(5),
        orchestrator_memory_mib: int = 1024,
        orchestrator_reserved_concurrency: int = 10,
        orchestrator_max_event_age: Duration = Duration.hours(6),
        init_timeout: Duration = Duration.seconds(30),
        init_memory_mib: int = 1024,
        init_reserved_concurrency: int = 10,
        watchdog_check_memory_mib: int = 256,
        watchdog_check_reserved_concurrency: int = 20,
        api_rate_limit: float = 10,
        api_burst_limit: int = 20,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_YEAR,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, construct_id)
        self.credential_parameter_prefixes = tuple(credential_parameter_prefixes)
        self.credential_secret_prefixes = tuple(credential_secret_prefixes)
        self.code_bucket_arns = tuple(code_bucket_arns)
        self.sops_key_parameter_prefix = sops_key_parameter_prefix
        _validate(
            credential_parameter_prefixes=self.credential_parameter_prefixes,
            credential_secret_prefixes=self.credential_secret_prefixes,
            code_bucket_arns=self.code_bucket_arns,
            sops_key_parameter_prefix=sops_key_parameter_prefix,
            durations={
                "max_order_timeout": (max_order_timeout, Duration.minutes(1), _MAX_ORDER_TIMEOUT),
                "worker_timeout": (worker_timeout, Duration.seconds(1), _MAX_LAMBDA_TIMEOUT),
                "orchestrator_timeout": (orchestrator_timeout, Duration.seconds(1), _MAX_LAMBDA_TIMEOUT),
                "init_timeout": (init_timeout, Duration.seconds(1), _MAX_API_INTEGRATION_TIMEOUT),
                "worker_max_event_age": (worker_max_event_age, _MIN_EVENT_AGE, _MAX_EVENT_AGE),
                "orchestrator_max_event_age": (orchestrator_max_event_age, _MIN_EVENT_AGE, _MAX_EVENT_AGE),
            },
            memory={
                "worker_memory_mib": worker_memory_mib,
                "orchestrator_memory_mib": orchestrator_memory_mib,
                "init_memory_mib": init_memory_mib,
                "watchdog_check_memory_mib": watchdog_check_memory_mib,
            },
            concurrency={
                "worker_reserved_concurrency": worker_reserved_concurrency,
                "orchestrator_reserved_concurrency": orchestrator_reserved_concurrency,
                "init_reserved_concurrency": init_reserved_concurrency,
                "watchdog_check_reserved_concurrency": watchdog_check_reserved_concurrency,
            },
            api_rate_limit=api_rate_limit,
            api_burst_limit=api_burst_limit,
        )
        self._key = encryption_key
        self._alarm_topic = alarm_topic
        self._log_retention = log_retention
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        self.functions: dict[str, HandlerFunction] = {}

        self._build_storage(removal_policy)
        self.worker_function = self._build_worker(
            timeout=worker_timeout,
            memory_size=worker_memory_mib,
            reserved_concurrency=worker_reserved_concurrency,
            max_event_age=worker_max_event_age,
        )
        self.watchdog_check_function = self._build_watchdog_check(
            memory_size=watchdog_check_memory_mib, reserved_concurrency=watchdog_check_reserved_concurrency
        )
        # Why bounded: a watchdog has written the hard-cap result and stopped by 2 x the order's
        # timeout + one wait; one still running after that is broken (its checks keep failing
        # over to retries, or answer "not done" for ever). The timeout ends it, bounding the
        # state transitions it costs, and the ExecutionsTimedOut alarm tells an operator.
        self.watchdog_timeout = Duration.seconds(2 * max_order_timeout.to_seconds() + WATCHDOG_MARGIN.to_seconds())
        self.watchdog = self._build_watchdog(self.watchdog_timeout)
        self.orchestrator_function = self._build_orchestrator(
            timeout=orchestrator_timeout,
            memory_size=orchestrator_memory_mib,
            reserved_concurrency=orchestrator_reserved_concurrency,
            max_event_age=orchestrator_max_event_age,
        )
        self.init_function = self._build_init(
            timeout=init_timeout, memory_size=init_memory_mib, reserved_concurrency=init_reserved_concurrency
        )
        self._build_api(rate_limit=api_rate_limit, burst_limit=api_burst_limit)
        self._build_stuck_order_alarms()

    # --- storage -------------------------------------------------------------------------------

    def _build_storage(self, removal_policy: RemovalPolicy) -> None:
        self.tables: dict[str, dynamodb.Table] = {
            table_schema.role: encrypted_table(
                self, table_schema, encryption_key=self._key, removal_policy=removal_policy
            )
            for table_schema in schema.ALL_TABLES
        }
        self.orders_table = self.tables[schema.ORDERS.role]
        self.order_events_table = self.tables[schema.ORDER_EVENTS.role]
        self.locks_table = self.tables[schema.LOCKS.role]
        stack = Stack.of(self)
        # A fixed name: the orchestrator's notification and invoke permission must name the
        # bucket before it exists, and every grant on it names it by this string, not by a
        # reference (bucket -> orchestrator -> worker / watchdog -> bucket would be a cycle).
        self._internal_bucket_stem = Names.unique_resource_name(self, max_length=24, separator="-").lower()
        self.internal_bucket_name = f"{self._internal_bucket_stem}-internal-{stack.account}-{stack.region}"
        expire_in_a_day = [
            s3.LifecycleRule(
                id="expire-after-a-day",
                expiration=Duration.days(1),
                noncurrent_version_expiration=Duration.days(1),
                abort_incomplete_multipart_upload_after=Duration.days(1),
            )
        ]
        self._internal = LoggedBucket(
            self,
            "InternalBucket",
            bucket_name=self.internal_bucket_name,
            encryption_key=self._key,
            purpose="the ExecutionEngine internal bucket (order bundles and result callbacks)",
            replication_reason=(
                "order bundles and results live for one run and expire after a day; a lost region loses "
                "the runs in flight there, which a replica could not resume either."
            ),
            log_prefix="internal/",
            lifecycle_rules=expire_in_a_day,
        )
        self.internal_bucket = self._internal.bucket
        # The first result of an order wins: every writer of result.json (init, the orchestrator,
        # the watchdog check, the worker's presigned PUT) sends If-None-Match: *, and the bucket
        # refuses a result written without it, whoever the writer is.
        self.internal_bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="FirstResultWins",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["s3:PutObject"],
                resources=[self.internal_bucket.arn_for_objects(f"{schema.CALLBACK_PREFIX}*")],
                conditions={"Null": {"s3:if-none-match": "true"}},
            )
        )
        self._done = LoggedBucket(
            self,
            "DoneBucket",
            encryption_key=self._key,
            purpose="the ExecutionEngine done bucket (job completion markers)",
            replication_reason=(
                "a done marker only signals a finished job to a waiting caller and expires after a day; "
                "the job's record stays in the tables."
            ),
            log_prefix="done/",
            lifecycle_rules=expire_in_a_day,
        )
        self.done_bucket = self._done.bucket

    def _internal_objects(self, prefix: str) -> str:
        return f"arn:{Stack.of(self).partition}:s3:::{self.internal_bucket_name}/{prefix}*"

    def _internal_bucket_arn(self) -> str:
        return f"arn:{Stack.of(self).partition}:s3:::{self.internal_bucket_name}"

    def _parameter_arn(self, prefix: str) -> str:
        return Stack.of(self).format_arn(
            service="ssm",
            resource="parameter",
            resource_name=f"{prefix.lstrip('/')}*",
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )

    def _secret_arn(self, prefix: str) -> str:
        return Stack.of(self).format_arn(
            service="secretsmanager",
            resource="secret",
            resource_name=f"{prefix}*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

    # --- functions -----------------------------------------------------------------------------

    def _function(
        self,
        name: str,
        *,
        handler: str,
        description: str,
        timeout: Duration,
        memory_size: int,
        reserved_concurrency: int,
        environment: dict[str, str],
    ) -> HandlerFunction:
        construct_id = "".join(part.title() for part in name.split("_")) + "Function"
        function = HandlerFunction(
            self,
            construct_id,
            handler=handler,
            description=description,
            service_name=SERVICE,
            encryption_key=self._key,
            timeout=timeout,
            memory_size=memory_size,
            reserved_concurrency=reserved_concurrency,
            # The stuck-orders alarms read schema.METRICS_NAMESPACE; Powertools takes the
            # namespace from this variable (HandlerFunction's product-wide default otherwise).
            environment={"POWERTOOLS_METRICS_NAMESPACE": schema.METRICS_NAMESPACE, **environment},
            log_retention=self._log_retention,
        )
        self.functions[name] = function
        self.alarms[f"{name}_errors"] = FunctionAlarms(
            self,
            f"{construct_id}Alarms",
            function=function.function,
            purpose=f"ExecutionEngine {name}",
            alarm_topic=self._alarm_topic,
        ).errors
        for rule_id in ("NIST.800.53.R5-LambdaInsideVPC", "HIPAA.Security-LambdaInsideVPC", "CKV_AWS_117"):
            acknowledge(function.function, rule_id, _NO_VPC_REASON)
        return function

    def _acknowledge_synchronous(self, function: HandlerFunction, invoker: str) -> None:
        for rule_id in ("Serverless-LambdaDLQ", "NIST.800.53.R5-LambdaDLQ", "HIPAA.Security-LambdaDLQ", "CKV_AWS_116"):
            acknowledge(
                function.function,
                rule_id,
                f"Invoked synchronously by {invoker} only, which receives every error (and retries or reports "
                "it); an asynchronous dead-letter queue would never receive anything.",
            )

    def _async_with_dlq(
        self,
        function: HandlerFunction,
        dlq_id: str,
        *,
        purpose: str,
        retry_attempts: int,
        max_event_age: Duration,
    ) -> DeadLetterQueue:
        """The function's asynchronous retries, and an alarmed DLQ as its on-failure destination."""
        dlq = DeadLetterQueue(self, dlq_id, encryption_key=self._key, alarm_topic=self._alarm_topic, purpose=purpose)
        function.function.configure_async_invoke(
            retry_attempts=retry_attempts,
            max_event_age=max_event_age,
            on_failure=_QueueDestination(dlq.queue, self._key),
        )
        return dlq

    def _acknowledge_on_failure_destination(self, function: HandlerFunction, dlq: str) -> None:
        for rule_id in ("Serverless-LambdaDLQ", "NIST.800.53.R5-LambdaDLQ", "HIPAA.Security-LambdaDLQ", "CKV_AWS_116"):
            acknowledge(
                function.function,
                rule_id,
                f"Failed asynchronous invocations go to the on-failure destination {dlq} (with its depth alarm), "
                "whose record carries the request and the error; a dead-letter config as well would deliver "
                "every failure twice.",
            )

    def _acknowledge_policy(self, function: HandlerFunction, findings: dict[str, str]) -> None:
        """IAM5 findings on the role's policy: ``Resource::*`` (X-Ray) plus the prefix wildcards given."""
        policy = function.role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "The X-Ray trace actions have no resource-level permissions; every other action names its resource.",
        )
        for resource, reason in findings.items():
            acknowledge(policy, f"AwsSolutions-IAM5[Resource::{self._flattened(resource)}]", reason)

    def _flattened(self, value: str) -> str:
        """A token string as cdk-nag prints it in a finding (``<Logical.Arn>``, ``<AWS::Region>``)."""

        def render(part: Any) -> str:
            if isinstance(part, str):
                return part
            if "Ref" in part:
                return f"<{part['Ref']}>"
            if "Fn::GetAtt" in part:
                return f"<{part['Fn::GetAtt'][0]}.{part['Fn::GetAtt'][1]}>"
            if "Fn::Join" in part:
                delimiter, parts = part["Fn::Join"]
                return str(delimiter).join(render(p) for p in parts)
            raise ValueError(f"cannot flatten {part!r}")

        return render(Stack.of(self).resolve(value))

    def _build_worker(
        self, *, timeout: Duration, memory_size: int, reserved_concurrency: int, max_event_age: Duration
    ) -> HandlerFunction:
        worker = self._function(
            "worker",
            handler=schema.WORKER_HANDLER,
            description="Runs one ExecutionEngine order's commands and reports its result",
            timeout=timeout,
            memory_size=memory_size,
            reserved_concurrency=reserved_concurrency,
            # None: the invocation event names the bundle and the key parameter (schema.py).
            environment={},
        )
        # The worker runs the order's own commands with this role: it may read bundles and the
        # SOPS identities and nothing else -- no table, and no write anywhere (it reports through
        # the presigned PUT in its bundle, signed by init).
        _allow(worker.role, ["s3:GetObject"], [self._internal_objects(schema.EXEC_PREFIX)])
        _allow(worker.role, ["ssm:GetParameter"], [self._parameter_arn(self.sops_key_parameter_prefix)])
        _grant_key_via(worker.role, self._key, ["kms:Decrypt"], "ssm", "s3")
        # Retry window: none. A retry would run the order's commands a second time; a worker that
        # dies (crash, timeout, throttled past the event age) is covered by the order's watchdog,
        # which writes timed_out and then the hard-cap result, and the failed invocation lands
        # in the worker DLQ. An event waiting longer than max_event_age (throttled by the
        # reserved concurrency) is dropped to the DLQ rather than run that late.
        self.worker_dlq = self._async_with_dlq(
            worker,
            "WorkerDlq",
            purpose="the ExecutionEngine worker (invocations that crashed, timed out or expired unrun)",
            retry_attempts=0,
            max_event_age=max_event_age,
        )
        self._acknowledge_on_failure_destination(worker, "the worker DLQ")
        self._acknowledge_policy(
            worker,
            {
                self._internal_objects(schema.EXEC_PREFIX): (
                    "Order bundles are tmp/exec/<run>/<num>/exec.zip, named at run time; the worker may read "
                    "that one prefix of the internal bucket and no other object."
                ),
                self._parameter_arn(self.sops_key_parameter_prefix): (
                    "SOPS identities are named <prefix><run_id> at run time; the worker may read parameters "
                    "under that one prefix only."
                ),
            },
        )
        return worker

    def _build_watchdog_check(self, *, memory_size: int, reserved_concurrency: int) -> HandlerFunction:
        check = self._function(
            "watchdog_check",
            handler=schema.WATCHDOG_CHECK_HANDLER,
            description="Checks one ExecutionEngine order's result for its watchdog",
            timeout=Duration.seconds(30),
            memory_size=memory_size,
            reserved_concurrency=reserved_concurrency,
            environment={schema.ENV_INTERNAL_BUCKET: self.internal_bucket_name},
        )
        callbacks = self._internal_objects(schema.CALLBACK_PREFIX)
        _allow(check.role, ["s3:GetObject", "s3:PutObject"], [callbacks])
        self._allow_missing_results(check.role)
        _grant_key_via(check.role, self._key, ["kms:Decrypt", "kms:GenerateDataKey"], "s3")
        self._acknowledge_synchronous(check, "its watchdog state machine")
        self._acknowledge_policy(
            check,
            {
                callbacks: (
                    "Results are tmp/callbacks/runs/<run>/<num>/result.json, named at run time; the check may "
                    "read and write (If-None-Match) that one prefix of the internal bucket only."
                )
            },
        )
        return check

    def _allow_missing_results(self, role: iam.IRole) -> None:
        """ListBucket on the internal bucket, so that a missing result.json answers 404, not 403.

        S3 answers a GetObject / HeadObject of a missing key with 403 AccessDenied unless the
        caller may list the bucket, and "no result yet" is the normal case for the watchdog check
        (``results.result_exists``) and the orchestrator (``results.read_result``): they must tell
        it from a real refusal. Not scoped by an ``s3:prefix`` condition: that key exists only in
        the context of a list request, so under such a condition the implicit check S3 makes for a
        missing key finds no permission and answers 403 again. What it exposes is key names (run
        ids and order numbers), never content; the worker, which runs the orders' own commands,
        gets no listing at all.
        """
        _allow(role, ["s3:ListBucket"], [self._internal_bucket_arn()])

    def _build_watchdog(self, timeout: Duration) -> sfn.StateMachine:
        check = tasks.LambdaInvoke(
            self,
            "CheckResult",
            lambda_function=self.watchdog_check_function.function,
            payload=sfn.TaskInput.from_json_path_at("$"),
            output_path="$.Payload",
            retry_on_service_exceptions=False,
        )
        # Retry window: Lambda's service errors and throttles only, 2 s doubling over 6 attempts
        # (about 2 minutes); anything else fails the execution, which the ExecutionsFailed alarm reports.
        check.add_retry(errors=_LAMBDA_SERVICE_ERRORS, interval=Duration.seconds(2), backoff_rate=2, max_attempts=6)
        wait = sfn.Wait(self, "Wait", time=sfn.WaitTime.seconds_path("$.wait_seconds"))
        done = sfn.Succeed(self, "Done")
        definition = check.next(
            sfn.Choice(self, "IsDone")
            .when(sfn.Condition.boolean_equals("$.done", True), done)
            .otherwise(wait.next(check))
        )
        self.watchdog_log_group = logs.LogGroup(
            self,
            "WatchdogLogs",
            retention=self._log_retention,
            encryption_key=self._key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        machine = sfn.StateMachine(
            self,
            "Watchdog",
            comment="ExecutionEngine watchdog of one order: CheckResult -> IsDone -> Wait -> CheckResult",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            state_machine_type=sfn.StateMachineType.STANDARD,
            timeout=timeout,
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.watchdog_log_group, level=sfn.LogLevel.ALL, include_execution_data=True
            ),
        )
        policy = machine.role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray and the CloudWatch Logs delivery actions Step Functions needs for logging have no "
            "resource-level permissions; the one task action names the watchdog check function.",
        )
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::{self._flattened(self.watchdog_check_function.function.function_arn)}:*]",
            "CDK's invoke grant covers the watchdog check function and its versions; the function publishes "
            "none, so the state machine invokes exactly that function.",
        )
        for rule_id in ("NIST.800.53.R5-IAMNoInlinePolicy", "HIPAA.Security-IAMNoInlinePolicy"):
            acknowledge(
                machine.role,
                rule_id,
                "The watchdog role's policy holds exactly this state machine's grants (invoke the check, "
                "deliver logs and traces) and lives and dies with the role; a managed policy would only add a "
                "reusable object.",
            )
        for metric_name, description in (
            ("ExecutionsFailed", "ExecutionEngine watchdog executions failed (the check kept failing)"),
            ("ExecutionsTimedOut", "ExecutionEngine watchdog executions ran past their bound"),
        ):
            self.alarms[f"watchdog_{metric_name}"] = route_alarm(
                cloudwatch.Alarm(
                    self,
                    f"Watchdog{metric_name}Alarm",
                    alarm_description=(
                        f"{description}: an order may never get a result and its job never finalize; see the "
                        "execution history and the watchdog check's log."
                    ),
                    metric=machine.metric(metric_name, period=Duration.minutes(5), statistic="Sum"),
                    threshold=1,
                    evaluation_periods=1,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                ),
                self._alarm_topic,
            )
        return machine

    def _build_orchestrator(
        self, *, timeout: Duration, memory_size: int, reserved_concurrency: int, max_event_age: Duration
    ) -> HandlerFunction:
        orchestrator = self._function(
            "orchestrator",
            handler=schema.ORCHESTRATOR_HANDLER,
            description="Evaluates an ExecutionEngine run on each result callback, dispatches and finalizes",
            timeout=timeout,
            memory_size=memory_size,
            reserved_concurrency=reserved_concurrency,
            environment={
                schema.ENV_ORDERS_TABLE: self.orders_table.table_name,
                schema.ENV_ORDER_EVENTS_TABLE: self.order_events_table.table_name,
                schema.ENV_LOCKS_TABLE: self.locks_table.table_name,
                schema.ENV_INTERNAL_BUCKET: self.internal_bucket_name,
                schema.ENV_DONE_BUCKET: self.done_bucket.bucket_name,
                schema.ENV_WORKER_FUNCTION: self.worker_function.function.function_arn,
                schema.ENV_WATCHDOG_STATE_MACHINE_ARN: self.watchdog.state_machine_arn,
                schema.ENV_SOPS_KEY_PARAMETER_PREFIX: self.sops_key_parameter_prefix,
            },
        )
        role = orchestrator.role
        _allow(
            role,
            ["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:UpdateItem"],
            [self.orders_table.table_arn],
        )
        _allow(role, ["dynamodb:PutItem"], [self.order_events_table.table_arn])
        _allow(
            role,
            ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
            [self.locks_table.table_arn],
        )
        callbacks = self._internal_objects(schema.CALLBACK_PREFIX)
        # GetObject: each running order's result; PutObject: the result of a failed target call.
        _allow(role, ["s3:GetObject", "s3:PutObject"], [callbacks])
        self._allow_missing_results(role)
        _allow(role, ["s3:PutObject"], [self.done_bucket.arn_for_objects("*")])
        _allow(role, ["lambda:InvokeFunction"], [self.worker_function.function.function_arn])
        _allow(role, ["states:StartExecution"], [self.watchdog.state_machine_arn])
        executions = Stack.of(self).format_arn(
            service="states",
            resource="execution",
            resource_name=f"{self.watchdog.state_machine_name}:*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        _allow(role, ["states:DescribeExecution"], [executions])
        sops_keys = self._parameter_arn(self.sops_key_parameter_prefix)
        _allow(role, ["ssm:DeleteParameter", "ssm:DeleteParameters"], [sops_keys])
        _grant_key_via(role, self._key, ["kms:Decrypt", "kms:GenerateDataKey"], "dynamodb", "s3")
        # Retry window: a failed pass is retried twice (about 1 and 2 minutes later); every pass is
        # idempotent (conditional reservations, first result wins). MaximumEventAge is Lambda's
        # maximum, 6 h by default: a callback is the only trigger of its run's next pass (the
        # watchdog stops once result.json exists), so a callback delayed by throttling under the
        # reserved concurrency must wait, not expire; what fails all three attempts or outlives
        # the age lands in the orchestrator DLQ with its alarm.
        self.orchestrator_dlq = self._async_with_dlq(
            orchestrator,
            "OrchestratorDlq",
            purpose="the ExecutionEngine orchestrator (result callbacks that could not be processed)",
            retry_attempts=2,
            max_event_age=max_event_age,
        )
        self._acknowledge_on_failure_destination(orchestrator, "the orchestrator DLQ")
        notify_on_object_created(
            self,
            "OrchestratorInvokePermission",
            bucket=self.internal_bucket,
            bucket_arn=self._internal_bucket_arn(),
            function=orchestrator.function,
            prefix=schema.CALLBACK_PREFIX,
            suffix=schema.RESULT_FILE,
        )
        self._acknowledge_policy(
            orchestrator,
            {
                callbacks: (
                    "Results are tmp/callbacks/runs/<run>/<num>/result.json, named at run time; the orchestrator "
                    "reads them and records a failed target call there, on that one prefix only."
                ),
                self.done_bucket.arn_for_objects("*"): (
                    "Done markers are <run>/done, named at run time; the done bucket holds nothing else, and the "
                    "orchestrator may only put objects there."
                ),
                executions: (
                    "Watchdog executions are named <run>-<num> at run time; DescribeExecution is "
                    "allowed on the executions of this one state machine only."
                ),
                sops_keys: (
                    "SOPS identities are named <prefix><run_id> at run time; the orchestrator deletes a finished "
                    "job's identity under that one prefix only."
                ),
            },
        )
        return orchestrator

    def _build_init(self, *, timeout: Duration, memory_size: int, reserved_concurrency: int) -> HandlerFunction:
        environment = {
            schema.ENV_ORDERS_TABLE: self.orders_table.table_name,
            schema.ENV_ORDER_EVENTS_TABLE: self.order_events_table.table_name,
            schema.ENV_INTERNAL_BUCKET: self.internal_bucket_name,
            schema.ENV_DONE_BUCKET: self.done_bucket.bucket_name,
            schema.ENV_SOPS_KEY_PARAMETER_PREFIX: self.sops_key_parameter_prefix,
            schema.ENV_SOPS_KEY_KMS_KEY_ID: self._key.key_arn,
        }
        if self.credential_parameter_prefixes:
            environment[schema.ENV_CREDENTIAL_PARAMETER_PREFIXES] = ",".join(self.credential_parameter_prefixes)
        if self.credential_secret_prefixes:
            environment[schema.ENV_CREDENTIAL_SECRET_PREFIXES] = ",".join(self.credential_secret_prefixes)
        init = self._function(
            "init",
            handler=schema.INIT_HANDLER,
            description="Validates and packages an ExecutionEngine job (POST /init)",
            timeout=timeout,
            memory_size=memory_size,
            reserved_concurrency=reserved_concurrency,
            environment=environment,
        )
        role = init.role
        _allow(role, ["dynamodb:PutItem", "dynamodb:BatchWriteItem"], [self.orders_table.table_arn])
        _allow(role, ["dynamodb:PutItem"], [self.order_events_table.table_arn])
        exec_objects = self._internal_objects(schema.EXEC_PREFIX)
        callbacks = self._internal_objects(schema.CALLBACK_PREFIX)
        # tmp/callbacks/runs/*: the init result, and the presigned PUTs of the workers' results,
        # which S3 authorizes as init's role.
        _allow(role, ["s3:PutObject"], [exec_objects, callbacks])
        sops_keys = self._parameter_arn(self.sops_key_parameter_prefix)
        # The handler creates each identity as an Advanced SecureString with an Expiration policy.
        _allow(role, ["ssm:PutParameter", "ssm:AddTagsToResource"], [sops_keys])
        _grant_key_via(role, self._key, ["kms:Encrypt", "kms:GenerateDataKey"], "ssm")
        _grant_key_via(role, self._key, ["kms:Decrypt", "kms:GenerateDataKey"], "dynamodb", "s3")
        findings = {
            exec_objects: (
                "Order bundles are tmp/exec/<run>/<num>/exec.zip, named at run time; init may put objects under "
                "that one prefix of the internal bucket."
            ),
            callbacks: (
                "Results are tmp/callbacks/runs/<run>/<num>/result.json, named at run time; init writes the "
                "job's result and signs the workers' PUT URLs on that one prefix only."
            ),
            sops_keys: (
                "SOPS identities are named <prefix><run_id> at run time; init creates and tags parameters under "
                "that one prefix only."
            ),
        }
        parameters = [self._parameter_arn(prefix) for prefix in self.credential_parameter_prefixes]
        if parameters:
            _allow(role, ["ssm:GetParameter"], parameters)
            findings.update(
                {
                    arn: "Credentials are named by each job's parameters; init may read the parameters under this "
                    "configured prefix (credential_parameter_prefixes) and no other."
                    for arn in parameters
                }
            )
        secrets = [self._secret_arn(prefix) for prefix in self.credential_secret_prefixes]
        if secrets:
            _allow(role, ["secretsmanager:GetSecretValue"], secrets)
            findings.update(
                {
                    arn: "Credentials are named by each job's secret references; init may read the secrets under "
                    "this configured prefix (credential_secret_prefixes) and no other."
                    for arn in secrets
                }
            )
        code_objects = [f"{arn}/*" for arn in self.code_bucket_arns]
        if code_objects:
            _allow(role, ["s3:GetObject"], code_objects)
            findings.update(
                {
                    arn: "Orders name their S3 code location at run time; init may read objects of this configured "
                    "code bucket (code_bucket_arns) only."
                    for arn in code_objects
                }
            )
        self._acknowledge_synchronous(init, "the HTTP API (POST /init)")
        self._acknowledge_policy(init, findings)
        return init

    # --- API -----------------------------------------------------------------------------------

    def _build_api(self, *, rate_limit: float, burst_limit: int) -> None:
        self.api_log_group = logs.LogGroup(
            self,
            "ApiAccessLogs",
            retention=self._log_retention,
            encryption_key=self._key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.api = apigwv2.HttpApi(
            self,
            "Api",
            description="ExecutionEngine: POST /init (IAM-signed requests only)",
            create_default_stage=False,
        )
        self.api_stage = apigwv2.HttpStage(
            self,
            "ApiStage",
            http_api=self.api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(rate_limit=rate_limit, burst_limit=burst_limit),
            access_log_settings=_AccessLogSettings(self.api_log_group),
        )
        self.api.add_routes(
            path="/init",
            methods=[apigwv2.HttpMethod.POST],
            integration=apigwv2_integrations.HttpLambdaIntegration("InitIntegration", self.init_function.function),
            authorizer=apigwv2_authorizers.HttpIamAuthorizer(),
        )
        # POST /ssm (SSM Run Command orders) goes here, on the same IAM authorizer: the next issue.
        self.api_url = self.api_stage.url
        self.init_url = f"{self.api_stage.url}init"

    # --- grants for callers ---------------------------------------------------------------------

    def grant_submit(self, grantee: iam.IGrantable) -> None:
        """Let ``grantee`` call ``POST /init`` (what ``python -m handlers.execution_engine submit`` signs)."""
        _allow(grantee, ["execute-api:Invoke"], [self.api.arn_for_execute_api("POST", "/init", "$default")])

    def grant_read_runs(self, grantee: iam.IGrantable) -> None:
        """Let ``grantee`` read runs as ``status`` and ``logs`` do: Query the orders table's run index."""
        _allow(grantee, ["dynamodb:Query"], [f"{self.orders_table.table_arn}/index/{schema.ORDERS_INDEX}"])
        _grant_key_via(grantee, self._key, ["kms:Decrypt"], "dynamodb")

    # --- alarms --------------------------------------------------------------------------------

    def _build_stuck_order_alarms(self) -> None:
        for metric_name, description in (
            (
                schema.METRIC_ORDERS_TIMED_OUT,
                "orders never reported within their timeout (the watchdog wrote timed_out)",
            ),
            (
                schema.METRIC_HARD_CAP_REACHED,
                "orders never reported within twice their timeout (the watchdog wrote the hard-cap result)",
            ),
        ):
            self.alarms[metric_name] = route_alarm(
                cloudwatch.Alarm(
                    self,
                    f"{metric_name}Alarm",
                    alarm_description=(
                        f"ExecutionEngine stuck orders: {description}; see the watchdog check's log and the "
                        "worker's (or its DLQ)."
                    ),
                    metric=cloudwatch.Metric(
                        namespace=schema.METRICS_NAMESPACE,
                        metric_name=metric_name,
                        dimensions_map={"service": SERVICE},
                        period=Duration.minutes(5),
                        statistic="Sum",
                    ),
                    threshold=0,
                    evaluation_periods=1,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                ),
                self._alarm_topic,
            )
        self.alarms["orchestrator_dlq_depth"] = self.orchestrator_dlq.depth_alarm
        self.alarms["worker_dlq_depth"] = self.worker_dlq.depth_alarm


def _validate(
    *,
    credential_parameter_prefixes: tuple[str, ...],
    credential_secret_prefixes: tuple[str, ...],
    code_bucket_arns: tuple[str, ...],
    sops_key_parameter_prefix: str,
    durations: dict[str, tuple[Duration, Duration, Duration]],
    memory: dict[str, int],
    concurrency: dict[str, int],
    api_rate_limit: float,
    api_burst_limit: int,
) -> None:
    """Every invalid prop in one error."""
    errors = [
        error
        for error in (
            *(validate_ssm_prefix(p, "credential_parameter_prefixes entry") for p in credential_parameter_prefixes),
            *(validate_secret_prefix(p, "credential_secret_prefixes entry") for p in credential_secret_prefixes),
            *(validate_bucket_arn(arn, "code_bucket_arns entry") for arn in code_bucket_arns),
            validate_ssm_prefix(sops_key_parameter_prefix, "sops_key_parameter_prefix", trailing_slash=True),
        )
        if error
    ]
    for name, values in (
        ("credential_parameter_prefixes", credential_parameter_prefixes),
        ("credential_secret_prefixes", credential_secret_prefixes),
        ("code_bucket_arns", code_bucket_arns),
    ):
        if len(set(values)) != len(values):
            errors.append(f"{name} lists an entry twice: {list(values)}")
    for name, (value, low, high) in durations.items():
        if not low.to_seconds() <= value.to_seconds() <= high.to_seconds():
            errors.append(f"{name} must be between {low.to_human_string()} and {high.to_human_string()}")
    for name, mib in memory.items():
        if isinstance(mib, bool) or not isinstance(mib, int) or not 128 <= mib <= 10240:
            errors.append(f"{name} must be an integer between 128 and 10240, got {mib!r}")
    for name, count in concurrency.items():
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            errors.append(f"{name} must be an integer between 1 and 1000, got {count!r}")
    if not api_rate_limit > 0:
        errors.append(f"api_rate_limit must be positive, got {api_rate_limit!r}")
    if isinstance(api_burst_limit, bool) or not isinstance(api_burst_limit, int) or api_burst_limit < 1:
        errors.append(f"api_burst_limit must be a positive integer, got {api_burst_limit!r}")
    if errors:
        raise ValueError("ExecutionEngine: " + "; ".join(errors))


def _allow(grantee: iam.IGrantable, actions: list[str], resources: list[str]) -> None:
    iam.Grant.add_to_principal(grantee=grantee, actions=actions, resource_arns=resources)


def _grant_key_via(grantee: iam.IGrantable, key: kms.IKey, actions: list[str], *services: str) -> None:
    """``actions`` on the subsystem key, only through the named services (``kms:ViaService``)."""
    region = Stack.of(key).region
    via = [f"{service}.{region}.amazonaws.com" for service in services]
    iam.Grant.add_to_principal(
        grantee=grantee,
        actions=actions,
        resource_arns=[key.key_arn],
        conditions={"StringEquals": {"kms:ViaService": via}},
    )
