"""Fixtures for the Slack dispatcher's integration and reliability tests.

A "Slack world": the moto task table and bot-token secrets (over real HTTP, through the
``aws`` fixture), the local Slack stub, and a dispatcher configured exactly as the handler
configures it. Test modules import the fixtures they use explicitly (a conftest.py in the
same directories may belong to another suite).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer

from handlers.common.aws import client
from handlers.fanout import slack
from handlers.fanout.model import Outcome, TaskEvent
from handlers.fanout.slack import SlackDispatcher
from handlers.fanout.task_row import load_task
from tests.support.moto_server import MotoServer
from tests.support.slack_stub import SlackStub, running_slack_stub

TASK_TABLE = "fanout-tasks"
SECRET_PREFIX = "bgagent/slack/"
TEAM = "T0RAW"  # secret holds the raw token
TEAM_JSON = "T0JSON"  # secret holds {"bot_token": ...}
TOKEN = "xoxb-raw-team-token"
TOKEN_JSON = "xoxb-json-team-token"
CHANNEL = "C0PROJECT"
REPO = "octo/widgets"


@dataclass
class SlackWorld:
    stub: SlackStub
    dispatcher: SlackDispatcher
    table_name: str = TASK_TABLE
    _serializer: TypeSerializer = field(default_factory=TypeSerializer)

    # -- arranging ---------------------------------------------------------------------------

    def mention(self, channel: str = CHANNEL, text: str = "<@UBOT> please fix the flaky test") -> str:
        """The user's @mention that started the task: the thread root. Returns its ts."""
        return self.stub.add_message(channel, text)

    def put_task(
        self,
        task_id: str = "task-1",
        *,
        channel_source: str = "slack",
        team_id: str = TEAM,
        channel_id: str = CHANNEL,
        user_id: str | None = None,
        thread_ts: str | None = None,
        markers: Mapping[str, Any] | None = None,
        pr_number: int | None = None,
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {"slack_team_id": team_id, "slack_channel_id": channel_id}
        if user_id:
            metadata["slack_user_id"] = user_id
        if thread_ts:
            metadata["slack_thread_ts"] = thread_ts
        metadata.update(markers or {})
        item: dict[str, Any] = {
            "task_id": task_id,
            "repo": REPO,
            "channel_source": channel_source,
            "channel_metadata": metadata,
        }
        if pr_number is not None:
            item["pr_number"] = pr_number
        client("dynamodb").put_item(
            TableName=self.table_name, Item={k: self._serializer.serialize(v) for k, v in item.items()}
        )
        return item

    def set_marker(self, task_id: str, marker: str, value: Mapping[str, Any]) -> None:
        client("dynamodb").update_item(
            TableName=self.table_name,
            Key={"task_id": {"S": task_id}},
            UpdateExpression="SET channel_metadata.#m = :v",
            ExpressionAttributeNames={"#m": marker},
            ExpressionAttributeValues={":v": self._serializer.serialize(dict(value))},
        )

    # -- acting ------------------------------------------------------------------------------

    def task(self, task_id: str = "task-1") -> dict[str, Any]:
        row = load_task(self.table_name, task_id)
        assert row is not None, f"task {task_id} missing"
        return row

    def deliver(self, event: TaskEvent, task: Mapping[str, Any] | None = None) -> Outcome:
        """Dispatch as the router does: with the task row read at the start of the record."""
        return self.dispatcher.dispatch(event, self.task(event.task_id) if task is None else task)

    def fresh_container(self, **overrides: Any) -> SlackDispatcher:
        """A dispatcher with empty caches, as a new Lambda container would build it."""
        settings: dict[str, Any] = {
            "task_table_name": self.table_name,
            "slack_secret_prefix": SECRET_PREFIX,
            "slack_api_url": self.stub.base_url,
        }
        settings.update(overrides)
        return SlackDispatcher(**settings)

    # -- observing ---------------------------------------------------------------------------

    def marker(self, task_id: str, marker: str) -> dict[str, Any] | None:
        value = self.task(task_id)["channel_metadata"].get(marker)
        return dict(value) if value is not None else None

    def texts(self, channel: str = CHANNEL) -> list[str | None]:
        """What the channel shows now (after deletes), oldest first."""
        return [message.text for message in self.stub.messages(channel)]


def make_event(
    event_type: str, task_id: str = "task-1", metadata: Mapping[str, Any] | None = None, event_id: str | None = None
) -> TaskEvent:
    return TaskEvent(
        task_id=task_id,
        event_id=event_id or f"evt-{uuid.uuid4().hex[:8]}",
        event_type=event_type,
        timestamp="2026-11-23T14:00:00Z",
        metadata=dict(metadata or {}),
    )


# Fixture functions carry a ``_fixture`` suffix and register under the short name: a test
# module imports the function (explicitly) and receives the short name as a parameter,
# without the parameter shadowing the import.


@pytest.fixture(name="slack_stub")
def slack_stub_fixture() -> Iterator[SlackStub]:
    with running_slack_stub() as stub:
        yield stub


@pytest.fixture(name="slack_world")
def slack_world_fixture(aws: MotoServer, slack_stub: SlackStub) -> SlackWorld:
    client("dynamodb").create_table(
        TableName=TASK_TABLE,
        KeySchema=[{"AttributeName": "task_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "task_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    secrets = client("secretsmanager")
    secrets.create_secret(Name=f"{SECRET_PREFIX}{TEAM}", SecretString=TOKEN)
    secrets.create_secret(Name=f"{SECRET_PREFIX}{TEAM_JSON}", SecretString=json.dumps({"bot_token": TOKEN_JSON}))
    dispatcher = SlackDispatcher(
        task_table_name=TASK_TABLE, slack_secret_prefix=SECRET_PREFIX, slack_api_url=slack_stub.base_url
    )
    return SlackWorld(stub=slack_stub, dispatcher=dispatcher)


class LogRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def error_ids(self) -> list[str]:
        return [str(record.error_id) for record in self.records if hasattr(record, "error_id")]

    def with_field(self, name: str) -> list[logging.LogRecord]:
        return [record for record in self.records if hasattr(record, name)]

    def values(self, name: str) -> list[Any]:
        """The values of the structured field ``name`` (an ``extra`` key) in logging order."""
        return [record.__dict__[name] for record in self.with_field(name)]


@pytest.fixture(name="slack_logs")
def slack_logs_fixture() -> Iterator[LogRecords]:
    """The Slack dispatcher's log records (its Powertools child logger, whatever the parent's setup)."""
    target = logging.getLogger(slack.logger.name)
    handler, previous_level = LogRecords(), target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        target.removeHandler(handler)
        target.setLevel(previous_level)
