"""The orders and order_events tables: every status change is one conditional write.

Each write states the status it moves *from*, so a retried pass, a duplicate callback or a
second orchestrator can never move an order backwards or twice: the loser's condition fails and
it learns that someone else already did the step (the methods answer False, never raise, for
that case).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.common.dynamo_items import serialize_values, to_plain
from handlers.execution_engine import schema

_BATCH_GET_LIMIT = 100
_BATCH_WRITE_LIMIT = 25


@dataclass(frozen=True)
class OrderRecord:
    num: str
    name: str
    status: str
    dependencies: tuple[str, ...]
    must_succeed: bool
    timeout: int
    execution_target: str
    dispatch_generation: int | None
    item: Mapping[str, Any]

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> OrderRecord:
        generation = item.get("dispatch_generation")
        return cls(
            num=str(item[schema.ORDER_NUM]),
            name=str(item[schema.ORDER_NAME]),
            status=str(item[schema.STATUS]),
            dependencies=tuple(str(d) for d in item.get("dependencies", ())),
            must_succeed=bool(item.get("must_succeed", True)),
            timeout=int(item["timeout"]),
            execution_target=str(item["execution_target"]),
            dispatch_generation=int(generation) if generation is not None else None,
            item=item,
        )


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    job: Mapping[str, Any]
    orders: Mapping[str, OrderRecord]

    @property
    def status(self) -> str:
        return str(self.job[schema.STATUS])

    @property
    def trace_id(self) -> str:
        return str(self.job[schema.TRACE_ID])

    @property
    def flow_id(self) -> str:
        return str(self.job["flow_id"])


def order_item(
    run_id: str,
    num: str,
    *,
    name: str,
    execution_target: str,
    timeout: int,
    must_succeed: bool,
    dependency_nums: Sequence[str],
    expires_at: int,
) -> dict[str, Any]:
    """A queued order as init writes it (the shape the schema.py docstring gives)."""
    return {
        schema.PK: schema.order_pk(run_id, num),
        schema.RUN_ID: run_id,
        schema.ORDER_NUM: num,
        schema.ORDER_NAME: name,
        schema.STATUS: schema.QUEUED,
        "execution_target": execution_target,
        "timeout": timeout,
        "must_succeed": must_succeed,
        "dependencies": list(dependency_nums),
        "exec_key": schema.exec_key(run_id, num),
        "callback_key": schema.callback_key(run_id, num),
        schema.TTL_ATTRIBUTE: expires_at,
    }


def job_item(
    run_id: str,
    *,
    order_count: int,
    trace_id: str,
    flow_id: str,
    username: str,
    job_timeout: int,
    sops_key_parameter: str,
    done_bucket: str,
    created_at_ms: int,
    expires_at: int,
) -> dict[str, Any]:
    """The job item (order ``0000``) of a run that has just started."""
    return {
        schema.PK: schema.order_pk(run_id, schema.JOB_ORDER_NUM),
        schema.RUN_ID: run_id,
        schema.ORDER_NUM: schema.JOB_ORDER_NUM,
        schema.ORDER_NAME: schema.JOB_EVENT_ORDER_NAME,
        "kind": "job",
        schema.STATUS: schema.JOB_RUNNING,
        "order_count": order_count,
        schema.TRACE_ID: trace_id,
        "flow_id": flow_id,
        "username": username,
        "job_timeout": job_timeout,
        "sops_key_parameter": sops_key_parameter,
        "done_uri": f"s3://{done_bucket}/{schema.done_key(run_id)}",
        "created_at_ms": created_at_ms,
        schema.TTL_ATTRIBUTE: expires_at,
    }


class RunStore:
    def __init__(self, *, orders_table: str, events_table: str, clock_ms: Callable[[], int]) -> None:
        self.orders_table = orders_table
        self.events_table = events_table
        self._now_ms = clock_ms

    # -- init -------------------------------------------------------------------------------

    def insert_run(self, job_item: Mapping[str, Any], order_items: Sequence[Mapping[str, Any]]) -> None:
        """The orders first, the job item last: a job item means its orders are all there."""
        items = [*order_items, job_item]
        for start in range(0, len(items), _BATCH_WRITE_LIMIT):
            requests = [
                {"PutRequest": {"Item": serialize_values(item)}} for item in items[start : start + _BATCH_WRITE_LIMIT]
            ]
            pending: dict[str, Any] = {self.orders_table: requests}
            # BatchWriteItem may leave items unprocessed under throttling; the client's retries do
            # not cover those, so they are sent again here (bounded: a run never half-inserts silently).
            for _ in range(8):
                answer = client("dynamodb").batch_write_item(RequestItems=pending)
                pending = answer.get("UnprocessedItems") or {}
                if not pending:
                    break
            if pending:
                raise RuntimeError(f"orders table kept {len(pending[self.orders_table])} items unprocessed")

    # -- reads ------------------------------------------------------------------------------

    def load(self, run_id: str) -> RunRecord | None:
        """The job item and every order, read consistently by their known keys."""
        job = self._get(schema.order_pk(run_id, schema.JOB_ORDER_NUM))
        if job is None:
            return None
        count = int(job["order_count"])
        keys = [schema.order_pk(run_id, schema.order_num(n)) for n in range(1, count + 1)]
        items: list[dict[str, Any]] = []
        for start in range(0, len(keys), _BATCH_GET_LIMIT):
            request = {
                self.orders_table: {
                    "Keys": [{schema.PK: {"S": key}} for key in keys[start : start + _BATCH_GET_LIMIT]],
                    "ConsistentRead": True,
                }
            }
            while request:
                answer = client("dynamodb").batch_get_item(RequestItems=request)
                items += [to_plain(item) or {} for item in answer["Responses"].get(self.orders_table, [])]
                request = answer.get("UnprocessedKeys") or {}
        orders = {str(item[schema.ORDER_NUM]): OrderRecord.from_item(item) for item in items}
        if len(orders) != count:
            raise RuntimeError(f"run {run_id}: {count} orders expected, {len(orders)} found")
        return RunRecord(run_id=run_id, job=job, orders=orders)

    def _get(self, pk: str) -> dict[str, Any] | None:
        answer = client("dynamodb").get_item(
            TableName=self.orders_table, Key={schema.PK: {"S": pk}}, ConsistentRead=True
        )
        return to_plain(answer.get("Item"))

    # -- order transitions --------------------------------------------------------------------

    def reserve_dispatch(self, run_id: str, num: str, *, generation: int, previous_generation: int | None) -> bool:
        """queued -> dispatching before the target is called (a retry cannot dispatch twice);
        or, for an orphaned reservation, take it over from ``previous_generation``."""
        values: dict[str, Any]
        if previous_generation is None:
            condition, values = "#s = :queued", {":queued": schema.QUEUED}
        else:
            condition = "#s = :dispatching AND dispatch_generation = :previous"
            values = {":dispatching": schema.DISPATCHING, ":previous": previous_generation}
        return self._update(
            run_id,
            num,
            set_values={
                schema.STATUS: schema.DISPATCHING,
                "dispatch_generation": generation,
                "dispatched_at_ms": self._now_ms(),
            },
            condition=condition,
            condition_values=values,
        )

    def mark_running(self, run_id: str, num: str, *, generation: int, details: Mapping[str, Any]) -> bool:
        return self._update(
            run_id,
            num,
            set_values={schema.STATUS: schema.RUNNING, **details},
            condition="#s = :dispatching AND dispatch_generation = :generation",
            condition_values={":dispatching": schema.DISPATCHING, ":generation": generation},
        )

    def record_finished(self, run_id: str, num: str, *, status: str, log: str, reason: str | None) -> bool:
        values: dict[str, Any] = {
            schema.STATUS: status,
            "log": log[: schema.LOG_LIMIT_BYTES],
            "finished_at_ms": self._now_ms(),
        }
        if reason:
            values["reason"] = reason
        return self._update(
            run_id,
            num,
            set_values=values,
            condition="#s IN (:dispatching, :running)",
            condition_values={":dispatching": schema.DISPATCHING, ":running": schema.RUNNING},
        )

    def mark_dependency_failed(self, run_id: str, num: str, *, reason: str) -> bool:
        return self._update(
            run_id,
            num,
            set_values={schema.STATUS: schema.DEPENDENCY_FAILED, "reason": reason, "finished_at_ms": self._now_ms()},
            condition="#s = :queued",
            condition_values={":queued": schema.QUEUED},
        )

    def finalize_job(self, run_id: str, *, status: str) -> int:
        """running -> ``status``; the finalize time, also when an earlier attempt finalized it."""
        now = self._now_ms()
        try:
            client("dynamodb").update_item(
                TableName=self.orders_table,
                Key={schema.PK: {"S": schema.order_pk(run_id, schema.JOB_ORDER_NUM)}},
                UpdateExpression="SET #s = :status, finalized_at_ms = :now",
                ConditionExpression="#s = :running",
                ExpressionAttributeNames={"#s": schema.STATUS},
                ExpressionAttributeValues=serialize_values(
                    {":status": status, ":now": now, ":running": schema.JOB_RUNNING}
                ),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old = to_plain(exc.response.get("Item")) or {}
            return int(old.get("finalized_at_ms", now))
        return now

    def _update(
        self,
        run_id: str,
        num: str,
        *,
        set_values: Mapping[str, Any],
        condition: str,
        condition_values: Mapping[str, Any],
    ) -> bool:
        names = {"#s": schema.STATUS, **{f"#a{i}": name for i, name in enumerate(set_values)}}
        values = {f":v{i}": value for i, value in enumerate(set_values.values())}
        assignments = ", ".join(f"#a{i} = :v{i}" for i in range(len(set_values)))
        try:
            client("dynamodb").update_item(
                TableName=self.orders_table,
                Key={schema.PK: {"S": schema.order_pk(run_id, num)}},
                UpdateExpression=f"SET {assignments}",
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=serialize_values({**values, **condition_values}),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    # -- events -----------------------------------------------------------------------------

    def put_event(
        self, run: RunRecord, *, order_name: str, event_type: str, data: Mapping[str, Any], epoch_ms: int | None = None
    ) -> None:
        """One event; a retry with the same epoch (e.g. job_completed at the stored finalize
        time) finds it there and leaves it."""
        epoch = self._now_ms() if epoch_ms is None else epoch_ms
        item = {
            schema.TRACE_ID: run.trace_id,
            schema.EVENT_SK: schema.event_sk(order_name, epoch, event_type),
            schema.ORDER_NAME: order_name,
            schema.EPOCH: epoch,
            schema.RUN_ID: run.run_id,
            "flow_id": run.flow_id,
            "trace": f"{run.trace_id}:{epoch // 1000}",
            "type": event_type,
            "data": dict(data),
            schema.TTL_ATTRIBUTE: epoch // 1000 + schema.ORDER_EVENTS_TTL_SECONDS,
        }
        try:
            client("dynamodb").put_item(
                TableName=self.events_table,
                Item=serialize_values(item),
                ConditionExpression="attribute_not_exists(#sk)",
                ExpressionAttributeNames={"#sk": schema.EVENT_SK},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
