"""JobClaim's tables, queue message shapes and variable names, in one place.

The construct creates the tables from these ``TableSchema`` values (the same type as
StreamRecovery's), the handlers and the reference worker read and write these attribute names,
and the tests create their tables from here too.

Keys: a (project, user) pair is ``pair_key(project, user)`` = ``"{project}#{user}"``.

- **ownership** -- ``pair`` (S). Which worker container owns a pair: a claim of the shared
  primitive (``handlers.common.claims``; its ``token`` is the container id, so refresh and
  release are fenced on it), lease 1 h refreshed, plus ``expires_at`` (TTL, epoch seconds) so
  DynamoDB removes abandoned rows. Only a worker ever writes it.
- **active_jobs** -- ``pair`` (S). The message a worker is running for the pair: ``message_id``,
  ``thread_id``, ``task_token``, ``container_id``, ``started_at_ms``, ``expires_at`` (TTL epoch
  seconds, 2 h, refreshed), and ``interrupt_requested_by`` (the message id that interrupted it).
- **interruptions** -- ``message_id`` (S). One audit row per interrupted job: ``thread_id``,
  ``project``, ``user``, ``interrupted_at_ms``, ``interrupted_by``, ``partial_work``,
  ``expires_at`` (TTL, 30 days).
- **threads** (the spec's thread_mappings) -- ``thread_id`` (S): ``pair``,
  ``last_message_id``, ``interruption_count`` (N).
- **claim_requests** -- ``pair`` (S). A rate-limited announcement that a pair has unclaimed
  work: a claim of the shared primitive with a 5 min lease (at most one announcement per pair
  per 5 minutes), ``message_id``, ``expires_at`` (TTL, 10 minutes).
"""

from __future__ import annotations

from handlers.common.table_schema import KeyAttribute, TableSchema

PAIR = "pair"
MESSAGE_ID = "message_id"
THREAD_ID = "thread_id"
TTL_ATTRIBUTE = "expires_at"

# active jobs
ACTIVE_TASK_TOKEN = "task_token"
ACTIVE_CONTAINER_ID = "container_id"
ACTIVE_STARTED_AT_MS = "started_at_ms"
ACTIVE_INTERRUPT_REQUESTED_BY = "interrupt_requested_by"

# interruptions
INTERRUPTED_AT_MS = "interrupted_at_ms"
INTERRUPTED_BY = "interrupted_by"
PARTIAL_WORK = "partial_work"
PROJECT = "project"
USER = "user"

# threads
THREAD_PAIR = "pair"
THREAD_LAST_MESSAGE_ID = "last_message_id"
THREAD_INTERRUPTION_COUNT = "interruption_count"

OWNERSHIP_LEASE_SECONDS = 3600
ACTIVE_JOB_TTL_SECONDS = 2 * 3600
INTERRUPTION_TTL_SECONDS = 30 * 24 * 3600
CLAIM_REQUEST_INTERVAL_SECONDS = 5 * 60
CLAIM_REQUEST_TTL_SECONDS = 10 * 60

# The kind of an interruptions row: a PREEMPTED job, or one that timed out.
KIND = "kind"
KIND_PREEMPTED = "preempted"
KIND_TIMED_OUT = "timed_out"

# The error a worker sends with SendTaskFailure when an interrupt stopped its job.
PREEMPTED = "PREEMPTED"

OWNERSHIP = TableSchema(role="ownership", partition_key=KeyAttribute(PAIR, "S"), ttl_attribute=TTL_ATTRIBUTE)
ACTIVE_JOBS = TableSchema(role="active_jobs", partition_key=KeyAttribute(PAIR, "S"), ttl_attribute=TTL_ATTRIBUTE)
INTERRUPTIONS = TableSchema(
    role="interruptions", partition_key=KeyAttribute(MESSAGE_ID, "S"), ttl_attribute=TTL_ATTRIBUTE
)
THREADS = TableSchema(role="threads", partition_key=KeyAttribute(THREAD_ID, "S"))
CLAIM_REQUESTS = TableSchema(role="claim_requests", partition_key=KeyAttribute(PAIR, "S"), ttl_attribute=TTL_ATTRIBUTE)
ALL_TABLES = (OWNERSHIP, ACTIVE_JOBS, INTERRUPTIONS, THREADS, CLAIM_REQUESTS)

# Environment variables (the construct sets them; settings read them at cold start).
ENV_OWNERSHIP_TABLE = "JOB_CLAIM_OWNERSHIP_TABLE"
ENV_ACTIVE_JOBS_TABLE = "JOB_CLAIM_ACTIVE_JOBS_TABLE"
ENV_INTERRUPTIONS_TABLE = "JOB_CLAIM_INTERRUPTIONS_TABLE"
ENV_THREADS_TABLE = "JOB_CLAIM_THREADS_TABLE"
ENV_CLAIM_REQUESTS_TABLE = "JOB_CLAIM_CLAIM_REQUESTS_TABLE"
ENV_INPUT_QUEUE_URL = "JOB_CLAIM_INPUT_QUEUE_URL"
ENV_UNCLAIMED_QUEUE_URL = "JOB_CLAIM_UNCLAIMED_QUEUE_URL"
ENV_INTERRUPTS_TOPIC_ARN = "JOB_CLAIM_INTERRUPTS_TOPIC_ARN"
ENV_EMAIL_DLQ_URL = "JOB_CLAIM_EMAIL_DLQ_URL"
ENV_STATE_MACHINE_ARN = "JOB_CLAIM_STATE_MACHINE_ARN"
ENV_EMAIL_DOMAIN = "JOB_CLAIM_EMAIL_DOMAIN"

_SEPARATOR = "#"


def pair_key(project: str, user: str) -> str:
    if not project or not user or _SEPARATOR in project or _SEPARATOR in user:
        raise ValueError(f"a pair needs a non-empty project and user without {_SEPARATOR!r}: {project!r}, {user!r}")
    return f"{project}{_SEPARATOR}{user}"
