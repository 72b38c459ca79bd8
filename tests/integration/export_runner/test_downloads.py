"""After the export: fresh download URLs for complete jobs, and offline verification."""

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aws_lambda_powertools import Logger

from handlers.common.aws import client
from handlers.export_runner import jobs
from handlers.export_runner.export_job import Outcome, RunnerDependencies, run_export_job
from handlers.export_runner.storage import s3_client
from handlers.export_runner.urls import DownloadUrlError, reissue_download_url
from handlers.export_runner.verify import verify_file
from tests.support.export_fixtures import ExportDatabase, bulk_append, download, insert_job_row, spaced_events

LOGGER = Logger(service="export-runner-test")


def completed_job(export_db: ExportDatabase, bucket: str, *, ttl: int, export_format: str = "csv") -> jobs.ExportJob:
    deps = RunnerDependencies(database=export_db.database(), s3=s3_client(), bucket=bucket, presign_ttl_seconds=ttl)
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 25, actor='auditor, "quoted"', payload_bytes=30))
        job_id = insert_job_row(conn, tenant_id=tenant, export_format=export_format)
    assert run_export_job(job_id, deps, logger=LOGGER).outcome is Outcome.COMPLETED
    with export_db.connect() as conn:
        job = jobs.get_job(conn, job_id)
    assert job is not None
    return job


def test_a_new_url_is_issued_after_the_first_expires(export_db: ExportDatabase, exports_bucket: str) -> None:
    job = completed_job(export_db, exports_bucket, ttl=1)
    assert job.presigned_url_expires_at is not None
    while datetime.now(UTC) <= job.presigned_url_expires_at:
        time.sleep(0.2)  # let the first URL expire

    issued = reissue_download_url(
        export_db.database(), s3_client(), bucket=exports_bucket, job_id=job.job_id, ttl_seconds=900
    )

    assert issued.url != job.presigned_url and issued.expires_at > datetime.now(UTC)
    with export_db.connect() as conn:
        stored = jobs.get_job(conn, job.job_id)
    assert stored is not None and stored.status == "complete"
    assert (stored.presigned_url, stored.presigned_url_expires_at) == (issued.url, issued.expires_at)
    body, _ = download(issued.url)
    assert body == client("s3").get_object(Bucket=exports_bucket, Key=job.s3_key)["Body"].read()


def test_urls_are_only_issued_for_complete_jobs_whose_object_exists(
    export_db: ExportDatabase, exports_bucket: str
) -> None:
    database, s3 = export_db.database(), s3_client()

    def code(job_id: uuid.UUID) -> str:
        with pytest.raises(DownloadUrlError) as caught:
            reissue_download_url(database, s3, bucket=exports_bucket, job_id=job_id, ttl_seconds=60)
        return caught.value.code

    assert code(uuid.uuid4()) == "JOB_NOT_FOUND"
    with export_db.connect() as conn:
        queued = insert_job_row(conn, tenant_id=uuid.uuid4())
    assert code(queued) == "JOB_NOT_COMPLETE"
    job = completed_job(export_db, exports_bucket, ttl=60)
    client("s3").delete_object(Bucket=exports_bucket, Key=job.s3_key)  # as the 7-day expiry would
    assert code(job.job_id) == "EXPORT_OBJECT_GONE"


@pytest.mark.parametrize(("export_format", "suffix"), [("csv", ".csv"), ("json", ".ndjson")])
def test_a_downloaded_export_verifies_and_a_tampered_copy_does_not(
    export_db: ExportDatabase, exports_bucket: str, tmp_path: Path, export_format: str, suffix: str
) -> None:
    job = completed_job(export_db, exports_bucket, ttl=60, export_format=export_format)
    body, _ = download(job.presigned_url)  # type: ignore[arg-type]
    good = tmp_path / f"good{suffix}"
    good.write_bytes(body)
    report = verify_file(good)
    assert report.ok and report.records == 25 and report.gaps == 0

    tampered = tmp_path / f"tampered{suffix}"
    seven, eight = (b'""seq"": 7,', b'""seq"": 8,') if export_format == "csv" else (b'"seq": 7,', b'"seq": 8,')
    assert body.count(seven) == 1
    tampered.write_bytes(body.replace(seven, eight))
    broken = verify_file(tampered).broken
    assert broken is not None and broken.record == 8
