"""The FanOutConsumer with the three tables it serves: task events (streamed), tasks, repos.

Each table is the application's own when cdk.json names it (``fanout.*_table_arn``; the events
table with its stream ARN), else created here. Imported tables carry ``fanout.tables_kms_key_arn``
as their key when given, so the function is granted that key through DynamoDB.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra.acknowledge import acknowledge
from infra.config import FanOutConfig
from infra.constructs.fanout_consumer import FanOutConsumer
from infra.stacks.subsystem_stack import SubsystemStack


class FanOutStack(SubsystemStack):
    def __init__(
        self, scope: Construct, construct_id: str, *, config: FanOutConfig, alarm_topic_arn: str | None, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, subsystem="FanOutConsumer", alarm_topic_arn=alarm_topic_arn, **kwargs)
        tables_key = (
            kms.Key.from_key_arn(self, "TablesKey", config.tables_kms_key_arn) if config.tables_kms_key_arn else None
        )

        def existing(construct_id: str, arn: str, stream_arn: str | None = None) -> dynamodb.ITable:
            return dynamodb.Table.from_table_attributes(
                self, construct_id, table_arn=arn, table_stream_arn=stream_arn, encryption_key=tables_key
            )

        self.task_events_table: dynamodb.ITable = (
            existing("TaskEventsTable", config.task_events_table_arn, config.task_events_stream_arn)
            if config.task_events_table_arn
            else self._table(
                "TaskEventsTable",
                partition_key="task_id",
                sort_key="event_id",
                stream=dynamodb.StreamViewType.NEW_IMAGE,
            )
        )
        self.task_table: dynamodb.ITable = (
            existing("TaskTable", config.task_table_arn)
            if config.task_table_arn
            else self._table("TaskTable", partition_key="task_id")
        )
        # The repo table maps a repository to its own GitHub token secret: it exists with GitHub.
        github_secret = None
        self.repo_table: dynamodb.ITable | None = None
        if config.github_token_secret_arn:
            github_secret = secretsmanager.Secret.from_secret_complete_arn(
                self, "GitHubTokenSecret", config.github_token_secret_arn
            )
            self.repo_table = (
                existing("RepoTable", config.repo_table_arn)
                if config.repo_table_arn
                else self._table("RepoTable", partition_key="repo")
            )
        secrets_keys = (
            [kms.Key.from_key_arn(self, "SecretsKey", config.secrets_kms_key_arn)] if config.secrets_kms_key_arn else []
        )
        self.fanout = FanOutConsumer(
            self,
            "FanOutConsumer",
            task_events_table=self.task_events_table,
            task_table=self.task_table,
            repo_table=self.repo_table,
            github_token_secret=github_secret,
            github_repo_secret_prefix=config.github_repo_secret_prefix,
            slack_secret_prefix=config.slack_secret_prefix,
            email_sender=config.email_sender,
            github_api_url=config.github_api_url,
            slack_api_url=config.slack_api_url,
            secrets_encryption_keys=secrets_keys,
            alarm_topic=self.alarm_topic,
            encryption_key=self.encryption_key,
        )

    def _table(
        self,
        construct_id: str,
        *,
        partition_key: str,
        sort_key: str | None = None,
        stream: dynamodb.StreamViewType | None = None,
    ) -> dynamodb.Table:
        table = dynamodb.Table(
            self,
            construct_id,
            partition_key=dynamodb.Attribute(name=partition_key, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=sort_key, type=dynamodb.AttributeType.STRING) if sort_key else None,
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=self.encryption_key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
            stream=stream,
        )
        for rule_id in ("NIST.800.53.R5-DynamoDBInBackupPlan", "HIPAA.Security-DynamoDBInBackupPlan"):
            acknowledge(
                table,
                rule_id,
                "Point-in-time recovery gives 35 days of continuous, restorable backups of this table; an AWS "
                "Backup plan is an organisation-level choice left to the deploying account.",
            )
        return table
