"""A DynamoDB table of this product, created from its ``TableSchema``.

On-demand billing, encrypted with the subsystem's customer-managed key, point-in-time recovery,
deletion protection unless the removal policy destroys it, and the schema's stream, TTL and
global secondary indexes.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from constructs import Construct

from handlers.common.table_schema import KeyAttribute, TableSchema
from infra.acknowledge import acknowledge


def table_construct_id(table_schema: TableSchema) -> str:
    """``task_events`` -> ``TaskEventsTable``."""
    return "".join(part.title() for part in table_schema.role.split("_")) + "Table"


def encrypted_table(
    scope: Construct,
    table_schema: TableSchema,
    *,
    encryption_key: kms.IKey,
    removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
) -> dynamodb.Table:
    table = dynamodb.Table(
        scope,
        table_construct_id(table_schema),
        partition_key=_attribute(table_schema.partition_key),
        sort_key=_attribute(table_schema.sort_key) if table_schema.sort_key else None,
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
        encryption_key=encryption_key,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True
        ),
        deletion_protection=removal_policy == RemovalPolicy.RETAIN,
        removal_policy=removal_policy,
        stream=dynamodb.StreamViewType(table_schema.stream_view) if table_schema.stream_view else None,
        time_to_live_attribute=table_schema.ttl_attribute,
    )
    for index in table_schema.indexes:
        table.add_global_secondary_index(
            index_name=index.name,
            partition_key=_attribute(index.partition_key),
            sort_key=_attribute(index.sort_key) if index.sort_key else None,
            projection_type=dynamodb.ProjectionType(index.projection),
        )
    for rule_id in ("NIST.800.53.R5-DynamoDBInBackupPlan", "HIPAA.Security-DynamoDBInBackupPlan"):
        acknowledge(
            table,
            rule_id,
            "Point-in-time recovery gives 35 days of continuous, restorable backups of this table; an AWS "
            "Backup plan is an organisation-level choice left to the deploying account.",
        )
    return table


def _attribute(key: KeyAttribute) -> dynamodb.Attribute:
    kind = dynamodb.AttributeType.STRING if key.type == "S" else dynamodb.AttributeType.NUMBER
    return dynamodb.Attribute(name=key.name, type=kind)
