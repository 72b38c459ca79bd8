"""Append an audit event to its tenant's hash chain.

Writers of one tenant are serialised by a transaction-scoped advisory lock on the tenant, taken
by ``compliance.lock_audit_chain`` (migration 0003) before it reads the chain tail and held
until the caller's transaction commits, so the next writer reads a tail that includes this
event, and a rolled-back write releases the lock without leaving a link behind. That holds
only under READ COMMITTED (a REPEATABLE READ or SERIALIZABLE snapshot may predate the lock), so
the lock function refuses any other isolation level (IsolationLevelError here). Whatever a
writer does, the schema admits no fork: ``UNIQUE (tenant_id, prev_hash)`` and one NULL
prev_hash per tenant.

The hash covers the payload exactly as Postgres will return it: the payload goes through a
jsonb round trip first (jsonb normalises numbers, key order and duplicate keys), and the
canonical form is computed from what comes back, which is also what an export contains.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import psycopg
import rfc8785

from handlers.export_runner import chain

ACTOR_TYPES = frozenset({"user", "system", "agent"})
EVENT_TYPE_PREFIXES = ("auth", "user", "agent", "mcp", "workspace", "data", "policy", "approval")
EVENT_TYPE_PATTERN = re.compile(r"^(" + "|".join(EVENT_TYPE_PREFIXES) + r")(\.[a-z0-9_]+)+$")


class AuditEventError(ValueError):
    """The event cannot be recorded as given (the message says which field and why)."""


class IsolationLevelError(RuntimeError):
    """The transaction does not run at READ COMMITTED, under which alone the chain lock and the
    rate limit serialise their writers (the message names the level found)."""


def raise_isolation_error(exc: psycopg.errors.InvalidTransactionState) -> NoReturn:
    diag = exc.diag
    message = diag.message_primary or str(exc)
    hint = f" ({diag.message_hint})" if diag.message_hint else ""
    raise IsolationLevelError(message + hint) from exc


@dataclass(frozen=True)
class AuditEvent:
    tenant_id: uuid.UUID
    actor: str
    actor_type: str
    source: str
    event_type: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None
    event_id: uuid.UUID | None = None


@dataclass(frozen=True)
class RecordedAuditEvent:
    event_id: uuid.UUID
    tenant_id: uuid.UUID
    occurred_at: datetime
    recorded_at: datetime
    prev_hash: str | None
    event_hash: str


def validate_audit_event(event: AuditEvent) -> None:
    if not isinstance(event.tenant_id, uuid.UUID):
        raise AuditEventError(f"tenant_id must be a UUID, got {event.tenant_id!r}")
    for name in ("actor", "source"):
        value = getattr(event, name)
        if not isinstance(value, str) or not value:
            raise AuditEventError(f"{name} must be a non-empty string")
    if event.actor_type not in ACTOR_TYPES:
        raise AuditEventError(f"actor_type must be one of {sorted(ACTOR_TYPES)}, got {event.actor_type!r}")
    if not isinstance(event.event_type, str) or not EVENT_TYPE_PATTERN.match(event.event_type):
        raise AuditEventError(
            f"event_type must be dotted lower case with a known prefix ({', '.join(EVENT_TYPE_PREFIXES)}), "
            f"got {event.event_type!r}"
        )
    if not isinstance(event.payload, Mapping):
        raise AuditEventError("payload must be a JSON object")
    if event.occurred_at is not None and (event.occurred_at.tzinfo is None or event.occurred_at.utcoffset() is None):
        raise AuditEventError("occurred_at must be timezone-aware")
    _reject_nul(event.actor, "actor")
    _reject_nul(event.source, "source")
    _reject_nul(event.payload, "payload")


def _reject_nul(value: Any, where: str) -> None:
    # Postgres text and jsonb cannot hold U+0000; say so instead of failing deep in the driver.
    if isinstance(value, str):
        if "\x00" in value:
            raise AuditEventError(f"{where} contains a NUL character, which Postgres cannot store")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _reject_nul(key, f"{where} key")
            _reject_nul(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _reject_nul(item, f"{where}[{index}]")


def write_audit_event(conn: psycopg.Connection[Any], event: AuditEvent) -> RecordedAuditEvent:
    """Append ``event`` to its tenant's chain inside the caller's transaction (or its own)."""
    validate_audit_event(event)
    event_id = event.event_id or uuid.uuid4()
    occurred_at = (event.occurred_at or datetime.now(UTC)).astimezone(UTC)
    try:
        payload_json = json.dumps(dict(event.payload), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise AuditEventError(f"payload is not JSON-serialisable: {exc}") from exc

    with conn.transaction():
        try:
            row = conn.execute(
                "SELECT %(payload)s::jsonb::text, tail.prev_hash, tail.recorded_at"
                " FROM compliance.lock_audit_chain(%(tenant_id)s) AS tail",
                {"tenant_id": event.tenant_id, "payload": payload_json},
            ).fetchone()
        except psycopg.errors.InvalidTransactionState as exc:
            raise_isolation_error(exc)
        assert row is not None
        stored_payload_text, prev_hash, recorded_at = row
        try:
            canonical = chain.canonical_event(
                event_id=str(event_id),
                tenant_id=str(event.tenant_id),
                occurred_at=chain.format_timestamp(occurred_at),
                actor=event.actor,
                actor_type=event.actor_type,
                source=event.source,
                event_type=event.event_type,
                payload=json.loads(stored_payload_text),
            )
        except rfc8785.CanonicalizationError as exc:
            raise AuditEventError(f"payload has no canonical JSON form (RFC 8785): {exc}") from exc
        new_hash = chain.event_hash(prev_hash, canonical)
        conn.execute(
            """
            INSERT INTO compliance.audit_events
                (event_id, tenant_id, occurred_at, recorded_at, actor, actor_type, source, event_type,
                 payload, prev_hash, event_hash)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)
            """,
            (
                event_id,
                event.tenant_id,
                occurred_at,
                recorded_at,
                event.actor,
                event.actor_type,
                event.source,
                event.event_type,
                stored_payload_text,
                prev_hash,
                new_hash,
            ),
        )
    return RecordedAuditEvent(
        event_id=event_id,
        tenant_id=event.tenant_id,
        occurred_at=occurred_at,
        recorded_at=recorded_at,
        prev_hash=prev_hash,
        event_hash=new_hash,
    )
