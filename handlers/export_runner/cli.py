"""Operator command line: ``python -m handlers.export_runner <command>``.

Commands: migrate, create-job, show-job, run-job, reissue-url, sweep, verify. Results go to
stdout as JSON (verify prints one summary line); any error is one line on stderr and a
non-zero exit (1: the operation failed, 2: the command line is wrong). Settings come from the
same environment variables as the Lambda functions (DATABASE_URL or DATABASE_SECRET_ARN,
COMPLIANCE_EXPORTS_BUCKET, PRESIGN_TTL_SECONDS, ...) plus EXPORT_QUEUE_URL for create-job.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psycopg
from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from handlers.common.cli import Parser, UsageError, run_command
from handlers.common.config import ConfigurationError, EnvReader
from handlers.export_runner import jobs
from handlers.export_runner.audit_writer import IsolationLevelError
from handlers.export_runner.db import Database, read_database_settings
from handlers.export_runner.export_job import Outcome, RunnerDependencies, run_export_job
from handlers.export_runner.migrate import MigrationError, apply_migrations
from handlers.export_runner.producer import ExportRequest, ExportRequestError, create_export_job
from handlers.export_runner.settings import (
    MAX_PRESIGN_TTL_SECONDS,
    read_presign_ttl,
    runner_settings,
    sweeper_settings,
)
from handlers.export_runner.storage import s3_client
from handlers.export_runner.urls import DownloadUrlError, reissue_download_url
from handlers.export_runner.verify import VerifyError, read_manifest, verify_file

PROG = "python -m handlers.export_runner"


class CommandError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")


def _job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def _filter_argument(value: str) -> str:
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read filter file: {exc}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Compliance audit-log exports: jobs, downloads and offline verification.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    commands.add_parser("migrate", help="apply pending database migrations")

    create = commands.add_parser("create-job", help="validate, record and enqueue an export job")
    create.add_argument("--tenant-id", required=True, help="tenant UUID, or ALL_TENANTS")
    create.add_argument("--actor-id", required=True, help="who requests the export (rate limit: 10/hour)")
    create.add_argument("--actor-type", default="user", choices=("user", "system", "agent"))
    create.add_argument("--format", required=True, help="csv or json (NDJSON)")
    create.add_argument(
        "--filter", required=True, type=_filter_argument, help='JSON object, or @file: {"since": ..., "until": ...}'
    )
    create.add_argument("--queue-url", help="export queue URL (default: $EXPORT_QUEUE_URL)")

    show = commands.add_parser("show-job", help="print a job")
    show.add_argument("job_id", type=_job_id)

    run = commands.add_parser("run-job", help="run a queued job here, as the runner would")
    run.add_argument("job_id", type=_job_id)

    reissue = commands.add_parser("reissue-url", help="issue a fresh download URL for a complete job")
    reissue.add_argument("job_id", type=_job_id)
    reissue.add_argument("--ttl", type=int, help="seconds the URL stays valid (default: $PRESIGN_TTL_SECONDS or 900)")

    commands.add_parser("sweep", help="fail jobs stuck in running or never started (once)")

    verify = commands.add_parser("verify", help="verify the hash chain of a downloaded export (offline)")
    verify.add_argument("file", type=Path)
    verify.add_argument("--format", choices=("csv", "ndjson"), help="default: from the file name or content")
    verify.add_argument(
        "--allow-gaps", action="store_true", help="accept chains with events left out (exports narrowed by a filter)"
    )
    verify.add_argument(
        "--manifest",
        type=Path,
        help="the export's manifest (<file>.manifest.json, or the job's manifest): also check count, head, tail, "
        "cut links and SHA-256",
    )
    return parser


def _quiet_logger() -> Logger:
    # The library logs JSON for CloudWatch; on a terminal only the one-line outcome matters.
    level = os.environ.get("EXPORT_CLI_LOG_LEVEL", "CRITICAL")
    return Logger(service="export-runner-cli", level=level, logger_handler=logging.StreamHandler(sys.stderr))


def _database(environ: Mapping[str, str]) -> Database:
    env = EnvReader(environ)
    settings = read_database_settings(env)
    # The error line already starts with the program's name: the component says what is wrong.
    env.check("database settings")
    return Database(settings)


def _print(stdout: IO[str], value: Any) -> None:
    stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def cmd_migrate(args: argparse.Namespace, environ: Mapping[str, str], stdout: IO[str]) -> int:
    with _database(environ).connect(application_name="export-runner-cli") as conn:
        applied = apply_migrations(conn)
    _print(stdout, {"applied": applied})
    return 0


def cmd_create_job(args: argparse.Namespace, environ: Mapping[str, str], stdout: IO[str]) -> int:
    queue_url = args.queue_url or environ.get("EXPORT_QUEUE_URL", "").strip()
    if not queue_url:
        raise ConfigurationError("create-job: set --queue-url or EXPORT_QUEUE_URL")
    request = ExportRequest(
        tenant_id=args.tenant_id,
        requested_by_actor_id=args.actor_id,
        actor_type=args.actor_type,
        format=args.format,
        filter=args.filter,
        # The operator at the CLI holds the database login: cross-tenant exports are theirs to
        # request (the producer still requires a user actor).
        cross_tenant=True,
    )
    with _database(environ).connect(application_name="export-runner-cli") as conn:
        job = create_export_job(conn, request, queue_url=queue_url)
    _print(stdout, job.as_json())
    return 0


def cmd_show_job(args: argparse.Namespace, environ: Mapping[str, str], stdout: IO[str]) -> int:
    with _database(environ).connect(application_name="export-runner-cli") as conn:
        job = jobs.get_job(conn, args.job_id)
    if job is None:
        raise CommandError("JOB_NOT_FOUND", f"no export job {args.job_id}")
    _print(stdout, job.as_json())
    return 0


def cmd_run_job(args: argparse.Namespace, environ: Mapping[str, str], stdout: IO[str]) -> int:
    settings = runner_settings(environ)
    deps = RunnerDependencies(
        database=Database(settings.database),
        s3=s3_client(),
        bucket=settings.bucket,
        presign_ttl_seconds=settings.presign_ttl_seconds,
    )
    report = run_export_job(args.job_id, deps, logger=_quiet_logger())
    if report.outcome is Outcome.SKIPPED_NOT_QUEUED:
        raise CommandError("JOB_NOT_QUEUED", f"export job {args.job_id} is not queued (see show-job)")
    if report.outcome is not Outcome.COMPLETED:
        raise CommandError("JOB_FAILED", report.error or report.outcome.value)
    assert report.result is not None
    _print(
        stdout,
        {
            "jobId": str(report.job_id),
            "outcome": report.outcome.value,
            "s3Key": report.s3_key,
            "rows": report.result.rows,
        },
    )
    return 0


def cmd_reissue_url(args: argparse.Namespace, environ: Mapping[str, str], stdout: IO[str]) -> int:
    env = EnvReader(environ)
    bucket = env.require("COMPLIANCE_EXPORTS_BUCKET")
    ttl = args.ttl if args.ttl is not None else read_presign_ttl(env)
    env.check("reissue-url settings")
    if not 1 <= ttl <= MAX_PRESIGN_TTL_SECONDS:
        raise UsageError(
            f"--ttl must be between 1 and {MAX_PRESIGN_TTL_SECONDS} seconds (7 days, the longest S3 accepts), got {ttl}"
        )
    issued = reissue_download_url(_database(environ), s3_client(), bucket=bucket, job_id=args.job_id, ttl_seconds=ttl)
    _print(stdout, {"jobId": str(issued.job_id), "url": issued.url, "expiresAt": issued.expires_at.isoformat()})
    return 0


def cmd_sweep(args: argparse.Namespace, environ: Mapping[str, str], stdout: IO[str]) -> int:
    settings = sweeper_settings(environ)
    with Database(settings.database).connect(application_name="export-sweeper") as conn:
        swept = jobs.sweep_jobs(
            conn, running_longer_than=settings.stuck_after, queued_longer_than=settings.queued_expiry
        )
    _print(stdout, {"swept": [{"jobId": str(job.job_id), "previousStatus": job.previous_status} for job in swept]})
    return 0


def cmd_verify(args: argparse.Namespace, environ: Mapping[str, str], stdout: IO[str]) -> int:
    manifest = read_manifest(args.manifest) if args.manifest is not None else None
    report = verify_file(args.file, file_format=args.format, allow_gaps=args.allow_gaps, manifest=manifest)
    if report.manifest_findings:
        raise CommandError("MANIFEST_MISMATCH", "; ".join(finding.describe() for finding in report.manifest_findings))
    if report.broken is not None:
        raise CommandError("CHAIN_BROKEN", report.broken.describe())
    gaps = f", {report.gaps} gap(s) allowed (first: {report.first_gap.describe()})" if report.first_gap else ""
    checked = ", matches its manifest" if manifest is not None else ""
    stdout.write(f"OK: {report.records} records, {report.tenants} tenant(s), hash chain intact{gaps}{checked}\n")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Mapping[str, str], IO[str]], int]] = {
    "migrate": cmd_migrate,
    "create-job": cmd_create_job,
    "show-job": cmd_show_job,
    "run-job": cmd_run_job,
    "reissue-url": cmd_reissue_url,
    "sweep": cmd_sweep,
    "verify": cmd_verify,
}


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    environ = os.environ if environ is None else environ
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr

    def command() -> int:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args, environ, stdout)

    return run_command(
        PROG,
        command,
        stderr=stderr,
        expected=(
            CommandError,
            ExportRequestError,
            DownloadUrlError,
            VerifyError,
            ConfigurationError,
            MigrationError,
            IsolationLevelError,
        ),
        external=(psycopg.Error, BotoCoreError, ClientError, OSError),
    )


def run() -> None:
    raise SystemExit(main())
