from __future__ import annotations

import json

import pytest

from handlers.execution_engine import schema
from handlers.execution_engine.results import MalformedResultError, OrderResult, parse_result


def test_a_result_round_trips_through_its_document() -> None:
    result = OrderResult(status=schema.TIMED_OUT, log="x\ny", reason="no result", written_by="watchdog")
    assert parse_result(result.document()) == result
    assert json.loads(result.document())["schema_version"] == "v1"


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (json.dumps({"status": "succeeded"}).encode(), "schema_version"),
        (json.dumps({"schema_version": "v2", "status": "succeeded"}).encode(), "schema_version"),
        (json.dumps({"schema_version": "v1", "status": "queued"}).encode(), "status must be one of"),
        (json.dumps({"schema_version": "v1", "status": "failed", "log": 3}).encode(), "strings"),
        (json.dumps({"schema_version": "v1", "status": "failed", "written_by": "someone"}).encode(), "known writer"),
    ],
)
def test_anything_but_a_v1_result_is_refused_with_the_reason(document: bytes, problem: str) -> None:
    with pytest.raises(MalformedResultError, match=problem):
        parse_result(document)
