"""Export runner benchmark: 1,000,000 audit rows to S3 as CSV and NDJSON.

Three ways to produce the same file from the same query, measured in the same run against the
same throwaway PostgreSQL 15 (tests/support/postgres.py) and moto S3 server
(tests/support/moto_server.py):

- psql: ``psql \\copy (<the export query>) TO /dev/null`` with the Debian client: the floor
  any exporter pays (the server's formatting and the wire, no upload);
- ours: the Lambda handler ``handlers.export_runner.runner.handler`` given an SQS event,
  in a fresh process: COPY ... TO STDOUT streamed into an S3 multipart upload;
- seed: the seed's method (a server-side cursor read in batches of 1000, each row formatted
  in Python, RFC 4180 escaping / json.dumps), uploaded through the same multipart writer.

Each measurement runs in its own process, which reports its peak RSS (VmHWM). Times are the best
of ``--repeat`` runs (other work on a shared 2-core machine only ever makes a run slower), and
the export of the first 100,000 rows is checked with ``verify`` (the generated chain is valid).

    python -m benchmarks.export_bench [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PSQL = "/usr/bin/psql"
RESULT_MARKER = "BENCH_RESULT "
GOAL_CSV_VS_PSQL = 0.7
GOAL_NDJSON_VS_PSQL = 0.5
GOAL_VS_SEED = 3.0
GOAL_RSS_MB = 150.0
GOAL_RSS_GROWTH = 0.10
FORMATS = ("csv", "json")


# --- child processes: what is measured --------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set since exec (VmHWM).

    Not getrusage/wait4's ru_maxrss: Linux carries the pre-exec high-water mark of the forked
    parent into it, which here would count the benchmark driver and its in-process S3 server.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class _Context:
    """The Lambda runtime's context object, for the handler run in a child process."""

    function_name = "export-runner-bench"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:export-runner-bench"
    aws_request_id = "bench"

    def __init__(self) -> None:
        self._deadline = time.monotonic() + 900

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def child_ours(job_id: str) -> dict[str, Any]:
    from handlers.export_runner import runner  # the cold start happens here, outside the timing

    record = {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "bench",
        "body": json.dumps({"jobId": job_id}),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:exports",
        "awsRegion": "us-east-1",
    }
    started = time.perf_counter()
    response = runner.handler({"Records": [record]}, _Context())
    seconds = time.perf_counter() - started
    if response != {"batchItemFailures": []}:
        raise SystemExit(f"runner reported {response}")
    return {"seconds": seconds}


def child_seed(job_id: str) -> dict[str, Any]:
    """The seed's method: named cursor, fetchmany(1000), per-row Python formatting."""
    from datetime import UTC

    import psycopg
    from psycopg import sql

    from handlers.export_runner import jobs
    from handlers.export_runner.exporter import MultipartUpload
    from handlers.export_runner.filters import CSV_HEADER, object_key, parse_filter, parse_format, where_clause
    from handlers.export_runner.storage import s3_client

    def iso(moment: Any) -> str:  # JavaScript's toISOString()
        return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def csv_escape(value: Any) -> str:
        if value is None:
            return ""
        text = str(value)
        if '"' in text or "," in text or "\r" in text or "\n" in text:
            return '"' + text.replace('"', '""') + '"'
        return text

    url, bucket = os.environ["DATABASE_URL"], os.environ["COMPLIANCE_EXPORTS_BUCKET"]
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        job = jobs.get_job(conn, uuid.UUID(job_id))
        assert job is not None
        export_format = parse_format(job.format)
        where, params = where_clause(job.tenant_id, parse_filter(job.filter, job_tenant_id=job.tenant_id))
        query = sql.SQL(
            "SELECT event_id, tenant_id, occurred_at, recorded_at, actor, actor_type, source, event_type, event_hash,"
            " prev_hash, payload FROM compliance.audit_events WHERE {} ORDER BY occurred_at, event_id"
        ).format(where)
        # The same part writer as ours: only the production of the bytes differs.
        upload = MultipartUpload(
            s3_client(),
            bucket=bucket,
            key=object_key(job.tenant_id, job.job_id, export_format),
            content_type=export_format.content_type,
        )
        if export_format.name == "csv":
            upload.write((",".join(CSV_HEADER) + "\n").encode())
        rows = 0
        with conn.cursor(name="seed_export") as cursor:
            cursor.execute(query, params)
            while batch := cursor.fetchmany(1000):
                for (
                    event_id,
                    tenant,
                    occurred,
                    recorded,
                    actor,
                    actor_type,
                    source,
                    kind,
                    hash_,
                    prev,
                    payload,
                ) in batch:
                    if export_format.name == "csv":
                        fields = [
                            event_id,
                            tenant,
                            iso(occurred),
                            iso(recorded),
                            actor,
                            actor_type,
                            source,
                            kind,
                            hash_,
                        ]
                        fields += [prev, json.dumps(payload, separators=(",", ":"), ensure_ascii=False)]
                        line = ",".join(csv_escape(value) for value in fields) + "\n"
                    else:
                        line = (
                            json.dumps(
                                {
                                    "event_id": str(event_id),
                                    "tenant_id": str(tenant),
                                    "occurred_at": iso(occurred),
                                    "recorded_at": iso(recorded),
                                    "actor": actor,
                                    "actor_type": actor_type,
                                    "source": source,
                                    "event_type": kind,
                                    "event_hash": hash_,
                                    "prev_hash": prev,
                                    "payload": payload,
                                },
                                separators=(",", ":"),
                                ensure_ascii=False,
                            )
                            + "\n"
                        )
                    upload.write(line.encode("utf-8"))
                rows += len(batch)
        upload.finish()
        upload.close()
    return {"seconds": time.perf_counter() - started, "rows": rows}


# --- the parent: data, runs, table ------------------------------------------------------


@dataclass
class Measurement:
    seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)


def run_child(kind: str, job_id: uuid.UUID, env: dict[str, str]) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """Run one measured export in a fresh process; return its result, peak RSS (MB), log records."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.export_bench", "--child", kind, "--job-id", str(job_id)],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        process.wait()
        stdout.seek(0)
        stderr.seek(0)
        lines = stdout.read().decode().splitlines()
        if process.returncode != 0:
            raise RuntimeError(f"{kind} run failed ({process.returncode}): {stderr.read().decode()[-2000:]}")
    result = next(json.loads(line[len(RESULT_MARKER) :]) for line in reversed(lines) if line.startswith(RESULT_MARKER))
    logs = []
    for line in lines:
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                logs.append(json.loads(line))
    return result, float(result["peak_rss_mb"]), logs


def psql_copy_seconds(url: str, query: str, options: str) -> float:
    command = f"\\copy ({query.replace(chr(10), ' ')}) TO '/dev/null' WITH {options}"
    started = time.perf_counter()
    subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", command], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description="Export runner benchmark (see the module docstring).")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the large export (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--child", choices=("ours", "seed"), help=argparse.SUPPRESS)
    parser.add_argument("--job-id", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child_ours(args.job_id) if args.child == "ours" else child_seed(args.job_id)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["peak_rss_mb"] = peak_rss_mb()
        result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return
    if not Path(PSQL).exists():
        raise SystemExit(
            f"{PSQL} not found: install the Debian PostgreSQL client (apt-get install postgresql-client-15)"
        )
    run_benchmark(args.rows, max(1, args.repeat))


def run_benchmark(rows: int, repeat: int) -> None:
    import logging

    import psycopg

    from benchmarks.export_data import BENCH_TENANT, START, generate, window_end
    from handlers.export_runner import jobs
    from handlers.export_runner.filters import FORMATS as EXPORT_FORMATS
    from handlers.export_runner.filters import export_copy_statement, object_key, parse_filter
    from handlers.export_runner.migrate import apply_migrations
    from handlers.export_runner.verify import verify_file
    from tests.support.moto_server import start_moto_server
    from tests.support.postgres import start_postgres

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    # moto spills every S3 object over 5 MB to a temporary file and reads it back to assemble a
    # multipart upload: disk traffic on the client's clock that S3 itself does not have. Keep the
    # emulator's objects in memory instead (set before the server starts; 24 GB is plenty).
    os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(4 * 2**30))
    small_rows = min(100_000, max(1, rows // 10))
    with (
        contextlib.contextmanager(start_postgres)() as cluster,
        contextlib.contextmanager(start_moto_server)() as moto_server,
    ):
        url = cluster.url.rsplit("/", 1)[0] + "/export_bench"
        with psycopg.connect(cluster.url, autocommit=True) as admin:
            admin.execute("CREATE DATABASE export_bench")
        with psycopg.connect(url, autocommit=True) as conn:
            apply_migrations(conn)
        print(f"generating {rows:,} audit rows with a valid hash chain ...", flush=True)
        print(f"  done in {generate(url, rows):.1f} s", flush=True)

        env = {
            **os.environ,
            "DATABASE_URL": url,
            "COMPLIANCE_EXPORTS_BUCKET": "export-bench",
            "AWS_ENDPOINT_URL": moto_server.endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "ExportBench",
            "POWERTOOLS_SERVICE_NAME": "export-runner-bench",
        }
        env.pop("AWS_PROFILE", None)
        os.environ.update({key: env[key] for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
        os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="export-bench")

        def window(count: int) -> dict[str, str]:
            return {
                "since": START.isoformat().replace("+00:00", "Z"),
                "until": window_end(count).isoformat().replace("+00:00", "Z"),
            }

        def new_job(export_format: str, count: int) -> uuid.UUID:
            with psycopg.connect(url, autocommit=True) as conn:
                return jobs.insert_job(
                    conn,
                    job_id=uuid.uuid4(),
                    tenant_id=BENCH_TENANT,
                    requested_by_actor_id="bench",
                    filter=window(count),
                    export_format=export_format,
                ).job_id

        def discard(job_id: uuid.UUID, export_format: str) -> None:
            # moto keeps objects in memory: drop each one once measured.
            s3.delete_object(Bucket="export-bench", Key=object_key(BENCH_TENANT, job_id, EXPORT_FORMATS[export_format]))

        def literal_query(export_format: str, count: int) -> tuple[str, str]:
            statement, params = export_copy_statement(
                BENCH_TENANT, parse_filter(window(count), job_tenant_id=BENCH_TENANT), EXPORT_FORMATS[export_format]
            )
            with psycopg.connect(url) as conn:
                text = psycopg.ClientCursor(conn).mogrify(statement, params)
            select = text[len("COPY (") : text.rindex(") TO STDOUT WITH ")]
            return select, text[text.rindex(" WITH ") + len(" WITH ") :]

        results: dict[tuple[str, str], Measurement] = {}
        for export_format in FORMATS:
            query, options = literal_query(export_format, rows)
            psql_copy_seconds(url, query, options)  # warm the caches once, unmeasured
            for kind in ("psql", "ours", "seed"):
                results[(export_format, kind)] = Measurement()
            for run in range(repeat):
                print(f"{export_format}: run {run + 1}/{repeat}", flush=True)
                results[(export_format, "psql")].seconds.append(psql_copy_seconds(url, query, options))
                for kind in ("ours", "seed"):
                    job_id = new_job(export_format, rows)
                    result, rss, logs = run_child(kind, job_id, env)
                    measurement = results[(export_format, kind)]
                    measurement.seconds.append(result["seconds"])
                    measurement.rss_mb.append(rss)
                    measurement.notes += [
                        {**log, "cpu_seconds": result["cpu_seconds"]}
                        for log in logs
                        if log.get("message") == "export complete"
                    ]
                    discard(job_id, export_format)

        small_rss: dict[str, float] = {}
        verified = None
        for export_format in FORMATS:
            job_id = new_job(export_format, small_rows)
            _, small_rss[export_format], _ = run_child("ours", job_id, env)
            if export_format == "csv":
                key = object_key(BENCH_TENANT, job_id, EXPORT_FORMATS["csv"])
                with tempfile.TemporaryDirectory() as directory:
                    sample = Path(directory) / "sample.csv"
                    s3.download_file("export-bench", key, str(sample))
                    verified = verify_file(sample)
            discard(job_id, export_format)

        report(rows, small_rows, repeat, results, small_rss, verified)


def report(
    rows: int,
    small_rows: int,
    repeat: int,
    results: dict[tuple[str, str], Any],
    small_rss: dict[str, float],
    verified: Any,
) -> None:
    labels = {
        "psql": "psql \\copy -> /dev/null",
        "ours": "ours: COPY -> S3 multipart",
        "seed": "seed: cursor(1000) + Python",
    }
    print()
    print(f"Export of {rows:,} audit rows of one tenant into moto S3 (best of {repeat}); seconds and rows/s")
    print(f"{'format':<7} {'method':<29} {'seconds':>8} {'rows/s':>10} {'vs psql':>8} {'vs seed':>8} {'peak RSS':>9}")
    verdicts = []
    for export_format in FORMATS:
        name = "csv" if export_format == "csv" else "ndjson"
        psql = results[(export_format, "psql")].best
        seed = results[(export_format, "seed")].best
        for kind in ("psql", "ours", "seed"):
            measurement = results[(export_format, kind)]
            rss = f"{max(measurement.rss_mb):.0f} MB" if measurement.rss_mb else "-"
            print(
                f"{name:<7} {labels[kind]:<29} {measurement.best:>8.2f} {rows / measurement.best:>10,.0f}"
                f" {psql / measurement.best:>8.2f} {seed / measurement.best:>7.1f}x {rss:>9}"
            )
        ours = results[(export_format, "ours")]
        best_log = min(ours.notes, key=lambda log: log["stream_seconds"] + log["finalize_seconds"], default=None)
        if best_log:
            print(
                f"{'':<7} (ours, best run: {best_log['stream_seconds']:.2f} s streaming, "
                f"{best_log['finalize_seconds']:.2f} s finishing the upload; {best_log['parts']} parts, "
                f"{best_log['bytes'] / 2**20:.0f} MiB; runner CPU {best_log['cpu_seconds']:.2f} s)"
            )
        goal = GOAL_CSV_VS_PSQL if export_format == "csv" else GOAL_NDJSON_VS_PSQL
        verdicts.append((f"{name} >= {goal}x psql", psql / ours.best >= goal, f"{psql / ours.best:.2f}x"))
        verdicts.append(
            (f"{name} >= {GOAL_VS_SEED}x seed", seed / ours.best >= GOAL_VS_SEED, f"{seed / ours.best:.1f}x")
        )

    print()
    print(f"Peak RSS of the runner process: {small_rows:,} rows vs {rows:,} rows")
    for export_format in FORMATS:
        name = "csv" if export_format == "csv" else "ndjson"
        large = max(results[(export_format, "ours")].rss_mb)
        small = small_rss[export_format]
        growth = (large - small) / small
        print(f"  {name:<7} {small:7.1f} MB -> {large:7.1f} MB ({growth:+.1%})")
        verdicts.append((f"{name} RSS < {GOAL_RSS_MB:.0f} MB", large < GOAL_RSS_MB, f"{large:.0f} MB"))
        verdicts.append(
            (f"{name} RSS growth <= {GOAL_RSS_GROWTH:.0%}", abs(growth) <= GOAL_RSS_GROWTH, f"{growth:+.1%}")
        )

    print()
    if verified is not None:
        state = "intact" if verified.ok else f"BROKEN: {verified.broken.describe()}"
        print(f"verify of the {small_rows:,}-row CSV export: {verified.records:,} records, hash chain {state}")
    print("Goals:")
    for name, met, value in verdicts:
        print(f"  {'met ' if met else 'MISS'}  {name:<28} {value}")


if __name__ == "__main__":
    main()
