"""ExecutionEngine's tables, object keys, statuses and variable names, in one place.

The construct creates the tables from these ``TableSchema`` values, the handlers (init,
orchestrator, watchdog check) and the worker read and write these names, and the tests create
their tables from here too.

A job is a *run* (``run_id``, 32 hex characters) of numbered orders ``0001``, ``0002``, ...
(``order_num``: four digits, the position in the submitted list). ``0000`` is the job itself.

Tables
- **orders** -- ``pk`` (S) = ``"<run_id>:<order_num>"``; index ``run_id-order_num-index``
  (``run_id`` + ``order_num``); TTL ``expires_at`` (epoch seconds, 1 day). One item per order:
  ``run_id``, ``order_num``, ``order_name``, ``status`` (ORDER_STATUSES), ``execution_target``,
  ``timeout`` (N, seconds), ``must_succeed`` (BOOL), ``dependencies`` (L of order nums, resolved
  from the names at init), ``exec_key`` (the exec.zip key), ``callback_key`` (the result.json
  key), ``dispatch_generation`` (N: the lock generation of the pass that reserved it),
  ``dispatched_at_ms``, ``execution_url``, ``watchdog_execution_arn``, ``reason``, ``log``
  (the worker's log, truncated to LOG_LIMIT_BYTES from the start), ``finished_at_ms``.
  The job item (``order_num`` ``0000``): ``kind`` ``job``, ``status`` (JOB_STATUSES),
  ``order_count`` (N), ``trace_id``, ``flow_id``, ``username``, ``job_timeout`` (N),
  ``sops_key_parameter``, ``done_uri``, ``created_at_ms``, ``finalized_at_ms``.
  The orchestrator reads a run with consistent BatchGetItem on the known keys
  ``<run>:0000 .. <run>:<order_count>`` (a GSI read is eventually consistent and could hide a
  status it wrote itself); the index serves listings (the CLI).
- **order_events** -- ``trace_id`` (S) + ``sk`` (S) = ``"<order_name>:<epoch_ms>:<type>"``;
  index ``order_name-epoch-index`` (``order_name`` + ``epoch`` (N, ms)); TTL ``expires_at``
  (90 days). ``run_id``, ``flow_id``, ``type`` (EVENT_TYPES), payload under ``data``. Job-level
  events use the order name ``_job``.
- **locks** -- ``pk`` (S) = ``"lock:<run_id>"``: the per-run orchestration lock, a claim of the
  shared primitive (``handlers.common.claims``) at the top level of the item, plus ``expires_at``
  (TTL, cleanup only).

Objects
- internal bucket (1-day lifecycle): ``tmp/exec/<run>/<num>/exec.zip`` (the packaged order) and
  ``tmp/callbacks/runs/<run>/<num>/result.json`` (the order's result; ``0000`` is the init
  result that starts the first orchestration pass). Every result.json is written with
  ``If-None-Match: *``: the first result of an order wins (worker, watchdog, or the
  orchestrator recording a failed target call).
- done bucket (1-day lifecycle): ``<run>/done`` once the job is finalized.

result.json (schema ``v1``): ``{"schema_version": "v1", "status": <RESULT_STATUSES>, "log": str,
"reason": str (optional), "written_by": "worker" | "watchdog" | "orchestrator"}``.

exec.zip: ``order.json`` (ORDER_MANIFEST: run_id, order_num, order_name, cmds, timeout,
schema_version), ``secrets.sops.json`` (the SOPS-encrypted bundle: ``env`` (the order's env
vars and resolved credentials) and ``callback_url`` (the presigned PUT of result.json, signed
with ``If-None-Match: *``)), and ``code/`` (the order's code: the git repo at the commit, or the
unpacked S3 location).

The worker's invocation event (Lambda; the CodeBuild environment carries the same fields):
``{"run_id", "order_num", "exec_bucket", "exec_key", "sops_key_parameter"}`` -- a location and
the SSM name of the key, never a secret.

The watchdog state machine's input: ``{"run_id", "order_num", "timeout", "started_at_ms",
"dispatch_generation"}``; watchdog_check returns the same plus ``done`` (BOOL) and
``wait_seconds`` (N).
"""

from __future__ import annotations

import re

from handlers.common.table_schema import IndexSchema, KeyAttribute, TableSchema

SCHEMA_VERSION = "v1"
JOB_ORDER_NUM = "0000"
JOB_EVENT_ORDER_NAME = "_job"

# -- order statuses -------------------------------------------------------------------------
QUEUED = "queued"
DISPATCHING = "dispatching"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
# The watchdog's hard cap (2 x timeout without any result): terminal, like every status the
# watchdog can write (the seed left it out of its terminal set, so such a job never finished).
HARD_CAP_REACHED = "hard_cap_reached"
DEPENDENCY_FAILED = "dependency_failed"

ORDER_STATUSES = frozenset(
    {QUEUED, DISPATCHING, RUNNING, SUCCEEDED, FAILED, TIMED_OUT, HARD_CAP_REACHED, DEPENDENCY_FAILED}
)
TERMINAL_ORDER_STATUSES = frozenset({SUCCEEDED, FAILED, TIMED_OUT, HARD_CAP_REACHED, DEPENDENCY_FAILED})
# What a result.json may say.
RESULT_STATUSES = frozenset({SUCCEEDED, FAILED, TIMED_OUT, HARD_CAP_REACHED})

# -- job statuses ---------------------------------------------------------------------------
JOB_RUNNING = "running"
JOB_SUCCEEDED = "succeeded"
JOB_FAILED = "failed"
JOB_TIMED_OUT = "timed_out"
JOB_STATUSES = frozenset({JOB_RUNNING, JOB_SUCCEEDED, JOB_FAILED, JOB_TIMED_OUT})

# -- execution targets ----------------------------------------------------------------------
TARGET_LAMBDA = "lambda"
TARGET_CODEBUILD = "codebuild"
TARGET_SSM = "ssm"
EXECUTION_TARGETS = frozenset({TARGET_LAMBDA, TARGET_CODEBUILD, TARGET_SSM})

# -- event types ----------------------------------------------------------------------------
EVENT_JOB_STARTED = "job_started"
EVENT_ORDER_DISPATCHED = "order_dispatched"
EVENT_ORDER_FINISHED = "order_finished"
EVENT_JOB_COMPLETED = "job_completed"
EVENT_TYPES = frozenset({EVENT_JOB_STARTED, EVENT_ORDER_DISPATCHED, EVENT_ORDER_FINISHED, EVENT_JOB_COMPLETED})

# -- attribute names ------------------------------------------------------------------------
PK = "pk"
RUN_ID = "run_id"
ORDER_NUM = "order_num"
ORDER_NAME = "order_name"
STATUS = "status"
TTL_ATTRIBUTE = "expires_at"
TRACE_ID = "trace_id"
EVENT_SK = "sk"
EPOCH = "epoch"

ORDERS_INDEX = "run_id-order_num-index"
ORDER_EVENTS_INDEX = "order_name-epoch-index"

ORDERS_TTL_SECONDS = 24 * 3600
ORDER_EVENTS_TTL_SECONDS = 90 * 24 * 3600
LOG_LIMIT_BYTES = 64 * 1024

ORDERS = TableSchema(
    role="orders",
    partition_key=KeyAttribute(PK, "S"),
    ttl_attribute=TTL_ATTRIBUTE,
    indexes=(IndexSchema(ORDERS_INDEX, KeyAttribute(RUN_ID, "S"), KeyAttribute(ORDER_NUM, "S")),),
)
ORDER_EVENTS = TableSchema(
    role="order_events",
    partition_key=KeyAttribute(TRACE_ID, "S"),
    sort_key=KeyAttribute(EVENT_SK, "S"),
    ttl_attribute=TTL_ATTRIBUTE,
    indexes=(IndexSchema(ORDER_EVENTS_INDEX, KeyAttribute(ORDER_NAME, "S"), KeyAttribute(EPOCH, "N")),),
)
LOCKS = TableSchema(role="locks", partition_key=KeyAttribute(PK, "S"), ttl_attribute=TTL_ATTRIBUTE)
ALL_TABLES = (ORDERS, ORDER_EVENTS, LOCKS)

# -- object keys ----------------------------------------------------------------------------
EXEC_PREFIX = "tmp/exec/"
CALLBACK_PREFIX = "tmp/callbacks/runs/"
RESULT_FILE = "result.json"
EXEC_FILE = "exec.zip"
ORDER_MANIFEST = "order.json"
SEALED_BUNDLE = "secrets.sops.json"
CODE_DIR = "code/"

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_ORDER_NUM = re.compile(r"^[0-9]{4}$")
_CALLBACK_KEY = re.compile(r"^tmp/callbacks/runs/([0-9a-f]{32})/([0-9]{4})/result\.json$")


def order_num(position: int) -> str:
    """The number of the order at 1-based ``position`` (0 is the job)."""
    if not 0 <= position <= 9999:
        raise ValueError(f"an order number is 0..9999, got {position}")
    return f"{position:04d}"


def order_pk(run_id: str, num: str) -> str:
    return f"{run_id}:{num}"


def lock_pk(run_id: str) -> str:
    return f"lock:{run_id}"


def exec_key(run_id: str, num: str) -> str:
    return f"{EXEC_PREFIX}{run_id}/{num}/{EXEC_FILE}"


def callback_key(run_id: str, num: str) -> str:
    return f"{CALLBACK_PREFIX}{run_id}/{num}/{RESULT_FILE}"


def done_key(run_id: str) -> str:
    return f"{run_id}/done"


def parse_callback_key(key: str) -> tuple[str, str] | None:
    """(run_id, order_num) of a result.json key, or None for any other key."""
    match = _CALLBACK_KEY.match(key)
    return (match.group(1), match.group(2)) if match else None


def is_run_id(value: str) -> bool:
    return bool(_RUN_ID.match(value))


def is_order_num(value: str) -> bool:
    return bool(_ORDER_NUM.match(value))


def event_sk(order_name: str, epoch_ms: int, event_type: str) -> str:
    return f"{order_name}:{epoch_ms}:{event_type}"


def watchdog_execution_name(run_id: str, num: str) -> str:
    """One watchdog per order, ever: starting it is the dispatch ticket (see orchestration.py)."""
    return f"{run_id}-{num}"


# -- environment variables (the construct sets them; settings read them at cold start) --------
ENV_ORDERS_TABLE = "EXECUTION_ENGINE_ORDERS_TABLE"
ENV_ORDER_EVENTS_TABLE = "EXECUTION_ENGINE_ORDER_EVENTS_TABLE"
ENV_LOCKS_TABLE = "EXECUTION_ENGINE_LOCKS_TABLE"
ENV_INTERNAL_BUCKET = "EXECUTION_ENGINE_INTERNAL_BUCKET"
ENV_DONE_BUCKET = "EXECUTION_ENGINE_DONE_BUCKET"
ENV_WORKER_FUNCTION = "EXECUTION_ENGINE_WORKER_FUNCTION"
ENV_WATCHDOG_STATE_MACHINE_ARN = "EXECUTION_ENGINE_WATCHDOG_STATE_MACHINE_ARN"
# SSM parameter names of the per-job age identities: "<prefix><run_id>" (prefix starts and ends with "/").
ENV_SOPS_KEY_PARAMETER_PREFIX = "EXECUTION_ENGINE_SOPS_KEY_PARAMETER_PREFIX"
# The KMS key the SecureString identities are encrypted with (the construct's key).
ENV_SOPS_KEY_KMS_KEY_ID = "EXECUTION_ENGINE_SOPS_KEY_KMS_KEY_ID"
# Which SSM parameters / secrets init may resolve for a job: name prefixes (comma-separated).
ENV_CREDENTIAL_PARAMETER_PREFIXES = "EXECUTION_ENGINE_CREDENTIAL_PARAMETER_PREFIXES"
ENV_CREDENTIAL_SECRET_PREFIXES = "EXECUTION_ENGINE_CREDENTIAL_SECRET_PREFIXES"

# Handler strings (the construct points each function here).
INIT_HANDLER = "handlers.execution_engine.init_job.handler"
ORCHESTRATOR_HANDLER = "handlers.execution_engine.orchestrator.handler"
WATCHDOG_CHECK_HANDLER = "handlers.execution_engine.watchdog_check.handler"
WORKER_HANDLER = "handlers.execution_engine.worker.handler"

# -- metrics (EMF, namespace below; the construct alarms on them) ------------------------------
METRICS_NAMESPACE = "ExecutionEngine"
# Emitted by watchdog_check when it writes a result nobody else wrote: an order that never
# reported within its timeout / within 2 x timeout (the construct's stuck-orders alarm).
METRIC_ORDERS_TIMED_OUT = "OrdersTimedOut"
METRIC_HARD_CAP_REACHED = "OrdersHardCapReached"
