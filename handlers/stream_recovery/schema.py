"""StreamRecovery's DynamoDB tables: key schemas, attribute names and task states, in one place.

The writer library (``writer.py``), the stream handler and the sweeper read and write these
items, the construct creates the tables from the same ``TableSchema`` values, and the tests
create them through ``tests/support/stream_recovery_tables.py`` from these values too -- so a
key name cannot drift between the code, the template and the tests.

Every item of a task shares one partition key value, ``task_pk(tenant, task_id)`` =
``"{tenant}#{task_id}"`` (the spec's marker key), so a tenant's task ids never collide with
another tenant's. The tables (``#`` in a key value is the separator; a tenant containing ``#``
is refused by ``task_pk``):

- **tasks** -- ``pk`` (S). One item per task: ``tenant``, ``task_id``, ``owner`` (set by the
  first commit, never changed), ``state`` (an A2A task state), ``status_message`` (optional
  map), ``status_timestamp_micros``, ``latest_event_sequence`` (N; only ever raised),
  ``push_config_count`` (N; raised and lowered only by the push-config transactions),
  ``created_at_micros``, ``updated_at_micros``.
- **task events** -- ``pk`` (S) + ``event_sequence`` (N). One item per committed event,
  never overwritten: ``tenant``, ``task_id``, ``kind`` (``status_update``), ``state``,
  ``final`` (BOOL: the state is terminal), ``status_message`` (optional), ``recorded_at_micros``.
- **push configs** -- ``pk`` (S) + ``config_id`` (S): ``tenant``, ``task_id``, ``url``,
  ``signing_secret`` (Standard Webhooks ``whsec_...``), optional ``auth_scheme``,
  ``auth_token``, ``notification_token``, ``registered_after_event_sequence`` (N; the task's
  ``latest_event_sequence`` when the config was created, by compare-and-swap),
  ``created_at_micros``. Eligible for an event iff ``registered_after_event_sequence`` < the
  event's sequence (``markers.is_eligible``).
- **pending dispatches** (markers) -- ``pk`` (S) + ``sk`` (N, the event sequence), stream
  ``NEW_IMAGE``, TTL attribute ``ttl`` (epoch *seconds*, 7 days after the commit: TTL only
  cleans up, it never decides). Attributes, camelCase because the stream handler parses them
  by these exact names: ``tenant`` (S), ``taskId`` (S), ``owner`` (S), ``eventSequence`` (N),
  ``recordedAtMicros`` (N), ``sweepShard`` (S). The sparse index ``bySweepShard``
  (``sweepShard`` + ``recordedAtMicros``) holds exactly the live markers, spread over
  ``MARKER_SWEEP_SHARDS`` partition values: the sweeper asks each shard for
  ``recordedAtMicros < cutoff`` and reads only the stale markers, never the table.

- **deliveries** (claims) -- ``pk`` (S) ``"{tenant}#{task_id}#{event_sequence}"`` + ``sk`` (S,
  the config id): one claim per (task, event, config) on the shared claim primitive
  (``handlers.common.claims``: ``state``, ``token``, ``generation``, ``lease_until_ms``, ...;
  the spec's claimant / generation / expiresAtMicros are its token / generation /
  lease_until_ms). Terminal states ``succeeded``, ``gave_up``, ``abandoned``; plus
  ``deliveryAttemptCount`` (N, raised only by the fenced attempt-started write),
  ``tenant``, ``taskId``, ``eventSequence``, ``lastStatus``, ``reason`` and ``claimShard``.
  The sparse index ``byClaimShard`` (``claimShard`` + ``lease_until_ms``) holds exactly the
  non-terminal claims (the primitive removes ``lease_until_ms`` when a claim is confirmed), so
  the sweeper finds reclaimable ones (lease in the past) without a scan.
"""

from __future__ import annotations

import zlib

from handlers.common.table_schema import IndexSchema, KeyAttribute, TableSchema

# -- A2A task states ------------------------------------------------------------------------

SUBMITTED = "submitted"
WORKING = "working"
INPUT_REQUIRED = "input-required"
AUTH_REQUIRED = "auth-required"
COMPLETED = "completed"
CANCELED = "canceled"
FAILED = "failed"
REJECTED = "rejected"
UNKNOWN = "unknown"

TASK_STATES = frozenset(
    {SUBMITTED, WORKING, INPUT_REQUIRED, AUTH_REQUIRED, COMPLETED, CANCELED, FAILED, REJECTED, UNKNOWN}
)
# Terminal: the task ends here; only a status update to one of these is pushed to webhooks.
# (input-required and auth-required interrupt a task, they do not end it.)
TERMINAL_TASK_STATES = frozenset({COMPLETED, CANCELED, FAILED, REJECTED})

EVENT_KIND_STATUS_UPDATE = "status_update"

# -- key and attribute names ----------------------------------------------------------------

PK = "pk"
KEY_SEPARATOR = "#"

# tasks
TASK_TENANT = "tenant"
TASK_ID = "task_id"
TASK_OWNER = "owner"
TASK_STATE = "state"
TASK_STATUS_MESSAGE = "status_message"
TASK_STATUS_TIMESTAMP_MICROS = "status_timestamp_micros"
TASK_LATEST_EVENT_SEQUENCE = "latest_event_sequence"
TASK_PUSH_CONFIG_COUNT = "push_config_count"
TASK_CREATED_AT_MICROS = "created_at_micros"
TASK_UPDATED_AT_MICROS = "updated_at_micros"

# task events
EVENT_SEQUENCE = "event_sequence"
EVENT_TENANT = "tenant"
EVENT_TASK_ID = "task_id"
EVENT_KIND = "kind"
EVENT_STATE = "state"
EVENT_FINAL = "final"
EVENT_STATUS_MESSAGE = "status_message"
EVENT_RECORDED_AT_MICROS = "recorded_at_micros"

# push configs
CONFIG_ID = "config_id"
CONFIG_TENANT = "tenant"
CONFIG_TASK_ID = "task_id"
CONFIG_URL = "url"
CONFIG_SIGNING_SECRET = "signing_secret"
CONFIG_AUTH_SCHEME = "auth_scheme"
CONFIG_AUTH_TOKEN = "auth_token"
CONFIG_NOTIFICATION_TOKEN = "notification_token"
CONFIG_REGISTERED_AFTER_EVENT_SEQUENCE = "registered_after_event_sequence"
CONFIG_CREATED_AT_MICROS = "created_at_micros"

# pending-dispatch markers (the stream handler parses these names: see markers.py)
MARKER_SK = "sk"
MARKER_TENANT = "tenant"
MARKER_TASK_ID = "taskId"
MARKER_OWNER = "owner"
MARKER_EVENT_SEQUENCE = "eventSequence"
MARKER_RECORDED_AT_MICROS = "recordedAtMicros"
MARKER_TTL = "ttl"
MARKER_SWEEP_SHARD = "sweepShard"
MARKER_SWEEP_INDEX = "bySweepShard"
MARKER_SWEEP_SHARDS = 8
MARKER_TTL_SECONDS = 7 * 24 * 3600
MARKER_STREAM_VIEW = "NEW_IMAGE"

# deliveries (claims)
DELIVERY_SK = "sk"
DELIVERY_TENANT = "tenant"
DELIVERY_TASK_ID = "taskId"
DELIVERY_EVENT_SEQUENCE = "eventSequence"
DELIVERY_ATTEMPT_COUNT = "deliveryAttemptCount"
DELIVERY_LAST_STATUS = "lastStatus"
DELIVERY_REASON = "reason"
DELIVERY_CLAIM_SHARD = "claimShard"
DELIVERY_LEASE = "lease_until_ms"  # the claim primitive's lease attribute
DELIVERY_CLAIM_INDEX = "byClaimShard"

U64_MAX = 2**64 - 1

__all__ = ["IndexSchema", "KeyAttribute", "TableSchema"]  # re-exported: the tables below are built from them


TASKS = TableSchema(role="tasks", partition_key=KeyAttribute(PK, "S"))
TASK_EVENTS = TableSchema(
    role="task_events", partition_key=KeyAttribute(PK, "S"), sort_key=KeyAttribute(EVENT_SEQUENCE, "N")
)
PUSH_CONFIGS = TableSchema(
    role="push_configs", partition_key=KeyAttribute(PK, "S"), sort_key=KeyAttribute(CONFIG_ID, "S")
)
PENDING_DISPATCHES = TableSchema(
    role="pending_dispatches",
    partition_key=KeyAttribute(PK, "S"),
    sort_key=KeyAttribute(MARKER_SK, "N"),
    stream_view=MARKER_STREAM_VIEW,
    ttl_attribute=MARKER_TTL,
    indexes=(
        IndexSchema(
            name=MARKER_SWEEP_INDEX,
            partition_key=KeyAttribute(MARKER_SWEEP_SHARD, "S"),
            sort_key=KeyAttribute(MARKER_RECORDED_AT_MICROS, "N"),
        ),
    ),
)
DELIVERIES = TableSchema(
    role="deliveries",
    partition_key=KeyAttribute(PK, "S"),
    sort_key=KeyAttribute(DELIVERY_SK, "S"),
    indexes=(
        IndexSchema(
            name=DELIVERY_CLAIM_INDEX,
            partition_key=KeyAttribute(DELIVERY_CLAIM_SHARD, "S"),
            sort_key=KeyAttribute(DELIVERY_LEASE, "N"),
        ),
    ),
)
ALL_TABLES = (TASKS, TASK_EVENTS, PUSH_CONFIGS, PENDING_DISPATCHES, DELIVERIES)


def task_pk(tenant: str, task_id: str) -> str:
    """``"{tenant}#{task_id}"``: the partition key of every item of one task."""
    if not tenant or not task_id:
        raise ValueError("a task needs a non-empty tenant and task id")
    if KEY_SEPARATOR in tenant:
        raise ValueError(f"a tenant must not contain {KEY_SEPARATOR!r} (it separates tenant and task id): {tenant!r}")
    return f"{tenant}{KEY_SEPARATOR}{task_id}"


def sweep_shard(tenant: str, task_id: str) -> str:
    """The marker's sweep-index partition: stable per task, spread over MARKER_SWEEP_SHARDS values."""
    return str(zlib.crc32(task_pk(tenant, task_id).encode()) % MARKER_SWEEP_SHARDS)


def delivery_pk(tenant: str, task_id: str, event_sequence: int) -> str:
    """``"{tenant}#{task_id}#{event_sequence}"``: the claims of one event, one item per config."""
    return f"{task_pk(tenant, task_id)}{KEY_SEPARATOR}{event_sequence}"


def is_terminal_state(state: str) -> bool:
    return state in TERMINAL_TASK_STATES
