"""Operator command line: ``python -m handlers.stream_recovery <command>``.

Settings come from the same environment variables as the workers (``settings.load_settings``:
the ``STREAM_RECOVERY_*_TABLE`` names, ``DELIVERY_*``, ``FUNCTION_TIMEOUT_SECONDS``, ...) plus
the standard AWS ones (``AWS_REGION``/``AWS_DEFAULT_REGION``, credentials, ``AWS_ENDPOINT_URL``
for a local run against moto).

Output: **JSON lines** on stdout, one object per line, each with a ``kind`` field, so the
output can be filtered with ``jq 'select(.kind == "claim")'``. Any error is ONE line on stderr
(``python -m handlers.stream_recovery: error: CODE: message``) and a non-zero exit: 1 when the
operation failed or was refused, 2 when the command line is wrong.

Commands:

``show --tenant T --task-id ID``
    ``task`` (state, latest event sequence, owner, push-config count), one ``push_config`` per
    config (signing secret, auth token and notification token are never printed: only
    ``"<redacted>"`` when set; a URL's user info and query string are redacted too, since
    receivers sometimes put credentials there), one ``event`` per terminal status update, one
    ``marker`` per pending-dispatch marker (age, stale for the sweeper or not), and one
    ``claim`` per delivery claim (config id, state, attempt count, lastStatus, reason,
    generation, lease and whether it has run out, and the redelivery history). Unknown task:
    ``TASK_NOT_FOUND``.

``sweep``
    One sweeper run, exactly as the scheduled function does it; prints the report
    (``kind: sweep_report``, the spec's counts). Exit 1 when the report has errors.

``redeliver --tenant T --task-id ID --event-sequence N [--config-id C] [--force]``
    Re-deliver one terminal event to its eligible configs (or only to ``C``). Per target
    config, by the state of its delivery claim:

    - no claim yet, or a non-terminal claim (pending with an expired lease, released): left
      as it is -- the Redispatcher claims or takes it over as the sweeper would;
    - pending with a live lease: someone is delivering it right now; left alone, and the
      command waits (at most one retry horizon plus one attempt) for that holder's outcome;
    - ``gave_up`` / ``abandoned``: **reopened** (see below);
    - ``succeeded`` (or a value that is not a claim record): **refused** with
      ``CLAIM_SUCCEEDED`` and nothing is written, unless ``--force``; then reopened too. A
      forced redelivery POSTs again with the same ``webhook-id``, so a receiver that
      de-duplicates (as the docs ask) ignores it.

    Reopening: the claim primitive (``handlers.common.claims``) has no operation for it --
    terminal claims never change there, by design -- so this module adds the minimum, built on
    the primitive's own record format and its fencing rule: ONE ``TransactWriteItems`` that
    (a) updates each terminal claim *conditionally on exactly the record read* (its token,
    generation and terminal state: a claim that changed in between cancels everything,
    ``CLAIM_CHANGED``) to ``pending`` with a fresh token nobody holds, generation + 1, a lease
    that has already run out (so it is in the sweeper's ``byClaimShard`` index, reclaimable by
    whoever comes first: the Redispatcher run below, the stream handler, or the sweeper), a
    fresh attempt budget (``deliveryAttemptCount`` 0 -- the previous count, state, lastStatus
    and reason are appended to ``redeliveryHistory``), and (b) puts the event's
    pending-dispatch marker back (as the writer writes it), so the marker and the reopened
    claims exist together or not at all: a crash right after the transaction leaves work the
    stream handler (the marker's INSERT) or the sweeper finishes. The new token and generation
    fence out any earlier holder. Then the Redispatcher runs for that marker: every eligible
    config whose claim is open is delivered under its claim (configs whose claims are
    terminal are untouched), and the marker is deleted when all are terminal.

    Prints one ``redelivery`` line per target config (its claim state before, what was done,
    the outcome, the claim after) and a ``redeliver_summary``. Exit 0 only when every target
    ends ``succeeded``; else ``DELIVERY_NOT_SUCCEEDED`` (exit 1; the claim lines say why).
    Errors: ``TASK_NOT_FOUND``, ``EVENT_NOT_FOUND``, ``NOT_TERMINAL_EVENT`` (nothing is pushed
    for a non-terminal update), ``CONFIG_NOT_FOUND``, ``CONFIG_NOT_ELIGIBLE`` (registered after
    the event), ``NO_ELIGIBLE_CONFIGS``, ``CLAIM_SUCCEEDED``, ``CLAIM_CHANGED``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from handlers.common.aws import client
from handlers.common.claims import (
    ClaimContentionError,
    ClaimHeldError,
    ClaimLocation,
    ClaimRecord,
    ClaimStore,
)
from handlers.common.cli import Parser, run_command
from handlers.common.config import ConfigurationError
from handlers.common.dynamo_items import serialize_values, to_plain
from handlers.stream_recovery import schema
from handlers.stream_recovery.delivery import Outcome, deliver
from handlers.stream_recovery.dispatch import Redispatcher, StaleClaimError, claim_shard
from handlers.stream_recovery.markers import PendingDispatch, is_eligible
from handlers.stream_recovery.settings import WorkerSettings, load_settings
from handlers.stream_recovery.sweeper import STALE_MARKER_AGE_MICROS, Sweeper
from handlers.stream_recovery.writer import PushConfig

PROG = "python -m handlers.stream_recovery"
REDACTED = "<redacted>"
SUCCEEDED = str(Outcome.SUCCEEDED)
# Terminal states an operator may reopen without --force (anything else, "succeeded" first of all,
# needs it).
REOPENABLE = frozenset({str(Outcome.GAVE_UP), str(Outcome.ABANDONED)})
REDELIVERY_HISTORY = "redeliveryHistory"
# Wait for a concurrent holder a little longer than its whole deliver() can take.
HELD_WAIT_MARGIN_SECONDS = 5.0


class CommandError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def _sequence(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if not 1 <= number <= schema.U64_MAX:
        raise argparse.ArgumentTypeError(f"an event sequence is between 1 and {schema.U64_MAX}, got {number}")
    return number


def _tenant(value: str) -> str:
    if not value or schema.KEY_SEPARATOR in value:
        raise argparse.ArgumentTypeError(f"a tenant is non-empty and has no {schema.KEY_SEPARATOR!r}: {value!r}")
    return value


def _non_empty(value: str) -> str:
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="StreamRecovery webhooks: inspect, sweep and re-deliver.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    show = commands.add_parser("show", help="a task's state, push configs, markers and delivery claims")
    show.add_argument("--tenant", required=True, type=_tenant)
    show.add_argument("--task-id", required=True, type=_non_empty)

    commands.add_parser("sweep", help="run the sweeper once and print its report")

    redeliver = commands.add_parser(
        "redeliver",
        help="re-deliver one terminal event",
        description=(
            "Re-deliver one terminal event to its eligible push configs (or --config-id). gave_up and "
            "abandoned deliveries are reopened (fenced on the claim as read, with a fresh attempt budget; "
            "the old outcome is kept in redeliveryHistory) together with the event's marker in one "
            "transaction; succeeded deliveries are refused unless --force (the receiver gets the same "
            "webhook-id again); open claims are left to the Redispatcher, which then runs for the event. "
            "Exit 0 only when every target ends succeeded."
        ),
    )
    redeliver.add_argument("--tenant", required=True, type=_tenant)
    redeliver.add_argument("--task-id", required=True, type=_non_empty)
    redeliver.add_argument("--event-sequence", required=True, type=_sequence)
    redeliver.add_argument("--config-id", type=_non_empty, help="only this push config (default: every eligible one)")
    redeliver.add_argument(
        "--force", action="store_true", help="also re-deliver to configs whose delivery already succeeded"
    )
    return parser


# -- context ----------------------------------------------------------------------------------


@dataclass
class Context:
    settings: WorkerSettings
    stdout: IO[str]
    claims: ClaimStore
    redispatcher: Redispatcher

    def emit(self, kind: str, **fields: Any) -> None:
        self.stdout.write(json.dumps({"kind": kind, **fields}, default=str, sort_keys=False) + "\n")


def _context(
    environ: Mapping[str, str],
    stdout: IO[str],
    ssl_context: ssl.SSLContext | None,
    clock_ms: Callable[[], int] | None,
) -> Context:
    settings = load_settings(environ)
    claims = ClaimStore(clock=clock_ms) if clock_ms is not None else ClaimStore()
    deliver_fn = functools.partial(deliver, ssl_context=ssl_context) if ssl_context is not None else deliver
    redispatcher = Redispatcher(
        tables=settings.tables,
        policy=settings.policy,
        claim_expiry_ms=settings.claim_expiry_seconds * 1000,
        claim_store=claims,
        clock_micros=lambda: claims.now_ms() * 1000,
        deliver_fn=deliver_fn,
    )
    return Context(settings, stdout, claims, redispatcher)


# -- reads --------------------------------------------------------------------------------------


def _query(**kwargs: Any) -> Iterator[dict[str, Any]]:
    paginator = client("dynamodb").get_paginator("query")
    for page in paginator.paginate(**kwargs, ConsistentRead=True):
        yield from page["Items"]


def _by_pk(table: str, pk: str) -> Iterator[dict[str, Any]]:
    return _query(
        TableName=table,
        KeyConditionExpression="#pk = :pk",
        ExpressionAttributeNames={"#pk": schema.PK},
        ExpressionAttributeValues={":pk": {"S": pk}},
    )


def _task(ctx: Context, tenant: str, task_id: str) -> dict[str, Any]:
    item = client("dynamodb").get_item(
        TableName=ctx.settings.tables.tasks,
        Key={schema.PK: {"S": schema.task_pk(tenant, task_id)}},
        ConsistentRead=True,
    )
    task = to_plain(item.get("Item"))
    if task is None:
        raise CommandError("TASK_NOT_FOUND", f"no task {task_id!r} of tenant {tenant!r}")
    return task


def _event(ctx: Context, tenant: str, task_id: str, sequence: int) -> dict[str, Any] | None:
    item = client("dynamodb").get_item(
        TableName=ctx.settings.tables.task_events,
        Key={schema.PK: {"S": schema.task_pk(tenant, task_id)}, schema.EVENT_SEQUENCE: {"N": str(sequence)}},
        ConsistentRead=True,
    )
    return to_plain(item.get("Item"))


def _configs(ctx: Context, tenant: str, task_id: str) -> list[PushConfig]:
    pk = schema.task_pk(tenant, task_id)
    return [PushConfig.from_item(item) for item in _by_pk(ctx.settings.tables.push_configs, pk)]


def _claim_location(ctx: Context, tenant: str, task_id: str, sequence: int, config_id: str) -> ClaimLocation:
    return ClaimLocation(
        ctx.settings.tables.deliveries,
        {
            schema.PK: {"S": schema.delivery_pk(tenant, task_id, sequence)},
            schema.DELIVERY_SK: {"S": config_id},
        },
    )


# -- presentation -------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL without user info and query string (receivers sometimes carry credentials there)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return REDACTED
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    if parts.username is not None or parts.password is not None:
        host = f"{REDACTED}@{host}"
    query = REDACTED if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, query, ""))


def _secret(value: str | None) -> str | None:
    return REDACTED if value else None


def _config_line(config: PushConfig) -> dict[str, Any]:
    return {
        "configId": config.config_id,
        "url": redact_url(config.url),
        "registeredAfterEventSequence": config.registered_after_event_sequence,
        "createdAtMicros": config.created_at_micros,
        "signingSecret": _secret(config.signing_secret),
        "authScheme": config.auth_scheme,
        "authToken": _secret(config.auth_token),
        "notificationToken": _secret(config.notification_token),
    }


def _claim_fields(record: ClaimRecord | None, now_ms: int) -> dict[str, Any]:
    if record is None:
        return {"state": None}
    attributes = record.attributes
    return {
        "state": record.state,
        "attemptCount": int(attributes.get(schema.DELIVERY_ATTEMPT_COUNT, 0)),
        "lastStatus": attributes.get(schema.DELIVERY_LAST_STATUS),
        "reason": attributes.get(schema.DELIVERY_REASON),
        "generation": record.generation,
        "leaseUntilMs": record.lease_until_ms,
        "leaseExpired": (record.lease_until_ms < now_ms) if record.lease_until_ms is not None else None,
        "settledAtMs": attributes.get("settled_at_ms"),
        "redeliveries": list(attributes.get(REDELIVERY_HISTORY) or []),
    }


# -- commands -----------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    tenant, task_id = args.tenant, args.task_id
    pk = schema.task_pk(tenant, task_id)
    task = _task(ctx, tenant, task_id)
    tables = ctx.settings.tables
    ctx.emit(
        "task",
        tenant=tenant,
        taskId=task_id,
        owner=task.get(schema.TASK_OWNER),
        state=task.get(schema.TASK_STATE),
        terminal=schema.is_terminal_state(str(task.get(schema.TASK_STATE))),
        latestEventSequence=task.get(schema.TASK_LATEST_EVENT_SEQUENCE),
        pushConfigCount=task.get(schema.TASK_PUSH_CONFIG_COUNT),
        updatedAtMicros=task.get(schema.TASK_UPDATED_AT_MICROS),
    )
    for config in sorted(_configs(ctx, tenant, task_id), key=lambda c: c.config_id):
        ctx.emit("push_config", **_config_line(config))
    now_micros = ctx.claims.now_ms() * 1000
    for item in _by_pk(tables.pending_dispatches, pk):
        marker = to_plain(item) or {}
        recorded = int(marker.get(schema.MARKER_RECORDED_AT_MICROS, 0))
        ctx.emit(
            "marker",
            eventSequence=marker.get(schema.MARKER_SK),
            recordedAtMicros=recorded,
            ageSeconds=round((now_micros - recorded) / 1_000_000, 3),
            stale=recorded < now_micros - STALE_MARKER_AGE_MICROS,
            ttl=marker.get(schema.MARKER_TTL),
        )
    now_ms = ctx.claims.now_ms()
    for item in _by_pk(tables.task_events, pk):
        event = to_plain(item) or {}
        if not event.get(schema.EVENT_FINAL):
            continue
        sequence = int(event[schema.EVENT_SEQUENCE])
        ctx.emit(
            "event",
            eventSequence=sequence,
            state=event.get(schema.EVENT_STATE),
            recordedAtMicros=event.get(schema.EVENT_RECORDED_AT_MICROS),
        )
        for claim_item in _by_pk(tables.deliveries, schema.delivery_pk(tenant, task_id, sequence)):
            plain = to_plain(claim_item) or {}
            record = ClaimRecord.parse(plain) if "token" in plain else None
            ctx.emit(
                "claim",
                eventSequence=sequence,
                configId=plain.get(schema.DELIVERY_SK),
                **_claim_fields(record, now_ms),
            )
    return 0


def cmd_sweep(args: argparse.Namespace, ctx: Context) -> int:
    claim_expiry_ms = ctx.settings.claim_expiry_seconds * 1000
    sweeper = Sweeper(
        redispatcher=ctx.redispatcher,
        pending_dispatches_table=ctx.settings.tables.pending_dispatches,
        deliveries_table=ctx.settings.tables.deliveries,
        claim_expiry_ms=claim_expiry_ms,
        claim_store=ctx.claims,
        clock_micros=lambda: ctx.claims.now_ms() * 1000,
    )
    report = sweeper.sweep().as_dict()
    ctx.emit("sweep_report", **report)
    return 1 if report["errors"] else 0


@dataclass
class _Target:
    config: PushConfig
    location: ClaimLocation
    before: ClaimRecord | None
    action: str  # "reopen" | "claim" | "take_over" | "wait_for_holder"


def _plan(ctx: Context, args: argparse.Namespace, configs: Sequence[PushConfig]) -> list[_Target]:
    now_ms = ctx.claims.now_ms()
    targets: list[_Target] = []
    refused: list[str] = []
    for config in configs:
        location = _claim_location(ctx, args.tenant, args.task_id, args.event_sequence, config.config_id)
        record = ctx.claims.read(location)
        if record is None:
            action = "claim"
        elif record.is_terminal:
            if record.state not in REOPENABLE and not args.force:
                refused.append(f"{config.config_id} ({record.state})")
            action = "reopen"
        elif record.is_live(now_ms):
            action = "wait_for_holder"
        else:
            action = "take_over"
        targets.append(_Target(config, location, record, action))
    if refused:
        raise CommandError(
            "CLAIM_SUCCEEDED",
            f"the delivery to {', '.join(refused)} is settled (not gave_up/abandoned); nothing was changed. "
            "Re-deliver it anyway with --force (same webhook-id: a de-duplicating receiver ignores it), "
            "or pick other configs with --config-id",
        )
    return targets


def _reopen_item(
    ctx: Context, target: _Target, marker: PendingDispatch, now_ms: int, *, forced: bool
) -> dict[str, Any]:
    """The fenced TransactWriteItems Update that reopens one terminal claim (see the module docs)."""
    record = target.before
    assert record is not None and record.is_terminal
    attributes = record.attributes
    entry = {
        "atMs": now_ms,
        "previousState": record.state,
        "previousGeneration": record.generation,
        "previousAttemptCount": int(attributes.get(schema.DELIVERY_ATTEMPT_COUNT, 0)),
        "previousLastStatus": attributes.get(schema.DELIVERY_LAST_STATUS),
        "previousReason": attributes.get(schema.DELIVERY_REASON),
        "forced": forced,
        "by": "cli",
    }
    # A new attempt budget; the claim shard keeps the reopened claim findable by the sweeper.
    return ctx.claims.reopen_item(
        target.location,
        record,
        set_attributes={
            schema.DELIVERY_ATTEMPT_COUNT: 0,
            schema.DELIVERY_CLAIM_SHARD: claim_shard(marker, target.config.config_id),
        },
        remove_attributes=(schema.DELIVERY_LAST_STATUS, schema.DELIVERY_REASON),
        append_to=(REDELIVERY_HISTORY, entry),
    )


def _marker_put(ctx: Context, marker: PendingDispatch) -> dict[str, Any]:
    """The pending-dispatch marker exactly as the writer's commit writes it (fresh timestamps)."""
    return {"Put": {"TableName": ctx.settings.tables.pending_dispatches, "Item": serialize_values(marker.item())}}


def cmd_redeliver(args: argparse.Namespace, ctx: Context) -> int:
    tenant, task_id, sequence = args.tenant, args.task_id, args.event_sequence
    task = _task(ctx, tenant, task_id)
    event = _event(ctx, tenant, task_id, sequence)
    if event is None:
        latest = task.get(schema.TASK_LATEST_EVENT_SEQUENCE)
        raise CommandError(
            "EVENT_NOT_FOUND", f"task {tenant}/{task_id} has no event {sequence} (latest event sequence: {latest})"
        )
    if not event.get(schema.EVENT_FINAL):
        raise CommandError(
            "NOT_TERMINAL_EVENT",
            f"event {sequence} of task {tenant}/{task_id} is a {event.get(schema.EVENT_STATE)!r} update: only "
            "terminal status updates are pushed to webhooks",
        )
    configs = _configs(ctx, tenant, task_id)
    if args.config_id is not None:
        chosen = [config for config in configs if config.config_id == args.config_id]
        if not chosen:
            known = ", ".join(sorted(c.config_id for c in configs)) or "none"
            raise CommandError(
                "CONFIG_NOT_FOUND", f"task {tenant}/{task_id} has no push config {args.config_id!r} (configs: {known})"
            )
        config = chosen[0]
        if not is_eligible(config.registered_after_event_sequence, sequence):
            raise CommandError(
                "CONFIG_NOT_ELIGIBLE",
                f"push config {config.config_id!r} was registered after event "
                f"{config.registered_after_event_sequence}, so it never receives event {sequence}",
            )
        targets_configs = chosen
    else:
        targets_configs = [c for c in configs if is_eligible(c.registered_after_event_sequence, sequence)]
        if not targets_configs:
            raise CommandError(
                "NO_ELIGIBLE_CONFIGS", f"no push config of task {tenant}/{task_id} receives event {sequence}"
            )

    targets = _plan(ctx, args, sorted(targets_configs, key=lambda c: c.config_id))
    now_ms = ctx.claims.now_ms()
    marker = PendingDispatch(
        tenant=tenant,
        task_id=task_id,
        owner=str(task.get(schema.TASK_OWNER, "")) or "unknown",
        event_sequence=sequence,
        recorded_at_micros=now_ms * 1000,
    )
    items = [_reopen_item(ctx, t, marker, now_ms, forced=args.force) for t in targets if t.action == "reopen"]
    _transact([*items, _marker_put(ctx, marker)])

    result = ctx.redispatcher.redispatch(marker)

    policy = ctx.settings.policy
    deadline = time.monotonic() + policy.retry_horizon_seconds + policy.attempt_seconds + HELD_WAIT_MARGIN_SECONDS
    failed: list[str] = []
    now_ms = ctx.claims.now_ms()
    for target in targets:
        outcome = result.outcomes.get(target.config.config_id)
        after = ctx.claims.read(target.location)
        if after is not None and after.is_live(ctx.claims.now_ms()):
            # another worker (the stream handler on the marker's INSERT, the sweeper) holds it
            try:
                after = ctx.claims.wait_while_held(target.location, after, deadline)
            except ClaimHeldError as exc:
                after = exc.record
        ctx.emit(
            "redelivery",
            configId=target.config.config_id,
            before=target.before.state if target.before is not None else None,
            action=target.action,
            outcome=outcome,
            **_claim_fields(after, now_ms),
        )
        if after is None or after.state != SUCCEEDED:
            failed.append(f"{target.config.config_id}: {after.state if after else 'no claim'}")
    ctx.emit(
        "redeliver_summary",
        tenant=tenant,
        taskId=task_id,
        eventSequence=sequence,
        targets=len(targets),
        succeeded=len(targets) - len(failed),
        markerDeleted=result.marker_deleted,
    )
    if failed:
        raise CommandError("DELIVERY_NOT_SUCCEEDED", "; ".join(failed) + " (see the redelivery lines)")
    return 0


def _transact(items: Sequence[Mapping[str, Any]]) -> None:
    try:
        client("dynamodb").transact_write_items(TransactItems=list(items))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
            raise
        reasons = exc.response.get("CancellationReasons") or []
        if any(reason.get("Code") == "ConditionalCheckFailed" for reason in reasons):
            raise CommandError(
                "CLAIM_CHANGED", "a delivery claim changed while redeliver ran; nothing was changed, run show and retry"
            ) from exc
        raise


COMMANDS: dict[str, Callable[[argparse.Namespace, Context], int]] = {
    "show": cmd_show,
    "sweep": cmd_sweep,
    "redeliver": cmd_redeliver,
}


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    clock_ms: Callable[[], int] | None = None,
) -> int:
    """Run one command; ``ssl_context`` (trust for HTTPS receivers) and ``clock_ms`` are for tests."""
    environ = os.environ if environ is None else environ
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr

    def command() -> int:
        args = build_parser().parse_args(argv)
        ctx = _context(environ, stdout, ssl_context, clock_ms)
        return COMMANDS[args.command](args, ctx)

    return run_command(
        PROG,
        command,
        stderr=stderr,
        expected=(CommandError, ConfigurationError, StaleClaimError, ClaimContentionError, LookupError),
        external=(BotoCoreError, ClientError, OSError),
    )


def run() -> None:
    raise SystemExit(main())
