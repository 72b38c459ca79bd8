"""Webhook delivery over real sockets against a local receiver on 127.0.0.1 (no HTTP mocks).

Sleeping is injected (recorded, never slept) and the horizon clock is real time plus the
recorded sleeps, so the retry schedule is exact and the tests stay fast.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from handlers.stream_recovery.delivery import (
    DeliveryKey,
    DeliveryPolicy,
    DeliveryResult,
    Outcome,
    WebhookConfig,
    deliver,
    generate_signing_secret,
)
from tests.support.local_ca import LocalCA
from tests.support.webhook_stub import DROP, Answer, WebhookStub, verify

SECRET = generate_signing_secret()
KEY = DeliveryKey(tenant="acme", task_id="task-42", event_sequence=9, config_id="cfg-1")
PAYLOAD = {"kind": "status-update", "taskId": "task-42", "status": {"state": "completed"}, "final": True}
# Development policy (plain http to 127.0.0.1) with short timeouts; the horizon holds several attempts.
DEV = DeliveryPolicy(
    connect_timeout_seconds=0.5,
    read_timeout_seconds=0.5,
    retry_horizon_seconds=30,
    max_attempts=8,
    backoff_base_seconds=1,
    backoff_max_seconds=8,
    allow_http=True,
    allow_private_targets=True,
)


class Timeline:
    """Injected sleep (recorded, not slept) and a monotonic clock that includes the recorded sleeps."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self._offset = 0.0

    def clock(self) -> float:
        return time.monotonic() + self._offset

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._offset += seconds


class Resolver:
    """getaddrinfo's shape, answering fixed addresses for any host; counts lookups. The first
    answer is ``first``; every later one is ``then`` when given (a rebinding DNS server)."""

    def __init__(self, *first: str, then: tuple[str, ...] = ()) -> None:
        self.first, self.then = first, then or first
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, *_: Any) -> list[tuple[Any, ...]]:
        addresses = self.first if not self.calls else self.then
        self.calls.append(host)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
            if ":" in address
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
            for address in addresses
        ]


@pytest.fixture
def receiver() -> Iterator[WebhookStub]:
    with WebhookStub() as stub:
        yield stub


@pytest.fixture
def timeline() -> Timeline:
    return Timeline()


def run(
    url: str, timeline: Timeline, *, policy: DeliveryPolicy = DEV, config: dict[str, Any] | None = None, **kwargs: Any
) -> DeliveryResult:
    cfg = WebhookConfig(config_id="cfg-1", url=url, signing_secret=SECRET, **(config or {}))
    kwargs.setdefault("random", lambda: 1.0)  # the jitter at its ceiling: an exact schedule
    return deliver(cfg, KEY, PAYLOAD, policy=policy, clock=timeline.clock, sleep=timeline.sleep, **kwargs)


def test_success_carries_every_header_and_a_verifiable_signature(receiver: WebhookStub, timeline: Timeline) -> None:
    started: list[int] = []
    result = run(
        receiver.url + "/hooks/a2a?tenant=acme",
        timeline,
        config={"auth_token": "tok-123", "notification_token": "a2a-abc"},
        before_attempt=started.append,
    )
    assert (result.outcome, result.reason, result.last_status, result.attempts) == (Outcome.SUCCEEDED, "ok", 204, 1)
    assert started == [1]
    [request] = receiver.received()
    assert (request.method, request.path) == ("POST", "/hooks/a2a?tenant=acme")
    assert request.header("webhook-id") == KEY.webhook_id == result.webhook_id
    assert abs(int(request.header("webhook-timestamp") or 0) - time.time()) < 5
    assert (request.header("webhook-signature") or "").startswith("v1,")
    assert verify(request, SECRET)
    assert not verify(request, generate_signing_secret())
    assert request.header("content-type") == "application/json"
    assert request.header("authorization") == "Bearer tok-123"
    assert request.header("x-a2a-notification-token") == "a2a-abc"
    assert request.header("host") == f"127.0.0.1:{receiver.port}"
    assert json.loads(request.body) == PAYLOAD
    assert timeline.sleeps == []


def test_5xx_then_success_reuses_the_webhook_id_and_signs_each_attempt(
    receiver: WebhookStub, timeline: Timeline
) -> None:
    receiver.script(Answer(500), Answer(503))
    started: list[int] = []
    result = run(receiver.url, timeline, prior_attempts=2, before_attempt=started.append)
    assert (result.outcome, result.attempts, result.total_attempts) == (Outcome.SUCCEEDED, 3, 5)
    assert started == [3, 4, 5]  # numbered across calls, for the fenced attempt-started write
    assert [h.status for h in result.history] == [500, 503, 204]
    assert timeline.sleeps == [1.0, 2.0]  # full jitter at its ceiling: base * 2^(n-1)
    requests = receiver.received()
    assert [r.status for r in requests] == [500, 503, 204]
    assert {r.header("webhook-id") for r in requests} == {KEY.webhook_id}
    assert all(verify(r, SECRET) for r in requests)
    assert len({r.body for r in requests}) == 1


def test_429_retry_after_is_honoured(receiver: WebhookStub, timeline: Timeline) -> None:
    receiver.script(Answer(429, {"Retry-After": "7"}))
    result = run(receiver.url, timeline)
    assert (result.outcome, result.attempts) == (Outcome.SUCCEEDED, 2)
    assert timeline.sleeps == [7.0]


def test_retry_after_beyond_the_horizon_returns_retry_with_the_hint(receiver: WebhookStub, timeline: Timeline) -> None:
    receiver.script(Answer(503, {"Retry-After": "120"}))
    result = run(receiver.url, timeline)
    assert (result.outcome, result.reason, result.last_status) == (Outcome.RETRY, "horizon_exhausted", 503)
    assert result.retry_after_seconds == 120.0
    assert len(receiver.received()) == 1 and timeline.sleeps == []


@pytest.mark.parametrize(
    ("status", "reason"), [(400, "non_retryable_status"), (404, "non_retryable_status"), (410, "gone")]
)
def test_other_4xx_gives_up_after_one_post(receiver: WebhookStub, timeline: Timeline, status: int, reason: str) -> None:
    receiver.script(Answer(status))
    result = run(receiver.url, timeline)
    assert (result.outcome, result.reason, result.last_status, result.attempts) == (Outcome.GAVE_UP, reason, status, 1)
    assert len(receiver.received()) == 1


def test_408_is_retried(receiver: WebhookStub, timeline: Timeline) -> None:
    receiver.script(Answer(408))
    assert run(receiver.url, timeline).outcome is Outcome.SUCCEEDED
    assert len(receiver.received()) == 2


def test_a_redirect_is_not_followed(receiver: WebhookStub, timeline: Timeline) -> None:
    with WebhookStub() as internal:
        receiver.script(Answer(302, {"Location": internal.url + "/admin"}))
        result = run(receiver.url, timeline)
        assert (result.outcome, result.reason, result.last_status) == (Outcome.GAVE_UP, "redirect", 302)
        assert internal.received() == []
    assert len(receiver.received()) == 1


def test_a_read_timeout_is_retried_with_the_same_id(receiver: WebhookStub, timeline: Timeline) -> None:
    receiver.script(Answer(204, delay_seconds=0.8))  # longer than the 0.5 s read timeout
    result = run(receiver.url, timeline)
    assert (result.outcome, result.attempts) == (Outcome.SUCCEEDED, 2)
    assert result.history[0].error == "timeout" and result.history[0].status is None
    assert [r.header("webhook-id") for r in receiver.received()] == [KEY.webhook_id] * 2


def test_a_dropped_connection_is_retried(receiver: WebhookStub, timeline: Timeline) -> None:
    receiver.script(DROP)
    result = run(receiver.url, timeline)
    assert (result.outcome, result.attempts) == (Outcome.SUCCEEDED, 2)
    assert result.history[0].error and "RemoteDisconnected" in result.history[0].error


def test_connection_refused_is_retried_until_the_horizon(timeline: Timeline) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = DeliveryPolicy(**{**DEV.__dict__, "retry_horizon_seconds": 10})
    result = run(f"http://127.0.0.1:{port}/", timeline, policy=policy)
    assert (result.outcome, result.reason, result.last_status) == (Outcome.RETRY, "horizon_exhausted", None)
    assert result.last_error and "ConnectionRefusedError" in result.last_error


def test_horizon_exhausted_returns_retry(timeline: Timeline) -> None:
    with WebhookStub(default=Answer(503)) as failing:
        policy = DeliveryPolicy(**{**DEV.__dict__, "retry_horizon_seconds": 10})
        result = run(failing.url, timeline, policy=policy)
        # attempts end at most 1 s (connect + read timeout) after they start: 0, 1, 3, 7 s; an
        # attempt after an 8 s wait would end at 16 s, past the 10 s horizon
        assert timeline.sleeps == [1.0, 2.0, 4.0]
        assert (result.outcome, result.reason, result.attempts, result.last_status) == (
            Outcome.RETRY,
            "horizon_exhausted",
            4,
            503,
        )
        assert result.elapsed_seconds <= policy.retry_horizon_seconds
        assert len(failing.received()) == 4


def test_max_attempts_across_calls_gives_up(timeline: Timeline) -> None:
    with WebhookStub(default=Answer(500)) as failing:
        policy = DeliveryPolicy(**{**DEV.__dict__, "max_attempts": 3})
        result = run(failing.url, timeline, policy=policy, prior_attempts=1)
        assert (result.outcome, result.reason, result.attempts, result.total_attempts) == (
            Outcome.GAVE_UP,
            "max_attempts",
            2,
            3,
        )
        assert len(failing.received()) == 2


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("10.0.0.8", "private"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "ipv4-embedded loopback"),
    ],
)
def test_a_host_resolving_to_an_internal_address_is_refused_before_any_socket_opens(
    receiver: WebhookStub, timeline: Timeline, monkeypatch: pytest.MonkeyPatch, address: str, category: str
) -> None:
    resolver = Resolver(address)

    def no_sockets(*_: Any, **__: Any) -> socket.socket:
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "socket", no_sockets)
    production_like = DeliveryPolicy(**{**DEV.__dict__, "allow_private_targets": False})
    result = run(f"http://evil.example:{receiver.port}/", timeline, policy=production_like, resolver=resolver)
    monkeypatch.undo()
    assert (result.outcome, result.reason, result.attempts) == (Outcome.GAVE_UP, "ssrf_blocked", 0)
    assert result.last_error == f"evil.example resolves to {address} ({category}): refused"
    assert resolver.calls == ["evil.example"]
    assert receiver.received() == []


def test_with_the_dev_flag_the_connection_goes_to_the_checked_address(
    receiver: WebhookStub, timeline: Timeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "receiver.test" exists only in the injected resolver; any second lookup (http.client's
    # own, through socket.getaddrinfo) would fail the test, so the socket went to the address
    # the guard checked, while the Host header kept the URL's name.
    resolver = Resolver("127.0.0.1")

    def no_system_lookup(*_: Any, **__: Any) -> Any:
        raise AssertionError("a second, system DNS lookup happened")

    monkeypatch.setattr(socket, "getaddrinfo", no_system_lookup)
    receiver.script(Answer(500))
    result = run(f"http://receiver.test:{receiver.port}/hook", timeline, resolver=resolver)
    assert (result.outcome, result.attempts) == (Outcome.SUCCEEDED, 2)
    assert resolver.calls == ["receiver.test"] * 2  # one lookup per attempt, checked, then connected to
    assert [h.address for h in result.history] == ["127.0.0.1"] * 2
    assert {r.header("host") for r in receiver.received()} == {f"receiver.test:{receiver.port}"}


def test_an_attempt_tries_the_next_checked_address_when_a_connect_is_refused(
    receiver: WebhookStub, timeline: Timeline
) -> None:
    # 127.0.0.2 is loopback too, but nothing listens there on the receiver's port
    started: list[int] = []
    resolver = Resolver("127.0.0.2", "127.0.0.1")
    result = run(f"http://receiver.test:{receiver.port}/", timeline, resolver=resolver, before_attempt=started.append)
    assert (result.outcome, result.attempts, started) == (Outcome.SUCCEEDED, 1, [1])
    assert result.history[0].address == "127.0.0.1"
    assert len(receiver.received()) == 1


def test_a_stale_claim_raised_by_before_attempt_stops_delivery(receiver: WebhookStub, timeline: Timeline) -> None:
    class StaleClaimError(Exception):
        pass

    def attempt_started(number: int) -> None:
        if number == 2:
            raise StaleClaimError(number)

    receiver.script(Answer(500))
    with pytest.raises(StaleClaimError):
        run(receiver.url, timeline, before_attempt=attempt_started)
    assert len(receiver.received()) == 1


def test_a_rebind_to_an_internal_address_is_caught_by_the_next_attempts_check(
    receiver: WebhookStub, timeline: Timeline
) -> None:
    # The development flag lets the first attempt reach 127.0.0.1; production rules are applied
    # by a second call whose lookup now answers the metadata address: nothing more is sent.
    receiver.script(Answer(500))
    first = run(f"http://receiver.test:{receiver.port}/", timeline, resolver=Resolver("127.0.0.1"), horizon_seconds=1.5)
    assert (first.outcome, first.attempts) == (Outcome.RETRY, 1)
    production_like = DeliveryPolicy(**{**DEV.__dict__, "allow_private_targets": False})
    second = run(
        f"http://receiver.test:{receiver.port}/",
        timeline,
        policy=production_like,
        resolver=Resolver("169.254.169.254"),
        prior_attempts=first.total_attempts,
    )
    assert (second.outcome, second.reason, second.attempts) == (Outcome.GAVE_UP, "ssrf_blocked", 0)
    assert len(receiver.received()) == 1


def test_a_trickling_receiver_cannot_stretch_an_attempt(timeline: Timeline) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.is_set():  # one header byte every 50 ms, each within the read timeout
                try:
                    connection.sendall(b"X")
                except OSError:
                    return
                time.sleep(0.05)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    policy = DeliveryPolicy(**{**DEV.__dict__, "connect_timeout_seconds": 0.2, "read_timeout_seconds": 0.3})
    began = time.monotonic()
    try:
        result = run(f"http://127.0.0.1:{server.getsockname()[1]}/", timeline, policy=policy, horizon_seconds=0.6)
    finally:
        stop.set()
        server.close()
    assert time.monotonic() - began < 1.5
    assert (result.outcome, result.reason, result.attempts) == (Outcome.RETRY, "horizon_exhausted", 1)
    assert result.last_error and result.last_error.startswith("timeout")


@pytest.fixture(scope="module")
def ca() -> Iterator[LocalCA]:
    ca = LocalCA()
    yield ca
    ca.close()


class TestTLS:
    def tls_policy(self) -> DeliveryPolicy:
        # https only (no allow_http); the private-target flag lets us reach 127.0.0.1
        return DeliveryPolicy(**{**DEV.__dict__, "allow_http": False})

    def test_https_with_sni_and_verification_against_the_url_host(self, ca: LocalCA, timeline: Timeline) -> None:
        with WebhookStub(tls=ca.server_context("receiver.test")) as tls_receiver:
            resolver = Resolver("127.0.0.1")
            result = run(
                f"https://receiver.test:{tls_receiver.port}/hook",
                timeline,
                policy=self.tls_policy(),
                resolver=resolver,
                ssl_context=ca.client_context(),
            )
            assert (result.outcome, result.last_status) == (Outcome.SUCCEEDED, 204)
            [request] = tls_receiver.received()
            assert request.header("host") == f"receiver.test:{tls_receiver.port}"
            assert verify(request, SECRET)

    def test_a_certificate_for_another_host_gives_up(self, ca: LocalCA, timeline: Timeline) -> None:
        with WebhookStub(tls=ca.server_context("other.test")) as tls_receiver:
            result = run(
                f"https://receiver.test:{tls_receiver.port}/hook",
                timeline,
                policy=self.tls_policy(),
                resolver=Resolver("127.0.0.1"),
                ssl_context=ca.client_context(),
            )
            assert (result.outcome, result.reason, result.attempts) == (Outcome.GAVE_UP, "tls_rejected", 1)
            assert result.last_error and "certificate" in result.last_error
            assert tls_receiver.received() == []

    def test_an_untrusted_ca_gives_up_with_the_system_trust_store(self, ca: LocalCA, timeline: Timeline) -> None:
        with WebhookStub(tls=ca.server_context("receiver.test")) as tls_receiver:
            result = run(
                f"https://receiver.test:{tls_receiver.port}/hook",
                timeline,
                policy=self.tls_policy(),
                resolver=Resolver("127.0.0.1"),
            )
            assert (result.outcome, result.reason) == (Outcome.GAVE_UP, "tls_rejected")
            assert tls_receiver.received() == []
