"""JobClaim benchmark: Lambda invocations and state transitions per message, and their monthly cost.

**Measured.** The synthesized JobClaim construct is deployed into an in-process moto server
(tests/support/cfn_deploy.py), its state machine executed by moto's ASL interpreter (waits
compressed, tests/support/fast_stepfunctions.py) with our handlers running inside moto's Lambda
(tests/support/moto_lambda.py) and one reference worker (``handlers.job_claim.worker.Worker``)
in a thread. Emails are stored the way SES stores them (``incoming/``: S3 notifies the intake,
which starts the execution). ``UNOWNED_MESSAGES`` messages each for a pair nobody owns yet (the
worker takes it: ``RouteUnowned``), then ``OWNED_MESSAGES`` replies on those threads (the owner
gets them straight: ``RouteToProjectQueue``), one after the other, each completed by the worker.
From each execution's ``GetExecutionHistory``:

- state transitions = the ``*StateEntered`` events (every state entered, inside Parallel
  branches too), which is what Step Functions Standard bills;
- Lambda invocations in the flow = the ``TaskScheduled`` events of ``lambda`` resources (and
  ``LambdaFunctionScheduled``, the legacy task form). The intake (S3's notification, outside
  the flow) is one more invocation per message; it is counted in the cost, not in the goal.

Every message must end ``SUCCEEDED`` at ``JobCompleted`` and take its expected route, and the
harness's own invocation log must agree with the histories, or the benchmark fails.

**The seed's flow** (../shared/seeds/004_e02f9c14792c519c.txt) cannot be run here (TypeScript
Lambdas against LocalStack), so its figures are counted from what it describes:

- Lambda invocations: five on every path, as its report lists them (check-active-job,
  rate-limited-claim, record-interruption, handle-timeout, send-interrupt), plus its intake.
- State transitions: its report's execution trace enters CheckActiveJob (Lambda), ClaimJob
  (Lambda), ProcessAttachments (Map, entered even with no attachments) and SendToContainer
  (the task-token send); its five Lambdas on every path are five Lambda Task states, so the three
  the trace leaves out add three; the flow it was built from (spec 05, "Flow": the seed's step
  function) also has the CheckAttachments and DetermineRouting Choice states, and every path
  ends in a terminal state. Owned: 5 Lambda tasks + Map + SendToContainer + 2 Choices + the
  terminal = 10. Unowned: the send and ClaimJob run as the two branches of a Parallel, so one
  state more = 11. Without the two Choice states (the trace alone) the counts would be 8 and 9;
  both are printed, and the goal is checked against the first.

**Cost** of 1,000,000 messages a month, from public per-unit prices (us-east-1, 2026):
Step Functions Standard $0.025 per 1,000 state transitions; Lambda $0.20 per 1M requests plus
duration, assumed ``DURATION_MS`` per invocation at ``MEMORY_MB`` on ARM64 ($0.0000133334 per
GB-second) for both flows (the same assumption on both sides: the seed's own 128 MB x86 figure
would change only the small duration term). The worker, the queues and DynamoDB are left out of
both (the same work in both designs).

Goals: at most one Lambda invocation in the flow per owned message on the happy path, and fewer
state transitions than the seed's flow on each path. Exit status 1 when a goal is missed.
About 40 s on a 2-core machine (half of it the CDK synth).

    python -m benchmarks.job_claim_bench
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

UNOWNED_MESSAGES = 3
OWNED_MESSAGES = 6
MESSAGES_PER_MONTH = 1_000_000
PRICE_PER_STATE_TRANSITION = 0.025 / 1000
PRICE_PER_LAMBDA_REQUEST = 0.20 / 1_000_000
PRICE_PER_GB_SECOND_ARM64 = 0.0000133334
DURATION_MS = 100
MEMORY_MB = 512
GOAL_OWNED_LAMBDAS = 1
SEED_LAMBDAS = 5
SEED_TRANSITIONS = {"owned": 10, "unowned": 11}
SEED_TRANSITIONS_TRACE_ONLY = {"owned": 8, "unowned": 9}
INTAKE_LAMBDAS = 1  # both designs: the S3 notification's intake function, outside the flow
WITHIN_SECONDS = 30.0


@dataclass
class PathFigures:
    executions: int = 0
    transitions: list[int] = field(default_factory=list)
    lambdas: list[int] = field(default_factory=list)
    routes: Counter[str] = field(default_factory=Counter)

    def per_message(self, values: list[int]) -> float:
        return sum(values) / len(values)


@contextlib.contextmanager
def deployed_job_claim() -> Iterator[Any]:
    """The construct deployed into an in-process moto (our handlers run inside it), executing."""
    from handlers.common.aws import reset_clients
    from tests.support.cfn_deploy import deploy
    from tests.support.fast_stepfunctions import (
        StepFunctionsClock,
        answers_before_the_wait_kept,
        scaled_stepfunctions_time,
        states_errors_leave_parallel_branches,
    )
    from tests.support.job_claim_deployment import JobClaimDeployment, job_claim_template
    from tests.support.moto_lambda import lambda_handlers_in_process
    from tests.support.moto_server import start_moto_server

    template = job_claim_template()  # synthesized before moto starts: the endpoint must not leak into jsii
    with contextlib.contextmanager(start_moto_server)() as server:
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": server.endpoint,
                "MOTO_PORT": str(server.port),  # where moto's interpreter sends its service calls
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_NAMESPACE": "JobClaimBench",
            }
        )
        os.environ.pop("AWS_PROFILE", None)
        reset_clients()
        server.enable_state_machine_execution()
        clock = StepFunctionsClock(scale=0.05)  # the 60 s heartbeat takes 3 s: room for the worker's beats
        with (
            answers_before_the_wait_kept(),
            states_errors_leave_parallel_branches(),
            scaled_stepfunctions_time(clock),
            lambda_handlers_in_process() as harness,
        ):
            yield JobClaimDeployment(deploy(template, harness), harness, clock)


def email(message_id: str, pair_index: int, *, references: str | None = None) -> bytes:
    from tests.support.job_claim_deployment import EMAIL_DOMAIN

    message = EmailMessage()
    message["From"] = "requester@example.com"
    message["To"] = f"bench{pair_index}+ana@{EMAIL_DOMAIN}"
    message["Subject"] = "please run"
    message["Message-ID"] = f"<{message_id}>"
    if references:
        message["References"] = f"<{references}>"
    message.set_content("do the thing")
    return bytes(message)


def run_one(job_claim: Any, raw: bytes, key: str) -> dict[str, Any]:
    """Deliver one email and wait for its execution to end; returns the execution."""
    import boto3

    sfn = boto3.client("stepfunctions")
    before = {e["executionArn"] for e in job_claim.executions()}
    job_claim.deliver_email(raw, key)
    deadline = time.monotonic() + WITHIN_SECONDS
    while time.monotonic() < deadline:
        new = [e for e in job_claim.executions() if e["executionArn"] not in before]
        if new:
            described = sfn.describe_execution(executionArn=new[0]["executionArn"])
            if described["status"] != "RUNNING":
                return dict(described)
        time.sleep(0.05)
    raise AssertionError(f"the execution of {key} did not end within {WITHIN_SECONDS} s")


def count(history: list[dict[str, Any]]) -> tuple[int, int, list[str]]:
    """(state transitions, Lambda invocations, states entered) of one execution's history."""
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if str(e["type"]).endswith("StateEntered")]
    lambdas = sum(
        1
        for e in history
        if e["type"] == "LambdaFunctionScheduled"
        or (e["type"] == "TaskScheduled" and e.get("taskScheduledEventDetails", {}).get("resourceType") == "lambda")
    )
    return len(entered), lambdas, entered


def measure() -> dict[str, PathFigures]:
    import boto3

    from handlers.job_claim import schema
    from handlers.job_claim.worker import Worker, WorkerConfig

    figures = {"owned": PathFigures(), "unowned": PathFigures()}
    with deployed_job_claim() as job_claim:
        environment = job_claim.worker_environment()
        config = WorkerConfig(
            ownership_table=environment[schema.ENV_OWNERSHIP_TABLE],
            active_jobs_table=environment[schema.ENV_ACTIVE_JOBS_TABLE],
            input_queue_url=environment[schema.ENV_INPUT_QUEUE_URL],
            heartbeat_seconds=0.2,  # the state machine's 60 s heartbeat is 3 s here
            receive_wait_seconds=1,
        )
        worker = Worker("bench-container", config)
        thread = threading.Thread(target=worker.run, name="bench-worker", daemon=True)
        thread.start()
        sfn = boto3.client("stepfunctions")
        plan: list[tuple[str, bytes, str]] = []
        for pair in range(UNOWNED_MESSAGES):
            plan.append(("unowned", email(f"root-{pair}@example.com", pair), f"root-{pair}"))
        for number in range(OWNED_MESSAGES):
            pair = number % UNOWNED_MESSAGES
            raw = email(f"reply-{number}@example.com", pair, references=f"root-{pair}@example.com")
            plan.append(("owned", raw, f"reply-{number}"))
        try:
            for path, raw, key in plan:
                invoked_before = len(job_claim.harness.invocations)
                execution = run_one(job_claim, raw, key)
                history = sfn.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)["events"]
                transitions, lambdas, entered = count(history)
                route = "RouteToProjectQueue" if path == "owned" else "RouteUnowned"
                assert execution["status"] == "SUCCEEDED" and entered[-1] == "JobCompleted", (key, entered)
                assert route in entered, f"{key} took {entered}, not {route}"
                # The harness saw the intake plus the flow's invocations, nothing else.
                invoked = len(job_claim.harness.invocations) - invoked_before
                assert invoked == lambdas + INTAKE_LAMBDAS, f"{key}: {invoked} invocations, {lambdas} in the history"
                figure = figures[path]
                figure.executions += 1
                figure.transitions.append(transitions)
                figure.lambdas.append(lambdas)
                figure.routes[" -> ".join(entered)] += 1
        finally:
            worker.stop()
            thread.join(timeout=10)
    return figures


def monthly_cost(transitions: float, lambdas: float) -> tuple[float, float, float]:
    """(Step Functions, Lambda requests + duration, total) in USD for MESSAGES_PER_MONTH messages."""
    gb_seconds = (MEMORY_MB / 1024) * (DURATION_MS / 1000)
    step_functions = transitions * MESSAGES_PER_MONTH * PRICE_PER_STATE_TRANSITION
    invocations = lambdas * MESSAGES_PER_MONTH
    lambda_cost = invocations * (PRICE_PER_LAMBDA_REQUEST + gb_seconds * PRICE_PER_GB_SECOND_ARM64)
    return step_functions, lambda_cost, step_functions + lambda_cost


def main() -> int:
    # moto's interpreter logs every Choice over an absent path (``IsPresent: false``) as an error.
    logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the handlers' JSON log lines and EMF blobs
        figures = measure()
    print(
        f"JobClaim: {UNOWNED_MESSAGES} unowned + {OWNED_MESSAGES} owned messages through the deployed state "
        f"machine in moto ({time.perf_counter() - started:.0f} s)"
    )
    print(
        f"cost of {MESSAGES_PER_MONTH:,} messages/month: $0.025 per 1,000 state transitions, $0.20 per 1M "
        f"Lambda requests + {DURATION_MS} ms at {MEMORY_MB} MB ARM64 per invocation (assumed), intake included"
    )
    met = True
    for path in ("owned", "unowned"):
        figure = figures[path]
        transitions = figure.per_message(figure.transitions)
        lambdas = figure.per_message(figure.lambdas)
        ours_sfn, ours_lambda, ours_total = monthly_cost(transitions, lambdas + INTAKE_LAMBDAS)
        seed_sfn, seed_lambda, seed_total = monthly_cost(SEED_TRANSITIONS[path], SEED_LAMBDAS + INTAKE_LAMBDAS)
        print(f"  {path} message ({figure.executions} measured):")
        for route, seen in figure.routes.items():
            print(f"    route x{seen}: {route}")
        print(
            f"    ours: {transitions:.1f} state transitions, {lambdas:.1f} Lambda invocations in the flow "
            f"(+{INTAKE_LAMBDAS} intake) -> ${ours_total:,.2f}/month "
            f"(Step Functions ${ours_sfn:,.2f}, Lambda ${ours_lambda:,.2f})"
        )
        print(
            f"    seed: {SEED_TRANSITIONS[path]} state transitions ({SEED_TRANSITIONS_TRACE_ONLY[path]} counting its "
            f"trace alone), {SEED_LAMBDAS} Lambda invocations (+{INTAKE_LAMBDAS} intake) -> ${seed_total:,.2f}/month "
            f"(Step Functions ${seed_sfn:,.2f}, Lambda ${seed_lambda:,.2f})"
        )
        fewer = max(figure.transitions) < SEED_TRANSITIONS[path]
        met &= fewer
        print(
            f"    goal: fewer state transitions than the seed's {SEED_TRANSITIONS[path]}: "
            f"{'met' if fewer else 'MISSED'} (saves ${seed_total - ours_total:,.2f}/month)"
        )
        if path == "owned":
            one = max(figure.lambdas) <= GOAL_OWNED_LAMBDAS
            met &= one
            print(
                f"    goal: at most {GOAL_OWNED_LAMBDAS} Lambda invocation in the flow per owned message "
                f"(happy path): {'met' if one else 'MISSED'} (max {max(figure.lambdas)})"
            )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
