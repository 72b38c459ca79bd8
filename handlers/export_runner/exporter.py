"""Stream the rows of an export from Postgres into one S3 object, in bounded memory.

Postgres does the formatting (``COPY (SELECT ...) TO STDOUT``, see filters.py); this module
only moves bytes. COPY blocks (one per row) are copied into fixed ``PART_SIZE`` buffers; a full
buffer is uploaded as the next part while the following one fills, with at most
``MAX_PARTS_IN_FLIGHT`` parts uploading. The buffers are allocated once and reused, so the
memory of an export is (in-flight + 1) parts whatever its row count (allocating a fresh 8 MiB
object per part made the allocator's footprint creep up with the number of parts).

All or nothing: any failure (database, S3, deadline) aborts the multipart upload, so S3 never
shows a partial object under the export's key. An export smaller than one part is a single
PutObject, which is atomic by itself. Parts of an upload whose abort itself failed (say the
network went away) stay invisible until the bucket's lifecycle rule removes them.

boto3's managed transfer (upload_fileobj) is not used: for a non-seekable stream it keeps
reading the source to its end after a part has failed, which here would mean streaming the
rest of a million-row query for nothing before the failure surfaces.
"""

from __future__ import annotations

import hashlib
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
    sha256: str = ""  # of the object's bytes, for the manifest
    version_id: str | None = None  # the object's version in a versioned bucket


class MultipartUpload:
    """Bytes written in order become one S3 object; ``finish`` makes it visible, ``abort`` discards it."""

    def __init__(
        self,
        s3: Any,
        *,
        bucket: str,
        key: str,
        content_type: str,
        part_size: int = PART_SIZE,
        max_in_flight: int = MAX_PARTS_IN_FLIGHT,
        deadline: Callable[[], bool] | None = None,
    ) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._key = key
        self._content_type = content_type
        self._part_size = part_size
        self._max_in_flight = max_in_flight
        self._deadline = deadline
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="export-part")
        self._upload_id: str | None = None
        self._in_flight: dict[Future[dict[str, Any]], bytearray] = {}
        self._spare: list[bytearray] = []
        self._buffers = 0
        self._parts: list[dict[str, Any]] = []
        self._submitted = 0
        self.bytes_written = 0
        # Hashed a part at a time as parts are shipped in order (one update per 8 MiB, not per row).
        self._sha256 = hashlib.sha256()
        self.version_id: str | None = None
        self._buffer = self._take_buffer()
        self._view = memoryview(self._buffer)
        self._filled = 0

    @property
    def part_count(self) -> int:
        return self._submitted

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        filled, end = self._filled, self._filled + len(data)
        if end < self._part_size:  # the common case: the row fits in the current part
            self._view[filled:end] = data
            self._filled = end
            return
        view = memoryview(data)
        while view:
            room = self._part_size - self._filled
            chunk = view[:room]
            self._view[self._filled : self._filled + len(chunk)] = chunk
            self._filled += len(chunk)
            view = view[len(chunk) :]
            if self._filled == self._part_size:
                self._ship_full_buffer()

    def _ship_full_buffer(self) -> None:
        if self._deadline is not None and self._deadline():
            raise ExportDeadlineExceeded("export stopped before the function timeout")
        if self._submitted >= MAX_PARTS - 1:
            raise RuntimeError(f"export exceeds {MAX_PARTS} parts of {self._part_size} bytes")
        if self._upload_id is None:
            response = self._s3.create_multipart_upload(
                Bucket=self._bucket, Key=self._key, ContentType=self._content_type, ChecksumAlgorithm="CRC32"
            )
            self._upload_id = response["UploadId"]
        self._submit(self._buffer)
        self._view.release()
        self._buffer = self._take_buffer()
        self._view = memoryview(self._buffer)
        self._filled = 0

    def _submit(self, body: bytearray) -> None:
        self._sha256.update(body)
        self._submitted += 1
        self.bytes_written += len(body)
        future = self._pool.submit(self._send_part, self._submitted, body)
        self._in_flight[future] = body

    def _take_buffer(self) -> bytearray:
        # Waiting for a free buffer is what bounds memory; it also surfaces a failed part
        # before more of the query is read.
        while True:
            self._collect(return_when=FIRST_COMPLETED, block=False)
            if self._spare:
                return self._spare.pop()
            if self._buffers < self._max_in_flight + 1:
                self._buffers += 1
                return bytearray(self._part_size)
            self._collect(return_when=FIRST_COMPLETED, block=True)

    def _send_part(self, part_number: int, body: bytearray) -> dict[str, Any]:
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

    def _collect(self, *, return_when: str, block: bool) -> None:
        if not self._in_flight:
            return
        done, _ = wait(self._in_flight, timeout=None if block else 0, return_when=return_when)
        for future in done:
            buffer = self._in_flight.pop(future)
            self._parts.append(future.result())  # re-raises the part's failure
            if len(buffer) == self._part_size:
                self._spare.append(buffer)

    def finish(self) -> None:
        """Upload what is left and make the object visible (PutObject when it never needed parts)."""
        tail = self._buffer[: self._filled]  # a copy: the last part is the only short one
        if self._upload_id is None:
            self._sha256.update(tail)
            response = self._s3.put_object(
                Bucket=self._bucket, Key=self._key, Body=tail, ContentType=self._content_type, ChecksumAlgorithm="CRC32"
            )
            self.version_id = response.get("VersionId")
            self._submitted = 1
            self.bytes_written = len(tail)
            return
        if tail:
            self._submit(tail)
        self._collect(return_when=ALL_COMPLETED, block=True)
        response = self._s3.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": sorted(self._parts, key=lambda part: part["PartNumber"])},
        )
        self.version_id = response.get("VersionId")

    def abort(self) -> None:
        """Discard the upload; never raises, so the failure that caused the abort stays visible.

        Parts still in flight are cancelled or awaited first: a part landing after the abort
        would otherwise linger (invisible, but billed) until the lifecycle rule removes it.
        """
        for future in self._in_flight:
            future.cancel()
        wait(self._in_flight)
        self._in_flight.clear()
        if self._upload_id is None:
            return
        try:
            self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
        except Exception as exc:  # already failing; the bucket's lifecycle rule is the backstop
            log.warning(
                "could not abort multipart upload %s of s3://%s/%s: %s", self._upload_id, self._bucket, self._key, exc
            )

    def close(self) -> None:
        self._view.release()
        self._pool.shutdown(wait=True, cancel_futures=True)


def stream_copy_to_s3(
    conn: psycopg.Connection[Any],
    statement: sql.SQL | sql.Composed,
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

    ``deadline`` is polled at each part and before the upload is completed: when it returns True
    the export stops with ExportDeadlineExceeded (the upload is aborted like any other failure).
    """
    upload = MultipartUpload(
        s3,
        bucket=bucket,
        key=key,
        content_type=content_type,
        part_size=part_size,
        max_in_flight=max_in_flight,
        deadline=deadline,
    )
    started = time.monotonic()
    try:
        with conn.cursor() as cursor:
            with cursor.copy(statement, params) as copy:
                write = upload.write
                for block in copy:  # one block per row: nothing else in this loop
                    write(block)
            rows = cursor.rowcount
        streamed = time.monotonic()
        # Completing makes the object visible; past the deadline the job could not be recorded
        # as complete anyway, so abort instead.
        if deadline is not None and deadline():
            raise ExportDeadlineExceeded("export stopped before the function timeout")
        upload.finish()
    except BaseException:
        upload.abort()
        upload.close()
        raise
    upload.close()
    return ExportResult(
        rows=rows,
        bytes=upload.bytes_written,
        parts=upload.part_count,
        stream_seconds=streamed - started,
        finalize_seconds=time.monotonic() - streamed,
        sha256=upload.sha256,
        version_id=upload.version_id,
    )
