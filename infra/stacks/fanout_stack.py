"""The FanOutConsumer with the three tables it serves: task events (streamed), tasks, repos.

Each table is the application's own when cdk.json names it (``fanout.*_table_arn``; the events
table with its stream ARN), else created here. Imported tables carry ``fanout.tables_kms_key_arn``
as their key when given, so the function is granted that key through DynamoDB.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from handlers.common.table_schema import KeyAttribute, TableSchema
from infra.config import FanOutConfig
from infra.constructs.encrypted_table import encrypted_table
from infra.constructs.fanout_consumer import FanOutConsumer
from infra.stacks.subsystem_stack import SubsystemStack

# The keys the fan-out handler reads (handlers/fanout/parsing.py, task_row.py, github.py).
TASK_EVENTS = TableSchema(
    role="task_events",
    partition_key=KeyAttribute("task_id", "S"),
    sort_key=KeyAttribute("event_id", "S"),
    stream_view="NEW_IMAGE",
)
TASKS = TableSchema(role="task", partition_key=KeyAttribute("task_id", "S"))
REPOS = TableSchema(role="repo", partition_key=KeyAttribute("repo", "S"))


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
            else encrypted_table(self, TASK_EVENTS, encryption_key=self.encryption_key)
        )
        self.task_table: dynamodb.ITable = (
            existing("TaskTable", config.task_table_arn)
            if config.task_table_arn
            else encrypted_table(self, TASKS, encryption_key=self.encryption_key)
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
                else encrypted_table(self, REPOS, encryption_key=self.encryption_key)
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
