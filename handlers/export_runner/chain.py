"""The audit hash chain: canonical form of an event and its hash (pure, no I/O).

Anyone can verify an export without our code:
- canonical form = RFC 8785 (JCS) JSON of the object with exactly these members:
  event_id, tenant_id (lower-case hyphenated UUIDs), occurred_at (ISO 8601 UTC with
  microseconds and ``Z``, e.g. ``2024-05-01T12:00:00.000000Z``), actor, actor_type, source,
  event_type and payload (the JSON object as stored);
- ``event_hash = sha256_hex(prev_hash_or_empty_string + canonical)``, the concatenation
  taken as UTF-8 bytes;
- a chain is one tenant's events ordered by (recorded_at, event_id); the first has no prev_hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import rfc8785

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# The same rendering in SQL (to_char of the UTC timestamp), used by the exporter.
SQL_TIMESTAMP_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
CANONICAL_FIELDS = ("event_id", "tenant_id", "occurred_at", "actor", "actor_type", "source", "event_type", "payload")


def format_timestamp(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"timestamp must be timezone-aware, got naive {moment.isoformat()}")
    utc = moment.astimezone(UTC)
    # Spelled out rather than strftime: glibc's %Y does not zero-pad years before 1000, while
    # Postgres' to_char(YYYY) does, and the two renderings must be identical.
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def parse_timestamp(text: str) -> datetime:
    """Parse the canonical rendering back (strict: the exact format, UTC)."""
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def canonical_event(
    *,
    event_id: str,
    tenant_id: str,
    occurred_at: str,
    actor: str,
    actor_type: str,
    source: str,
    event_type: str,
    payload: Mapping[str, Any],
) -> bytes:
    """JCS bytes of the event; raises rfc8785.CanonicalizationError for values JSON cannot carry."""
    return rfc8785.dumps(
        {
            "event_id": event_id,
            "tenant_id": tenant_id,
            "occurred_at": occurred_at,
            "actor": actor,
            "actor_type": actor_type,
            "source": source,
            "event_type": event_type,
            "payload": payload,
        }
    )


def event_hash(prev_hash: str | None, canonical: bytes) -> str:
    digest = hashlib.sha256()
    digest.update((prev_hash or "").encode("utf-8"))
    digest.update(canonical)
    return digest.hexdigest()
