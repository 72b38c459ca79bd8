"""Randomized schedules of JobClaim (hypothesis, seeded): messages, workers, crashes, stalls.

**The level.** Every schedule runs the real code under test -- the deployed functions (ParseEmail,
CheckActiveJob, RequestClaim, HandleInterruption, HandleTimeout: our handlers running inside
moto's Lambda, with the environment the synthesized template gives them) and the reference
worker (``handlers.job_claim.worker.Worker``, its own acquire/beat/answer/delete code) -- against
the synthesized template deployed into moto, over HTTP. What moto's ASL interpreter would do is
done by ``Flow``: it walks the *deployed* definition (read back from moto, so a changed
definition changes the walk) state by state -- Task (``lambda:invoke``, ``dynamodb:getItem``,
``sqs:sendMessage`` and ``.waitForTaskToken``), Choice (the operators the definition uses; any
other is refused), Parallel, Succeed, Fail, with Parameters, ResultSelector, ResultPath,
OutputPath and Catch as ASL defines them. Its task tokens keep HeartbeatSeconds and
TimeoutSeconds of the definition on the schedule's clock, answer a closed token with
``TaskTimedOut`` (timed out) or ``InvalidToken`` (answered), and run the catches after the
worker's call returns. One fleet clock (real time plus the schedule's jumps) drives the workers'
claims, the token deadlines and moto's SQS visibility, so a 1 h lease or a 5 min visibility
timeout passes in one step. Each worker runs in its own thread in lockstep with the schedule:
its job parks until the schedule says work, finish or crash, and its heartbeat thread is
replaced by the schedule calling the worker's own ``_beat`` (every 20 s of schedule time for a
worker that is not stalled) -- so a schedule replays exactly, which a thread race would not.

**A schedule**: 1-3 (project, user) pairs, 1-3 workers to start with, then 3-8 steps plus up to 3
emails (a new thread or a reply on an earlier thread of the pair; after the first, most of them
aimed at the pair of a job that is running, if any -- usually after a poll that starts one, often
followed by a beat; most followed by a poll). Each worker step acts on a worker it can act on: a
worker polls (receives one message: claims the pair or skips it, starts the job), works (the job
checks ``should_stop``), beats, finishes; crashes (now: mid-job or idle, nothing after that point
runs; or armed: right after its next token answer lands, before the row clear and the delete);
stalls (no beats, no work) and resumes; retires (releases its pairs); a worker starts (a new
container, or a crashed one restarting under its id); the clock jumps (1 s; 61 s, beating the
workers that are not stalled; a 5 min or, once per schedule, a 1 h pause of the whole fleet). Then
the drain: stalls end, crashes are disarmed, a fresh worker joins if none is left, and workers poll, beat and
finish, the clock jumping (61 s, 5 min, 1 h) whenever nothing moves, until nothing is left.

**Invariants.** After every step: at most one worker believes it owns a pair (a worker's belief
lasts from its last successful acquire or refresh to the end of that lease); a job starts only
under the worker's live ownership in the table; no two workers run jobs of one pair -- hence of
one message -- at once unless the earlier one's lease ran out while it stalled or paused. At the end: every message
ended exactly one way -- completed (its token answered with success), preempted (PREEMPTED,
HandleInterruption recorded it: an interruptions row ``preempted`` with partial work, and its
thread's ``interruption_count`` equals the preempted messages of that thread), or timed out
(HandleTimeout: an interruptions row ``timed_out`` and the message in the email DLQ); no message
took the failure path, none is left running; the DLQ holds exactly the timed-out messages; no
active-job row and no message is left in the input queue (a stale-token message does not block
its FIFO group).

All schedules share one deployment (each has its own pairs, messages and containers); the
state machine is not executed by moto here -- the walk and its tokens are the harness's.

**Not covered here** (``test_flow.py`` covers the first four through moto's real interpreter):
the intake and its S3 notification (each email is stored outside ``incoming/`` and its execution
started by the walk, ParseEmail reading it as the intake's would), attachments (the Map), moto's
own ASL interpretation and its callback timing, the SNS interrupt subscription (the worker's
durable signal, the row it heartbeats on, is what stops it here), DynamoDB TTL expiry (moto never
deletes expired items, and the handlers compare TTLs with the real clock, which the jumps do not
move), Lambda service errors and their retries, and the real heartbeat thread's timing.

``make test`` runs 200 schedules, ``make soak`` more (JOB_CLAIM_SCHEDULES); the seed is fixed
(JOB_CLAIM_SCHEDULE_SEED to vary it). A failing schedule is printed by hypothesis
(``schedule=...``, replay it with ``@example``) with a trace of what each step did.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import queue
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, event, given, note, seed, settings
from hypothesis import strategies as st

from handlers.common.dynamo_items import to_plain
from handlers.job_claim import schema
from handlers.job_claim.email_message import execution_name
from handlers.job_claim.worker import Worker, WorkerConfig
from tests.support.cfn_deploy import deploy
from tests.support.job_claim_deployment import EMAIL_DOMAIN, JobClaimDeployment, job_claim_template
from tests.support.moto_lambda import LambdaHarness
from tests.support.moto_server import MotoServer

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

SCHEDULES = int(os.environ.get("JOB_CLAIM_SCHEDULES", "200"))
SEED = int(os.environ.get("JOB_CLAIM_SCHEDULE_SEED", "20261203"))
ACTIONS = ("email", "poll", "work", "beat", "finish", "crash", "stall", "resume", "start", "retire", "advance")
WEIGHTS = (2.5, 4, 2.5, 2.5, 1.5, 1.8, 1, 0.8, 0.7, 0.3, 1.5)
CRASHES = ("now", "after_answer")
ADVANCES = ("tick", "heartbeat", "pause", "lease")
ADVANCE_WEIGHTS = (2, 3, 1, 0.4)
MAX_SLOTS = 4
MAX_EMAILS = 3
BEAT_EVERY_S = 20  # the reference worker's default heartbeat interval
LEASE_S = schema.OWNERSHIP_LEASE_SECONDS
JUMPS_S = {"tick": 1, "heartbeat": 61, "pause": 301, "lease": LEASE_S + 60}
LOCKSTEP_WAIT_S = 20.0
MAX_DRAIN_ROUNDS = 40
# The Choice rules the walk evaluates, as the definition states them: a new operator is refused.
CHOICE_OPERATORS = frozenset({"IsPresent", "StringEquals", "StringEqualsPath"})

Step = tuple[Any, ...]


@st.composite
def schedules(draw: st.DrawFn) -> tuple[int, int, list[Step]]:
    """(pairs, workers at the start, steps), from a ``random.Random`` seeded by hypothesis: a
    hypothesis-managed Random (``st.randoms``) answers ``random()`` with 0.0 so often that every
    "with probability p" branch was taken and no email ever interrupted a job. The schedule
    itself is what hypothesis prints, so a failing one replays with ``@example``."""
    rnd = random.Random(draw(st.integers(min_value=0, max_value=2**64 - 1)))
    pairs, workers = rnd.choice((1, 1, 2, 2, 3)), rnd.choice((1, 2, 2, 3))
    steps: list[Step] = []
    emails, lease_jumps = 0, 0
    for _ in range(rnd.randint(3, 8)):
        action = rnd.choices(ACTIONS, WEIGHTS)[0]
        if action == "email":
            if emails == MAX_EMAILS:
                continue
            emails += 1
            aimed = emails > 1 and rnd.random() < 0.6
            reply = rnd.randrange(1000) if rnd.random() < (0.15 if aimed else 0.4) else None
            if aimed and rnd.random() < 0.7:
                steps.append(("poll", rnd.randrange(MAX_SLOTS)))  # likely a job running to aim at
            steps.append((action, rnd.randrange(pairs), reply, aimed))
            if aimed and rnd.random() < 0.5:
                steps.append(("beat", rnd.randrange(MAX_SLOTS)))  # the running job hears of it soon
            if rnd.random() < 0.6:
                steps.append(("poll", rnd.randrange(MAX_SLOTS)))  # a worker picks it up soon
        elif action == "crash":
            steps.append((action, rnd.randrange(MAX_SLOTS), rnd.choice(CRASHES)))
        elif action == "start":
            steps.append((action, rnd.random() < 0.5))  # True: a crashed container restarts under its id
        elif action == "advance":
            kind = rnd.choices(ADVANCES, ADVANCE_WEIGHTS)[0]
            if kind == "lease":
                if lease_jumps:
                    kind = "pause"
                lease_jumps += 1
            steps.append((action, kind))
        else:
            steps.append((action, rnd.randrange(MAX_SLOTS)))
    if emails == 0:
        steps.insert(rnd.randrange(len(steps) + 1), ("email", rnd.randrange(pairs), None, False))
    return pairs, workers, steps


# --- the fleet clock ---------------------------------------------------------------------------


class FleetClock:
    """Real time plus the schedule's jumps (real time keeps moving, so a visibility of 0 ends)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def jump(self, seconds: float) -> None:
        self.offset_ms += int(seconds * 1000)

    def iso(self) -> str:
        return datetime.datetime.fromtimestamp(self.now_ms() / 1000, tz=datetime.UTC).isoformat()


# --- the Step Functions side: the deployed definition, walked --------------------------------


class StepError(Exception):
    def __init__(self, name: str, cause: str | None = None) -> None:
        super().__init__(f"{name}: {cause}")
        self.name = name
        self.cause = cause


@dataclass
class Ended:
    state: str
    data: Any
    ok: bool


@dataclass
class Raised:
    error: StepError


@dataclass
class Waiting:
    task: TokenTask


Outcome = Ended | Raised | Waiting
Resume = Callable[[Any, StepError | None], "Outcome"]


@dataclass
class Execution:
    arn: str
    input: dict[str, Any]
    message_id: str = ""
    pair: str = ""
    thread_id: str = ""
    entered: list[str] = field(default_factory=list)
    end: Ended | Raised | None = None


@dataclass
class TokenTask:
    """One ``.waitForTaskToken`` task: its deadlines on the fleet clock, and what follows it."""

    token: str
    execution: Execution
    state: str
    heartbeat_ms: int | None
    timeout_ms: int | None
    started_ms: int
    beat_ms: int
    resume: Resume
    closed: str | None = None  # "success", the error sent, or "timed_out"

    def expired(self, now_ms: int) -> bool:
        beat_late = self.heartbeat_ms is not None and now_ms > self.beat_ms + self.heartbeat_ms
        return beat_late or (self.timeout_ms is not None and now_ms > self.started_ms + self.timeout_ms)


_MISSING = object()


def _path(path: str, data: Any, context: Mapping[str, Any]) -> Any:
    """A reference path of the definition: ``$``, ``$.a.b``, ``$.a[0]``, ``$$.Task.Token`` ..."""
    root: Any = context if path.startswith("$$") else data
    rest = path[2:] if path.startswith("$$") else path[1:]
    value = root
    for part in [p for p in rest.split(".") if p]:
        name, _, index = part.partition("[")
        if not isinstance(value, dict) or name not in value:
            return _MISSING
        value = value[name]
        if index:
            position = int(index.rstrip("]"))
            if not isinstance(value, list) or position >= len(value):
                return _MISSING
            value = value[position]
    return value


def _resolve(template: Any, data: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(template, list):
        return [_resolve(item, data, context) for item in template]
    if not isinstance(template, dict):
        return template
    resolved: dict[str, Any] = {}
    for key, value in template.items():
        if key.endswith(".$"):
            found = _path(str(value), data, context)
            if found is _MISSING:
                raise StepError("States.Runtime", f"{value} is not in the state's input")
            resolved[key[:-2]] = found
        else:
            resolved[key] = _resolve(value, data, context)
    return resolved


def _with_result(data: Any, result_path: Any, result: Any) -> Any:
    if result_path is None:
        return data
    if result_path == "$":
        return result
    parts = str(result_path)[2:].split(".")
    updated = dict(data)
    target = updated
    for part in parts[:-1]:
        target[part] = dict(target.get(part) or {})
        target = target[part]
    target[parts[-1]] = result
    return updated


def _choose(rule: Mapping[str, Any], data: Any) -> bool:
    if "And" in rule:
        return all(_choose(r, data) for r in rule["And"])
    if "Not" in rule:
        return not _choose(rule["Not"], data)
    operators = set(rule) - {"Variable", "Next"}
    if not operators <= CHOICE_OPERATORS:
        raise NotImplementedError(f"the schedule's walk does not evaluate {sorted(operators)}")
    value = _path(rule["Variable"], data, {})
    if "IsPresent" in rule:
        return (value is not _MISSING) == rule["IsPresent"]
    if value is _MISSING or not isinstance(value, str):
        return False
    if "StringEquals" in rule:
        return bool(value == rule["StringEquals"])
    other = _path(rule["StringEqualsPath"], data, {})
    return bool(value == other)


class Clients:
    """The test's own boto3 clients, created once (a client costs tens of milliseconds)."""

    def __init__(self) -> None:
        self.lambda_ = boto3.client("lambda")
        self.ddb = boto3.client("dynamodb")
        self.sqs = boto3.client("sqs")
        self.s3 = boto3.client("s3")


class Flow:
    """Executions of the deployed definition: every state the definition names, in its order."""

    def __init__(
        self, definition: Mapping[str, Any], clock: FleetClock, clients: Clients, trace: Callable[[str], None]
    ) -> None:
        self.definition = definition
        self.clock = clock
        self.trace = trace
        self.lambda_client = clients.lambda_
        self.ddb = clients.ddb
        self.sqs = clients.sqs
        self.tasks: dict[str, TokenTask] = {}
        self.answers: list[tuple[TokenTask, Any, StepError | None]] = []  # run after the caller's step

    # executions

    def start(self, execution: Execution) -> None:
        self._settle(
            execution, self._run(execution, self.definition["States"], self.definition["StartAt"], execution.input)
        )

    def _settle(self, execution: Execution, outcome: Outcome) -> None:
        if isinstance(outcome, Waiting):
            return
        execution.end = outcome
        self.trace(f"  {execution.message_id}: {self._describe(outcome)} via {execution.entered}")

    @staticmethod
    def _describe(outcome: Ended | Raised) -> str:
        if isinstance(outcome, Raised):
            return f"FAILED {outcome.error.name}"
        return f"{'SUCCEEDED' if outcome.ok else 'FAILED'} at {outcome.state}"

    def _context(self, execution: Execution, token: str | None = None) -> dict[str, Any]:
        return {
            "Execution": {"Id": execution.arn, "Input": execution.input},
            "State": {"EnteredTime": self.clock.iso()},
            "Task": {"Token": token},
        }

    def _run(self, execution: Execution, states: Mapping[str, Any], name: str, data: Any) -> Outcome:
        while True:
            state = states[name]
            execution.entered.append(name)
            kind = state["Type"]
            if kind in ("Succeed", "Fail"):
                return Ended(name, data, kind == "Succeed")
            if kind == "Choice":
                name = next(
                    (rule["Next"] for rule in state["Choices"] if _choose(rule, data)), state.get("Default", "")
                )
                if not name:
                    return Raised(StepError("States.NoChoiceMatched"))
                continue
            if kind == "Parallel":
                return self._parallel(execution, states, state, data)
            if kind != "Task":
                raise NotImplementedError(f"the schedule's walk does not run {kind} states ({name})")
            if str(state["Resource"]).endswith(".waitForTaskToken"):
                return self._wait(execution, states, name, state, data)
            try:
                result = self._task(execution, state, data)
            except StepError as error:
                return self._catch(execution, states, state, data, error)
            data = self._output(state, data, result, execution)
            if state.get("End"):
                return Ended(name, data, True)
            name = state["Next"]

    def _output(self, state: Mapping[str, Any], data: Any, result: Any, execution: Execution) -> Any:
        if "ResultSelector" in state:
            result = _resolve(state["ResultSelector"], result, self._context(execution))
        data = _with_result(data, state.get("ResultPath", "$"), result)
        if "OutputPath" in state:
            data = _path(state["OutputPath"], data, {})
        return data

    def _catch(
        self, execution: Execution, states: Mapping[str, Any], state: Mapping[str, Any], data: Any, error: StepError
    ) -> Outcome:
        for rule in state.get("Catch", []):
            if error.name in rule["ErrorEquals"] or "States.ALL" in rule["ErrorEquals"]:
                caught = _with_result(data, rule.get("ResultPath", "$"), {"Error": error.name, "Cause": error.cause})
                return self._run(execution, states, rule["Next"], caught)
        return Raised(error)

    def _task(self, execution: Execution, state: Mapping[str, Any], data: Any) -> Any:
        resource = str(state["Resource"])
        parameters = _resolve(state["Parameters"], data, self._context(execution))
        if resource.endswith(":lambda:invoke"):
            response = self.lambda_client.invoke(
                FunctionName=parameters["FunctionName"], Payload=json.dumps(parameters["Payload"]).encode()
            )
            payload = json.loads(response["Payload"].read() or b"null")
            if response.get("FunctionError"):
                raise StepError(str(payload.get("errorType")), str(payload.get("errorMessage")))
            return {"Payload": payload, "StatusCode": response["StatusCode"]}
        if resource.endswith(":dynamodb:getItem"):
            answer = self.ddb.get_item(**parameters)
            return {k: v for k, v in answer.items() if k != "ResponseMetadata"}
        if resource.endswith(":sqs:sendMessage"):
            return self._send(parameters)
        raise NotImplementedError(f"the schedule's walk does not call {resource}")

    def _send(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        request = {k: v for k, v in parameters.items() if k != "MessageBody"}
        answer = self.sqs.send_message(MessageBody=json.dumps(parameters["MessageBody"]), **request)
        return {"MessageId": answer["MessageId"]}

    def _wait(
        self, execution: Execution, states: Mapping[str, Any], name: str, state: Mapping[str, Any], data: Any
    ) -> Outcome:
        token = uuid.uuid4().hex
        now = self.clock.now_ms()

        def resume(output: Any, error: StepError | None) -> Outcome:
            if error is not None:
                return self._catch(execution, states, state, data, error)
            after = self._output(state, data, output, execution)
            return Ended(name, after, True) if state.get("End") else self._run(execution, states, state["Next"], after)

        task = TokenTask(
            token=token,
            execution=execution,
            state=name,
            heartbeat_ms=int(state["HeartbeatSeconds"]) * 1000 if "HeartbeatSeconds" in state else None,
            timeout_ms=int(state["TimeoutSeconds"]) * 1000 if "TimeoutSeconds" in state else None,
            started_ms=now,
            beat_ms=now,
            resume=resume,
        )
        self.tasks[token] = task
        parameters = _resolve(state["Parameters"], data, self._context(execution, token))
        self._send(parameters)
        return Waiting(task)

    def _parallel(
        self, execution: Execution, states: Mapping[str, Any], state: Mapping[str, Any], data: Any
    ) -> Outcome:
        outcomes = [self._run(execution, branch["States"], branch["StartAt"], data) for branch in state["Branches"]]

        def join(branch_outcomes: list[Outcome]) -> Outcome:
            for outcome in branch_outcomes:
                if isinstance(outcome, Raised):
                    for other in branch_outcomes:  # a failed branch stops the others
                        if isinstance(other, Waiting):
                            other.task.closed = other.task.closed or "cancelled"
                    return self._catch(execution, states, state, data, outcome.error)
                if isinstance(outcome, Ended) and not outcome.ok:
                    return self._catch(execution, states, state, data, StepError("States.BranchFailed"))
            waiting = [i for i, o in enumerate(branch_outcomes) if isinstance(o, Waiting)]
            if waiting:
                (index,) = waiting  # the definition has one waiting branch
                inner = branch_outcomes[index]
                assert isinstance(inner, Waiting)
                inner_resume = inner.task.resume

                def resume(output: Any, error: StepError | None) -> Outcome:
                    return join([*branch_outcomes[:index], inner_resume(output, error), *branch_outcomes[index + 1 :]])

                inner.task.resume = resume
                return inner
            results = [o.data for o in branch_outcomes if isinstance(o, Ended)]
            after = self._output(state, data, results, execution)
            return (
                Ended(execution.entered[-1], after, True)
                if state.get("End")
                else self._run(execution, states, state["Next"], after)
            )

        return join(outcomes)

    # the task-token API the workers call (SendTask*), and the deadlines

    def _open(self, token: str, operation: str) -> TokenTask:
        task = self.tasks.get(token)
        if task is None or task.closed is not None:
            code = "TaskTimedOut" if task is not None and task.closed == "timed_out" else "InvalidToken"
            raise ClientError({"Error": {"Code": code, "Message": "the task is closed"}}, operation)
        return task

    def heartbeat(self, token: str) -> None:
        self._open(token, "SendTaskHeartbeat").beat_ms = self.clock.now_ms()

    def answer(self, token: str, output: Any, error: StepError | None) -> None:
        task = self._open(token, "SendTaskFailure" if error else "SendTaskSuccess")
        task.closed = error.name if error is not None else "success"
        self.answers.append((task, output, error))

    def expire(self) -> None:
        now = self.clock.now_ms()
        for task in list(self.tasks.values()):
            if task.closed is None and task.expired(now):
                task.closed = "timed_out"
                self.answers.append((task, None, StepError("States.Timeout", "heartbeat or timeout")))

    def run_answers(self) -> None:
        while self.answers:
            task, output, error = self.answers.pop(0)
            self.trace(f"  {task.execution.message_id}: {task.state} -> {error.name if error else 'success'}")
            self._settle(task.execution, task.resume(output, error))


class Callbacks:
    """One worker's Step Functions client: SendTaskHeartbeat/Success/Failure on the flow's tokens.
    An armed crash fires right after an answer lands (before the worker's next line)."""

    def __init__(self, flow: Flow, host: Host) -> None:
        self._flow = flow
        self._host = host

    def send_task_heartbeat(self, *, taskToken: str) -> dict[str, Any]:
        self._flow.heartbeat(taskToken)
        return {}

    def send_task_success(self, *, taskToken: str, output: str) -> dict[str, Any]:
        self._flow.answer(taskToken, json.loads(output), None)
        self._host.answered()
        return {}

    def send_task_failure(self, *, taskToken: str, error: str, cause: str = "") -> dict[str, Any]:
        self._flow.answer(taskToken, None, StepError(error, cause))
        self._host.answered()
        return {}


# --- workers in lockstep ----------------------------------------------------------------------


class Crash(BaseException):
    """The worker's process dies here: nothing after this point runs (not an ``Exception``, so
    the worker's own handlers cannot catch it)."""


class SteppedWorker(Worker):
    """The reference worker; only its heartbeat thread is handed to the schedule, and what it
    believes it owns is reported to the schedule's checks."""

    host: Host

    def _heartbeat_loop(self, job: Any, done: threading.Event) -> None:
        self.host.job = job
        self.host.job_seen.set()
        done.wait()

    def acquire_ownership(self, pair: str) -> Any:
        claim = super().acquire_ownership(pair)
        if claim is not None:
            self.host.believed[pair] = self.host.clock.now_ms() + self.config.ownership_lease_ms
        return claim

    def refresh_ownership(self, pair: str) -> bool:
        ok = super().refresh_ownership(pair)
        if ok:
            self.host.believed[pair] = self.host.clock.now_ms() + self.config.ownership_lease_ms
        else:
            self.host.believed.pop(pair, None)
        return ok

    def release_ownership(self, pair: str | None = None) -> dict[str, str]:
        outcomes = super().release_ownership(pair)
        for name in outcomes:
            self.host.believed.pop(name, None)
        return outcomes


class Host:
    """One worker container: a thread that runs the worker's ``run_once`` when told to poll,
    with a job that parks between the schedule's commands."""

    def __init__(self, run: Run, container_id: str) -> None:
        self.run = run
        self.clock = run.clock
        self.container_id = container_id
        self.job: Any = None
        self.job_seen = threading.Event()
        self.message: dict[str, Any] | None = None
        self.believed: dict[str, int] = {}  # pair -> end of the lease this worker last won or extended
        self.crashed = False
        self.retired = False
        self.stalled_since_ms: int | None = None
        self.crash_after_answer = False
        self.violation: Exception | None = None
        self._commands: queue.Queue[str] = queue.Queue()
        self._signals: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.worker = SteppedWorker(
            container_id, run.config, run_job=self._run_job, sfn=Callbacks(run.flow, self), clock_ms=self.clock.now_ms
        )
        self.worker.host = self
        self._thread = threading.Thread(target=self._loop, name=f"worker-{container_id}", daemon=True)
        self._thread.start()

    # the worker's thread

    def _loop(self) -> None:
        while True:
            command = self._commands.get()
            if command == "exit":
                return
            self.job_seen.clear()
            try:
                outcome = self.worker.run_once(wait_seconds=0)
            except Crash:
                self._signals.put(("crashed", None))
                return
            except BaseException as exc:  # the worker failed for real: the schedule fails with it
                self._signals.put(("error", exc))
                return
            self.job, self.message = None, None
            self._signals.put(("idle", outcome))

    def _run_job(self, message: Mapping[str, Any], should_stop: Callable[[], bool]) -> dict[str, Any]:
        if not self.job_seen.wait(LOCKSTEP_WAIT_S):
            raise AssertionError("the worker started a job without its heartbeat")
        self.message = dict(message)
        try:
            self.run.job_started(self)
        except Exception as violation:  # the schedule's own failure: the worker must not take it for the job's
            self.violation = violation
            raise Crash() from violation
        steps = 0
        while True:
            self._signals.put(("parked", None))
            command = self._commands.get()
            if command == "crash":
                raise Crash()
            if command == "finish":
                return {"messageId": message["messageId"], "steps": steps}
            steps += 1
            if should_stop():
                return {"messageId": message["messageId"], "steps": steps, "stopped": True}

    def answered(self) -> None:
        if self.crash_after_answer:
            raise Crash()

    # the schedule's side

    def _command(self, command: str) -> tuple[str, Any]:
        self._commands.put(command)
        try:
            signal, value = self._signals.get(timeout=LOCKSTEP_WAIT_S)
        except queue.Empty:
            raise AssertionError(f"worker {self.container_id} did not answer {command!r}") from None
        if self.violation is not None:
            raise self.violation
        if signal == "error":
            raise value
        if signal == "crashed":
            self.crashed = True
            self.job, self.message = None, None
        return signal, value

    @property
    def alive(self) -> bool:
        return not (self.crashed or self.retired)

    @property
    def stalled(self) -> bool:
        return self.stalled_since_ms is not None

    @property
    def running(self) -> bool:
        return self.alive and self.message is not None

    def poll(self) -> str:
        signal, value = self._command("poll")
        return f"{value}" if signal == "idle" else f"{signal} ({self.message and self.message['messageId']})"

    def step(self, command: str) -> str:
        return self._command(command)[0]

    def beat(self) -> str:
        before = (self.job.lost, self.job.ownership_lost, self.job.interrupted_by)
        self.worker._beat(self.job)  # the worker's own heartbeat, fired by the schedule
        after = (self.job.lost, self.job.ownership_lost, self.job.interrupted_by)
        return "beat" if after == before else f"beat: lost={after[0]} ownership_lost={after[1]} interrupted={after[2]}"

    def believes_it_owns(self, now_ms: int) -> list[tuple[str, int]]:
        return [(pair, until) for pair, until in self.believed.items() if until >= now_ms and pair in self.worker.owned]

    def crash_now(self) -> str:
        if self.running:
            return self.step("crash")
        self._commands.put("exit")
        self.crashed = True
        return "crashed idle"

    def retire(self) -> str:
        released = self.worker.release_ownership()
        self._commands.put("exit")
        self.retired = True
        return f"retired, released {released}"

    def stop(self) -> None:
        """The end of the schedule: a parked job dies with its thread."""
        if self.running:
            self._commands.put("crash")
        elif self.alive:
            self._commands.put("exit")
        self._thread.join(timeout=LOCKSTEP_WAIT_S)


# --- one schedule ------------------------------------------------------------------------------


_schedule_numbers = itertools.count()


@dataclass
class Message:
    message_id: str
    pair: str
    thread_id: str
    execution: Execution


class Run:
    def __init__(self, deployed: Deployed) -> None:
        self.deployed = deployed
        self.deployment = deployment = deployed.job_claim
        self.clock = clock = deployed.clock
        definition = deployed.definition
        self.number = next(_schedule_numbers)
        self.trace: list[str] = []
        self.flow = Flow(definition, clock, deployed.clients, self.log)
        env = deployment.worker_environment()
        self.config = WorkerConfig(
            ownership_table=env[schema.ENV_OWNERSHIP_TABLE],
            active_jobs_table=env[schema.ENV_ACTIVE_JOBS_TABLE],
            input_queue_url=env[schema.ENV_INPUT_QUEUE_URL],
            heartbeat_seconds=BEAT_EVERY_S,
            receive_wait_seconds=0,
        )
        self.hosts: list[Host] = []
        self.messages: list[Message] = []
        self.overlaps = 0
        self.containers = itertools.count()
        self.s3 = deployed.clients.s3
        self.ddb = deployed.clients.ddb

    def log(self, text: str) -> None:
        self.trace.append(text)

    def pair(self, index: int) -> tuple[str, str]:
        return f"s{self.number}-p{index}", "u"

    # world steps

    def start_worker(self, container_id: str | None = None) -> Host:
        host = Host(self, container_id or f"c{self.number}-{next(self.containers)}")
        self.hosts.append(host)
        return host

    def email(self, pair_index: int, reply_to: int | None, *, aimed: bool) -> str:
        """A new email for the pair (``aimed``: for the pair of a running job, if there is one)."""
        busy = sorted({str(h.message["pair"]) for h in self.hosts if h.running and h.message is not None})
        if aimed and busy:
            project, user = busy[pair_index % len(busy)].split("#")
        else:
            project, user = self.pair(pair_index)
        pair = schema.pair_key(project, user)
        earlier = [m for m in self.messages if m.pair == pair]
        message_id = f"m{len(self.messages)}-s{self.number}@example.com"
        email = EmailMessage()
        email["From"] = "requester@example.com"
        email["To"] = f"{project}+{user}@{EMAIL_DOMAIN}"
        email["Subject"] = f"instruction {len(self.messages)}"
        email["Message-ID"] = f"<{message_id}>"
        thread = message_id
        if reply_to is not None and earlier:
            thread = earlier[reply_to % len(earlier)].thread_id
            email["References"] = f"<{thread}>"
        email.set_content("do the next thing")
        key = f"schedules/{self.number}/{len(self.messages)}.eml"  # not under incoming/: no intake
        self.s3.put_object(Bucket=self.deployment.bucket, Key=key, Body=bytes(email))
        machine = self.deployment.state_machine_arn.replace(":stateMachine:", ":execution:")
        execution = Execution(
            arn=f"{machine}:{execution_name(message_id)}",
            input={"bucket": self.deployment.bucket, "key": key, "messageId": message_id},
            message_id=message_id,
            pair=pair,
            thread_id=thread,
        )
        self.messages.append(Message(message_id, pair, thread, execution))
        self.flow.start(execution)
        return f"{message_id} for {pair} on thread {thread}: {execution.entered}"

    def host(self, action: str, slot: int) -> Host | None:
        """The worker a step acts on, among those it can act on (a poll: an idle one; work,
        finish, a beat: one running a job; a resume: a stalled one), so few steps are no-ops."""
        alive = [h for h in self.hosts if h.alive]
        candidates = {
            "poll": [h for h in alive if not h.running and not h.stalled],
            "retire": [h for h in alive if not h.running and not h.stalled],
            "work": [h for h in alive if h.running and not h.stalled],
            "finish": [h for h in alive if h.running and not h.stalled],
            "beat": [h for h in alive if h.running and not h.stalled],
            "resume": [h for h in alive if h.stalled],
            "stall": [h for h in alive if h.running and not h.stalled] or alive,
        }.get(action, alive)
        return candidates[slot % len(candidates)] if candidates else None

    def jump(self, seconds: float, *, beats: bool) -> None:
        """The clock moves on; with ``beats`` every running worker that is not stalled beats on
        its 20 s rhythm meanwhile (its heartbeat thread would)."""
        left = seconds
        while left > 0:
            chunk = min(left, BEAT_EVERY_S) if beats else left
            self.clock.jump(chunk)
            left -= chunk
            if beats:
                for host in self.hosts:
                    if host.running and not host.stalled:
                        self.log(f"  {host.container_id}: {host.beat()}")
            self.flow.expire()
            self.flow.run_answers()

    def job_started(self, host: Host) -> None:
        """A job starts: the worker must own the pair now, and nobody else may run the pair."""
        assert host.message is not None
        pair = str(host.message["pair"])
        owner = to_plain(
            self.ddb.get_item(
                TableName=self.config.ownership_table, Key={schema.PAIR: {"S": pair}}, ConsistentRead=True
            ).get("Item")
        )
        now = self.clock.now_ms()
        assert owner is not None and owner.get("token") == host.container_id, (
            f"{host.container_id} started {host.message['messageId']} without owning {pair}: {owner}"
        )
        assert int(owner["lease_until_ms"]) >= now, f"{host.container_id} started under an expired lease: {owner}"
        for other in self.hosts:
            if other is host or not other.running or other.message is None or other.message["pair"] != pair:
                continue
            assert other.believed.get(pair, 0) < now, (
                f"{host.container_id} and {other.container_id} run jobs of {pair} at once "
                f"({host.message['messageId']}, {other.message['messageId']}) while the other's lease is live"
            )
            self.overlaps += 1  # reported as an event by the test's thread (hypothesis needs it there)

    def check_ownership_beliefs(self) -> None:
        now = self.clock.now_ms()
        believers: dict[str, list[str]] = {}
        for host in self.hosts:
            if host.alive:
                for pair, until in host.believes_it_owns(now):
                    believers.setdefault(pair, []).append(f"{host.container_id} until {until}")
        for pair, holders in believers.items():
            assert len(holders) <= 1, f"more than one worker believes it owns {pair}: {holders}"

    def do(self, step: Step) -> None:
        action = step[0]
        if action == "email":
            text = self.email(step[1], step[2], aimed=step[3])
        elif action == "start":
            live = {h.container_id for h in self.hosts if h.alive}
            crashed = sorted({h.container_id for h in self.hosts if h.crashed} - live)
            host = self.start_worker(crashed[0] if step[1] and crashed else None)
            text = f"started {host.container_id}"
        elif action == "advance":
            # A tick or a heartbeat's worth: the fleet goes on beating. A pause: every worker
            # (and its heartbeat thread) stops for that long -- a GC pause, a frozen host.
            self.jump(JUMPS_S[step[1]], beats=step[1] in ("tick", "heartbeat"))
            text = f"+{JUMPS_S[step[1]]} s"
        else:
            text = self._worker_step(step)
        self.log(f"{step}: {text}")
        self.flow.expire()
        self.flow.run_answers()
        self.check_ownership_beliefs()

    def _worker_step(self, step: Step) -> str:
        action = step[0]
        host = self.host(action, step[1])
        if host is None:
            return "no worker to act on"
        name = host.container_id
        if action == "crash":
            if step[2] == "after_answer":
                host.crash_after_answer = True
                return f"{name}: armed"
            return f"{name}: {host.crash_now()}"
        if action == "stall":
            host.stalled_since_ms = host.stalled_since_ms or self.clock.now_ms()
            return f"{name}: stalled"
        if action == "resume":
            host.stalled_since_ms = None
            return f"{name}: resumed"
        if action == "retire":
            return f"{name}: {host.retire()}"
        if action == "poll":
            return f"{name}: poll -> {host.poll()}"
        if action == "beat":
            return f"{name}: {host.beat()}"
        return f"{name}: {action} -> {host.step(action)}"

    # the end

    def settled(self) -> bool:
        if any(m.execution.end is None for m in self.messages) or any(h.running for h in self.hosts):
            return False
        return self.deployed.input_queue_depth() == 0

    def drain(self) -> None:
        for host in self.hosts:
            host.stalled_since_ms = None
            host.crash_after_answer = False
        if not any(h.alive for h in self.hosts):
            self.start_worker()  # the fleet replaces what crashed
        self.log("drain")
        quiet = 0
        for _ in range(MAX_DRAIN_ROUNDS):
            moved = False
            for host in [h for h in self.hosts if h.alive]:
                if host.running:
                    self.log(f"  {host.container_id}: {host.beat()}, finish -> {host.step('finish')}")
                    moved = True
                elif not moved:  # the others poll in a later round
                    outcome = host.poll()
                    self.log(f"  {host.container_id}: poll -> {outcome}")
                    moved = host.running or outcome not in ("None", "skipped")
            self.flow.expire()
            self.flow.run_answers()
            self.check_ownership_beliefs()
            if self.settled():
                return
            if moved:
                quiet = 0
                continue
            # Nothing moves: tokens nobody answers time out, a crashed worker's message becomes
            # visible again, a crashed owner's lease runs out.
            seconds = (JUMPS_S["heartbeat"], JUMPS_S["pause"], JUMPS_S["lease"])[min(quiet, 2)]
            quiet += 1
            self.log(f"  +{seconds} s")
            self.jump(seconds, beats=True)
        raise AssertionError(f"not settled after {MAX_DRAIN_ROUNDS} drain rounds")

    def _read_rows(self, keys: Mapping[tuple[str, str], set[str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """The rows of these keys, in one BatchGetItem (a schedule has at most 12 keys)."""
        tables = {self.deployment.table(role): (role, key) for role, key in keys}
        request = {
            self.deployment.table(role): {"Keys": [{key: {"S": v}} for v in sorted(values)], "ConsistentRead": True}
            for (role, key), values in keys.items()
        }
        answer = self.ddb.batch_get_item(RequestItems=request)
        assert not answer.get("UnprocessedKeys"), answer["UnprocessedKeys"]
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for table, items in answer["Responses"].items():
            role, key = tables[table]
            for raw in items:
                row = to_plain(raw) or {}
                rows[(role, str(row[key]))] = row
        return rows

    def check(self, dlq: list[dict[str, Any]]) -> None:
        keys = {
            ("interruptions", schema.MESSAGE_ID): {m.message_id for m in self.messages},
            ("threads", schema.THREAD_ID): {m.thread_id for m in self.messages},
            ("active_jobs", schema.PAIR): {m.pair for m in self.messages},
        }
        rows = self._read_rows(keys)

        def item(role: str, key: str, value: str) -> dict[str, Any] | None:
            return rows.get((role, value))

        dead = {str(body["input"]["messageId"]): body for body in dlq}
        timed_out: set[str] = set()
        preempted: Counter[str] = Counter()
        for message in self.messages:
            end = message.execution.end
            label = f"{message.message_id} ({message.execution.entered})"
            assert isinstance(end, Ended), f"{label}: did not end ({end})"
            row = item("interruptions", schema.MESSAGE_ID, message.message_id)
            if end.state == "JobCompleted":
                assert end.ok and row is None, f"{label}: completed, but recorded as {row}"
                assert message.message_id not in dead, f"{label}: completed, but in the DLQ"
            elif end.state == "InterruptionComplete":
                assert row is not None and row[schema.KIND] == schema.KIND_PREEMPTED, f"{label}: preempted as {row}"
                assert row.get(schema.PARTIAL_WORK), f"{label}: preempted without its partial work: {row}"
                assert row[schema.THREAD_ID] == message.thread_id and row[schema.PAIR] == message.pair, label
                assert message.message_id not in dead, f"{label}: preempted, but in the DLQ"
                preempted[message.thread_id] += 1
            elif end.state == "JobTimedOut":
                assert row is not None and row[schema.KIND] == schema.KIND_TIMED_OUT, f"{label}: timed out as {row}"
                body = dead.get(message.message_id)
                assert body is not None, f"{label}: timed out, but not in the DLQ"
                assert body["error"]["Error"] == "States.Timeout" and body["execution"] == message.execution.arn
                timed_out.add(message.message_id)
            else:
                raise AssertionError(f"{label}: ended at {end.state} with {end.data.get('error')}")
            event(f"a message {end.state}")
        assert set(dead) == timed_out, f"the DLQ holds {sorted(dead)}, the timed-out messages are {sorted(timed_out)}"
        for thread in {m.thread_id for m in self.messages}:
            found = item("threads", schema.THREAD_ID, thread)
            count = int((found or {}).get(schema.THREAD_INTERRUPTION_COUNT, 0))
            assert count == preempted[thread], (
                f"thread {thread}: interruption_count {count}, {preempted[thread]} preempted"
            )
        for pair in {m.pair for m in self.messages}:
            left = item("active_jobs", schema.PAIR, pair)
            assert left is None, f"an active-job row is left for {pair}: {left}"

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()


# --- the test ----------------------------------------------------------------------------------


class Deployed:
    """The deployment one test's schedules share (not a dataclass: hypothesis would print it whole)."""

    def __init__(self, job_claim: JobClaimDeployment, definition: dict[str, Any], clock: FleetClock) -> None:
        self.job_claim = job_claim
        self.definition = definition
        self.clock = clock
        self.clients = Clients()
        self.dirty = False  # a schedule ended without its checks passing: its messages may be left

    def __repr__(self) -> str:
        return "Deployed(<the synthesized JobClaim in moto>)"

    def input_queue_depth(self) -> int:
        attributes = self.clients.sqs.get_queue_attributes(
            QueueUrl=self.job_claim.input_queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def deployed(aws: MotoServer, lambda_runs_handlers: LambdaHarness, monkeypatch: pytest.MonkeyPatch) -> Deployed:
    from moto.sqs import models as sqs_models

    from tests.support.fast_stepfunctions import StepFunctionsClock

    clock = FleetClock()
    # moto's SQS reads the time through these two names: visibility timeouts follow the fleet.
    monkeypatch.setattr(sqs_models, "unix_time", lambda: clock.now_ms() / 1000)
    monkeypatch.setattr(sqs_models, "unix_time_millis", lambda: float(clock.now_ms()))
    job_claim = JobClaimDeployment(
        deploy(job_claim_template(), lambda_runs_handlers), lambda_runs_handlers, StepFunctionsClock()
    )
    described = boto3.client("stepfunctions").describe_state_machine(stateMachineArn=job_claim.state_machine_arn)
    return Deployed(job_claim, json.loads(described["definition"]), clock)


@seed(SEED)
@settings(
    max_examples=SCHEDULES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(schedule=schedules())
def test_random_schedules_end_every_message_once_with_one_owner_per_pair(
    deployed: Deployed, schedule: tuple[int, int, list[Step]]
) -> None:
    _, workers, steps = schedule
    job_claim = deployed.job_claim
    if deployed.dirty:  # a failed schedule's leftovers, before hypothesis shrinks it
        deployed.clock.jump(61)  # moto allows one purge a minute
        deployed.clients.sqs.purge_queue(QueueUrl=job_claim.input_queue_url)
        job_claim.dlq_messages()
    deployed.dirty = True
    run = Run(deployed)
    try:
        for _ in range(workers):
            run.start_worker()
        for step in steps:
            run.do(step)
        run.drain()
        run.check(job_claim.dlq_messages())
        deployed.dirty = False
        event(f"crashes: {sum(h.crashed for h in run.hosts)}")
        if run.overlaps:
            event("a job overlapped one of a worker paused past its lease")
    finally:
        note("trace:\n  " + "\n  ".join(run.trace))
        run.stop()


def test_the_schedule_generator_covers_every_step() -> None:
    """The generator produces each action, crash kind and clock jump (so the soak means something)."""
    seen: Counter[str] = Counter()

    @seed(SEED)
    @settings(max_examples=200, database=None, deadline=None)
    @given(schedule=schedules())
    def collect(schedule: tuple[int, int, list[Step]]) -> None:
        for step in schedule[2]:
            seen[step[0]] += 1
            if step[0] in ("crash", "advance"):
                seen[f"{step[0]}:{step[-1]}"] += 1
            if step[0] == "email":
                seen["email:reply" if step[2] is not None else "email:new"] += 1

    collect()
    expected = set(ACTIONS) | {f"crash:{c}" for c in CRASHES} | {f"advance:{a}" for a in ADVANCES}
    expected |= {"email:reply", "email:new"}
    assert expected <= set(seen), f"never generated: {sorted(expected - set(seen))}"
