"""boto3 clients shared by every handler: one per service per container, with retries.

Endpoints are never chosen in code: boto3 itself honours ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_<SERVICE>``, which is how a local run points at moto server.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config

# "standard" retry mode retries throttling, 5xx and connection errors with exponential
# backoff and jitter. Three attempts in all (first try + two retries) keep the worst case (a
# few seconds) well inside the shortest handler timeout; beyond that the record is reported as
# a batch item failure and Lambda's own redelivery takes over, which is the retry that
# survives a crashed container.
# The pool is sized for the stream processor's bounded concurrency (at most 64 worker threads
# share one client); botocore's default of 10 would make the extra threads wait for a socket.
DEFAULT_RETRY_CONFIG = Config(
    retries={"total_max_attempts": 3, "mode": "standard"},
    connect_timeout=3,
    read_timeout=10,
    tcp_keepalive=True,
    max_pool_connections=64,
)


@functools.cache
def client(service_name: str) -> Any:
    """Return the container-wide client for ``service_name`` (created on first use)."""
    return boto3.session.Session().client(service_name, config=DEFAULT_RETRY_CONFIG)


def reset_clients() -> None:
    """Forget cached clients (after the endpoint or credentials in the environment change)."""
    client.cache_clear()
