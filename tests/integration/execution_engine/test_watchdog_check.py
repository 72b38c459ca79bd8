"""watchdog_check against moto S3: done when a result exists, timed_out / hard cap written first-wins."""

from __future__ import annotations

import json
import random
from typing import Any

import boto3
import pytest

from handlers.execution_engine import schema
from handlers.execution_engine.results import OrderResult, write_result_once
from tests.support.moto_server import MotoServer

BUCKET = "engine-internal"
RUN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def check(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    monkeypatch.setenv(schema.ENV_INTERNAL_BUCKET, BUCKET)
    import importlib

    module = importlib.reload(importlib.import_module("handlers.execution_engine.watchdog_check"))
    return module.check


def state(started_at_ms: int, timeout: int = 60) -> dict[str, Any]:
    return {
        "run_id": RUN,
        "order_num": "0001",
        "timeout": timeout,
        "started_at_ms": started_at_ms,
        "dispatch_generation": 1,
    }


def stored(num: str = "0001") -> dict[str, Any]:
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=schema.callback_key(RUN, num))["Body"].read()
    return dict(json.loads(body))


def test_no_result_within_the_timeout_waits_50_to_70_seconds(check: Any) -> None:
    waits = {check(state(0), bucket=BUCKET, now_ms=10_000, rng=random.Random(n))["wait_seconds"] for n in range(50)}
    assert min(waits) >= 50 and max(waits) <= 70 and len(waits) > 5


def test_a_result_means_done_and_nothing_is_written(check: Any) -> None:
    s3 = boto3.client("s3")
    write_result_once(s3, BUCKET, schema.callback_key(RUN, "0001"), OrderResult(status=schema.SUCCEEDED))
    answer = check(state(0), bucket=BUCKET, now_ms=10**9, rng=random.Random(1))
    assert answer["done"] is True and answer["outcome"] == "result_found"
    assert stored()["status"] == schema.SUCCEEDED


def test_past_the_timeout_it_writes_timed_out_and_past_twice_the_hard_cap(check: Any) -> None:
    answer = check(state(0, timeout=60), bucket=BUCKET, now_ms=61_000, rng=random.Random(1))
    assert answer["done"] is True and answer["outcome"] == schema.TIMED_OUT
    assert stored() == {**stored(), "status": schema.TIMED_OUT, "written_by": "watchdog"}
    late = dict(state(0, timeout=60), order_num="0002")
    answer = check(late, bucket=BUCKET, now_ms=121_000, rng=random.Random(1))
    assert answer["outcome"] == schema.HARD_CAP_REACHED and stored("0002")["status"] == schema.HARD_CAP_REACHED


def test_a_worker_result_written_first_wins_over_the_watchdog(check: Any) -> None:
    s3 = boto3.client("s3")
    assert write_result_once(s3, BUCKET, schema.callback_key(RUN, "0001"), OrderResult(status=schema.SUCCEEDED))
    assert not write_result_once(
        s3, BUCKET, schema.callback_key(RUN, "0001"), OrderResult(status=schema.TIMED_OUT, written_by="watchdog")
    )
    assert stored()["status"] == schema.SUCCEEDED


def test_input_that_names_no_order_is_refused(check: Any) -> None:
    with pytest.raises(ValueError, match="names no order"):
        check(dict(state(0), run_id="../etc"), bucket=BUCKET, now_ms=0, rng=random.Random(1))
