"""The writer library against the (atomic) moto server: one transaction, forward-only sequences, CAS."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import boto3
import pytest

from handlers.common.config import ConfigurationError
from handlers.stream_recovery import schema
from handlers.stream_recovery.delivery import signing_key
from handlers.stream_recovery.markers import is_eligible, parse_record
from handlers.stream_recovery.ssrf import InvalidTargetError
from handlers.stream_recovery.writer import (
    ENV_DELIVERIES_TABLE,
    ENV_PENDING_DISPATCHES_TABLE,
    ENV_PUSH_CONFIGS_TABLE,
    ENV_PUSH_DISPATCH,
    ENV_TASK_EVENTS_TABLE,
    ENV_TASKS_TABLE,
    PushConfigExistsError,
    PushConfigRegistrationConflictError,
    StaleEventSequenceError,
    StreamRecoveryWriter,
    TaskNotFoundError,
    TaskOwnerMismatchError,
)
from tests.support.moto_server import MotoServer
from tests.support.stream_recovery_tables import StreamRecoveryTables, create_stream_recovery_tables

NOW_MICROS = 1_800_000_000_000_000
URL = "https://hooks.example.com/a2a"


@pytest.fixture
def ddb(aws: MotoServer) -> Any:
    return boto3.client("dynamodb")


@pytest.fixture
def tables(ddb: Any) -> StreamRecoveryTables:
    return create_stream_recovery_tables(ddb)


def make_writer(tables: StreamRecoveryTables, *, dispatch: bool = True, **options: Any) -> StreamRecoveryWriter:
    return StreamRecoveryWriter(
        tasks_table=tables.tasks,
        task_events_table=tables.task_events,
        push_configs_table=tables.push_configs,
        push_dispatch_enabled=dispatch,
        pending_dispatches_table=tables.pending_dispatches if dispatch else None,
        deliveries_table=tables.deliveries if dispatch else None,
        clock_micros=lambda: NOW_MICROS,
        **options,
    )


@pytest.fixture
def writer(tables: StreamRecoveryTables) -> StreamRecoveryWriter:
    return make_writer(tables)


def scan(ddb: Any, table: str) -> list[dict[str, Any]]:
    return list(ddb.scan(TableName=table, ConsistentRead=True)["Items"])


def task_item(ddb: Any, tables: StreamRecoveryTables, task_id: str, tenant: str = "acme") -> dict[str, Any]:
    key = {schema.PK: {"S": schema.task_pk(tenant, task_id)}}
    return dict(ddb.get_item(TableName=tables.tasks, Key=key, ConsistentRead=True).get("Item", {}))


def markers(ddb: Any, tables: StreamRecoveryTables) -> list[dict[str, Any]]:
    return scan(ddb, tables.pending_dispatches)


def commit(writer: StreamRecoveryWriter, task_id: str, sequence: int, state: str, **kwargs: Any) -> Any:
    return writer.commit_status_update(
        tenant="acme", task_id=task_id, owner="alice", event_sequence=sequence, state=state, **kwargs
    )


def register(writer: StreamRecoveryWriter, task_id: str, **kwargs: Any) -> Any:
    return writer.register_push_config(tenant="acme", task_id=task_id, url=URL, **kwargs)


# -- the commit transaction ---------------------------------------------------------------------


def test_a_terminal_commit_of_a_task_with_configs_writes_status_event_and_marker(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    commit(writer, "t1", 1, schema.WORKING)
    register(writer, "t1")
    result = commit(writer, "t1", 2, schema.COMPLETED, status_message={"text": "done", "score": 0.5})
    assert result.marker_written and result.final and result.attempts == 1

    task = task_item(ddb, tables, "t1")
    assert task["state"] == {"S": "completed"}
    assert task["latest_event_sequence"] == {"N": "2"}
    assert task["push_config_count"] == {"N": "1"}
    assert task["owner"] == {"S": "alice"}
    events = sorted(scan(ddb, tables.task_events), key=lambda item: int(item["event_sequence"]["N"]))
    assert [(e["event_sequence"]["N"], e["state"]["S"], e["final"]["BOOL"]) for e in events] == [
        ("1", "working", False),
        ("2", "completed", True),
    ]
    assert events[1]["status_message"]["M"]["score"] == {"N": "0.5"}

    (marker,) = markers(ddb, tables)
    assert marker["pk"] == {"S": "acme#t1"} and marker["sk"] == {"N": "2"}
    assert marker["tenant"] == {"S": "acme"} and marker["taskId"] == {"S": "t1"} and marker["owner"] == {"S": "alice"}
    assert marker["eventSequence"] == {"N": "2"}
    assert marker["recordedAtMicros"] == {"N": str(NOW_MICROS)}
    assert int(marker["ttl"]["N"]) == NOW_MICROS // 1_000_000 + 7 * 24 * 3600
    assert marker["sweepShard"] == {"S": schema.sweep_shard("acme", "t1")}


def test_the_marker_is_what_the_stream_handler_parses(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    commit(writer, "t1", 1, schema.SUBMITTED)
    register(writer, "t1")
    commit(writer, "t1", 2, schema.FAILED)
    streams = boto3.client("dynamodbstreams")
    arn = ddb.describe_table(TableName=tables.pending_dispatches)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    records = streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    assert [r["eventName"] for r in records] == ["INSERT"]
    pending = parse_record(records[0])
    assert pending is not None
    assert (pending.tenant, pending.task_id, pending.owner, pending.event_sequence) == ("acme", "t1", "alice", 2)
    assert pending.recorded_at_micros == NOW_MICROS


def test_the_transaction_writes_all_three_items_or_none(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    commit(writer, "t1", 1, schema.WORKING)
    register(writer, "t1")
    before_task = task_item(ddb, tables, "t1")
    # An event item for sequence 2 already exists (written behind the writer's back): the event Put's
    # condition fails, so neither the task update nor the marker may land.
    ddb.put_item(
        TableName=tables.task_events,
        Item={"pk": {"S": "acme#t1"}, "event_sequence": {"N": "2"}, "state": {"S": "working"}},
    )
    with pytest.raises(Exception, match="an event 2 exists"):
        commit(writer, "t1", 2, schema.COMPLETED)
    assert task_item(ddb, tables, "t1") == before_task
    assert markers(ddb, tables) == []
    assert len(scan(ddb, tables.task_events)) == 2

    # And a marker Put that cannot land (its table is gone) takes the task update and the event with it.
    ddb.delete_table(TableName=tables.pending_dispatches)
    with pytest.raises(Exception, match=r"(?i)resource|not found"):
        commit(writer, "t1", 3, schema.COMPLETED)
    assert task_item(ddb, tables, "t1") == before_task
    assert {e["event_sequence"]["N"] for e in scan(ddb, tables.task_events)} == {"1", "2"}


def test_a_non_terminal_event_writes_no_marker(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    commit(writer, "t1", 1, schema.SUBMITTED)
    register(writer, "t1")
    for sequence, state in enumerate([schema.WORKING, schema.INPUT_REQUIRED, schema.AUTH_REQUIRED], start=2):
        result = commit(writer, "t1", sequence, state)
        assert not result.marker_written and not result.final
    assert markers(ddb, tables) == []
    assert task_item(ddb, tables, "t1")["latest_event_sequence"] == {"N": "4"}


@pytest.mark.parametrize("state", sorted(schema.TERMINAL_TASK_STATES))
def test_every_terminal_state_writes_a_marker(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter, state: str
) -> None:
    commit(writer, "t1", 1, schema.WORKING)
    register(writer, "t1")
    assert commit(writer, "t1", 2, state).marker_written
    assert len(markers(ddb, tables)) == 1


def test_dispatch_off_writes_no_marker(ddb: Any, tables: StreamRecoveryTables) -> None:
    writer = make_writer(tables, dispatch=False)
    commit(writer, "t1", 1, schema.WORKING)
    register(writer, "t1")
    result = commit(writer, "t1", 2, schema.COMPLETED)
    assert not result.marker_written and result.final
    assert markers(ddb, tables) == []
    assert task_item(ddb, tables, "t1")["state"] == {"S": "completed"}


def test_a_task_without_configs_writes_no_marker(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    assert not commit(writer, "t1", 1, schema.COMPLETED).marker_written  # the first commit creates the task
    commit(writer, "t2", 1, schema.WORKING)
    config = register(writer, "t2")
    assert writer.delete_push_config(tenant="acme", task_id="t2", config_id=config.config_id)
    assert task_item(ddb, tables, "t2")["push_config_count"] == {"N": "0"}
    assert not commit(writer, "t2", 2, schema.CANCELED).marker_written
    assert markers(ddb, tables) == []


def test_sequences_only_move_forward(ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter) -> None:
    commit(writer, "t1", 5, schema.WORKING)
    register(writer, "t1")
    for older in (5, 4, 1):
        with pytest.raises(StaleEventSequenceError) as caught:
            commit(writer, "t1", older, schema.COMPLETED)
        assert caught.value.latest_event_sequence == 5
        assert f"event sequence {older} is not after the stored latest_event_sequence 5" in str(caught.value)
    item = task_item(ddb, tables, "t1")
    assert item["latest_event_sequence"] == {"N": "5"} and item["state"] == {"S": "working"}
    assert markers(ddb, tables) == [] and len(scan(ddb, tables.task_events)) == 1
    # gaps are fine: the next commit only has to be later
    assert commit(writer, "t1", 9, schema.COMPLETED).marker_written


def test_a_retry_of_a_commit_that_landed_is_recognised_not_refused(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    commit(writer, "t1", 1, schema.WORKING)
    register(writer, "t1")
    first = commit(writer, "t1", 2, schema.COMPLETED, status_message={"text": "done", "score": 0.5})
    again = commit(writer, "t1", 2, schema.COMPLETED, status_message={"text": "done", "score": 0.5})
    assert first.marker_written and not first.already_committed
    assert again.already_committed and again.marker_written
    assert len(markers(ddb, tables)) == 1 and len(scan(ddb, tables.task_events)) == 2
    # the same sequence with other content is another update: stale
    with pytest.raises(StaleEventSequenceError):
        commit(writer, "t1", 2, schema.FAILED)
    with pytest.raises(StaleEventSequenceError):
        commit(writer, "t1", 2, schema.COMPLETED, status_message={"text": "other"})
    # a non-terminal retry
    commit(writer, "t2", 1, schema.WORKING)
    retry = commit(writer, "t2", 1, schema.WORKING)
    assert retry.already_committed and not retry.marker_written


def test_another_owner_cannot_commit(ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter) -> None:
    commit(writer, "t1", 1, schema.WORKING)
    with pytest.raises(TaskOwnerMismatchError):
        writer.commit_status_update(
            tenant="acme", task_id="t1", owner="mallory", event_sequence=2, state=schema.COMPLETED
        )
    assert task_item(ddb, tables, "t1")["latest_event_sequence"] == {"N": "1"}


def test_tenants_do_not_share_tasks(ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter) -> None:
    writer.commit_status_update(tenant="acme", task_id="t1", owner="alice", event_sequence=3, state=schema.WORKING)
    writer.commit_status_update(tenant="other", task_id="t1", owner="bob", event_sequence=1, state=schema.WORKING)
    assert task_item(ddb, tables, "t1", tenant="other")["owner"] == {"S": "bob"}


def test_invalid_arguments_are_refused_before_any_write(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    with pytest.raises(ValueError, match="unknown task state"):
        commit(writer, "t1", 1, "done")
    with pytest.raises(ValueError, match="between 1 and"):
        commit(writer, "t1", 0, schema.WORKING)
    with pytest.raises(TypeError):
        commit(writer, "t1", True, schema.WORKING)
    with pytest.raises(ValueError, match="must not contain"):
        writer.commit_status_update(tenant="a#b", task_id="t1", owner="alice", event_sequence=1, state="working")
    assert scan(ddb, tables.tasks) == []


# -- push configs ---------------------------------------------------------------------------------


def test_register_records_the_latest_sequence_and_a_standard_webhooks_secret(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    commit(writer, "t1", 3, schema.WORKING)
    config = register(writer, "t1", config_id="cfg-1", auth_token="tok", notification_token="nt")
    assert config.registered_after_event_sequence == 3
    assert config.signing_secret.startswith("whsec_") and len(signing_key(config.signing_secret)) == 32
    assert not is_eligible(config.registered_after_event_sequence, 3)
    assert is_eligible(config.registered_after_event_sequence, 4)
    (stored,) = writer.list_push_configs(tenant="acme", task_id="t1")
    assert stored == config
    webhook = stored.to_webhook_config()
    assert (webhook.config_id, webhook.url, webhook.auth_token, webhook.auth_scheme) == ("cfg-1", URL, "tok", "Bearer")
    assert "tok" not in repr(stored) and stored.signing_secret not in repr(stored)

    other = register(writer, "t1")
    assert other.signing_secret != config.signing_secret
    assert task_item(ddb, tables, "t1")["push_config_count"] == {"N": "2"}
    with pytest.raises(PushConfigExistsError):
        register(writer, "t1", config_id="cfg-1")
    assert task_item(ddb, tables, "t1")["push_config_count"] == {"N": "2"}


def test_register_needs_an_existing_task_and_a_deliverable_url(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    with pytest.raises(TaskNotFoundError):
        register(writer, "missing")
    commit(writer, "t1", 1, schema.WORKING)
    with pytest.raises(InvalidTargetError):
        writer.register_push_config(tenant="acme", task_id="t1", url="http://hooks.example.com/")
    assert scan(ddb, tables.push_configs) == []
    dev = make_writer(tables, allow_http_urls=True)
    assert dev.register_push_config(tenant="acme", task_id="t1", url="http://127.0.0.1:8080/").url


def test_delete_lowers_the_count_and_is_false_for_an_unknown_config(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    commit(writer, "t1", 1, schema.WORKING)
    a, b = register(writer, "t1"), register(writer, "t1")
    assert writer.delete_push_config(tenant="acme", task_id="t1", config_id=a.config_id)
    assert not writer.delete_push_config(tenant="acme", task_id="t1", config_id=a.config_id)
    assert task_item(ddb, tables, "t1")["push_config_count"] == {"N": "1"}
    assert [c.config_id for c in writer.list_push_configs(tenant="acme", task_id="t1")] == [b.config_id]
    # an orphaned config (its task deleted) is still deletable
    ddb.delete_item(TableName=tables.tasks, Key={"pk": {"S": "acme#t1"}})
    assert writer.delete_push_config(tenant="acme", task_id="t1", config_id=b.config_id)
    assert scan(ddb, tables.push_configs) == []


class RacingWriter(StreamRecoveryWriter):
    """Runs ``before_transaction`` right before each transaction (a concurrent writer's window)."""

    before_transaction: Any = None

    def _transact(self, items: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]] | None:
        if self.before_transaction is not None:
            self.before_transaction(items)
        return super()._transact(items)


def racing_writer(tables: StreamRecoveryTables, **options: Any) -> RacingWriter:
    return RacingWriter(
        tasks_table=tables.tasks,
        task_events_table=tables.task_events,
        push_configs_table=tables.push_configs,
        push_dispatch_enabled=True,
        pending_dispatches_table=tables.pending_dispatches,
        deliveries_table=tables.deliveries,
        clock_micros=lambda: NOW_MICROS,
        **options,
    )


def test_register_retries_its_compare_and_swap_under_a_concurrent_commit(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    commit(writer, "t1", 1, schema.WORKING)
    registering = racing_writer(tables)
    landed: list[int] = []

    def commit_once_in_between(items: Sequence[Mapping[str, Any]]) -> None:
        if not landed:
            landed.append(commit(writer, "t1", 2, schema.COMPLETED).event_sequence)

    registering.before_transaction = commit_once_in_between
    config = register(registering, "t1")
    assert landed == [2]
    # the CAS on sequence 1 failed, the retry used the sequence the failure returned
    assert config.registered_after_event_sequence == 2
    assert not is_eligible(config.registered_after_event_sequence, 2)
    (stored,) = writer.list_push_configs(tenant="acme", task_id="t1")
    assert stored.registered_after_event_sequence == 2
    assert task_item(ddb, tables, "t1")["push_config_count"] == {"N": "1"}


def test_register_gives_up_after_bounded_conflicts_with_a_clear_error(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    commit(writer, "t1", 1, schema.WORKING)
    registering = racing_writer(tables, max_register_attempts=3)
    sequences = iter(range(2, 100))

    def commit_every_time(items: Sequence[Mapping[str, Any]]) -> None:
        commit(writer, "t1", next(sequences), schema.WORKING)

    registering.before_transaction = commit_every_time
    with pytest.raises(PushConfigRegistrationConflictError) as caught:
        register(registering, "t1", config_id="cfg-x")
    message = str(caught.value)
    assert "cfg-x" in message and "each of 3 attempts" in message and "nothing was written" in message
    assert scan(ddb, tables.push_configs) == []
    assert task_item(ddb, tables, "t1")["push_config_count"] == {"N": "0"}


def test_a_commit_that_saw_no_configs_retries_when_one_is_registered_in_between(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    commit(writer, "t1", 1, schema.WORKING)
    committing = racing_writer(tables)
    registered: list[Any] = []

    def register_once_in_between(items: Sequence[Mapping[str, Any]]) -> None:
        if not registered:
            registered.append(register(writer, "t1"))

    committing.before_transaction = register_once_in_between
    result = commit(committing, "t1", 2, schema.COMPLETED)
    assert result.marker_written and result.attempts == 2
    assert is_eligible(registered[0].registered_after_event_sequence, 2)
    assert len(markers(ddb, tables)) == 1


def test_a_commit_that_saw_a_config_writes_no_marker_when_it_was_deleted_in_between(
    ddb: Any, tables: StreamRecoveryTables, writer: StreamRecoveryWriter
) -> None:
    commit(writer, "t1", 1, schema.WORKING)
    config = register(writer, "t1")
    committing = racing_writer(tables)
    deleted: list[bool] = []

    def delete_once_in_between(items: Sequence[Mapping[str, Any]]) -> None:
        if not deleted:
            deleted.append(writer.delete_push_config(tenant="acme", task_id="t1", config_id=config.config_id))

    committing.before_transaction = delete_once_in_between
    result = commit(committing, "t1", 2, schema.COMPLETED)
    assert deleted == [True] and not result.marker_written and result.attempts == 2
    assert markers(ddb, tables) == []


def race_commit_and_register(writer: StreamRecoveryWriter, task_id: str) -> Any:
    """A terminal commit (sequence 2) and a registration started together on two threads."""
    commit(writer, task_id, 1, schema.WORKING)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    configs: list[Any] = []

    def run_commit() -> None:
        barrier.wait()
        try:
            commit(writer, task_id, 2, schema.COMPLETED)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def run_register() -> None:
        barrier.wait()
        try:
            configs.append(register(writer, task_id))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run_commit), threading.Thread(target=run_register)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    (config,) = configs
    return config


def test_a_config_registered_concurrently_with_a_terminal_commit_is_eligible_iff_a_marker_covers_it(
    ddb: Any, tables: StreamRecoveryTables
) -> None:
    """Real threads against the atomic moto: the invariant holds in every interleaving.

    (Dropping the commit's "no configs" condition makes this fail within a few rounds: the
    registration lands between the commit's read and its transaction, eligible, with no marker.)
    """
    writer = make_writer(tables, max_commit_attempts=20, max_register_attempts=20)
    for round_number in range(40):
        task_id = f"race-{round_number}"
        config = race_commit_and_register(writer, task_id)
        key = {"pk": {"S": schema.task_pk("acme", task_id)}, "sk": {"N": "2"}}
        has_marker = "Item" in ddb.get_item(TableName=tables.pending_dispatches, Key=key, ConsistentRead=True)
        assert config.registered_after_event_sequence in (1, 2)
        eligible = is_eligible(config.registered_after_event_sequence, 2)
        assert eligible == has_marker, (round_number, config.registered_after_event_sequence, has_marker)
        assert task_item(ddb, tables, task_id)["push_config_count"] == {"N": "1"}


# -- configuration --------------------------------------------------------------------------------


def test_dispatch_on_without_markers_table_and_delivery_store_is_one_clear_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        StreamRecoveryWriter(tasks_table="T", task_events_table="E", push_configs_table="P", push_dispatch_enabled=True)
    message = str(caught.value)
    assert message.startswith("stream recovery writer: invalid configuration: ")
    assert (
        "push dispatch (push_dispatch_enabled) is enabled but no pending-dispatch markers table "
        "(pending_dispatches_table) is set" in message
    )
    assert "push dispatch (push_dispatch_enabled) is enabled but no delivery store (deliveries_table) is set" in message


def test_a_delivery_store_without_dispatch_is_one_clear_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        StreamRecoveryWriter(
            tasks_table="T",
            task_events_table="",
            push_configs_table="P",
            push_dispatch_enabled=False,
            pending_dispatches_table="M",
            deliveries_table="D",
            max_register_attempts=0,
        )
    problems = str(caught.value).split(": invalid configuration: ", 1)[1].split("; ")
    assert problems == [
        "the task events table (task_events_table) is required but not set",
        "a pending-dispatch markers table (pending_dispatches_table) is set (M) but push dispatch "
        "(push_dispatch_enabled) is disabled "
        "(no marker would ever be written: enable push dispatch or remove the table)",
        "a delivery store (deliveries_table) is set (D) but push dispatch (push_dispatch_enabled) is disabled "
        "(no webhook would ever be delivered: enable push dispatch or remove the store)",
        "max_register_attempts must be >= 1, got 0",
    ]


def test_from_env_reads_the_construct_variables_and_names_every_problem() -> None:
    env = {
        ENV_TASKS_TABLE: "T",
        ENV_TASK_EVENTS_TABLE: "E",
        ENV_PUSH_CONFIGS_TABLE: "P",
        ENV_PUSH_DISPATCH: "true",
        ENV_PENDING_DISPATCHES_TABLE: "M",
        ENV_DELIVERIES_TABLE: "D",
    }
    writer = StreamRecoveryWriter.from_env(env)
    assert writer.push_dispatch_enabled and writer.pending_dispatches_table == "M"
    assert not StreamRecoveryWriter.from_env(
        {**env, ENV_PUSH_DISPATCH: "false", ENV_PENDING_DISPATCHES_TABLE: "", ENV_DELIVERIES_TABLE: ""}
    ).push_dispatch_enabled

    with pytest.raises(ConfigurationError) as caught:
        StreamRecoveryWriter.from_env({ENV_PUSH_DISPATCH: "maybe", ENV_DELIVERIES_TABLE: "D"})
    message = str(caught.value)
    for expected in (
        f"{ENV_PUSH_DISPATCH} must be true or false, got 'maybe'",
        f"the tasks table ({ENV_TASKS_TABLE}) is required but not set",
        f"the task events table ({ENV_TASK_EVENTS_TABLE}) is required but not set",
        f"the push configs table ({ENV_PUSH_CONFIGS_TABLE}) is required but not set",
        f"a delivery store ({ENV_DELIVERIES_TABLE}) is set (D) but push dispatch ({ENV_PUSH_DISPATCH}) is disabled",
    ):
        assert expected in message
    assert message.count("; ") == 4  # five problems, one message
