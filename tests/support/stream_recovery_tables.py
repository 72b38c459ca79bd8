"""StreamRecovery's tables in moto, created from ``handlers.stream_recovery.schema`` (as the construct does)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from handlers.stream_recovery import schema


@dataclass(frozen=True)
class StreamRecoveryTables:
    tasks: str = "SrTasks"
    task_events: str = "SrTaskEvents"
    push_configs: str = "SrPushConfigs"
    pending_dispatches: str = "SrPendingDispatches"
    deliveries: str = "SrDeliveries"

    def name_of(self, table: schema.TableSchema) -> str:
        return {
            schema.TASKS.role: self.tasks,
            schema.TASK_EVENTS.role: self.task_events,
            schema.PUSH_CONFIGS.role: self.push_configs,
            schema.PENDING_DISPATCHES.role: self.pending_dispatches,
            schema.DELIVERIES.role: self.deliveries,
        }[table.role]


def create_table_kwargs(name: str, table: schema.TableSchema) -> dict[str, Any]:
    """``CreateTable`` arguments for one schema table (on-demand)."""
    key_schema = [{"AttributeName": table.partition_key.name, "KeyType": "HASH"}]
    definitions = {table.partition_key.name: table.partition_key.type}
    if table.sort_key is not None:
        key_schema.append({"AttributeName": table.sort_key.name, "KeyType": "RANGE"})
        definitions[table.sort_key.name] = table.sort_key.type
    kwargs: dict[str, Any] = {
        "TableName": name,
        "KeySchema": key_schema,
        "BillingMode": "PAY_PER_REQUEST",
    }
    indexes = []
    for index in table.indexes:
        index_keys = [{"AttributeName": index.partition_key.name, "KeyType": "HASH"}]
        definitions[index.partition_key.name] = index.partition_key.type
        if index.sort_key is not None:
            index_keys.append({"AttributeName": index.sort_key.name, "KeyType": "RANGE"})
            definitions[index.sort_key.name] = index.sort_key.type
        indexes.append(
            {"IndexName": index.name, "KeySchema": index_keys, "Projection": {"ProjectionType": index.projection}}
        )
    if indexes:
        kwargs["GlobalSecondaryIndexes"] = indexes
    kwargs["AttributeDefinitions"] = [{"AttributeName": n, "AttributeType": t} for n, t in definitions.items()]
    if table.stream_view is not None:
        kwargs["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": table.stream_view}
    return kwargs


def create_stream_recovery_tables(ddb: Any, tables: StreamRecoveryTables | None = None) -> StreamRecoveryTables:
    """The five tables in the moto server ``ddb`` talks to; the markers table with its stream."""
    tables = tables or StreamRecoveryTables()
    for table in schema.ALL_TABLES:
        name = tables.name_of(table)
        ddb.create_table(**create_table_kwargs(name, table))
        if table.ttl_attribute is not None:
            ddb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute}
            )
    return tables
