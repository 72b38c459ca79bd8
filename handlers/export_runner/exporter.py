"""Stream the rows of an export from Postgres into one S3 object, in bounded memory.

Postgres does the formatting (``COPY (SELECT ...) TO STDOUT``, see filters.py); this module
only moves bytes: COPY blocks are gathered into parts of at least ``PART_SIZE`` bytes, and
at most ``MAX_PARTS_IN_FLIGHT`` parts upload concurrently while the next one fills. Peak memory
is therefore about (in-flight + 1) parts, whatever the row count.

All or nothing: any failure (database, S3, deadline) aborts the multipart upload, so S3 never
shows a partial object under the export's key. An export smaller than one part is a single
PutObject, which is atomic by itself. S3 keeps the parts of an upload whose abort itself
failed (say the network went away) invisible until the bucket's lifecycle rule removes them.

boto3's managed transfer (upload_fileobj) is not used: for a non-seekable stream it keeps
reading the source to its end after a part has failed, which here would mean streaming the
rest of a million-row query for nothing before the failure surfaces.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

PART_SIZE = 8 * 1024 * 1024
MAX_PARTS_IN_FLIGHT = 2
MAX_PARTS = 10_000  # S3's limit; 8 MiB parts reach it at 80 GB, beyond what a 15-minute run can stream

log = logging.getLogger(__name__)


class ExportDeadlineExceeded(RuntimeError):
    """The export would outlive the function: stopped (and aborted) while it could still report."""


@dataclass(frozen=True)
class ExportResult:
    rows: int
    bytes: int
    parts: int
    stream_seconds: float  # first byte requested -> last byte read from Postgres
    finalize_seconds: float  # last byte read -> object visible in S3


class MultipartUpload:
    """One S3 object written in parts; ``complete`` makes it visible, ``abort`` discards it."""

    def __init__(self, s3: Any, *, bucket: str, key: str, content_type: str, max_in_flight: int) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._key = key
        self._content_type = content_type
        self._upload_id: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="export-part")
        self._max_in_flight = max_in_flight
        self._in_flight: set[Future[dict[str, Any]]] = set()
        self._parts: list[dict[str, Any]] = []

    @property
    def part_count(self) -> int:
        return len(self._parts) + len(self._in_flight)

    def upload_part(self, body: bytes) -> None:
        if self.part_count >= MAX_PARTS:
            raise RuntimeError(f"export exceeds {MAX_PARTS} parts of {PART_SIZE} bytes")
        if self._upload_id is None:
            response = self._s3.create_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                ContentType=self._content_type,
                ChecksumAlgorithm="CRC32",
            )
            self._upload_id = response["UploadId"]
        # Wait for a free slot first: this is what bounds memory, and it surfaces a failed
        # part before more of the query is read.
        while len(self._in_flight) >= self._max_in_flight:
            self._collect(return_when=FIRST_COMPLETED)
        part_number = self.part_count + 1
        self._in_flight.add(self._pool.submit(self._send_part, part_number, body))

    def _send_part(self, part_number: int, body: bytes) -> dict[str, Any]:
        response = self._s3.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=part_number,
            Body=body,
            ChecksumAlgorithm="CRC32",
        )
        part = {"PartNumber": part_number, "ETag": response["ETag"]}
        if response.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        return part

    def _collect(self, *, return_when: str) -> None:
        done, pending = wait(self._in_flight, return_when=return_when)
        self._in_flight = set(pending)
        for future in done:
            self._parts.append(future.result())  # re-raises the part's failure

    def complete(self, tail: bytes) -> None:
        """Upload what is left and make the object visible (PutObject when it never needed parts)."""
        if self._upload_id is None:
            self._s3.put_object(
                Bucket=self._bucket, Key=self._key, Body=tail, ContentType=self._content_type, ChecksumAlgorithm="CRC32"
            )
            return
        if tail:
            self.upload_part(tail)
        self._collect(return_when=ALL_COMPLETED)
        self._s3.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": sorted(self._parts, key=lambda part: part["PartNumber"])},
        )

    def abort(self) -> None:
        """Discard the upload; never raises, so the failure that caused the abort stays visible.

        Parts still in flight are cancelled or awaited first: a part landing after the abort
        would otherwise linger (invisible, but billed) until the lifecycle rule removes it.
        """
        for future in self._in_flight:
            future.cancel()
        wait(self._in_flight)
        if self._upload_id is None:
            return
        try:
            self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
        except Exception as exc:
            log.warning(
                "could not abort multipart upload %s of s3://%s/%s: %s", self._upload_id, self._bucket, self._key, exc
            )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def stream_copy_to_s3(
    conn: psycopg.Connection[Any],
    statement: sql.Composed,
    params: dict[str, Any],
    *,
    s3: Any,
    bucket: str,
    key: str,
    content_type: str,
    part_size: int = PART_SIZE,
    max_in_flight: int = MAX_PARTS_IN_FLIGHT,
    deadline: Callable[[], bool] | None = None,
) -> ExportResult:
    """Run ``statement`` (a COPY ... TO STDOUT) and store its output as ``s3://bucket/key``.

    ``deadline`` is polled at each part: when it returns True the export stops with
    ExportDeadlineExceeded (the upload is aborted like any other failure).
    """
    upload = MultipartUpload(s3, bucket=bucket, key=key, content_type=content_type, max_in_flight=max_in_flight)
    started = time.monotonic()
    total = 0
    try:
        buffer = bytearray()
        with conn.cursor() as cursor:
            with cursor.copy(statement, params) as copy:
                # One COPY block per row: keep this loop free of anything but appending.
                for block in copy:
                    buffer += block
                    if len(buffer) >= part_size:
                        if deadline is not None and deadline():
                            raise ExportDeadlineExceeded("export stopped before the function timeout")
                        total += len(buffer)
                        upload.upload_part(bytes(buffer))
                        buffer = bytearray()
            rows = cursor.rowcount
        streamed = time.monotonic()
        total += len(buffer)
        upload.complete(bytes(buffer))
        del buffer
    except BaseException:
        upload.abort()
        upload.close()
        raise
    upload.close()
    return ExportResult(
        rows=rows,
        bytes=total,
        parts=max(upload.part_count, 1),
        stream_seconds=streamed - started,
        finalize_seconds=time.monotonic() - streamed,
    )
