"""Issue #9 item 5: every export has a manifest, and verify checks the file against it.

The chain of a tenant follows recorded_at while exports are windowed on occurred_at: a backdated
event (occurred before the window, recorded inside it) is not exported, and its successor's link
names it. Without the manifest that intact export fails verify; with it, it verifies, while
records dropped from the start, the end or the middle are each reported with their own code.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from handlers.common.aws import client
from handlers.export_runner import cli
from handlers.export_runner.export_job import Outcome, RunnerDependencies, run_export_job
from handlers.export_runner.manifest import manifest_key
from handlers.export_runner.storage import s3_client
from handlers.export_runner.verify import VerifyError, verify_file
from tests.support.export_fixtures import (
    WINDOW_START,
    EventSpec,
    ExportDatabase,
    bulk_append,
    insert_job_row,
    spaced_events,
    window_filter,
)

LOGGER = Logger(service="export-manifest-test")
EXTENSIONS = {"csv": "csv", "json": "ndjson"}


@pytest.fixture
def deps(export_db: ExportDatabase, exports_bucket: str) -> RunnerDependencies:
    return RunnerDependencies(
        database=export_db.database(), s3=s3_client(), bucket=exports_bucket, presign_ttl_seconds=900
    )


def _with_backdated_event(export_db: ExportDatabase, tenant: uuid.UUID) -> tuple[list[EventSpec], EventSpec]:
    """20 events in the window and, recorded between the 10th and the 11th, one that occurred a day
    before the window (so the export leaves it out and the 11th links to a record not in the file)."""
    events = spaced_events(tenant, 20)
    backdated = EventSpec(
        tenant_id=tenant,
        occurred_at=WINDOW_START - timedelta(days=1),
        recorded_at=events[9].recorded_at + timedelta(seconds=10),
        payload={"seq": "backdated"},
    )
    with export_db.connect() as conn:
        bulk_append(conn, [*events[:10], backdated, *events[10:]])
    return events, backdated


def _export(
    deps: RunnerDependencies, export_db: ExportDatabase, tenant: uuid.UUID, export_format: str
) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    with export_db.connect() as conn:
        job_id = insert_job_row(conn, tenant_id=tenant, filter=window_filter(), export_format=export_format)
    report = run_export_job(job_id, deps, logger=LOGGER)
    assert report.outcome is Outcome.COMPLETED, report.error
    assert report.s3_key is not None
    s3 = client("s3")
    body = s3.get_object(Bucket=deps.bucket, Key=report.s3_key)["Body"].read()
    sidecar = json.loads(s3.get_object(Bucket=deps.bucket, Key=manifest_key(report.s3_key))["Body"].read())
    with export_db.connect() as conn:
        row = conn.execute("SELECT manifest FROM compliance.export_jobs WHERE job_id = %s", (job_id,)).fetchone()
    assert row is not None
    return body, sidecar, row[0]


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("export_format", ["csv", "json"])
def test_an_export_stores_its_manifest_on_the_job_and_beside_the_file(
    deps: RunnerDependencies, export_db: ExportDatabase, export_format: str
) -> None:
    tenant = uuid.uuid4()
    events, _ = _with_backdated_event(export_db, tenant)
    body, sidecar, on_row = _export(deps, export_db, tenant, export_format)
    assert sidecar == on_row
    assert on_row["rows"] == 20 and on_row["sha256"] == hashlib.sha256(body).hexdigest()
    assert on_row["filter"] == window_filter() and on_row["format"] == export_format
    assert on_row["tenants"] == {
        str(tenant): {
            "rows": 20,
            "head": {"event_id": str(events[0].event_id), "prev_hash": None},
            "tail": {
                "event_id": str(events[-1].event_id),
                "event_hash": on_row["tenants"][str(tenant)]["tail"]["event_hash"],
            },
            "gaps": 1,  # the 11th event links to the backdated one, outside the window
        }
    }


@pytest.mark.parametrize("export_format", ["csv", "json"])
def test_an_intact_export_with_a_backdated_event_verifies_against_its_manifest(
    deps: RunnerDependencies, export_db: ExportDatabase, export_format: str, tmp_path: Path
) -> None:
    tenant = uuid.uuid4()
    _with_backdated_event(export_db, tenant)
    body, manifest, _ = _export(deps, export_db, tenant, export_format)
    path = _write(tmp_path, f"export.{EXTENSIONS[export_format]}", body)
    # Without the manifest the cut link looks like missing events: the false alarm of the issue.
    assert not verify_file(path).ok
    report = verify_file(path, manifest=manifest)
    assert report.ok, (report.broken, report.manifest_findings)
    assert (report.records, report.gaps) == (20, 1)


@pytest.mark.parametrize("export_format", ["csv", "json"])
@pytest.mark.parametrize(
    ("cut", "codes"),
    [
        ("first", {"MISSING_HEAD", "COUNT_MISMATCH", "SHA256_MISMATCH"}),
        ("last", {"MISSING_TAIL", "COUNT_MISMATCH", "SHA256_MISMATCH"}),
        ("middle", {"LINKS_MISSING", "COUNT_MISMATCH", "SHA256_MISMATCH"}),
    ],
)
def test_dropped_records_are_reported_by_what_is_missing(
    deps: RunnerDependencies,
    export_db: ExportDatabase,
    export_format: str,
    cut: str,
    codes: set[str],
    tmp_path: Path,
) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 10))
    body, manifest, _ = _export(deps, export_db, tenant, export_format)
    lines = body.decode().splitlines(keepends=True)
    header, records = (lines[:1], lines[1:]) if export_format == "csv" else ([], lines)
    index = {"first": 0, "last": len(records) - 1, "middle": 5}[cut]
    truncated = "".join(header + records[:index] + records[index + 1 :]).encode()
    path = _write(tmp_path, f"export.{EXTENSIONS[export_format]}", truncated)
    # Each record's own hash is intact: without the manifest, dropping the first or the last verifies.
    if cut != "middle":
        assert verify_file(path).ok
    report = verify_file(path, manifest=manifest)
    assert not report.ok
    assert {finding.code for finding in report.manifest_findings} == codes
    assert report.broken is None  # nothing in the file contradicts itself


def test_the_cli_verifies_against_a_manifest_and_reports_mismatches_once(
    deps: RunnerDependencies, export_db: ExportDatabase, tmp_path: Path
) -> None:
    tenant = uuid.uuid4()
    _with_backdated_event(export_db, tenant)
    body, manifest, _ = _export(deps, export_db, tenant, "json")
    path = _write(tmp_path, "export.ndjson", body)
    manifest_path = _write(tmp_path, "export.ndjson.manifest.json", json.dumps(manifest).encode())
    stdout, stderr = io.StringIO(), io.StringIO()
    assert (
        cli.main(["verify", str(path), "--manifest", str(manifest_path)], environ={}, stdout=stdout, stderr=stderr) == 0
    )
    assert "matches its manifest" in stdout.getvalue() and stderr.getvalue() == ""

    truncated = _write(tmp_path, "short.ndjson", b"".join(body.splitlines(keepends=True)[1:]))
    stdout, stderr = io.StringIO(), io.StringIO()
    assert (
        cli.main(["verify", str(truncated), "--manifest", str(manifest_path)], environ={}, stdout=stdout, stderr=stderr)
        == 1
    )
    (line,) = stderr.getvalue().splitlines()
    assert "MANIFEST_MISMATCH" in line and "MISSING_HEAD" in line and "Traceback" not in line


@pytest.mark.parametrize(
    "crafted",
    [
        b"not json",
        b"[]",
        b'{"rows": -1, "sha256": "00", "tenants": {}}',
        b'{"rows": 1, "sha256": "' + b"a" * 64 + b'", "tenants": {"t": {"rows": "x"}}}',
        b'{"rows": 1, "sha256": "' + b"a" * 64 + b'", "tenants": []}',
        b"\xff\xfe",
    ],
)
def test_a_crafted_manifest_is_one_error_line_never_a_traceback(crafted: bytes, tmp_path: Path) -> None:
    path = _write(tmp_path, "export.ndjson", b"")
    manifest_path = _write(tmp_path, "crafted.json", crafted)
    stdout, stderr = io.StringIO(), io.StringIO()
    assert (
        cli.main(["verify", str(path), "--manifest", str(manifest_path)], environ={}, stdout=stdout, stderr=stderr) == 1
    )
    (line,) = stderr.getvalue().splitlines()
    assert "manifest" in line and "Traceback" not in stderr.getvalue()


def test_a_crafted_file_is_a_finding_or_an_error_never_a_traceback(tmp_path: Path) -> None:
    manifest = {"rows": 1, "sha256": "a" * 64, "tenants": {}}
    for name, data in (("x.csv", b"\xff\xfe\x00"), ("y.ndjson", b'{"event_id": 1}\n[1]\n\xff\n'), ("z.csv", b'a,"b\n')):
        path = _write(tmp_path, name, data)
        try:
            report = verify_file(path, manifest=manifest)
        except VerifyError:
            continue
        assert not report.ok
