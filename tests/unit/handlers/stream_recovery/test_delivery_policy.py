"""Delivery without the network: policy validation, backoff schedule, Retry-After, the checks made
before any lookup or connection, and the retry loop's timing with an injected clock and sleep."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from handlers.stream_recovery.delivery import (
    DeliveryKey,
    DeliveryPolicy,
    Outcome,
    WebhookConfig,
    backoff_delay,
    deliver,
    generate_signing_secret,
    parse_retry_after,
)

SECRET = generate_signing_secret()
KEY = DeliveryKey("tenant", "task-1", 3, "cfg-1")


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_policy_needs_room_for_one_attempt_and_sane_values() -> None:
    with pytest.raises(ValueError, match=r"must hold one attempt \(connect \+ read timeout = 20\)"):
        DeliveryPolicy(connect_timeout_seconds=5, read_timeout_seconds=15, retry_horizon_seconds=10)
    with pytest.raises(ValueError, match="max_attempts"):
        DeliveryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="read_timeout_seconds"):
        DeliveryPolicy(read_timeout_seconds=0)


def test_check_fits_names_the_broken_timing_rule() -> None:
    policy = DeliveryPolicy(connect_timeout_seconds=2, read_timeout_seconds=8, retry_horizon_seconds=60)
    policy.check_fits(claim_expiry_seconds=120, function_timeout_seconds=90)
    with pytest.raises(ValueError, match="must exceed the retry horizon"):
        policy.check_fits(claim_expiry_seconds=60, function_timeout_seconds=30)
    with pytest.raises(ValueError, match="must exceed one attempt"):
        policy.check_fits(claim_expiry_seconds=120, function_timeout_seconds=10)
    with pytest.raises(ValueError, match="must exceed the function timeout"):
        policy.check_fits(claim_expiry_seconds=100, function_timeout_seconds=100)


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    policy = DeliveryPolicy(backoff_base_seconds=0.5, backoff_max_seconds=6)
    ceilings = [backoff_delay(n, policy, lambda: 1.0) for n in range(1, 8)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0, 6.0]
    assert [backoff_delay(n, policy, lambda: 0.25) for n in (1, 3)] == [0.125, 0.5]
    assert backoff_delay(3, policy, lambda: 0.0) == 0.0
    assert backoff_delay(10_000, policy, lambda: 1.0) == 6.0  # no overflow


def test_retry_after_seconds_or_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after(" 0 ", now=now) == 0.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now=now) == 10.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now=now) == 0.0  # in the past
    for bad in (None, "", "-3", "1.5", "soon"):
        assert parse_retry_after(bad, now=now) is None


def config(url: str = "https://hooks.example.com/x", **kwargs: Any) -> WebhookConfig:
    return WebhookConfig(config_id="cfg-1", url=url, signing_secret=kwargs.pop("signing_secret", SECRET), **kwargs)


def no_resolver(*_: Any) -> Any:
    raise AssertionError("no lookup may happen")


def explode(_: int) -> None:
    raise AssertionError("no attempt may start")


@pytest.mark.parametrize(
    ("cfg", "outcome", "reason"),
    [
        (config("http://hooks.example.com/x"), Outcome.ABANDONED, "insecure_url"),
        (config("gopher://hooks.example.com/x"), Outcome.ABANDONED, "insecure_url"),
        (config("https://u:p@hooks.example.com/x"), Outcome.GAVE_UP, "invalid_url"),
        (config(signing_secret="sekrit"), Outcome.GAVE_UP, "invalid_signing_secret"),
        (config(auth_token="abc\r\nX-Evil: 1"), Outcome.GAVE_UP, "invalid_config"),
        (config(auth_token="abc", auth_scheme="Bear er"), Outcome.GAVE_UP, "invalid_config"),
    ],
)
def test_permanent_problems_are_decided_before_any_lookup(cfg: WebhookConfig, outcome: Outcome, reason: str) -> None:
    result = deliver(cfg, KEY, {"a": 1}, policy=DeliveryPolicy(), resolver=no_resolver, before_attempt=explode)
    assert (result.outcome, result.reason, result.attempts) == (outcome, reason, 0)
    assert result.last_error
    assert result.webhook_id == KEY.webhook_id


def test_oversized_payload_gives_up_saying_which_limit() -> None:
    result = deliver(
        config(), KEY, {"blob": "x" * 200}, policy=DeliveryPolicy(max_payload_bytes=100), resolver=no_resolver
    )
    assert (result.outcome, result.reason) == (Outcome.GAVE_UP, "payload_too_large")
    assert result.last_error == "the webhook body is 211 bytes, over the limit of 100 bytes"


def test_max_attempts_already_used_gives_up_without_a_post() -> None:
    result = deliver(config(), KEY, {}, policy=DeliveryPolicy(max_attempts=3), prior_attempts=3, resolver=no_resolver)
    assert (result.outcome, result.reason, result.total_attempts) == (Outcome.GAVE_UP, "max_attempts", 3)


def test_private_resolution_is_blocked_before_any_attempt() -> None:
    def resolver(host: str, port: int, *_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    result = deliver(config(), KEY, {}, policy=DeliveryPolicy(), resolver=resolver, before_attempt=explode)
    assert (result.outcome, result.reason, result.attempts) == (Outcome.GAVE_UP, "ssrf_blocked", 0)
    assert "169.254.169.254 (metadata)" in (result.last_error or "")


def test_dns_failures_back_off_inside_the_horizon_then_retry_later() -> None:
    fake = FakeTime()
    lookups: list[str] = []

    def resolver(host: str, *_: Any) -> list[Any]:
        lookups.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    policy = DeliveryPolicy(
        connect_timeout_seconds=1, read_timeout_seconds=1, retry_horizon_seconds=20, backoff_base_seconds=1
    )
    result = deliver(
        config(), KEY, {}, policy=policy, resolver=resolver, clock=fake.clock, sleep=fake.sleep, random=lambda: 1.0
    )
    assert (result.outcome, result.reason, result.attempts) == (Outcome.RETRY, "horizon_exhausted", 0)
    assert "Temporary failure" in (result.last_error or "")
    # 1 + 2 + 4 + 8 = 15 s slept; a 16 s wait would end the next attempt past 20 s.
    assert fake.sleeps == [1.0, 2.0, 4.0, 8.0]
    assert len(lookups) == 5
    assert fake.now - 1000.0 + policy.attempt_seconds <= policy.retry_horizon_seconds + 1e-9


def test_a_horizon_without_room_for_one_attempt_makes_none() -> None:
    result = deliver(config(), KEY, {}, policy=DeliveryPolicy(), horizon_seconds=1.0, resolver=no_resolver)
    assert (result.outcome, result.reason, result.attempts) == (Outcome.RETRY, "horizon_exhausted", 0)


def test_key_and_config_must_match() -> None:
    with pytest.raises(ValueError, match="delivery key is for config"):
        deliver(config(), DeliveryKey("t", "task", 1, "other"), {}, policy=DeliveryPolicy())
