"""StreamRecovery: terminal task status updates delivered to every registered webhook.

What it builds (``../shared/specs/03-stream-recovery.md``):

- the five tables of ``handlers/stream_recovery/schema.py`` (created from those schemas, or the
  caller's own given as ``tables``), the markers table with its ``NEW_IMAGE`` stream and TTL;
- the **stream worker** on the markers stream (INSERT records only: a marker's refreshes and
  its deletion are not work), bisecting, reporting item failures by sequence number, bounded
  retries, an encrypted on-failure DLQ with its depth alarm, reserved concurrency, iterator-age
  and error alarms;
- the **sweeper** on an EventBridge Scheduler schedule (every 5 minutes by default), one run at a
  time, with its own DLQ for invocations that could not be delivered, an error alarm and an
  alarm on sweeps that finished with errors (the handler's ``sweep_errors`` metric);
- least-privilege IAM per function: each role gets exactly the DynamoDB actions its code calls
  on exactly its tables (no Scan anywhere: the sweeper reads two sparse indexes), and
  ``grant_writer`` for the application that imports the writer library.

The spec's timing rules are checked here at synth (and again by the workers at cold start, from
the same ``DeliveryPolicy.check_fits``): claim expiry > retry horizon (a live claim outlasts a
whole delivery), function timeout > one attempt (connect + read timeout), claim expiry > function
timeout (a killed worker's claim expires only once the worker is certainly gone).
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sns as sns
from constructs import Construct

from handlers.common.observability import METRICS_NAMESPACE
from handlers.stream_recovery import schema, writer
from handlers.stream_recovery.delivery import DeliveryPolicy
from handlers.stream_recovery.settings import SERVICE
from infra.acknowledge import acknowledge
from infra.constructs.alarm_routing import route_alarm
from infra.constructs.dead_letter_queue import DeadLetterQueue
from infra.constructs.encrypted_table import encrypted_table
from infra.constructs.function_alarms import FunctionAlarms
from infra.constructs.handler_function import HandlerFunction
from infra.constructs.stream_source import stream_event_source

STREAM_HANDLER = "handlers.stream_recovery.stream_handler.handler"
SWEEPER_HANDLER = "handlers.stream_recovery.sweeper_handler.handler"


@dataclass(frozen=True)
class StreamRecoveryTables:
    """The five tables, when the application already has them (keys as in ``schema.py``).

    ``pending_dispatches`` must have a stream of ``NEW_IMAGE`` (or ``NEW_AND_OLD_IMAGES``) and the
    ``bySweepShard`` index; ``deliveries`` the ``byClaimShard`` index.
    """

    tasks: dynamodb.ITable
    task_events: dynamodb.ITable
    push_configs: dynamodb.ITable
    pending_dispatches: dynamodb.ITable
    deliveries: dynamodb.ITable

    def environment(self) -> dict[str, str]:
        """The writer library's variables (the workers read the same names)."""
        return {
            writer.ENV_TASKS_TABLE: self.tasks.table_name,
            writer.ENV_TASK_EVENTS_TABLE: self.task_events.table_name,
            writer.ENV_PUSH_CONFIGS_TABLE: self.push_configs.table_name,
            writer.ENV_PENDING_DISPATCHES_TABLE: self.pending_dispatches.table_name,
            writer.ENV_DELIVERIES_TABLE: self.deliveries.table_name,
        }


class StreamRecovery(Construct):
    """Stream worker, sweeper, schedule, DLQs and alarms; tables created unless given.

    Attributes: ``tables``, ``stream_function``, ``sweeper_function`` (and their
    ``HandlerFunction`` wrappers ``stream_worker`` / ``sweeper``), ``stream_dlq``,
    ``sweeper_dlq``, ``event_source``, ``sweep_schedule``, ``stream_alarms``,
    ``sweeper_alarms``, ``sweep_errors_alarm``, ``policy`` (the ``DeliveryPolicy`` the
    workers will run with).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        encryption_key: kms.IKey,
        tables: StreamRecoveryTables | None = None,
        # The key of given tables, when they are encrypted with a customer-managed key; the
        # roles may use it only through DynamoDB. Created tables use ``encryption_key``.
        tables_encryption_key: kms.IKey | None = None,
        alarm_topic: sns.ITopic | None = None,
        # Retry window: one delivery (all its attempts and backoffs) ends within this horizon;
        # what is still failing then is left reclaimable and retried by the sweeper.
        retry_horizon: Duration = Duration.seconds(60),
        max_attempts: int = 8,
        # A delivery claim's lease: longer than the function timeout, so the claim of a worker
        # that was killed expires only after that worker is certainly gone.
        claim_expiry: Duration = Duration.minutes(5),
        timeout: Duration = Duration.seconds(90),
        memory_size: int = 512,
        reserved_concurrency: int = 10,
        # Tasks delivered at once inside one batch (markers of one task stay in stream order).
        max_concurrency: int = 8,
        batch_size: int = 25,
        max_batching_window: Duration = Duration.seconds(1),
        # A record failing with storage errors is retried this many times, then goes to the DLQ;
        # its marker stays, so the sweeper still delivers it once it is stale.
        retry_attempts: int = 5,
        max_record_age: Duration = Duration.hours(6),
        sweep_interval: Duration = Duration.minutes(5),
        sweeper_timeout: Duration = Duration.minutes(4),
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, construct_id)
        self.policy = self._checked_policy(
            retry_horizon=retry_horizon,
            max_attempts=max_attempts,
            claim_expiry=claim_expiry,
            timeouts={"timeout": timeout, "sweeper_timeout": sweeper_timeout},
        )
        if not 1 <= max_concurrency <= 64:
            raise ValueError("StreamRecovery: max_concurrency must be between 1 and 64")
        if sweep_interval.to_seconds() < 60:
            raise ValueError("StreamRecovery: sweep_interval must be at least one minute")
        if not sweeper_timeout.to_seconds() < sweep_interval.to_seconds():
            raise ValueError(
                "StreamRecovery: sweeper_timeout must be shorter than sweep_interval (one sweep at a time)"
            )
        if tables is not None and tables.pending_dispatches.table_stream_arn is None:
            raise ValueError(
                "StreamRecovery: tables.pending_dispatches needs its stream (NEW_IMAGE): the stream worker reads it"
            )
        if tables is None and tables_encryption_key is not None:
            raise ValueError(
                "StreamRecovery: tables_encryption_key is for given tables; created tables use encryption_key"
            )

        self.tables = tables or self._create_tables(encryption_key, removal_policy)
        self._table_key = encryption_key if tables is None else tables_encryption_key
        environment = {
            **self.tables.environment(),
            "DELIVERY_RETRY_HORIZON_SECONDS": str(int(retry_horizon.to_seconds())),
            "DELIVERY_MAX_ATTEMPTS": str(max_attempts),
            "DELIVERY_CLAIM_EXPIRY_SECONDS": str(int(claim_expiry.to_seconds())),
            "STREAM_MAX_CONCURRENCY": str(max_concurrency),
        }
        self._build_stream_worker(
            encryption_key=encryption_key,
            alarm_topic=alarm_topic,
            environment=environment,
            timeout=timeout,
            memory_size=memory_size,
            reserved_concurrency=reserved_concurrency,
            batch_size=batch_size,
            max_batching_window=max_batching_window,
            retry_attempts=retry_attempts,
            max_record_age=max_record_age,
        )
        self._build_sweeper(
            encryption_key=encryption_key,
            alarm_topic=alarm_topic,
            environment=environment,
            timeout=sweeper_timeout,
            sweep_interval=sweep_interval,
        )

    # --- validation ----------------------------------------------------------------------------

    @staticmethod
    def _checked_policy(
        *,
        retry_horizon: Duration,
        max_attempts: int,
        claim_expiry: Duration,
        timeouts: dict[str, Duration],
    ) -> DeliveryPolicy:
        try:
            # Connect and read timeouts are DeliveryPolicy's (5 s + 15 s per attempt).
            policy = DeliveryPolicy(
                retry_horizon_seconds=retry_horizon.to_seconds(),
                max_attempts=max_attempts,
            )
            for name, function_timeout in timeouts.items():
                try:
                    policy.check_fits(
                        claim_expiry_seconds=claim_expiry.to_seconds(),
                        function_timeout_seconds=function_timeout.to_seconds(),
                    )
                except ValueError as exc:
                    which = f" (the {name} prop)" if "function timeout" in str(exc) else ""
                    raise ValueError(f"{exc}{which}") from exc
        except ValueError as exc:
            raise ValueError(f"StreamRecovery: {exc}") from exc
        return policy

    # --- tables --------------------------------------------------------------------------------

    def _create_tables(self, encryption_key: kms.IKey, removal_policy: RemovalPolicy) -> StreamRecoveryTables:
        created = {
            table_schema.role: encrypted_table(
                self, table_schema, encryption_key=encryption_key, removal_policy=removal_policy
            )
            for table_schema in schema.ALL_TABLES
        }
        return StreamRecoveryTables(**created)

    # --- stream worker -------------------------------------------------------------------------

    def _build_stream_worker(
        self,
        *,
        encryption_key: kms.IKey,
        alarm_topic: sns.ITopic | None,
        environment: dict[str, str],
        timeout: Duration,
        memory_size: int,
        reserved_concurrency: int,
        batch_size: int,
        max_batching_window: Duration,
        retry_attempts: int,
        max_record_age: Duration,
    ) -> None:
        self.stream_dlq = DeadLetterQueue(
            self, "StreamDlq", encryption_key=encryption_key, alarm_topic=alarm_topic, purpose="the webhook redelivery"
        )
        self.stream_worker = HandlerFunction(
            self,
            "StreamWorker",
            handler=STREAM_HANDLER,
            description="Delivers terminal task status updates to their push-notification webhooks",
            service_name=SERVICE,
            encryption_key=encryption_key,
            timeout=timeout,
            memory_size=memory_size,
            reserved_concurrency=reserved_concurrency,
            environment={**environment, "FUNCTION_TIMEOUT_SECONDS": str(int(timeout.to_seconds()))},
            dead_letter_queue=self.stream_dlq.queue,
        )
        self.stream_function = self.stream_worker.function
        self.stream_worker.acknowledge_key_grants()
        # A marker's MODIFY (refresh) and REMOVE (consumed, TTL) records are not work; without the
        # filter they would be two thirds of the invocations.
        self.event_source = stream_event_source(
            self.tables.pending_dispatches,
            dead_letter_queue=self.stream_dlq.queue,
            event_names=("INSERT",),
            batch_size=batch_size,
            max_batching_window=max_batching_window,
            retry_attempts=retry_attempts,
            max_record_age=max_record_age,
        )
        self.stream_function.add_event_source(self.event_source)
        self.stream_alarms = FunctionAlarms(
            self,
            "StreamAlarms",
            function=self.stream_function,
            purpose="webhook redelivery",
            alarm_topic=alarm_topic,
            max_iterator_age=Duration.minutes(5),
        )
        self._grant_dispatch(self.stream_worker.role)
        self._acknowledge_wildcards(
            self.stream_worker,
            "dynamodb:ListStreams (added by the DynamoDB event source) and the X-Ray trace actions have no "
            "resource-level permissions; every other action here names its table.",
        )

    # --- sweeper -------------------------------------------------------------------------------

    def _build_sweeper(
        self,
        *,
        encryption_key: kms.IKey,
        alarm_topic: sns.ITopic | None,
        environment: dict[str, str],
        timeout: Duration,
        sweep_interval: Duration,
    ) -> None:
        self.sweeper_dlq = DeadLetterQueue(
            self, "SweeperDlq", encryption_key=encryption_key, alarm_topic=alarm_topic, purpose="the webhook sweeper"
        )
        self.sweeper = HandlerFunction(
            self,
            "Sweeper",
            handler=SWEEPER_HANDLER,
            description="Redelivers stale pending-dispatch markers and reclaimable webhook delivery claims",
            service_name=f"{SERVICE}-sweeper",
            encryption_key=encryption_key,
            timeout=timeout,
            memory_size=512,
            # One sweep at a time: a second one would race the first over the same stale items
            # (harmless under the claims, but pure waste).
            reserved_concurrency=1,
            environment={**environment, "FUNCTION_TIMEOUT_SECONDS": str(int(timeout.to_seconds()))},
            dead_letter_queue=self.sweeper_dlq.queue,
        )
        self.sweeper_function = self.sweeper.function
        self.sweeper.acknowledge_key_grants()
        self._grant_dispatch(self.sweeper.role)
        self._grant_sweep_indexes(self.sweeper.role)
        # Retry window: a sweep that could not be delivered is retried for at most one interval
        # (the next scheduled sweep does the same work), then lands in the DLQ with its alarm.
        self.schedule_role = iam.Role(
            self,
            "SweepScheduleRole",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}}
            ),
            description="EventBridge Scheduler: invokes the StreamRecovery sweeper",
        )
        self.sweep_schedule = scheduler.Schedule(
            self,
            "SweepSchedule",
            description="Sweeps stale StreamRecovery markers and reclaimable delivery claims",
            schedule=scheduler.ScheduleExpression.rate(sweep_interval),
            key=encryption_key,
            target=scheduler_targets.LambdaInvoke(
                self.sweeper_function,
                role=self.schedule_role,
                dead_letter_queue=self.sweeper_dlq.queue,
                max_event_age=sweep_interval,
                retry_attempts=2,
            ),
        )
        self._acknowledge_schedule_role()
        self.sweeper_alarms = FunctionAlarms(
            self, "SweeperAlarms", function=self.sweeper_function, purpose="webhook sweeper", alarm_topic=alarm_topic
        )
        # The sweeper returns normally when some items failed (the rest of the sweep still ran):
        # the function's Errors metric stays quiet, its own count of failed items does not.
        self.sweep_errors_alarm = route_alarm(
            cloudwatch.Alarm(
                self,
                "SweepErrorsAlarm",
                alarm_description=(
                    "Webhook sweeps finished with errors three times running: stale markers or reclaimable "
                    "claims could not be processed (storage errors or a broken item); see the sweeper's log."
                ),
                metric=cloudwatch.Metric(
                    namespace=METRICS_NAMESPACE,
                    metric_name="sweep_errors",
                    dimensions_map={"service": SERVICE},
                    period=sweep_interval,
                    statistic="Sum",
                ),
                threshold=1,
                evaluation_periods=3,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            alarm_topic,
        )
        self._acknowledge_wildcards(
            self.sweeper,
            "The X-Ray trace actions have no resource-level permissions; every other action here names its "
            "table or index.",
        )

    # --- grants --------------------------------------------------------------------------------

    def _grant_dispatch(self, role: iam.IRole) -> None:
        """What ``Redispatcher`` calls: reads that decide, the marker refresh/delete, the claims."""
        tables = self.tables
        _grant(role, tables.tasks, "dynamodb:GetItem")
        _grant(role, tables.task_events, "dynamodb:GetItem")
        _grant(role, tables.push_configs, "dynamodb:Query")
        _grant(role, tables.pending_dispatches, "dynamodb:UpdateItem", "dynamodb:DeleteItem")
        _grant(role, tables.deliveries, "dynamodb:GetItem", "dynamodb:UpdateItem")
        self._grant_table_key(role, write=True)

    def _grant_sweep_indexes(self, role: iam.IRole) -> None:
        """The sweeper's two sparse indexes (Query, never Scan) and the marker re-read."""
        tables = self.tables
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["dynamodb:Query"],
                resources=[
                    f"{tables.pending_dispatches.table_arn}/index/{schema.MARKER_SWEEP_INDEX}",
                    f"{tables.deliveries.table_arn}/index/{schema.DELIVERY_CLAIM_INDEX}",
                ],
            )
        )
        _grant(role, tables.pending_dispatches, "dynamodb:GetItem")

    def grant_writer(self, grantee: iam.IGrantable) -> None:
        """Let the application use the writer library (``StreamRecoveryWriter``) on these tables.

        Commits (status + event + marker in one transaction), the push-config compare-and-swap,
        reads of a retried commit, and deleting push configs.
        """
        tables = self.tables
        _grant(grantee, tables.tasks, "dynamodb:GetItem", "dynamodb:UpdateItem")
        _grant(grantee, tables.task_events, "dynamodb:GetItem", "dynamodb:PutItem")
        _grant(grantee, tables.push_configs, "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query")
        _grant(grantee, tables.pending_dispatches, "dynamodb:PutItem", "dynamodb:GetItem")
        self._grant_table_key(grantee, write=True)

    def writer_environment(self, *, push_dispatch: bool = True) -> dict[str, str]:
        """The variables ``StreamRecoveryWriter.from_env`` reads, for the application's function."""
        return {**self.tables.environment(), writer.ENV_PUSH_DISPATCH: "true" if push_dispatch else "false"}

    def _grant_table_key(self, grantee: iam.IGrantable, *, write: bool) -> None:
        if self._table_key is None:
            return  # AWS-owned or AWS-managed table encryption: nothing to grant
        actions = ["kms:Decrypt", "kms:DescribeKey"] + (["kms:Encrypt", "kms:GenerateDataKey"] if write else [])
        # Only through DynamoDB: the role cannot use the key to decrypt anything else directly.
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=actions,
            resource_arns=[self._table_key.key_arn],
            conditions={"StringEquals": {"kms:ViaService": f"dynamodb.{Stack.of(self).region}.amazonaws.com"}},
        )

    def _acknowledge_schedule_role(self) -> None:
        policy = self.schedule_role.node.find_child("DefaultPolicy")
        function_arn = Stack.of(self).resolve(self.sweeper_function.function_arn)
        logical_id = function_arn["Fn::GetAtt"][0]
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::<{logical_id}.Arn>:*]",
            "The scheduler target's invoke grant covers the sweeper function and its versions; the function "
            "publishes none, so the schedule can invoke this one function only.",
        )
        for action in ("kms:ReEncrypt*", "kms:GenerateDataKey*"):
            acknowledge(
                policy,
                f"AwsSolutions-IAM5[Action::{action}]",
                f"{action} comes from CDK's send grant on the encrypted sweeper DLQ; the statement names the "
                "subsystem's single key.",
            )
        for rule_id in ("NIST.800.53.R5-IAMNoInlinePolicy", "HIPAA.Security-IAMNoInlinePolicy"):
            acknowledge(
                self.schedule_role,
                rule_id,
                "The schedule role's policy holds this one schedule's grants (invoke the sweeper, send to its "
                "DLQ) and lives and dies with the role; a managed policy would only add a reusable object.",
            )

    def _acknowledge_wildcards(self, function: HandlerFunction, reason: str) -> None:
        acknowledge(function.role.node.find_child("DefaultPolicy"), "AwsSolutions-IAM5[Resource::*]", reason)
        for rule_id in ("NIST.800.53.R5-LambdaInsideVPC", "HIPAA.Security-LambdaInsideVPC", "CKV_AWS_117"):
            acknowledge(
                function.function,
                rule_id,
                "Delivers to customers' public HTTPS webhooks and reads only DynamoDB: a VPC would add NAT cost "
                "without isolating anything; private targets are refused by the SSRF guard in the code.",
            )


def _grant(grantee: iam.IGrantable, table: dynamodb.ITable, *actions: str) -> None:
    """``actions`` on the table itself only (``ITable.grant`` would add every index too)."""
    iam.Grant.add_to_principal(grantee=grantee, actions=list(actions), resource_arns=[table.table_arn])
