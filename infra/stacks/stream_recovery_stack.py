"""StreamRecovery with its five tables: the application's own (by ARN in cdk.json) or created here."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from constructs import Construct

from infra.config import ExistingStreamRecoveryTables, StreamRecoveryConfig
from infra.constructs.stream_recovery import StreamRecovery, StreamRecoveryTables
from infra.stacks.subsystem_stack import SubsystemStack


class StreamRecoveryStack(SubsystemStack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StreamRecoveryConfig,
        alarm_topic_arn: str | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, subsystem="StreamRecovery", alarm_topic_arn=alarm_topic_arn, **kwargs)
        tables, tables_key = self._existing(config.existing_tables)
        self.stream_recovery = StreamRecovery(
            self,
            "StreamRecovery",
            encryption_key=self.encryption_key,
            tables=tables,
            tables_encryption_key=tables_key,
            alarm_topic=self.alarm_topic,
        )
        # What the application's writer needs (StreamRecoveryWriter.from_env reads these names).
        for name, value in self.stream_recovery.tables.environment().items():
            CfnOutput(self, name.title().replace("_", ""), value=value, description=f"Set {name} to this value")

    def _existing(
        self, existing: ExistingStreamRecoveryTables | None
    ) -> tuple[StreamRecoveryTables | None, kms.IKey | None]:
        if existing is None:
            return None, None
        key = kms.Key.from_key_arn(self, "TablesKey", existing.kms_key_arn) if existing.kms_key_arn else None

        def imported(construct_id: str, arn: str, stream_arn: str | None = None) -> dynamodb.ITable:
            return dynamodb.Table.from_table_attributes(
                self, construct_id, table_arn=arn, table_stream_arn=stream_arn, encryption_key=key
            )

        tables = StreamRecoveryTables(
            tasks=imported("TasksTable", existing.tasks_table_arn),
            task_events=imported("TaskEventsTable", existing.task_events_table_arn),
            push_configs=imported("PushConfigsTable", existing.push_configs_table_arn),
            pending_dispatches=imported(
                "PendingDispatchesTable", existing.pending_dispatches_table_arn, existing.pending_dispatches_stream_arn
            ),
            deliveries=imported("DeliveriesTable", existing.deliveries_table_arn),
        )
        return tables, key
