"""Powertools' metric set is one dict shared by every Metrics instance: one lock guards it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from aws_lambda_powertools import Logger, Metrics

from handlers.common import observability
from handlers.fanout import slack
from handlers.fanout.router import Router


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    metrics = Metrics(namespace="LockTest", service="fanout")
    metrics.clear_metrics()
    yield metrics
    metrics.clear_metrics()


def test_metrics_instances_share_one_metric_set(metrics: Metrics) -> None:
    # why one lock must serve all of them: Powertools keeps the set at class level
    other = Metrics(namespace="LockTest", service="other")
    other.add_metric(name="shared", unit="Count", value=1)
    assert "shared" in metrics.metric_set


@pytest.mark.parametrize("writer", ["router", "slack"])
def test_every_metric_writer_waits_for_the_one_shared_lock(metrics: Metrics, writer: str) -> None:
    router = Router([], logger=Logger(service="lock-test"), metrics=metrics)
    add: Callable[[], None] = (
        (lambda: router.count("router_metric")) if writer == "router" else (lambda: slack._count("slack_metric"))
    )
    done = threading.Event()

    def write() -> None:
        add()
        done.set()

    with observability.METRICS_LOCK:
        worker = threading.Thread(target=write)
        worker.start()
        assert not done.wait(0.3), f"{writer} added to the shared metric set without the shared lock"
    assert done.wait(5)
    worker.join()
