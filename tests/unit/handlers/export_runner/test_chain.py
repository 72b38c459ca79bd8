import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from handlers.export_runner import chain

EVENT: dict[str, Any] = {
    "event_id": "0b8e9a4c-2f1d-4c3b-9a77-5d2e8f1c6a10",
    "tenant_id": "7f3c2b1a-0000-4000-8000-000000000001",
    "occurred_at": "2024-05-01T12:00:00.000250Z",
    "actor": "alice",
    "actor_type": "user",
    "source": "api",
    "event_type": "data.export_initiated",
    "payload": {"z": 1, "a": [True, None, 0.5], "é": 'line\nbreak "quoted"'},
}


def test_timestamps_are_utc_with_microseconds_and_z() -> None:
    moment = datetime(2024, 5, 1, 14, 0, 0, 250, tzinfo=timezone(timedelta(hours=2)))
    assert chain.format_timestamp(moment) == "2024-05-01T12:00:00.000250Z"
    assert chain.parse_timestamp("2024-05-01T12:00:00.000250Z") == moment


def test_years_are_always_four_digits_like_postgres_to_char() -> None:
    assert chain.format_timestamp(datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "0999-01-02T03:04:05.000006Z"


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        chain.format_timestamp(datetime(2024, 5, 1))


def test_canonical_form_is_jcs_with_sorted_keys_and_minimal_escaping() -> None:
    expected = (
        '{"actor":"alice","actor_type":"user","event_id":"0b8e9a4c-2f1d-4c3b-9a77-5d2e8f1c6a10",'
        '"event_type":"data.export_initiated","occurred_at":"2024-05-01T12:00:00.000250Z",'
        '"payload":{"a":[true,null,0.5],"z":1,"é":"line\\nbreak \\"quoted\\""},'
        '"source":"api","tenant_id":"7f3c2b1a-0000-4000-8000-000000000001"}'
    )
    assert chain.canonical_event(**EVENT) == expected.encode("utf-8")


def test_event_hash_is_sha256_of_prev_hash_then_canonical() -> None:
    canonical = chain.canonical_event(**EVENT)
    first = chain.event_hash(None, canonical)
    assert first == hashlib.sha256(canonical).hexdigest()
    second = chain.event_hash(first, canonical)
    assert second == hashlib.sha256(first.encode() + canonical).hexdigest()
    assert chain.event_hash("", canonical) == first


def test_any_field_change_changes_the_hash() -> None:
    base = chain.event_hash(None, chain.canonical_event(**EVENT))
    for field, value in [("actor", "mallory"), ("payload", {"z": 2}), ("occurred_at", "2024-05-01T12:00:00.000251Z")]:
        changed = {**EVENT, field: value}
        assert chain.event_hash(None, chain.canonical_event(**changed)) != base, field


def test_integers_beyond_json_precision_have_no_canonical_form() -> None:
    with pytest.raises(ValueError):
        chain.canonical_event(**{**EVENT, "payload": {"big": 2**60}})


def test_utc_constant_round_trip() -> None:
    now = datetime.now(UTC)
    assert chain.parse_timestamp(chain.format_timestamp(now)) == now
