"""Randomized schedules of StreamRecovery (hypothesis, seeded) against the atomic moto server.

A schedule has 1-3 tasks with 1-3 push configs each; every task is created, gets some configs,
commits a terminal status (rarely a second one), and may get configs after it (not eligible for
that event). Those steps are interleaved, per task in order, with what the world does to the
delivery: the stream function on the markers stream's next records (Lambda retries a batch
whose invocation died) or on a batch already handled (a duplicate delivery), a sweeper run, a
crash armed for the next worker (before the POST, after an accepted POST before the outcome,
after the outcomes before the marker delete), receiver faults for the next answers (5xx, 429
with and without a long Retry-After, a slow answer past the read timeout, 4xx, a dropped
connection), the clock moving on (past the claim lease, past the stale-marker age, a tick), and
rarely the task being deleted.

Then every fault is switched off and the sweeper runs (the clock moving past lease and stale
age each time) until nothing is left. Invariants:

- every eligible (task, terminal event, config) ends with a terminal claim -- ``succeeded``, or
  ``gave_up`` / ``abandoned`` with a reason (a deleted task's config may have no claim at all);
- a ``succeeded`` one was accepted (2xx) by the receiver at least once;
- the sender saw a 2xx for a key at most once more than the crashes that hit between such an
  accepted POST and its outcome write; every other accepted POST the receiver counted is a lost
  answer (an attempt the sender saw time out or break): "never two POSTs unless a crash after
  the accepted one", and every POST of a key carries the same ``webhook-id``, the same body and a
  valid signature;
- no config that was not eligible for an event got a POST or a claim for it;
- the claim's attempt count is exactly the attempts made (crashed ones before their POST included);
- no stream record is ever reported failed and no sweep reports an error; all markers are gone.

``make test`` runs 300 schedules, ``make soak`` 10,000 (STREAM_RECOVERY_SCHEDULES); the seed is
fixed (STREAM_RECOVERY_SCHEDULE_SEED to vary it). A failing schedule is printed by hypothesis
(``schedule=...``, replay it with ``@example``) with a trace of what each step did.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, note, seed, settings
from hypothesis import strategies as st

from handlers.stream_recovery import schema
from tests.reliability.stream_recovery.conftest import (
    FAST_POLICY,
    TERMINAL_CLAIM_STATES,
    Crash,
    World,
    slow_answer_seconds,
)
from tests.support.webhook_stub import DROP, Answer, verify

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

DELIVERY_POLICY = FAST_POLICY  # the world fixture's policy for this module
SCHEDULES = int(os.environ.get("STREAM_RECOVERY_SCHEDULES", "300"))
SEED = int(os.environ.get("STREAM_RECOVERY_SCHEDULE_SEED", "20261202"))
TERMINAL_STATES = ("completed", "failed", "canceled", "rejected")
ACTIONS = ("stream", "stream_dup", "sweep", "crash", "fault", "advance", "delete_task")
WEIGHTS = (5, 1.5, 1.5, 2, 5, 2.5, 0.3)
CRASHES = tuple(point.value for point in Crash)
FAULTS = ("5xx", "429", "429_long", "slow", "4xx", "drop")
FAULT_WEIGHTS = (4, 1, 4, 1, 1, 1)
ADVANCES = ("lease", "stale", "tick")
MAX_DRAIN_SWEEPS = 8
TABLE_GENERATION = 10  # schedules per set of tables (see World.fresh_tables)
GAVE_UP_REASONS = frozenset({"max_attempts", "non_retryable_status", "redirect", "gone"})

Step = tuple[Any, ...]


@st.composite
def schedules(draw: st.DrawFn) -> list[Step]:
    """Setup steps of 1-3 tasks, interleaved (per task in order) with 3-12 world steps."""
    rnd = draw(st.randoms(use_true_random=False))
    setups: list[list[Step]] = []
    for task in range(rnd.choice((1, 1, 1, 2, 2, 3))):
        ops: list[Step] = [("commit", task, "submitted")]
        configs = rnd.randint(1, 3)
        before = [name for name in range(configs) if rnd.random() < 0.7]
        after = [name for name in range(configs) if name not in before]
        for name in before:
            ops.append(("register", task, name))
        if rnd.random() < 0.3:
            ops.insert(rnd.randint(1, len(ops)), ("commit", task, "working"))
        ops.append(("commit", task, rnd.choice(TERMINAL_STATES)))
        second_terminal = rnd.random() < 0.15
        for name in after:
            ops.append(("register", task, name))
            if second_terminal and name == after[0]:
                ops.append(("commit", task, rnd.choice(TERMINAL_STATES)))
                second_terminal = False
        if second_terminal:
            ops.append(("commit", task, rnd.choice(TERMINAL_STATES)))
        setups.append(ops)
    world_steps: list[Step] = []
    task_count = len(setups)
    for _ in range(rnd.randint(3, 12)):
        action = rnd.choices(ACTIONS, WEIGHTS)[0]
        if action == "stream_dup":
            world_steps.append((action, rnd.randrange(1000)))
        elif action == "crash":
            world_steps.append((action, rnd.choice(CRASHES)))
        elif action == "fault":
            kind = rnd.choices(FAULTS, FAULT_WEIGHTS)[0]
            world_steps.append((action, kind, {"slow": rnd.randint(1, 2), "4xx": 1}.get(kind, rnd.randint(1, 5))))
        elif action == "advance":
            world_steps.append((action, rnd.choice(ADVANCES)))
        elif action == "delete_task":
            world_steps.append((action, rnd.randrange(task_count)))
        else:
            world_steps.append((action,))
    # Merge, keeping each list's order: world steps can fall between any two setup steps, but
    # setup tends to come first (faults and crashes need POSTs to act on before the drain).
    queues = [list(ops) for ops in setups] + [world_steps]
    merged: list[Step] = []
    while any(queues):
        candidates = [queue for queue in queues if queue]
        weights = [len(queue) * (1 if queue is world_steps else 3) for queue in candidates]
        queue = rnd.choices(candidates, weights)[0]
        merged.append(queue.pop(0))
    return merged


_tenants = itertools.count()
_schedule_numbers = itertools.count()


@dataclass
class TaskModel:
    task_id: str
    latest: int = 0
    deleted: bool = False
    configs: dict[int, Any] = field(default_factory=dict)  # name -> PushConfig
    registered_after: dict[int, int] = field(default_factory=dict)  # name -> latest sequence then
    terminal_events: list[int] = field(default_factory=list)


@dataclass
class Run:
    """One schedule being executed: the model the invariants are checked against."""

    world: World
    tasks: dict[int, TaskModel] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)  # the markers stream, this schedule
    checkpoint: int = 0  # Lambda's position in it
    delivered: list[tuple[int, int]] = field(default_factory=list)  # batches handled: (start, end)
    trace: list[str] = field(default_factory=list)

    def log(self, text: str) -> None:
        self.trace.append(text)


def _answers(kind: str, count: int) -> list[Answer]:
    answer: Callable[[], Answer] = {
        "5xx": lambda: Answer(503),
        "429": lambda: Answer(429, {"Retry-After": "0"}),
        "429_long": lambda: Answer(429, {"Retry-After": "5"}),  # longer than the horizon: "retry" at once
        "slow": lambda: Answer(204, delay_seconds=slow_answer_seconds(FAST_POLICY)),  # accepted, answered too late
        "4xx": lambda: Answer(400),
        "drop": lambda: DROP,
    }[kind]
    return [answer() for _ in range(count)]


def _setup_step(run: Run, step: Step) -> None:
    world = run.world
    action, task_index, value = step
    task = run.tasks.setdefault(task_index, TaskModel(task_id=f"t-{task_index}"))
    if task.deleted:
        run.log(f"{step}: skipped (task deleted)")
        return
    if action == "commit":
        task.latest += 1
        world.commit(task.task_id, task.latest, value)
        if schema.is_terminal_state(value):
            task.terminal_events.append(task.latest)
        run.log(f"{step}: committed {task.task_id} #{task.latest} {value}")
    else:
        config = world.register(task.task_id, f"c{value}")
        assert config.registered_after_event_sequence == task.latest, f"{step}: registered after {config}"
        task.configs[value] = config
        task.registered_after[value] = task.latest
        run.log(f"{step}: registered {config.config_id} after #{task.latest}")


def _stream(run: Run, start: int, end: int, label: str) -> None:
    world = run.world
    batch = run.records[start:end]
    failed = world.invoke_stream(batch)
    run.log(f"{label} [{start}:{end}] ({[r['eventName'] for r in batch]}): {'CRASHED' if failed is None else failed}")
    assert failed is None or failed == [], f"{label}: stream records reported failed: {failed}"
    if failed is not None:
        run.delivered.append((start, end))


def _world_step(run: Run, step: Step) -> None:
    world = run.world
    action = step[0]
    if action == "stream":
        run.records.extend(world.stream.read())
        start, end = run.checkpoint, min(len(run.records), run.checkpoint + 10)
        if start == end:
            run.log(f"{step}: no new records")
            return
        before = len(run.delivered)
        _stream(run, start, end, "stream")
        if len(run.delivered) > before:
            run.checkpoint = end  # handled: Lambda moves on (a crashed invocation is retried whole)
    elif action == "stream_dup":
        if not run.delivered:
            run.log(f"{step}: nothing delivered yet")
            return
        start, end = run.delivered[step[1] % len(run.delivered)]
        _stream(run, start, end, "duplicate")
    elif action == "sweep":
        report = world.sweep()
        run.log(f"{step}: {'CRASHED' if report is None else report.as_dict()}")
        assert report is None or report.errors == [], f"sweep errors: {report.errors if report else None}"
    elif action == "crash":
        world.faults.armed = Crash(step[1])
        run.log(f"{step}: armed")
    elif action == "fault":
        world.receiver.script(*_answers(step[1], step[2]))
        run.log(f"{step}: scripted")
    elif action == "advance":
        {
            "lease": world.clock.past_lease,
            "stale": world.clock.past_stale_age,
            "tick": lambda: world.clock.advance_ms(1),
        }[step[1]]()
        run.log(f"{step}: now {world.clock.now_ms()} ms")
    elif action == "delete_task":
        task = run.tasks.get(step[1])
        if task is None or task.deleted:
            run.log(f"{step}: no such task yet")
            return
        world.delete_task(task.task_id)
        task.deleted = True
        run.log(f"{step}: deleted {task.task_id}")


def _quiescent(world: World) -> bool:
    return not world.markers() and all(
        claim["state"]["S"] in TERMINAL_CLAIM_STATES for claim in world.claims().values()
    )


def _drain(run: Run) -> None:
    world = run.world
    if world.faults.results:
        event("POSTs before the drain")
    if world.receiver.scripted_left():
        event("receiver faults left unused")
    world.faults.armed = None
    world.receiver.clear_script()
    for _ in range(MAX_DRAIN_SWEEPS):
        if _quiescent(world):
            return
        world.clock.past_stale_age()
        world.clock.past_lease()
        report = world.sweep()
        assert report is not None
        run.log(f"drain sweep: {report.as_dict()}")
        assert report.errors == [], f"drain sweep errors: {report.errors}"
    assert _quiescent(world), f"not quiescent after {MAX_DRAIN_SWEEPS} sweeps: {world.markers()} {world.claims()}"


def _check(run: Run, since: int) -> None:
    world = run.world
    faults = world.faults
    assert world.markers() == [], "markers left"
    claims = world.claims()
    # Every key a POST could be for, eligible or not.
    keys: dict[str, tuple[TaskModel, int, int, bool]] = {}
    for task in run.tasks.values():
        for sequence in range(1, task.latest + 1):
            for name, config in task.configs.items():
                eligible = sequence in task.terminal_events and task.registered_after[name] < sequence
                keys[world.webhook_id(task.task_id, sequence, config.config_id)] = (task, sequence, name, eligible)
    posts: dict[str, list[Any]] = {}
    for post in world.receiver.received()[since:]:
        webhook_id = post.header("webhook-id")
        assert webhook_id in keys, f"a POST of an unknown key: {post}"
        task, sequence, name, eligible = keys[webhook_id]
        assert eligible, f"config {name} of {task.task_id} was not eligible for #{sequence} but got a POST"
        posts.setdefault(webhook_id, []).append(post)
    for (task_id, sequence, config_id), claim in claims.items():
        webhook_id = world.webhook_id(task_id, sequence, config_id)
        assert webhook_id in keys and keys[webhook_id][3], f"a claim for a key that is not eligible: {claim}"

    for webhook_id, (task, sequence, name, eligible) in keys.items():
        if not eligible:
            continue
        config = task.configs[name]
        label = f"{task.task_id} #{sequence} config {name}"
        found = claims.get((task.task_id, sequence, config.config_id))
        received = posts.get(webhook_id, [])
        accepted = sum(1 for post in received if post.status is not None and 200 <= post.status <= 299)
        seen_accepted = faults.seen_accepted(webhook_id)
        attempts = faults.attempts(webhook_id)
        crashed_after = faults.crashes_after_accepted.get(webhook_id, 0)
        if found is None:
            assert task.deleted, f"{label}: eligible but never claimed"
            assert received == [], f"{label}: POSTed without a claim"
            continue
        claim = found
        state = claim["state"]["S"]
        reason = claim.get(schema.DELIVERY_REASON, {}).get("S")
        assert state in TERMINAL_CLAIM_STATES, f"{label}: claim not terminal: {claim}"
        assert reason, f"{label}: {state} without a reason"
        if state == "succeeded":
            assert accepted >= 1 and seen_accepted >= 1, f"{label}: succeeded without an accepted POST"
        elif state == "gave_up":
            assert reason in GAVE_UP_REASONS, f"{label}: gave up for {reason}"
        else:
            assert reason == "marker_gone" and task.deleted, f"{label}: abandoned ({reason})"
        # At most one accepted POST the sender saw, plus one per crash that lost its outcome ...
        assert seen_accepted <= 1 + crashed_after, (
            f"{label}: the sender saw {seen_accepted} accepted POSTs with {crashed_after} crashes after one"
        )
        # ... and every other accepted one is an answer the sender lost (timed out, broken).
        lost = sum(1 for attempt in attempts if attempt.status is None)
        assert accepted - seen_accepted <= lost, f"{label}: {accepted} accepted, {seen_accepted} seen, {lost} lost"
        assert len(received) <= len(attempts), f"{label}: {len(received)} POSTs for {len(attempts)} attempts"
        expected_count = len(attempts) + faults.crashes_before_post.get(webhook_id, 0)
        assert int(claim.get(schema.DELIVERY_ATTEMPT_COUNT, {}).get("N", 0)) == expected_count, (
            f"{label}: attempt count {claim.get(schema.DELIVERY_ATTEMPT_COUNT)} for {expected_count} attempts"
        )
        if received:
            assert len({post.body for post in received}) == 1, f"{label}: the bodies differ between POSTs"
            assert all(verify(post, config.signing_secret) for post in received), f"{label}: a bad signature"
            body = json.loads(received[0].body)
            assert (body["taskId"], body["eventSequence"], body["final"]) == (task.task_id, sequence, True)
        if accepted > 1:
            event("an extra accepted POST (crash or lost answer)")
        event(f"claim {state}")


@seed(SEED)
@settings(
    max_examples=SCHEDULES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(schedule=schedules())
def test_random_schedules_deliver_every_eligible_config_and_post_at_most_once_per_lost_outcome(
    world: World, schedule: list[Step]
) -> None:
    world.tenant = f"s{next(_tenants)}"
    world.faults.reset()
    world.receiver.clear_script()
    world.stream.read()  # earlier schedules' records (their cleanup's REMOVEs) are not this one's
    since = len(world.receiver.received())
    run = Run(world)
    passed = False
    try:
        for step in schedule:
            if step[0] in ("commit", "register"):
                _setup_step(run, step)
            else:
                _world_step(run, step)
        _drain(run)
        _check(run, since)
        event(f"crashes fired: {len(world.faults.fired)}")
        outcomes = {result.reason for results in world.faults.results.values() for result in results}
        for reason in sorted(outcomes - {"ok"}):
            event(f"a delivery call ended {reason}")
        passed = True
    finally:
        note("trace:\n  " + "\n  ".join(run.trace))
        note(f"crashes fired: {world.faults.fired}")
        world.faults.reset()
        world.receiver.clear_script()
        if not passed or next(_schedule_numbers) % TABLE_GENERATION == TABLE_GENERATION - 1:
            world.fresh_tables()  # after a failure too: a shrunk replay must not see its leftovers


def test_the_schedule_generator_covers_every_step_and_fault() -> None:
    """The generator can produce each action, crash point and fault (so the soak means something)."""
    seen: Counter[str] = Counter()

    @seed(SEED)
    @settings(max_examples=200, database=None, deadline=None)
    @given(schedule=schedules())
    def collect(schedule: list[Step]) -> None:
        for step in schedule:
            seen[step[0]] += 1
            if step[0] in ("crash", "fault", "advance"):
                seen[f"{step[0]}:{step[1]}"] += 1

    collect()
    expected = {*ACTIONS, "commit", "register"} | {f"crash:{c}" for c in CRASHES} | {f"fault:{f}" for f in FAULTS}
    expected |= {f"advance:{a}" for a in ADVANCES}
    assert expected <= set(seen), f"never generated: {sorted(expected - set(seen))}"
