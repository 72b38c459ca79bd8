"""``python -m handlers.export_runner``: the operator's loop end to end, and one-line errors."""

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from handlers.export_runner.cli import main
from handlers.export_runner.migrate import discover
from tests.support.export_fixtures import (
    ExportDatabase,
    bulk_append,
    download,
    drop_database,
    insert_job_row,
    spaced_events,
    window_filter,
)
from tests.support.moto_server import free_port
from tests.support.postgres import PostgresCluster

ROOT = Path(__file__).resolve().parents[3]
PREFIX = "python -m handlers.export_runner: "


@pytest.fixture
def unmigrated_db(postgres_cluster: PostgresCluster) -> Iterator[ExportDatabase]:
    name = f"export_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_cluster.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield ExportDatabase(postgres_cluster, name)
    drop_database(postgres_cluster, name)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handlers.export_runner", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_operator_loop_end_to_end(
    unmigrated_db: ExportDatabase, exports_bucket: str, export_queue: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": unmigrated_db.url,
        "COMPLIANCE_EXPORTS_BUCKET": exports_bucket,
        "EXPORT_QUEUE_URL": export_queue,
        "PYTHONPATH": str(ROOT),
    }
    migrated = cli("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout) == {"applied": [migration.version for migration in discover()]}

    tenant = uuid.uuid4()
    with unmigrated_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 12, source='cli, "test"'))
    created = cli(
        "create-job",
        f"--tenant-id={tenant}",
        "--actor-id=operator@example.com",
        "--format=json",
        f"--filter={json.dumps(window_filter())}",
        env=env,
    )
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    assert job["status"] == "queued" and job["tenant_id"] == str(tenant)

    ran = cli("run-job", job["job_id"], env=env)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {
        "jobId": job["job_id"],
        "outcome": "completed",
        "s3Key": f"{tenant}/{job['job_id']}.ndjson",
        "rows": 12,
    }
    shown = json.loads(cli("show-job", job["job_id"], env=env).stdout)
    assert shown["status"] == "complete" and shown["s3_key"] == f"{tenant}/{job['job_id']}.ndjson"

    reissued = cli("reissue-url", job["job_id"], "--ttl=60", env=env)
    assert reissued.returncode == 0, reissued.stderr
    url = json.loads(reissued.stdout)["url"]
    assert url != shown["presigned_url"] and "X-Amz-Expires=60" in url
    exported = tmp_path / "export.ndjson"
    exported.write_bytes(download(url)[0])

    verified = cli("verify", str(exported), env=env)
    assert (verified.returncode, verified.stdout) == (0, "OK: 12 records, 1 tenant(s), hash chain intact\n")
    exported.write_text(exported.read_text().replace('"seq": 3}', '"seq": 33}'))
    tampered = cli("verify", str(exported), env=env)
    assert tampered.returncode == 1 and tampered.stdout == ""
    assert tampered.stderr.startswith(PREFIX + "error: CHAIN_BROKEN: record 4 (event ")
    assert tampered.stderr.count("\n") == 1

    swept = cli("sweep", env=env)
    assert (swept.returncode, json.loads(swept.stdout)) == (0, {"swept": []})

    usage = cli("show-job", "not-a-uuid", env=env)
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1
    assert usage.stderr.startswith(PREFIX + "usage error: argument job_id: not a UUID")


def run_main(*argv: str, environ: dict[str, str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(list(argv), environ=environ, stdout=stdout, stderr=stderr)
    return code, stdout.getvalue(), stderr.getvalue()


def assert_one_line_error(result: tuple[int, str, str], code: int, message: str) -> None:
    exit_code, stdout, stderr = result
    assert (exit_code, stdout) == (code, "")
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert message in stderr, stderr


def test_errors_are_one_line_and_a_non_zero_exit(
    export_db: ExportDatabase, exports_bucket: str, export_queue: str, tmp_path: Path, aws: Any
) -> None:
    env = {"DATABASE_URL": export_db.url, "COMPLIANCE_EXPORTS_BUCKET": exports_bucket, "EXPORT_QUEUE_URL": export_queue}
    with export_db.connect() as conn:
        queued = insert_job_row(conn, tenant_id=uuid.uuid4())
    unknown = str(uuid.uuid4())
    too_wide = json.dumps({"since": "2024-01-01T00:00:00Z", "until": "2024-12-01T00:00:00Z"})
    not_an_export = tmp_path / "other.csv"
    not_an_export.write_text("a,b\n1,2\n")
    closed_port = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"

    cases = [
        (
            ("show-job", unknown),
            {},
            1,
            "invalid configuration: DATABASE_URL or DATABASE_SECRET_ARN is required but not set",
        ),
        (("show-job", unknown), env, 1, f"error: JOB_NOT_FOUND: no export job {unknown}"),
        (("show-job", unknown), {"DATABASE_URL": closed_port}, 1, "error: OperationalError: connection failed"),
        (
            (
                "create-job",
                "--tenant-id",
                str(uuid.uuid4()),
                "--actor-id",
                "a",
                "--format",
                "csv",
                "--filter",
                too_wide,
            ),
            env,
            1,
            "error: FILTER_RANGE_TOO_WIDE: the window spans 335.00 days, the limit is 90",
        ),
        (
            ("create-job", "--tenant-id", "acme", "--actor-id", "a", "--format", "csv", "--filter", too_wide),
            env,
            1,
            "error: INVALID_TENANT_ID",
        ),
        (
            ("create-job", "--tenant-id", str(uuid.uuid4()), "--actor-id", "a", "--format", "csv", "--filter", "{}"),
            {"DATABASE_URL": export_db.url},
            1,
            "set --queue-url or EXPORT_QUEUE_URL",
        ),
        (("create-job", "--tenant-id", "x"), env, 2, "usage error: the following arguments are required"),
        (("reissue-url", str(queued)), env, 1, f"error: JOB_NOT_COMPLETE: export job {queued} is queued"),
        (("reissue-url", str(queued)), {"DATABASE_URL": export_db.url}, 1, "COMPLIANCE_EXPORTS_BUCKET is required"),
        (("verify", str(tmp_path / "missing.csv")), {}, 1, "error: FileNotFoundError"),
        (("verify", str(not_an_export)), {}, 1, "error: not an export CSV"),
        (("frobnicate",), env, 2, "usage error: argument command: invalid choice"),
        ((), env, 2, "usage error: the following arguments are required: command"),
    ]
    for argv, environ, code, message in cases:
        assert_one_line_error(run_main(*argv, environ=environ), code, message)


def test_run_job_reports_jobs_it_cannot_run(export_db: ExportDatabase, exports_bucket: str, aws: Any) -> None:
    env = {"DATABASE_URL": export_db.url, "COMPLIANCE_EXPORTS_BUCKET": exports_bucket}
    with export_db.connect() as conn:
        bad_filter = insert_job_row(conn, tenant_id=uuid.uuid4(), filter={"since": "2024-01-01T00:00:00Z"})
    assert_one_line_error(
        run_main("run-job", str(bad_filter), environ=env), 1, "error: JOB_FAILED: invalid job: FILTER_MISSING_FIELD"
    )
    assert_one_line_error(run_main("run-job", str(bad_filter), environ=env), 1, "error: JOB_NOT_QUEUED")


def test_a_missing_login_is_named_once_with_both_ways_to_give_it(tmp_path: Path) -> None:
    """Issue #9 item 7: the program's name once, then which setting is missing (either one would do)."""
    for argv in (("show-job", str(uuid.uuid4())), ("sweep",)):
        code, stdout, stderr = run_main(*argv, environ={})
        assert (code, stdout) == (1, "")
        assert stderr == (
            f"{PREFIX}error: database settings: invalid configuration: "
            "DATABASE_URL or DATABASE_SECRET_ARN is required but not set\n"
        ) or stderr == (
            f"{PREFIX}error: export sweeper: invalid configuration: "
            "DATABASE_URL or DATABASE_SECRET_ARN is required but not set\n"
        ), stderr
        assert stderr.count("handlers.export_runner") == 1
        assert stderr.count("DATABASE_SECRET_ARN") == 1


@pytest.mark.parametrize("ttl", ["604801", "0", "-5"])
def test_reissue_url_refuses_a_lifetime_s3_would_not_accept(ttl: str) -> None:
    env = {"DATABASE_URL": "postgresql://unused@127.0.0.1:1/x", "COMPLIANCE_EXPORTS_BUCKET": "b"}
    result = run_main("reissue-url", str(uuid.uuid4()), "--ttl", ttl, environ=env)
    assert_one_line_error(result, 2, "--ttl must be between 1 and 604800 seconds (7 days")
