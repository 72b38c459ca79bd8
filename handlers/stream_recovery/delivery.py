"""Webhook delivery: one signed, SSRF-safe HTTPS POST per (task, event, config), retried in a horizon.

Pure Python (standard library only), no AWS calls. The stream handler and the sweeper call
``deliver()`` under a claim on (task, event, config) and write its ``DeliveryResult`` as the
claim's outcome.

Delivery guarantee (exactly):
- **at most one accepted POST per (task, event, config) otherwise**: the caller's claim
  (conditional first claim, fenced attempt-started and outcome writes) lets one worker at a
  time deliver a pair, and a pair whose outcome is ``succeeded``/``gave_up``/``abandoned`` is
  never delivered again. Within one ``deliver()`` call a further POST is made only after the
  previous one was *not seen* accepted (non-2xx, timeout, broken connection).
- **at-least-once across a crash after the receiver accepted**: if the process dies (or the
  function times out) after the receiver answered 2xx and before the caller wrote
  ``succeeded``, the claim expires and a re-claim POSTs again. A lost answer is the same case
  within one call: a read timeout or broken connection after the receiver processed the POST
  makes us POST again. So a receiver may see an event more than once, and every POST of it
  carries the same ``webhook-id`` on every retry and every redelivery
  (``DeliveryKey.webhook_id``, a UUIDv5 of tenant, task, event sequence and config):
  **receivers de-duplicate by ``webhook-id``**. (The body is what the caller passes: build the
  payload from the stored event, not from "now", so a redelivery is byte-identical too.)

Every POST carries (Standard Webhooks 1.0, https://www.standardwebhooks.com/):
- ``webhook-id``: the stable idempotency id above;
- ``webhook-timestamp``: unix seconds of *this attempt* (so receivers can reject replays);
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` where the
  key is the config's signing secret ``whsec_<base64 key>`` decoded (24 to 64 bytes, as the
  specification asks); a malformed secret is refused with ``SigningSecretError`` (and
  ``gave_up`` / ``invalid_signing_secret`` from ``deliver``);
- ``Content-Type: application/json`` and the exact body that was signed (compact JSON, sorted
  keys, UTF-8; at most ``DeliveryPolicy.max_payload_bytes``, else ``PayloadTooLargeError``);
- when the config has one, its own credential: ``Authorization: <scheme> <token>`` (A2A
  ``authentication.schemes`` / ``credentials``; scheme ``Bearer`` by default) and/or the A2A
  notification token in ``X-A2A-Notification-Token``.

Outcomes (``Outcome``; ``reason`` says which case):
- ``succeeded``: a 2xx answer;
- ``retry``: the last attempt failed retryably (408, 429, 5xx, timeout, connection refused or
  reset, DNS failure) and the horizon has no room for another attempt (``horizon_exhausted``,
  with ``retry_after_seconds`` when the receiver asked for a delay). The claim stays
  non-terminal; a re-claim after it expires (the sweeper) tries again;
- ``gave_up``: no retry can help: ``max_attempts`` reached (counted across calls through
  ``prior_attempts``), ``non_retryable_status`` (other 4xx, 1xx), ``redirect`` (3xx: never
  followed -- the receiver must update its URL, and a redirect must not steer us into an
  internal network), ``gone`` (410: the receiver asks us to stop), ``ssrf_blocked`` (no
  connection was made), ``payload_too_large``, ``tls_rejected`` (certificate or handshake
  refused), ``invalid_url``, ``invalid_signing_secret``, ``invalid_config``;
- ``abandoned``: ``insecure_url`` -- a non-HTTPS URL without the development flag (the spec's
  "non-HTTPS URL in production"); the caller also abandons deleted configs and tasks.

Retries: exponential backoff with full jitter, ``delay = random() * min(max_delay, base * 2**(n-1))``
after the n-th failed attempt of this call; a ``Retry-After`` (seconds or HTTP date) replaces the
jittered delay. A next attempt is started only if its delay plus one full attempt (connect +
read timeout) still ends inside the horizon, so ``deliver`` returns within
``horizon_seconds`` (plus scheduling noise); the caller keeps the horizon shorter than its
claim lease (``DeliveryPolicy.check_fits``). Each attempt is bounded as a whole by connect +
read timeout: a watchdog shuts the socket at that deadline, so a receiver trickling its answer
byte by byte cannot stretch an attempt.

A failed DNS lookup is not an attempt (nothing was sent; it is backed off like one but does
not count toward ``max_attempts``); the lookup's own duration is not bounded by our timeouts,
so the horizon is re-checked after it.

SSRF: see ``ssrf.py``. Each attempt resolves the host once, checks every address, and connects
to a checked address itself (Host header, SNI and certificate verification use the original
host name); no redirects are followed; plain http and internal targets need the explicit
development flags ``allow_http`` / ``allow_private_targets``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import hashlib
import hmac
import http.client
import json
import random as _random
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from handlers.stream_recovery.ssrf import (
    BlockedAddressError,
    CheckedAddress,
    InvalidTargetError,
    ResolutionError,
    Resolver,
    Target,
    parse_target,
    resolve_checked,
)

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
USER_AGENT = "stream-recovery-webhooks/1"
# Namespace of the webhook ids (a UUIDv5 of a fixed name): changing it would change every id and
# break receivers' de-duplication across a deployment, so it is a constant, never configuration.
WEBHOOK_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:event-driven-subsystems:stream-recovery:webhook-id")
_RETRYABLE_STATUSES = frozenset({408, 429})
_MAX_DETAIL = 300


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    GAVE_UP = "gave_up"
    ABANDONED = "abandoned"

    @property
    def is_terminal(self) -> bool:
        return self is not Outcome.RETRY


class SigningSecretError(ValueError):
    """The config's signing secret is not ``whsec_<base64 of 24..64 bytes>``."""


class PayloadTooLargeError(ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the webhook body is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class InvalidConfigError(ValueError):
    """A header value of the config (auth token, scheme) that cannot be sent safely."""


# --- signing ------------------------------------------------------------------------------------


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret ``whsec_<base64 key>`` (24 to 64 bytes)."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise SigningSecretError(f"a webhook signing secret must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SigningSecretError(f"the part after {SECRET_PREFIX!r} is not valid base64") from exc
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise SigningSecretError(
            f"a webhook signing key must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, this one is {len(key)}"
        )
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    if "." in webhook_id:
        raise ValueError("a webhook id must not contain '.' (it delimits the signed content)")
    signed = f"{webhook_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def generate_signing_secret() -> str:
    """A fresh ``whsec_`` secret of 32 random bytes (for registering a config)."""
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


# --- identity and body --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryKey:
    """What one delivery is of: a config of a task, for one event sequence."""

    tenant: str
    task_id: str
    event_sequence: int
    config_id: str

    @property
    def webhook_id(self) -> str:
        """Stable idempotency id: the same on every retry and every redelivery of this key."""
        name = json.dumps([self.tenant, self.task_id, int(self.event_sequence), self.config_id], separators=(",", ":"))
        return str(uuid.uuid5(WEBHOOK_ID_NAMESPACE, name))


def build_body(payload: Any, *, max_bytes: int) -> bytes:
    """The exact bytes sent and signed: compact, key-sorted UTF-8 JSON, at most ``max_bytes``."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False).encode()
    if len(body) > max_bytes:
        raise PayloadTooLargeError(len(body), max_bytes)
    return body


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookConfig:
    """A push-notification config as delivery needs it."""

    config_id: str
    url: str
    signing_secret: str = field(repr=False)  # whsec_<base64>
    auth_token: str | None = field(default=None, repr=False)  # sent as "Authorization: <auth_scheme> <token>"
    auth_scheme: str = "Bearer"
    notification_token: str | None = field(default=None, repr=False)  # sent as X-A2A-Notification-Token


@dataclass(frozen=True)
class DeliveryPolicy:
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 15.0
    retry_horizon_seconds: float = 60.0
    max_attempts: int = 8  # across all calls for one key (the claim's deliveryAttemptCount)
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 30.0
    max_payload_bytes: int = 64 * 1024
    allow_http: bool = False  # development only: plain http:// URLs
    allow_private_targets: bool = False  # development only: loopback/private/link-local targets
    allowed_ports: frozenset[int] | None = None  # None: any port (see ssrf.py)

    def __post_init__(self) -> None:
        positive = {
            "connect_timeout_seconds": self.connect_timeout_seconds,
            "read_timeout_seconds": self.read_timeout_seconds,
            "backoff_base_seconds": self.backoff_base_seconds,
            "backoff_max_seconds": self.backoff_max_seconds,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"DeliveryPolicy.{name} must be > 0, got {value!r}")
        if self.max_attempts < 1:
            raise ValueError(f"DeliveryPolicy.max_attempts must be >= 1, got {self.max_attempts!r}")
        if self.max_payload_bytes < 1:
            raise ValueError(f"DeliveryPolicy.max_payload_bytes must be >= 1, got {self.max_payload_bytes!r}")
        if self.retry_horizon_seconds < self.attempt_seconds:
            raise ValueError(
                f"DeliveryPolicy.retry_horizon_seconds ({self.retry_horizon_seconds}) must hold one attempt "
                f"(connect + read timeout = {self.attempt_seconds})"
            )

    @property
    def attempt_seconds(self) -> float:
        """The longest one attempt can take (the watchdog enforces it)."""
        return self.connect_timeout_seconds + self.read_timeout_seconds

    def check_fits(self, *, claim_expiry_seconds: float, function_timeout_seconds: float) -> None:
        """The spec's three timing rules; raises ``ValueError`` naming the one broken.

        claim expiry > retry horizon (a live claim outlasts the whole ``deliver``), function
        timeout > one attempt, claim expiry > function timeout (a killed worker's claim expires
        only after the worker is certainly gone).
        """
        if not claim_expiry_seconds > self.retry_horizon_seconds:
            raise ValueError(
                f"claim expiry ({claim_expiry_seconds}s) must exceed the retry horizon ({self.retry_horizon_seconds}s)"
            )
        if not function_timeout_seconds > self.attempt_seconds:
            raise ValueError(
                f"function timeout ({function_timeout_seconds}s) must exceed one attempt "
                f"(connect + read timeout = {self.attempt_seconds}s)"
            )
        if not claim_expiry_seconds > function_timeout_seconds:
            raise ValueError(
                f"claim expiry ({claim_expiry_seconds}s) must exceed the function timeout ({function_timeout_seconds}s)"
            )


def backoff_delay(failed_attempts: int, policy: DeliveryPolicy, random: Callable[[], float]) -> float:
    """Full-jitter delay after the ``failed_attempts``-th failure of a call: U[0, min(max, base*2^(n-1)))."""
    exponent = max(failed_attempts - 1, 0)
    ceiling = min(policy.backoff_max_seconds, policy.backoff_base_seconds * (2 ** min(exponent, 62)))
    return random() * ceiling


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - now, 0.0)


# --- result -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    number: int  # 1-based across calls (prior_attempts + n)
    status: int | None  # HTTP status, None when no answer
    error: str | None  # why it failed without an answer (timeout, refused...), or None
    address: str | None  # the checked IP connected to
    duration_seconds: float


@dataclass(frozen=True)
class DeliveryResult:
    outcome: Outcome
    reason: str  # "ok", "horizon_exhausted", "max_attempts", "non_retryable_status", "redirect", ...
    webhook_id: str
    attempts: int  # POSTs started by this call (connections tried)
    total_attempts: int  # prior_attempts + attempts
    last_status: int | None
    last_error: str | None
    retry_after_seconds: float | None = None  # the receiver's last Retry-After, a hint when outcome is retry
    elapsed_seconds: float = 0.0
    history: tuple[Attempt, ...] = ()


# --- transport ----------------------------------------------------------------------------------

_default_context: ssl.SSLContext | None = None
_default_context_lock = threading.Lock()


def default_ssl_context() -> ssl.SSLContext:
    """System trust store, hostname verification, TLS 1.2+ (created once per container)."""
    global _default_context
    with _default_context_lock:
        if _default_context is None:
            context = ssl.create_default_context()
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            _default_context = context
        return _default_context


class _PinnedConnectionMixin:
    """``connect()`` opens a socket to an address the SSRF guard checked (no lookup of its own)."""

    _pinned: CheckedAddress
    _connect_timeout: float
    _read_timeout: float
    host: str
    sock: socket.socket | None
    live_socket: socket.socket | None = None  # the attempt's socket from its creation on (for the watchdog)

    def _open_pinned_socket(self) -> socket.socket:
        sock = socket.socket(self._pinned.family, socket.SOCK_STREAM)
        self.live_socket = sock
        try:
            sock.settimeout(self._connect_timeout)
            sock.connect(self._pinned.sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return sock


class _PinnedHTTPConnection(_PinnedConnectionMixin, http.client.HTTPConnection):
    def __init__(self, host: str, port: int, *, pinned: CheckedAddress, connect_timeout: float, read_timeout: float):
        super().__init__(host, port, timeout=read_timeout)
        self._pinned, self._connect_timeout, self._read_timeout = pinned, connect_timeout, read_timeout

    def connect(self) -> None:
        sock = self._open_pinned_socket()
        sock.settimeout(self._read_timeout)
        self.sock = sock


class _PinnedHTTPSConnection(_PinnedConnectionMixin, http.client.HTTPSConnection):
    def __init__(
        self,
        host: str,
        port: int,
        *,
        pinned: CheckedAddress,
        connect_timeout: float,
        read_timeout: float,
        context: ssl.SSLContext,
    ):
        super().__init__(host, port, timeout=read_timeout, context=context)
        self._pinned, self._connect_timeout, self._read_timeout = pinned, connect_timeout, read_timeout
        self._tls_context = context

    def connect(self) -> None:
        sock = self._open_pinned_socket()
        try:
            # The handshake counts as connecting (connect timeout); SNI and certificate
            # verification use the URL's host name, not the address connected to.
            tls = self._tls_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.live_socket = tls
        tls.settimeout(self._read_timeout)
        self.sock = tls


@dataclass(frozen=True)
class _Answer:
    status: int | None
    retry_after: str | None = None
    error: str | None = None
    tls_rejected: bool = False
    connect_failed: bool = False  # nothing was sent: trying another checked address cannot duplicate


class _Watchdog:
    """Shuts the attempt's socket at its deadline: unblocks a trickled handshake or answer."""

    def __init__(self, connection: _PinnedConnectionMixin, seconds: float) -> None:
        self._connection = connection
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        sock = self._connection.live_socket
        if sock is None:
            return
        self.fired = True
        # socket.socket.shutdown on the file descriptor itself: SSLSocket.shutdown would also
        # drop its TLS object under the reading thread.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _connection_for(
    target: Target, address: CheckedAddress, policy: DeliveryPolicy, context: ssl.SSLContext | None
) -> _PinnedHTTPConnection | _PinnedHTTPSConnection:
    timeouts = {"connect_timeout": policy.connect_timeout_seconds, "read_timeout": policy.read_timeout_seconds}
    if target.scheme == "https":
        return _PinnedHTTPSConnection(
            target.host, target.port, pinned=address, context=context or default_ssl_context(), **timeouts
        )
    return _PinnedHTTPConnection(target.host, target.port, pinned=address, **timeouts)


def _post_once(
    target: Target,
    address: CheckedAddress,
    headers: Mapping[str, str],
    body: bytes,
    policy: DeliveryPolicy,
    context: ssl.SSLContext | None,
    seconds_left: float,
) -> _Answer:
    connection = _connection_for(target, address, policy, context)
    watchdog = _Watchdog(connection, seconds_left)
    timed_out = _Answer(status=None, error=f"timeout (attempt exceeded {policy.attempt_seconds}s)")
    with watchdog:
        try:
            try:
                connection.connect()
            except ssl.SSLCertVerificationError as exc:
                message = f"TLS certificate rejected: {exc.verify_message or exc}"
                return _Answer(status=None, error=_short(message), tls_rejected=True)
            except ssl.SSLError as exc:
                if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError) or watchdog.fired:
                    return _Answer(status=None, error=_short(f"connection closed during the TLS handshake: {exc}"))
                return _Answer(status=None, error=_short(f"TLS handshake failed: {exc}"), tls_rejected=True)
            except TimeoutError:
                return _Answer(status=None, error="connect timeout", connect_failed=True)
            except OSError as exc:
                if watchdog.fired:
                    return timed_out
                return _Answer(status=None, error=_short(f"{type(exc).__name__}: {exc}"), connect_failed=True)
            try:
                connection.request("POST", target.path, body=body, headers=dict(headers))
                response = connection.getresponse()
                status, retry_after = response.status, response.getheader("Retry-After")
            except TimeoutError:
                return _Answer(status=None, error="timeout")
            except (OSError, http.client.HTTPException) as exc:
                return (
                    timed_out if watchdog.fired else _Answer(status=None, error=_short(f"{type(exc).__name__}: {exc}"))
                )
            if watchdog.fired:  # a status line parsed from a cut-off answer is no answer
                return timed_out
            return _Answer(status=status, retry_after=retry_after)
        finally:
            connection.close()


def _short(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _header_value(name: str, value: str) -> str:
    if not value or any((ord(ch) < 0x21 and ch != " ") or ord(ch) > 0x7E for ch in value) or value != value.strip():
        raise InvalidConfigError(f"the config's {name} contains characters that cannot be sent in a header")
    return value


def _static_headers(config: WebhookConfig, webhook_id: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "webhook-id": webhook_id}
    if config.auth_token is not None:
        scheme = _header_value("auth scheme", config.auth_scheme)
        if " " in scheme:
            raise InvalidConfigError("the config's auth scheme must be one word (e.g. Bearer)")
        headers["Authorization"] = f"{scheme} {_header_value('auth token', config.auth_token)}"
    if config.notification_token is not None:
        headers["X-A2A-Notification-Token"] = _header_value("notification token", config.notification_token)
    return headers


# --- the delivery loop --------------------------------------------------------------------------


def deliver(
    config: WebhookConfig,
    key: DeliveryKey,
    payload: Any,
    *,
    policy: DeliveryPolicy,
    prior_attempts: int = 0,
    horizon_seconds: float | None = None,
    before_attempt: Callable[[int], None] | None = None,
    resolver: Resolver = socket.getaddrinfo,
    ssl_context: ssl.SSLContext | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    random: Callable[[], float] = _random.random,
) -> DeliveryResult:
    """POST ``payload`` to ``config.url`` until an outcome is known or the horizon is spent.

    - ``prior_attempts``: attempts already made for this key (the claim's count); the call gives
      up with ``max_attempts`` when the total reaches ``policy.max_attempts``;
    - ``horizon_seconds``: this call's time budget (default ``policy.retry_horizon_seconds``;
      pass less when the invocation has less time left); no attempt starts that could end
      after it;
    - ``before_attempt(n)``: called with the attempt's number (1-based across calls) after the
      target passed the SSRF check and right before the connection is opened: the caller's
      fenced attempt-started write. It may raise (a stale claim): the exception propagates and
      no POST is made;
    - ``resolver``, ``ssl_context``, ``clock`` (monotonic, for the horizon), ``wall_clock`` (for
      ``webhook-timestamp`` and Retry-After dates), ``sleep`` and ``random`` are injection points.
    """
    if key.config_id != config.config_id:
        raise ValueError(f"delivery key is for config {key.config_id!r}, not {config.config_id!r}")
    started = clock()
    budget = policy.retry_horizon_seconds if horizon_seconds is None else horizon_seconds
    webhook_id = key.webhook_id
    history: list[Attempt] = []

    def result(
        outcome: Outcome,
        reason: str,
        *,
        status: int | None = None,
        error: str | None = None,
        retry_after: float | None = None,
    ) -> DeliveryResult:
        return DeliveryResult(
            outcome=outcome,
            reason=reason,
            webhook_id=webhook_id,
            attempts=len(history),
            total_attempts=prior_attempts + len(history),
            last_status=status,
            last_error=error,
            retry_after_seconds=retry_after,
            elapsed_seconds=clock() - started,
            history=tuple(history),
        )

    # Checks that no attempt can change: decided before any lookup or connection.
    try:
        target = parse_target(config.url, allow_http=policy.allow_http, allowed_ports=policy.allowed_ports)
    except InvalidTargetError as exc:
        outcome = Outcome.ABANDONED if exc.reason in ("insecure_scheme", "unsupported_scheme") else Outcome.GAVE_UP
        reason = "insecure_url" if outcome is Outcome.ABANDONED else "invalid_url"
        return result(outcome, reason, error=str(exc))
    try:
        signing_key(config.signing_secret)
    except SigningSecretError as exc:
        return result(Outcome.GAVE_UP, "invalid_signing_secret", error=str(exc))
    try:
        headers = _static_headers(config, webhook_id)
    except InvalidConfigError as exc:
        return result(Outcome.GAVE_UP, "invalid_config", error=str(exc))
    try:
        body = build_body(payload, max_bytes=policy.max_payload_bytes)
    except PayloadTooLargeError as exc:
        return result(Outcome.GAVE_UP, "payload_too_large", error=str(exc))
    if prior_attempts >= policy.max_attempts:
        return result(Outcome.GAVE_UP, "max_attempts", error=f"{prior_attempts} attempts already made")

    delay = 0.0
    failures = 0  # failed tries of this call (attempts and failed lookups): the backoff exponent
    last_status: int | None = None
    last_error: str | None = None
    retry_after: float | None = None
    while True:
        if clock() - started + delay + policy.attempt_seconds > budget:
            return result(
                Outcome.RETRY, "horizon_exhausted", status=last_status, error=last_error, retry_after=retry_after
            )
        if delay > 0:
            sleep(delay)
        number = prior_attempts + len(history) + 1
        attempt_started = clock()
        try:
            addresses = resolve_checked(target, allow_private=policy.allow_private_targets, resolver=resolver)
        except BlockedAddressError as exc:
            return result(Outcome.GAVE_UP, "ssrf_blocked", error=str(exc))
        except ResolutionError as exc:
            # No connection was tried, so no attempt is counted; DNS may recover within the horizon.
            last_status, last_error, retry_after = None, str(exc), None
            failures += 1
            delay = backoff_delay(failures, policy, random)
            continue
        if clock() - started + policy.attempt_seconds > budget:  # the lookup itself was slow
            return result(
                Outcome.RETRY, "horizon_exhausted", status=last_status, error=last_error, retry_after=retry_after
            )
        if before_attempt is not None:
            before_attempt(number)
        answer = _Answer(status=None, error="no address", connect_failed=True)
        address_used: str | None = None
        # One attempt, however many addresses it tries, ends within connect + read timeout (real time).
        attempt_deadline = time.monotonic() + policy.attempt_seconds
        for address in addresses:  # every one of them was checked; try the next only if the connect fails
            seconds_left = attempt_deadline - time.monotonic()
            if seconds_left <= 0:
                break
            timestamp = int(wall_clock())
            attempt_headers = {
                **headers,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(config.signing_secret, webhook_id, timestamp, body),
            }
            address_used = address.ip
            answer = _post_once(target, address, attempt_headers, body, policy, ssl_context, seconds_left)
            if not answer.connect_failed:
                break
        history.append(
            Attempt(
                number=number,
                status=answer.status,
                error=answer.error,
                address=address_used,
                duration_seconds=clock() - attempt_started,
            )
        )
        last_status, last_error = answer.status, answer.error
        status = answer.status
        if answer.tls_rejected:
            return result(Outcome.GAVE_UP, "tls_rejected", error=answer.error)
        if status is not None and 200 <= status <= 299:
            return result(Outcome.SUCCEEDED, "ok", status=status)
        if status is not None and 300 <= status <= 399:
            return result(
                Outcome.GAVE_UP, "redirect", status=status, error=f"HTTP {status}: redirects are not followed"
            )
        if status == 410:
            return result(Outcome.GAVE_UP, "gone", status=status, error="HTTP 410: the receiver asks us to stop")
        retryable = status is None or status in _RETRYABLE_STATUSES or 500 <= status <= 599
        if not retryable:
            return result(Outcome.GAVE_UP, "non_retryable_status", status=status, error=f"HTTP {status}")
        if status is not None:
            last_error = f"HTTP {status}"
        retry_after = parse_retry_after(answer.retry_after, now=wall_clock()) if status is not None else None
        if number >= policy.max_attempts:
            return result(Outcome.GAVE_UP, "max_attempts", status=status, error=last_error, retry_after=retry_after)
        failures += 1
        delay = retry_after if retry_after is not None else backoff_delay(failures, policy, random)


__all__ = [
    "MAX_SECRET_BYTES",
    "MIN_SECRET_BYTES",
    "WEBHOOK_ID_NAMESPACE",
    "Attempt",
    "DeliveryKey",
    "DeliveryPolicy",
    "DeliveryResult",
    "InvalidConfigError",
    "Outcome",
    "PayloadTooLargeError",
    "SigningSecretError",
    "WebhookConfig",
    "backoff_delay",
    "build_body",
    "default_ssl_context",
    "deliver",
    "generate_signing_secret",
    "parse_retry_after",
    "sign",
    "signing_key",
]
