"""Operator command line: ``python -m handlers.execution_engine submit|status|logs``.

``submit --api-url URL JOB_FILE``
    POSTs the job (a JSON file, ``-`` for stdin) to ``<URL>/init`` as the API expects it
    (``{"job_parameters_b64": ...}``), signed with SigV4 for ``execute-api`` with the caller's
    credentials like any IAM caller (the standard AWS variables / profile; ``--region`` or
    ``AWS_REGION``). Prints the response; exit 1 when it says ``status: error``.
``status RUN_ID``
    One JSON line for the job (status, trace and flow ids, done marker) and one per order
    (number, name, status, reason), read from the orders table (``EXECUTION_ENGINE_ORDERS_TABLE``).
``logs RUN_ID [--order NUM]``
    Each finished order's log as the orchestrator stored it (the first 64 KB of its output),
    preceded by a ``== <num> <name> <status> ==`` line.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError, ClientError

from handlers.common.cli import Parser, UsageError, run_command
from handlers.common.dynamo_items import to_plain
from handlers.execution_engine import schema

PROG = "python -m handlers.execution_engine"
REQUEST_TIMEOUT_SECONDS = 120


class CommandError(RuntimeError):
    pass


def _parser() -> Parser:
    parser = Parser(prog=PROG, description="Submit ExecutionEngine jobs and read their runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="submit a job (JSON file) to POST /init")
    submit.add_argument("job_file", help="the job as JSON, - for stdin")
    submit.add_argument("--api-url", required=True, help="the API's base URL (the stack's ApiUrl output)")
    submit.add_argument("--region", default=None)
    status = commands.add_parser("status", help="the statuses of a run's job and orders")
    status.add_argument("run_id")
    logs = commands.add_parser("logs", help="the logs of a run's finished orders")
    logs.add_argument("run_id")
    logs.add_argument("--order", default=None, help="only this order number (e.g. 0003)")
    return parser


def submit(job_file: str, api_url: str, region: str | None, stdin: IO[str]) -> dict[str, Any]:
    text = stdin.read() if job_file == "-" else Path(job_file).read_text(encoding="utf-8")
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{job_file} is not JSON: {exc}") from None
    body = json.dumps({"job_parameters_b64": base64.b64encode(text.encode()).decode()}).encode()
    session = boto3.session.Session(region_name=region)
    credentials = session.get_credentials()
    if credentials is None or session.region_name is None:
        raise CommandError("no AWS credentials or region: the request must be signed (SigV4)")
    url = api_url.rstrip("/") + "/init"
    request = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
    SigV4Auth(credentials.get_frozen_credentials(), "execute-api", session.region_name).add_auth(request)
    prepared = urllib.request.Request(url, data=body, method="POST", headers=dict(request.headers.items()))
    try:
        with urllib.request.urlopen(prepared, timeout=REQUEST_TIMEOUT_SECONDS) as answer:
            payload = answer.read()
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        if not payload:
            raise CommandError(f"POST {url} answered {exc.code}") from None
    try:
        return dict(json.loads(payload))
    except (json.JSONDecodeError, TypeError, ValueError):
        raise CommandError(f"POST {url} answered something that is not a JSON object") from None


def run_items(run_id: str) -> list[dict[str, Any]]:
    if not schema.is_run_id(run_id):
        raise CommandError(f"{run_id!r} is not a run id (32 hex characters)")
    table = os.environ.get(schema.ENV_ORDERS_TABLE)
    if not table:
        raise CommandError(f"{schema.ENV_ORDERS_TABLE} is not set")
    dynamodb = boto3.client("dynamodb")
    items: list[dict[str, Any]] = []
    request: dict[str, Any] = {
        "TableName": table,
        "IndexName": schema.ORDERS_INDEX,
        "KeyConditionExpression": "#r = :r",
        "ExpressionAttributeNames": {"#r": schema.RUN_ID},
        "ExpressionAttributeValues": {":r": {"S": run_id}},
    }
    while True:
        answer = dynamodb.query(**request)
        items += [to_plain(item) or {} for item in answer.get("Items", [])]
        if "LastEvaluatedKey" not in answer:
            break
        request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
    if not items:
        raise CommandError(f"run {run_id} not found")
    return sorted(items, key=lambda item: str(item[schema.ORDER_NUM]))


_JOB_FIELDS = ("run_id", "status", "order_count", "trace_id", "flow_id", "done_uri", "finalized_at_ms")
_ORDER_FIELDS = ("order_num", "order_name", "status", "execution_target", "reason", "execution_url")


def status_lines(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    lines = []
    for item in items:
        if item[schema.ORDER_NUM] == schema.JOB_ORDER_NUM:
            lines.append({"kind": "job", **{name: item.get(name) for name in _JOB_FIELDS}})
        else:
            lines.append(
                {"kind": "order", **{name: item[name] for name in _ORDER_FIELDS if item.get(name) is not None}}
            )
    return lines


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] = sys.stdout, stderr: IO[str] = sys.stderr) -> int:
    def command() -> int:
        args = _parser().parse_args(argv)
        if args.command == "submit":
            answer = submit(args.job_file, args.api_url, args.region, sys.stdin)
            stdout.write(json.dumps(answer) + "\n")
            return 0 if answer.get("status") == "ok" else 1
        items = run_items(args.run_id)
        if args.command == "status":
            for line in status_lines(items):
                stdout.write(json.dumps(line, default=str) + "\n")
            return 0
        if args.order is not None and not schema.is_order_num(args.order):
            raise UsageError(f"--order must be a four-digit order number, got {args.order!r}")
        for item in items:
            num = item[schema.ORDER_NUM]
            if num == schema.JOB_ORDER_NUM or (args.order is not None and num != args.order):
                continue
            stdout.write(f"== {num} {item.get(schema.ORDER_NAME)} {item.get(schema.STATUS)} ==\n")
            stdout.write(str(item.get("log", "")) + ("\n" if item.get("log") else ""))
        return 0

    return run_command(
        PROG,
        command,
        stderr=stderr,
        expected=(CommandError, OSError),
        external=(ClientError, BotoCoreError),
    )
