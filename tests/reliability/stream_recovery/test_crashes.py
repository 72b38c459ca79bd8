"""StreamRecovery across crashes of the worker process, at each window the code names.

Each test commits through the writer, drives the real stream handler with the markers stream's
records and the real sweeper, and lets the harness kill the "process" at one point
(``ProcessCrash``, see conftest). What the windows must give (dispatch.py's docstring):

- crash after the claim, before the POST: one POST once the lease ran out, never two;
- crash after the receiver accepted, before the outcome write: exactly one extra POST, with the
  same ``webhook-id`` and body, after the lease ran out -- never more; the claim ends succeeded;
- crash after the outcome, before the marker delete: the redelivery POSTs nothing and deletes
  the marker;
- the task deleted while its dispatch runs: every claim ends terminal, the marker goes, and no
  record or sweep keeps failing on it.
"""

from __future__ import annotations

import json

import pytest

from handlers.stream_recovery import schema
from tests.reliability.stream_recovery.conftest import Crash, World, slow_answer_seconds
from tests.support.webhook_stub import Answer, verify

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def _terminal_task(world: World, task_id: str = "t-1", configs: int = 1) -> list:
    world.commit(task_id, 1, "working")
    registered = [world.register(task_id, f"hook-{index}") for index in range(configs)]
    world.commit(task_id, 2, "completed")
    return registered


def _state(world: World, task_id: str, config_id: str, sequence: int = 2) -> str:
    return world.claim(task_id, sequence, config_id)["state"]["S"]


def _quiet(world: World) -> None:
    """Nothing is left to do: a later sweep finds nothing and POSTs nothing."""
    before = len(world.receiver.received())
    world.clock.past_stale_age()
    world.clock.past_lease()
    report = world.sweep()
    assert report is not None
    assert (report.staleMarkersFound, report.reclaimableClaimsFound, report.errors) == (0, 0, [])
    assert len(world.receiver.received()) == before


@pytest.mark.parametrize("recovered_by", ["sweeper", "stream_redelivery"])
def test_a_crash_after_the_receiver_accepted_posts_exactly_once_more_with_the_same_webhook_id(
    world: World, recovered_by: str
) -> None:
    first, second = _terminal_task(world, configs=2)
    batch = world.stream.read()
    world.faults.armed = Crash.AFTER_ACCEPTED_POST

    assert world.invoke_stream(batch) is None  # the process died after the first config's POST
    [(_, crashed_id)] = world.faults.fired
    assert crashed_id is not None
    crashed, untouched = (
        (first, second) if crashed_id == world.webhook_id("t-1", 2, first.config_id) else (second, first)
    )
    assert len(world.posts(crashed_id)) == 1
    assert _state(world, "t-1", crashed.config_id) == "pending"
    assert world.claim("t-1", 2, untouched.config_id) == {}  # the fan-out never reached it

    # Lambda retries the batch at once: the lease is live, nobody POSTs; the marker stays.
    assert world.invoke_stream(batch) == []
    assert len(world.posts(crashed_id)) == 1
    assert len(world.markers()) == 1

    world.clock.past_lease()
    if recovered_by == "sweeper":
        report = world.sweep()
        assert report is not None and report.errors == []
    else:
        assert world.invoke_stream(batch) == []

    posts = world.posts(crashed_id)
    assert len(posts) == 2  # the one at-least-once edge: one extra POST, never more
    assert posts[0].body == posts[1].body  # byte-identical: built from the stored event
    assert all(verify(post, crashed.signing_secret) for post in posts)
    assert json.loads(posts[1].body)["eventSequence"] == 2
    assert len(world.posts(world.webhook_id("t-1", 2, untouched.config_id))) == 1
    assert _state(world, "t-1", crashed.config_id) == "succeeded"
    assert _state(world, "t-1", untouched.config_id) == "succeeded"
    assert world.markers() == []

    assert world.invoke_stream(batch) == []  # yet another duplicate of the record
    _quiet(world)
    assert len(world.posts(crashed_id)) == 2


def test_a_crash_after_the_claim_and_before_the_post_posts_once_after_the_lease(world: World) -> None:
    [config] = _terminal_task(world)
    batch = world.stream.read()
    world.faults.armed = Crash.BEFORE_POST

    assert world.invoke_stream(batch) is None
    webhook_id = world.webhook_id("t-1", 2, config.config_id)
    assert world.posts(webhook_id) == []
    claim = world.claim("t-1", 2, config.config_id)
    assert claim["state"]["S"] == "pending" and claim[schema.DELIVERY_ATTEMPT_COUNT]["N"] == "1"

    world.clock.past_lease()
    report = world.sweep()

    assert report is not None and (report.reclaimableClaimsProcessed, report.errors) == (1, [])
    assert len(world.posts(webhook_id)) == 1
    claim = world.claim("t-1", 2, config.config_id)
    assert claim["state"]["S"] == "succeeded"
    assert claim[schema.DELIVERY_ATTEMPT_COUNT]["N"] == "2"  # the crashed attempt counts: nothing under-counts
    assert world.markers() == []
    _quiet(world)


def test_a_lost_answer_is_the_same_edge_one_extra_post_with_the_same_id(world: World) -> None:
    """The receiver accepts but answers after the read timeout: the sender POSTs again, same id."""
    [config] = _terminal_task(world)
    world.receiver.script(Answer(204, delay_seconds=slow_answer_seconds(world.policy)))

    assert world.invoke_stream(world.stream.read()) == []
    if _state(world, "t-1", config.config_id) == "pending":
        # The horizon had no room for a second attempt (a slow machine): the claim was left
        # reclaimable, the marker stays, and the sweeper's takeover is the second POST.
        assert len(world.markers()) == 1
        world.clock.advance_ms(1)  # the lease was ended at once ("retry"): reclaimable now
        report = world.sweep()
        assert report is not None and (report.reclaimableClaimsProcessed, report.errors) == (1, [])

    posts = world.posts(world.webhook_id("t-1", 2, config.config_id))
    assert [post.status for post in posts] == [204, 204]  # the receiver accepted both
    assert posts[0].header("webhook-id") == posts[1].header("webhook-id")
    assert _state(world, "t-1", config.config_id) == "succeeded"
    assert world.markers() == []
    _quiet(world)


@pytest.mark.parametrize("redelivered_by", ["stream_duplicate", "sweeper"])
def test_a_crash_between_the_outcome_and_the_marker_delete_posts_nothing_new(world: World, redelivered_by: str) -> None:
    configs = _terminal_task(world, configs=2)
    batch = world.stream.read()
    world.faults.armed = Crash.BEFORE_MARKER_DELETE

    assert world.invoke_stream(batch) is None
    assert len(world.receiver.received()) == 2
    assert all(_state(world, "t-1", config.config_id) == "succeeded" for config in configs)
    assert len(world.markers()) == 1

    if redelivered_by == "stream_duplicate":
        assert world.invoke_stream(batch) == []
    else:
        world.clock.past_stale_age()  # no stream record comes again: the marker turns stale
        report = world.sweep()
        assert report is not None
        assert (report.staleMarkersFound, report.staleMarkersRecovered, report.errors) == (1, 1, [])

    assert len(world.receiver.received()) == 2
    assert world.markers() == []
    _quiet(world)


def test_the_task_deleted_between_the_config_read_and_the_posts(world: World) -> None:
    """Deleted after the redispatcher read it: the code does not look again; this dispatch finishes."""
    configs = _terminal_task(world, configs=2)
    deleted: list[object] = []

    def delete_once(key: object) -> None:
        if not deleted:
            world.delete_task("t-1")
            deleted.append(key)

    world.faults.before_post_hook = delete_once

    assert world.invoke_stream(world.stream.read()) == []

    assert deleted
    # What the code does: the configs were read before the delete, so both are delivered and
    # settled, and the marker goes -- no crash loop, nothing left for the sweeper.
    assert {_state(world, "t-1", config.config_id) for config in configs} == {"succeeded"}
    assert len(world.receiver.received()) == 2
    assert world.markers() == []
    _quiet(world)


def test_the_task_deleted_between_configs_while_one_still_retries_ends_abandoned(world: World) -> None:
    """First config: the receiver keeps failing (left reclaimable); the task is deleted before the second."""
    first, second = _terminal_task(world, configs=2)
    # Retry-After longer than the horizon: the first config's call ends at once with "retry".
    world.receiver.script(Answer(503, {"Retry-After": "5"}))
    posted: list[object] = []

    def delete_before_second(key: object) -> None:
        posted.append(key)
        if len(posted) == 2:
            world.delete_task("t-1")

    world.faults.before_post_hook = delete_before_second
    batch = world.stream.read()

    assert world.invoke_stream(batch) == []

    [retried] = [config for config in (first, second) if _state(world, "t-1", config.config_id) == "pending"]
    assert len(world.markers()) == 1  # one config is not terminal: the marker stays
    world.faults.before_post_hook = None

    # A redelivered record now finds the task gone: the marker goes, the record succeeds.
    assert world.invoke_stream(batch) == []
    assert world.markers() == []

    world.clock.past_lease()
    report = world.sweep()
    assert report is not None and (report.reclaimableClaimsFound, report.reclaimableClaimsProcessed) == (1, 1)
    claim = world.claim("t-1", 2, retried.config_id)
    assert claim["state"]["S"] == "abandoned" and claim[schema.DELIVERY_REASON]["S"] == "marker_gone"
    assert len(world.posts(world.webhook_id("t-1", 2, retried.config_id))) == 1  # never posted again
    _quiet(world)


def test_the_task_deleted_while_a_crashed_holders_claim_is_live_ends_abandoned(world: World) -> None:
    [config] = _terminal_task(world)
    world.faults.armed = Crash.BEFORE_POST
    batch = world.stream.read()
    assert world.invoke_stream(batch) is None
    world.delete_task("t-1")

    world.clock.past_stale_age()
    world.clock.past_lease()
    report = world.sweep()

    # One run: the stale marker's task is gone (marker deleted), then the orphaned claim is abandoned.
    assert report is not None
    assert (report.staleMarkersFound, report.staleMarkersRecovered, report.reclaimableClaimsProcessed) == (1, 1, 1)
    assert report.errors == []
    claim = world.claim("t-1", 2, config.config_id)
    assert claim["state"]["S"] == "abandoned" and claim[schema.DELIVERY_REASON]["S"] == "marker_gone"
    assert world.markers() == []
    assert world.receiver.received() == []
    assert world.invoke_stream(batch) == []  # a late duplicate of the record: nothing to do, no failure
    _quiet(world)
