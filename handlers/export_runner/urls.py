"""Issue a fresh download URL for a complete export (the first one expires after the TTL)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from handlers.export_runner import jobs
from handlers.export_runner.db import Database
from handlers.export_runner.export_job import STATE_APPLICATION, presign_download


class DownloadUrlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DownloadUrl:
    job_id: uuid.UUID
    url: str
    expires_at: datetime


def reissue_download_url(
    database: Database, s3: Any, *, bucket: str, job_id: uuid.UUID, ttl_seconds: int
) -> DownloadUrl:
    with database.connect(application_name=STATE_APPLICATION) as conn:
        job = jobs.get_job(conn, job_id)
        if job is None:
            raise DownloadUrlError("JOB_NOT_FOUND", f"no export job {job_id}")
        if job.status != jobs.JobStatus.COMPLETE or not job.s3_key:
            raise DownloadUrlError("JOB_NOT_COMPLETE", f"export job {job_id} is {job.status}, not complete")
        try:
            s3.head_object(Bucket=bucket, Key=job.s3_key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise DownloadUrlError(
                    "EXPORT_OBJECT_GONE",
                    f"s3://{bucket}/{job.s3_key} no longer exists (exports expire); request a new export",
                ) from exc
            raise
        url, expires_at = presign_download(s3, bucket, job.s3_key, ttl_seconds)
        if not jobs.set_download_url(conn, job_id, url=url, expires_at=expires_at):
            raise DownloadUrlError("JOB_NOT_COMPLETE", f"export job {job_id} changed while the URL was issued")
    return DownloadUrl(job_id=job_id, url=url, expires_at=expires_at)
