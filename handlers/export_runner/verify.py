"""Verify the hash chain of a downloaded export, offline (no database, no AWS).

Two checks, using only the file:
1. every record's event_hash is recomputed from its own fields and prev_hash (chain.py): a
   changed field, payload or hash shows here;
2. within each tenant, records sorted into chain order (recorded_at, event_id) must link:
   each prev_hash equals the event_hash of the record before it. A prev_hash naming a record
   that is in the file but not the one before it (reordering, a fork), or a chain restarting
   after its first record, is always broken. A prev_hash naming a record that is NOT in the
   file is a gap: events are missing, or a record was altered and re-hashed (which breaks its
   successor's link). A complete export has no gap, so gaps are broken links unless
   ``allow_gaps`` is set, for exports narrowed by actor or event type (whose chains
   legitimately skip the events left out) or time windows that cut through a chain.
The report names the first broken link in file order. Memory grows with the number of
records (about 300 bytes each for the link check); the file itself is streamed.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import rfc8785

from handlers.export_runner import chain
from handlers.export_runner.filters import CSV_HEADER

NDJSON_FIELDS = (*CSV_HEADER[:-1], "payload")


class VerifyError(ValueError):
    """The file is not an export this tool can read (wrong header, unknown format)."""


@dataclass(frozen=True)
class Finding:
    record: int  # 1-based position of the record in the file
    event_id: str
    reason: str

    def describe(self) -> str:
        return f"record {self.record} (event {self.event_id or '?'}): {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    records: int
    tenants: int
    gaps: int
    broken: Finding | None
    first_gap: Finding | None

    @property
    def ok(self) -> bool:
        return self.broken is None


class _Link(NamedTuple):
    recorded_at: str
    event_id: str
    prev_hash: str | None
    event_hash: str
    record: int


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".ndjson", ".jsonl", ".json"):
        return "ndjson"
    with path.open("rb") as handle:
        first = handle.read(1)
    return "ndjson" if first == b"{" else "csv"


def read_csv(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return
    if tuple(header) != CSV_HEADER:
        raise VerifyError(f"not an export CSV: header is {','.join(header)!r}, expected {','.join(CSV_HEADER)!r}")
    for fields in reader:
        if len(fields) != len(CSV_HEADER):
            yield {"_error": f"has {len(fields)} fields, expected {len(CSV_HEADER)}"}
            continue
        row: dict[str, Any] = dict(zip(CSV_HEADER, fields, strict=True))
        row["prev_hash"] = row["prev_hash"] or None
        try:
            row["payload"] = json.loads(row.pop("payload_json"))
        except ValueError as exc:
            row["_error"] = f"payload_json is not JSON: {exc}"
        yield row


def read_ndjson(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            yield {"_error": f"line is not JSON: {exc}"}
            continue
        yield row if isinstance(row, dict) else {"_error": "line is not a JSON object"}


def verify_file(path: Path, *, file_format: str | None = None, allow_gaps: bool = False) -> VerifyReport:
    file_format = file_format or detect_format(path)
    if file_format not in ("csv", "ndjson"):
        raise VerifyError(f"unknown format {file_format!r} (csv or ndjson)")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = read_csv(handle) if file_format == "csv" else read_ndjson(handle)
        return verify_records(rows, allow_gaps=allow_gaps)


def _recompute(row: Mapping[str, Any]) -> str | None:
    """Problem with the record's own hash, or None when it is intact."""
    if "_error" in row:
        return str(row["_error"])
    missing = [name for name in NDJSON_FIELDS if name not in row]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if not isinstance(row["payload"], dict):
        return "payload is not a JSON object"
    if not isinstance(row["event_hash"], str) or not (row["prev_hash"] is None or isinstance(row["prev_hash"], str)):
        return "event_hash/prev_hash is not a string"
    try:
        occurred_at = chain.format_timestamp(chain.parse_timestamp(str(row["occurred_at"])))
        chain.parse_timestamp(str(row["recorded_at"]))
    except ValueError:
        return "occurred_at/recorded_at is not an ISO 8601 UTC timestamp with microseconds"
    try:
        canonical = chain.canonical_event(
            event_id=str(row["event_id"]),
            tenant_id=str(row["tenant_id"]),
            occurred_at=occurred_at,
            actor=str(row["actor"]),
            actor_type=str(row["actor_type"]),
            source=str(row["source"]),
            event_type=str(row["event_type"]),
            payload=row["payload"],
        )
    except rfc8785.CanonicalizationError as exc:
        return f"payload has no canonical form: {exc}"
    expected = chain.event_hash(row["prev_hash"], canonical)
    if expected != row["event_hash"]:
        return f"event_hash does not match the record's content (recomputed {expected})"
    return None


def verify_records(rows: Iterable[Mapping[str, Any]], *, allow_gaps: bool = False) -> VerifyReport:
    broken: list[Finding] = []
    links: dict[str, list[_Link]] = defaultdict(list)
    count = 0
    for count, row in enumerate(rows, start=1):
        event_id = str(row.get("event_id", ""))
        problem = _recompute(row)
        if problem is not None:
            if not broken:  # records arrive in file order: the first one found is the first
                broken.append(Finding(count, event_id, problem))
            continue
        links[str(row["tenant_id"])].append(
            _Link(str(row["recorded_at"]), event_id, row["prev_hash"], str(row["event_hash"]), count)
        )

    gaps: list[Finding] = []
    for tenant_links in links.values():
        tenant_links.sort()
        by_hash = {link.event_hash: link for link in tenant_links}
        seen_ids: set[str] = set()
        previous: _Link | None = None
        for link in tenant_links:
            problem = None
            if link.event_id in seen_ids:
                problem = "event_id appears twice"
            elif previous is None:
                if link.prev_hash is not None and link.prev_hash in by_hash:
                    problem = "prev_hash names a later event of this tenant (records reordered)"
            elif link.prev_hash == previous.event_hash:
                pass
            elif link.prev_hash is None:
                problem = f"chain restarts (no prev_hash) after event {previous.event_id}"
            elif link.prev_hash in by_hash:
                problem = (
                    f"prev_hash names event {by_hash[link.prev_hash].event_id}, not the preceding event "
                    f"{previous.event_id} (fork or reordering)"
                )
            else:
                gap = Finding(
                    link.record,
                    link.event_id,
                    f"prev_hash does not match the preceding exported event {previous.event_id} of this tenant "
                    "(events missing, or an event altered and re-hashed)",
                )
                if allow_gaps:
                    gaps.append(gap)
                else:
                    problem = gap.reason
            if problem is not None:
                broken.append(Finding(link.record, link.event_id, problem))
            seen_ids.add(link.event_id)
            previous = link

    return VerifyReport(
        records=count,
        tenants=len(links),
        gaps=len(gaps),
        broken=min(broken, key=lambda finding: finding.record) if broken else None,
        first_gap=min(gaps, key=lambda finding: finding.record) if gaps else None,
    )
