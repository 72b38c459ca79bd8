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

With the export's manifest (manifest.py: the job row's ``manifest``, or the sidecar object
``<key>.manifest.json``), the file is also checked against what the database measured when it
wrote it, each problem reported on its own with a code: ``SHA256_MISMATCH`` (the bytes differ),
``COUNT_MISMATCH`` (rows in the file or per tenant), ``MISSING_HEAD`` (a tenant's first record in
chain order is not the manifest's: records dropped from the start), ``MISSING_TAIL`` (its last
record is not the manifest's: records dropped from the end), ``LINKS_MISSING`` (more cut links
than the export's scope makes: records dropped in between). Gaps that the manifest accounts for
(a backdated event whose chain neighbour lies outside the window, events a filter left out)
are not broken links, so an intact export always verifies; ``allow_gaps`` is not needed.
A file or manifest that is not what it claims gives a finding or a VerifyError, never a traceback.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
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
class ManifestFinding:
    code: str  # SHA256_MISMATCH, COUNT_MISMATCH, MISSING_HEAD, MISSING_TAIL, LINKS_MISSING
    message: str

    def describe(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class VerifyReport:
    records: int
    tenants: int
    gaps: int
    broken: Finding | None
    first_gap: Finding | None
    manifest_findings: tuple[ManifestFinding, ...] = ()

    @property
    def ok(self) -> bool:
        return self.broken is None and not self.manifest_findings


_HASH = re.compile(r"^[0-9a-f]{64}$")


def read_manifest(path: Path) -> dict[str, Any]:
    """Load and check the shape of a manifest file; VerifyError when it is not one."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VerifyError(f"manifest {path} is not readable JSON: {exc}") from exc
    return check_manifest(manifest)


def check_manifest(manifest: Any) -> dict[str, Any]:
    def bad(why: str) -> VerifyError:
        return VerifyError(f"not an export manifest: {why}")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    if not isinstance(manifest.get("rows"), int) or manifest["rows"] < 0:
        raise bad("rows is not a count")
    if not isinstance(manifest.get("sha256"), str) or not _HASH.match(manifest["sha256"]):
        raise bad("sha256 is not a SHA-256 hex digest")
    tenants = manifest.get("tenants")
    if not isinstance(tenants, dict):
        raise bad("tenants is not an object")
    for tenant, summary in tenants.items():
        ok = (
            isinstance(summary, dict)
            and isinstance(summary.get("rows"), int)
            and isinstance(summary.get("gaps"), int)
            and isinstance(summary.get("head"), dict)
            and isinstance(summary.get("tail"), dict)
            and isinstance(summary["head"].get("event_id"), str)
            and (summary["head"].get("prev_hash") is None or isinstance(summary["head"].get("prev_hash"), str))
            and isinstance(summary["tail"].get("event_id"), str)
            and isinstance(summary["tail"].get("event_hash"), str)
        )
        if not ok:
            raise bad(f"tenant {tenant!r} has no rows/gaps/head/tail of the expected types")
    return manifest


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


def verify_file(
    path: Path,
    *,
    file_format: str | None = None,
    allow_gaps: bool = False,
    manifest: Mapping[str, Any] | None = None,
) -> VerifyReport:
    file_format = file_format or detect_format(path)
    if file_format not in ("csv", "ndjson"):
        raise VerifyError(f"unknown format {file_format!r} (csv or ndjson)")
    sha256 = None
    if manifest is not None:
        manifest = check_manifest(manifest)
        digest = hashlib.sha256()
        with path.open("rb") as raw:
            for chunk in iter(lambda: raw.read(1 << 20), b""):
                digest.update(chunk)
        sha256 = digest.hexdigest()
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = read_csv(handle) if file_format == "csv" else read_ndjson(handle)
            return verify_records(rows, allow_gaps=allow_gaps, manifest=manifest, sha256=sha256)
    except UnicodeDecodeError as exc:
        raise VerifyError(f"{path} is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise VerifyError(f"{path} is not a readable CSV file: {exc}") from exc


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


def verify_records(
    rows: Iterable[Mapping[str, Any]],
    *,
    allow_gaps: bool = False,
    manifest: Mapping[str, Any] | None = None,
    sha256: str | None = None,
) -> VerifyReport:
    if manifest is not None:
        allow_gaps = True  # counted per tenant against the manifest instead
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
    gaps_by_tenant: dict[str, list[Finding]] = defaultdict(list)
    for tenant, tenant_links in links.items():
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
                    gaps_by_tenant[tenant].append(gap)
                else:
                    problem = gap.reason
            if problem is not None:
                broken.append(Finding(link.record, link.event_id, problem))
            seen_ids.add(link.event_id)
            previous = link

    findings: tuple[ManifestFinding, ...] = ()
    if manifest is not None:
        findings = tuple(_against_manifest(manifest, count, sha256, links, gaps_by_tenant))
    return VerifyReport(
        records=count,
        tenants=len(links),
        gaps=len(gaps),
        broken=min(broken, key=lambda finding: finding.record) if broken else None,
        first_gap=min(gaps, key=lambda finding: finding.record) if gaps else None,
        manifest_findings=findings,
    )


def _against_manifest(
    manifest: Mapping[str, Any],
    count: int,
    sha256: str | None,
    links: Mapping[str, list[_Link]],
    gaps_by_tenant: Mapping[str, list[Finding]],
) -> Iterator[ManifestFinding]:
    if sha256 is not None and sha256 != manifest["sha256"]:
        yield ManifestFinding("SHA256_MISMATCH", f"the file's SHA-256 is {sha256}, the manifest's {manifest['sha256']}")
    if count != manifest["rows"]:
        yield ManifestFinding("COUNT_MISMATCH", f"the file has {count} records, the manifest {manifest['rows']}")
    expected: Mapping[str, Any] = manifest["tenants"]
    for tenant in sorted(set(expected) | set(links)):
        summary = expected.get(tenant)
        tenant_links = links.get(tenant, [])  # sorted in chain order above
        if summary is None:
            yield ManifestFinding("COUNT_MISMATCH", f"tenant {tenant}: {len(tenant_links)} records not in the manifest")
            continue
        if len(tenant_links) != summary["rows"]:
            yield ManifestFinding(
                "COUNT_MISMATCH", f"tenant {tenant}: {len(tenant_links)} records, the manifest {summary['rows']}"
            )
        if not tenant_links:
            continue
        head, tail = tenant_links[0], tenant_links[-1]
        if (head.event_id, head.prev_hash) != (summary["head"]["event_id"], summary["head"]["prev_hash"]):
            yield ManifestFinding(
                "MISSING_HEAD",
                f"tenant {tenant}: the chain starts at event {head.event_id}, the manifest's first event is "
                f"{summary['head']['event_id']} (records missing at the start)",
            )
        if (tail.event_id, tail.event_hash) != (summary["tail"]["event_id"], summary["tail"]["event_hash"]):
            yield ManifestFinding(
                "MISSING_TAIL",
                f"tenant {tenant}: the chain ends at event {tail.event_id}, the manifest's last event is "
                f"{summary['tail']['event_id']} (records missing at the end)",
            )
        found = gaps_by_tenant.get(tenant, [])
        if len(found) > summary["gaps"]:
            yield ManifestFinding(
                "LINKS_MISSING",
                f"tenant {tenant}: {len(found)} links break where the export's scope breaks {summary['gaps']} "
                f"(records missing in between; first break at {found[0].describe()})",
            )
