"""Standard Webhooks signing: the reference vector, secret format, idempotency id, body."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from handlers.stream_recovery.delivery import (
    DeliveryKey,
    PayloadTooLargeError,
    SigningSecretError,
    build_body,
    generate_signing_secret,
    sign,
    signing_key,
)

# The test vector of the Standard Webhooks reference libraries (libraries/*/tests: "sign function").
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_reference_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_signature_covers_id_timestamp_and_body() -> None:
    base = sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert sign(VECTOR_SECRET, VECTOR_ID + "x", VECTOR_TIMESTAMP, VECTOR_BODY) != base
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP + 1, VECTOR_BODY) != base
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY + b" ") != base
    assert sign(generate_signing_secret(), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) != base


def test_signing_key_is_the_decoded_part_after_the_prefix() -> None:
    assert signing_key(VECTOR_SECRET) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert len(signing_key(generate_signing_secret())) == 32


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("", "must start with 'whsec_'"),
        ("whsec_", "24 to 64 bytes"),
        ("whsec_not base64!", "not valid base64"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "not valid base64"),  # bad padding
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), "24 to 64 bytes, this one is 16"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "24 to 64 bytes, this one is 65"),
    ],
)
def test_malformed_secret_is_refused_with_a_clear_error(secret: str, message: str) -> None:
    with pytest.raises(SigningSecretError, match=message):
        signing_key(secret)


def test_an_id_with_a_dot_cannot_be_signed() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        sign(VECTOR_SECRET, "a.b", VECTOR_TIMESTAMP, b"{}")


def test_webhook_id_is_stable_and_distinct_per_key() -> None:
    key = DeliveryKey(tenant="t1", task_id="task-1", event_sequence=7, config_id="cfg-a")
    # A literal: the id must never change across releases (receivers de-duplicate on it).
    assert key.webhook_id == DeliveryKey("t1", "task-1", 7, "cfg-a").webhook_id
    assert key.webhook_id == "4a309985-4405-5189-9ec6-ac5fc289d31f"
    assert uuid.UUID(key.webhook_id).version == 5
    others = {
        DeliveryKey("t2", "task-1", 7, "cfg-a").webhook_id,
        DeliveryKey("t1", "task-2", 7, "cfg-a").webhook_id,
        DeliveryKey("t1", "task-1", 8, "cfg-a").webhook_id,
        DeliveryKey("t1", "task-1", 7, "cfg-b").webhook_id,
        # the fields are joined unambiguously: moving a separator does not collide
        DeliveryKey("t1#task-1", "", 7, "cfg-a").webhook_id,
    }
    assert key.webhook_id not in others and len(others) == 5
    assert "." not in key.webhook_id


def test_body_is_compact_sorted_json_and_bounded() -> None:
    body = build_body({"b": 1, "a": "é"}, max_bytes=100)
    assert body == '{"a":"é","b":1}'.encode()
    assert json.loads(body) == {"a": "é", "b": 1}
    with pytest.raises(PayloadTooLargeError, match="is 16 bytes, over the limit of 15 bytes") as info:
        build_body({"b": 1, "a": "é"}, max_bytes=15)
    assert (info.value.size, info.value.limit) == (16, 15)
    with pytest.raises(ValueError):
        build_body({"x": float("nan")}, max_bytes=100)
