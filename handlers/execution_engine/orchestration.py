"""One orchestration pass of a run, under the run's lock: read results, evaluate, dispatch, finalize.

Every result.json (and the init result ``0000``) triggers a pass. A pass:

1. takes the per-run lock, a claim of the shared primitive (``handlers.common.claims``) on
   ``locks["lock:<run>"]``: absent, released, or expired -> ours; its token fences extend and
   release, so a stale holder can never release its successor's lock (the seed could);
2. reads the run consistently (job item + every order by key), and for each order in flight
   (``dispatching`` or ``running``) its result.json: a result found is recorded (conditional on
   the order still being in flight, so a duplicate callback records nothing twice);
3. evaluates readiness to a fixed point (``graph.evaluate``, linear in orders + edges), marks
   ``dependency_failed`` orders, dispatches the ready ones in parallel;
4. finalizes when every order is terminal, and gives the lock back -- released, or, once the run
   is finalized, confirmed ``completed`` so every later callback is a no-op.

A callback is never dropped. A callback that meets a held lock waits for it
(``wait_while_held``) and then runs its own pass, which sees its result because the result was
stored before S3 sent the event. If the lock is still held when the wait has to end (the
invocation's deadline), the handler fails and Lambda's asynchronous retries (two, after about 1
and 2 minutes) run it again, then the on-failure queue (alarmed) keeps it. A holder that dies
leaves its lease to run out (LOCK_LEASE_MS); the next callback or retry takes over.

Dispatching an order exactly once, across crashes and retries (no outside call can be fenced):
  a. ``queued -> dispatching`` with the pass's lock generation, conditional on ``queued``;
  b. start the order's watchdog execution, named ``<run>-<num>`` (one per order, ever) and
     carrying the generation: this is the dispatch *ticket*. Only the pass whose StartExecution
     succeeds calls the target; a second pass gets ExecutionAlreadyExists and does not;
  c. call the target (Lambda: an asynchronous invoke of the worker). A call that fails marks the
     order failed: its result.json (first writer wins) and its item;
  d. ``dispatching -> running`` with the execution details.
  Crash windows: after (a), before (b): the order stays ``dispatching`` with an old generation; a
  later pass (a higher generation: the crashed holder lost the lock) finds no watchdog and
  dispatches it itself. After (b): the watchdog exists, so a later pass never calls the target
  again; if the target was never called, the watchdog writes ``timed_out`` after the order's
  timeout and the run goes on. After (c): the worker's result (or the watchdog's) arrives and is
  recorded from ``dispatching`` as well as from ``running``.

Finalizing, idempotently: the job item moves ``running -> <status>`` once (its finalize time is
kept), then the job_completed event (keyed by that time), the deletion of the run's SOPS key, the
done marker ``s3://<done>/<run>/done`` and the lock's ``completed`` state follow; a pass that finds
the job already finalized repeats whichever of these a crash left undone.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from handlers.common.claims import Acquire, Claim, ClaimLocation, ClaimStore
from handlers.execution_engine import schema
from handlers.execution_engine.graph import OrderState, evaluate
from handlers.execution_engine.results import OrderResult, read_result, write_result_once
from handlers.execution_engine.run_store import OrderRecord, RunRecord, RunStore

# The lock's lease: long enough for a pass over a large run (reads of every order, results of
# the orders in flight, a parallel dispatch round), short enough that a crashed holder delays
# its run by at most a minute. A pass extends it when half is used.
LOCK_LEASE_MS = 60_000
LOCK_COMPLETED = "completed"
LOCK_TTL_SECONDS = 2 * 24 * 3600
DISPATCH_CONCURRENCY = 16
# Seconds of an invocation kept for the pass itself after waiting for a held lock.
PASS_RESERVE_SECONDS = 60.0


class LockLostError(RuntimeError):
    """The pass's lease ran out and another pass took the lock: this pass stops writing."""


class Target(Protocol):
    def start(self, run: RunRecord, order: OrderRecord) -> Mapping[str, Any]:
        """Start the order's execution; the details stored on the order (e.g. its URL)."""


@dataclass(frozen=True)
class LambdaTarget:
    """The worker function, invoked asynchronously (its event carries locations, never secrets)."""

    function_name: str
    internal_bucket: str
    lambda_client: Any

    def start(self, run: RunRecord, order: OrderRecord) -> Mapping[str, Any]:
        payload = {
            "run_id": run.run_id,
            "order_num": order.num,
            "exec_bucket": self.internal_bucket,
            "exec_key": schema.exec_key(run.run_id, order.num),
            "sops_key_parameter": str(run.job["sops_key_parameter"]),
        }
        answer = self.lambda_client.invoke(
            FunctionName=self.function_name, InvocationType="Event", Payload=json.dumps(payload).encode()
        )
        return {"execution_url": f"lambda:{self.function_name}", "target_request_id": _request_id(answer)}


def _request_id(answer: Mapping[str, Any]) -> str:
    return str(answer.get("ResponseMetadata", {}).get("RequestId", ""))


@dataclass
class PassReport:
    """What one pass did (logged, and counted by the benchmark)."""

    run_id: str
    outcome: str = "processed"  # processed | finalized | already_finalized | unknown_run
    recorded: list[str] = field(default_factory=list)
    dependency_failed: list[str] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)
    dispatch_failed: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    job_status: str | None = None
    waited_for_lock: bool = False
    evaluation_seconds: float = 0.0


@dataclass
class Orchestrator:
    store: RunStore
    claims: ClaimStore
    locks_table: str
    internal_bucket: str
    done_bucket: str
    watchdog_state_machine_arn: str
    targets: Mapping[str, Target]
    s3: Any
    stepfunctions: Any
    ssm: Any
    log: Callable[..., None] = field(default=lambda message, **fields: None)

    # -- the lock ---------------------------------------------------------------------------

    def handle(self, run_id: str, *, deadline_monotonic: float) -> PassReport:
        """Run one pass of ``run_id`` under its lock, waiting for a holder until the deadline."""
        location = ClaimLocation(self.locks_table, {schema.PK: {"S": schema.lock_pk(run_id)}})
        attributes = {schema.TTL_ATTRIBUTE: self.claims.now_ms() // 1000 + LOCK_TTL_SECONDS}
        report = PassReport(run_id)
        wait_until = deadline_monotonic - PASS_RESERVE_SECONDS
        acquired = self.claims.acquire(location, lease_ms=LOCK_LEASE_MS, attributes=attributes)
        while acquired.status is Acquire.HELD:
            report.waited_for_lock = True
            # Raises ClaimHeldError at the deadline: the invocation fails and is retried.
            current = self.claims.wait_while_held(location, acquired.current, wait_until)
            acquired = self.claims.acquire(location, lease_ms=LOCK_LEASE_MS, attributes=attributes, seen=current)
        if acquired.status is Acquire.SETTLED:
            report.outcome = "already_finalized"
            return report
        claim = acquired.claim
        assert claim is not None
        try:
            finalized = self._pass(run_id, claim, report)
        except BaseException:
            # Give the lock back at once so the retry (or the next callback) need not wait out the
            # lease; if this write fails too, the lease runs out instead.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.claims.release(claim)
            raise
        if finalized:
            self.claims.confirm(claim, state=LOCK_COMPLETED)
        else:
            self.claims.release(claim)
        return report

    def _keep_lock(self, claim: Claim) -> Claim:
        now = self.claims.now_ms()
        if claim.lease_until_ms - now > LOCK_LEASE_MS // 2:
            return claim
        answer = self.claims.extend(claim, lease_ms=LOCK_LEASE_MS)
        if not answer.ok:
            raise LockLostError(f"lock of {claim.location.key} was taken over during the pass")
        return Claim(
            location=claim.location,
            token=claim.token,
            generation=claim.generation,
            lease_until_ms=now + LOCK_LEASE_MS,
            first_claimed_at_ms=claim.first_claimed_at_ms,
            previous=claim.previous,
        )

    # -- one pass ---------------------------------------------------------------------------

    def _pass(self, run_id: str, claim: Claim, report: PassReport) -> bool:
        run = self.store.load(run_id)
        if run is None:
            report.outcome = "unknown_run"
            self.log("callback for a run that does not exist", run_id=run_id)
            return False
        if run.status != schema.JOB_RUNNING:
            finalized_at = int(run.job.get("finalized_at_ms") or self.claims.now_ms())
            self._finish(run, run.status, finalized_at, {n: o.status for n, o in run.orders.items()}, report)
            return True
        statuses = {num: order.status for num, order in run.orders.items()}
        for num, order in run.orders.items():
            if order.status not in (schema.DISPATCHING, schema.RUNNING):
                continue
            result = read_result(self.s3, self.internal_bucket, schema.callback_key(run_id, num))
            if result is not None:
                if self.store.record_finished(run_id, num, status=result.status, log=result.log, reason=result.reason):
                    report.recorded.append(num)
                    self._event(
                        run, order, schema.EVENT_ORDER_FINISHED, {"status": result.status, "reason": result.reason}
                    )
                statuses[num] = result.status
            elif order.status == schema.DISPATCHING and (order.dispatch_generation or 0) < claim.generation:
                statuses[num] = self._recover(run, order, claim, report)
        claim = self._keep_lock(claim)

        started = time.perf_counter()
        evaluation = evaluate(
            {
                num: OrderState(status=statuses[num], dependencies=order.dependencies, must_succeed=order.must_succeed)
                for num, order in run.orders.items()
            }
        )
        report.evaluation_seconds = time.perf_counter() - started
        for num in evaluation.dependency_failed:
            order = run.orders[num]
            reason = "a dependency that must succeed did not"
            statuses[num] = schema.DEPENDENCY_FAILED
            if self.store.mark_dependency_failed(run_id, num, reason=reason):
                report.dependency_failed.append(num)
                self._event(
                    run, order, schema.EVENT_ORDER_FINISHED, {"status": schema.DEPENDENCY_FAILED, "reason": reason}
                )
        if evaluation.ready:
            claim = self._keep_lock(claim)
            with ThreadPoolExecutor(max_workers=min(DISPATCH_CONCURRENCY, len(evaluation.ready))) as pool:
                outcomes = list(pool.map(lambda n: self._dispatch(run, run.orders[n], claim, None), evaluation.ready))
            for num, outcome in zip(evaluation.ready, outcomes, strict=True):
                if outcome == schema.RUNNING:
                    report.dispatched.append(num)
                elif outcome == schema.FAILED:
                    report.dispatch_failed.append(num)
                # DISPATCHING: another pass holds the order's reservation or ticket
        if evaluation.all_terminal and evaluation.job_status is not None:
            claim = self._keep_lock(claim)
            finalized_at = self.store.finalize_job(run_id, status=evaluation.job_status)
            self._finish(run, evaluation.job_status, finalized_at, statuses, report)
            return True
        return False

    # -- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, run: RunRecord, order: OrderRecord, claim: Claim, previous_generation: int | None) -> str:
        """The order's status after this dispatch attempt (see the module docstring: a-d)."""
        run_id, num = run.run_id, order.num
        if not self.store.reserve_dispatch(
            run_id, num, generation=claim.generation, previous_generation=previous_generation
        ):
            return schema.DISPATCHING  # another pass reserved it
        watchdog_input = {
            schema.RUN_ID: run_id,
            schema.ORDER_NUM: num,
            "timeout": order.timeout,
            "started_at_ms": self.claims.now_ms(),
            "dispatch_generation": claim.generation,
        }
        try:
            execution = self.stepfunctions.start_execution(
                stateMachineArn=self.watchdog_state_machine_arn,
                name=schema.watchdog_execution_name(run_id, num),
                input=json.dumps(watchdog_input),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ExecutionAlreadyExists":
                return schema.DISPATCHING  # another pass holds the ticket: it calls the target
            raise
        target = self.targets.get(order.execution_target)
        try:
            if target is None:
                raise LookupError(f"execution target {order.execution_target!r} is not enabled in this deployment")
            details = dict(target.start(run, order))
        except (ClientError, BotoCoreError, LookupError) as exc:
            reason = f"the {order.execution_target} target call failed: {exc}"
            self.log("target call failed", run_id=run_id, order_num=num, reason=reason)
            failed = OrderResult(status=schema.FAILED, reason=reason, written_by="orchestrator")
            write_result_once(self.s3, self.internal_bucket, schema.callback_key(run_id, num), failed)
            self.store.record_finished(run_id, num, status=schema.FAILED, log="", reason=reason)
            self._event(run, order, schema.EVENT_ORDER_FINISHED, {"status": schema.FAILED, "reason": reason})
            return schema.FAILED
        details["watchdog_execution_arn"] = execution["executionArn"]
        self.store.mark_running(run_id, num, generation=claim.generation, details=details)
        self._event(run, order, schema.EVENT_ORDER_DISPATCHED, {"target": order.execution_target, **details})
        return schema.RUNNING

    def _recover(self, run: RunRecord, order: OrderRecord, claim: Claim, report: PassReport) -> str:
        """An order left ``dispatching`` by a pass that lost its lock."""
        report.recovered.append(order.num)
        name = schema.watchdog_execution_name(run.run_id, order.num)
        arn = f"{self.watchdog_state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"
        try:
            self.stepfunctions.describe_execution(executionArn=arn)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ExecutionDoesNotExist":
                raise
            # No ticket was taken: the target was never called. Dispatch it now.
            return self._dispatch(run, order, claim, order.dispatch_generation)
        # The ticket was taken, so the target may have been called: never call it again. The
        # worker's result or the watchdog's timed_out result will arrive and be recorded.
        return schema.DISPATCHING

    # -- finalize ---------------------------------------------------------------------------

    def _finish(
        self, run: RunRecord, status: str, finalized_at: int, orders: Mapping[str, str], report: PassReport
    ) -> None:
        self.store.put_event(
            run,
            order_name=schema.JOB_EVENT_ORDER_NAME,
            event_type=schema.EVENT_JOB_COMPLETED,
            data={"status": status, "orders": dict(orders)},
            epoch_ms=finalized_at,
        )
        try:
            self.ssm.delete_parameter(Name=str(run.job["sops_key_parameter"]))
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ParameterNotFound":
                raise
        done = {"run_id": run.run_id, "status": status, "finalized_at_ms": finalized_at, "orders": dict(orders)}
        self.s3.put_object(
            Bucket=self.done_bucket,
            Key=schema.done_key(run.run_id),
            Body=json.dumps(done).encode(),
            ContentType="application/json",
        )
        report.outcome = "finalized"
        report.job_status = status

    def _event(self, run: RunRecord, order: OrderRecord, event_type: str, data: Mapping[str, Any]) -> None:
        self.store.put_event(run, order_name=order.name, event_type=event_type, data={"order_num": order.num, **data})
