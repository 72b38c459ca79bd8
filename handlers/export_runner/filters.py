"""Export filters: validation, and the parameterised COPY statement they become (pure).

A filter is a JSON object with these members (camelCase, as the API sends them):
- ``since`` (inclusive) and ``until`` (exclusive): ISO 8601 timestamps with a zone, required,
  ``until > since``, at most 90 days apart;
- ``tenantId``: only for an ALL_TENANTS job, narrowing it to one tenant;
- ``actorType``: user | system | agent (any case);
- ``eventType``: ``DATA_EXPORT_INITIATED`` (API form) or ``data.export_initiated``.
Anything else is refused with a code, so a typo never silently widens an export.

Values reach SQL only as parameters. COPY cannot be prepared with bind parameters, so psycopg
merges them client-side as quoted literals (libpq escaping, the ClientCursor path); every value
is also validated to a UUID, a timestamp or a fixed vocabulary before that.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql

from handlers.export_runner.audit_writer import ACTOR_TYPES, EVENT_TYPE_PATTERN, EVENT_TYPE_PREFIXES
from handlers.export_runner.chain import SQL_TIMESTAMP_FORMAT

ALL_TENANTS = uuid.UUID("00000000-0000-0000-0000-000000000000")
MAX_FILTER_BYTES = 4096
MAX_WINDOW = timedelta(days=90)
FILTER_FIELDS = ("since", "until", "tenantId", "actorType", "eventType")
API_EVENT_TYPE = re.compile(r"^[A-Z]+(_[A-Z0-9]+)+$")
CSV_HEADER = (
    "event_id",
    "tenant_id",
    "occurred_at",
    "recorded_at",
    "actor",
    "actor_type",
    "source",
    "event_type",
    "event_hash",
    "prev_hash",
    "payload_json",
)


class FilterError(ValueError):
    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = dict(details or {})


@dataclass(frozen=True)
class ExportFormat:
    name: str  # as stored in export_jobs.format
    extension: str
    content_type: str


FORMATS = {
    "csv": ExportFormat("csv", "csv", "text/csv"),
    "json": ExportFormat("json", "ndjson", "application/x-ndjson"),
}


def parse_format(value: object) -> ExportFormat:
    if isinstance(value, str) and value.lower() in FORMATS:
        return FORMATS[value.lower()]
    raise FilterError("FORMAT_UNSUPPORTED", f"format must be one of {sorted(FORMATS)}, got {value!r}")


@dataclass(frozen=True)
class ExportFilter:
    since: datetime
    until: datetime
    tenant_id: uuid.UUID | None = None
    actor_type: str | None = None
    event_type: str | None = None  # dotted lower case, as stored

    def as_json(self) -> dict[str, str]:
        """The normalised filter, as stored on the job (parse_filter accepts it back)."""
        out = {"since": _iso(self.since), "until": _iso(self.until)}
        if self.tenant_id is not None:
            out["tenantId"] = str(self.tenant_id)
        if self.actor_type is not None:
            out["actorType"] = self.actor_type
        if self.event_type is not None:
            out["eventType"] = self.event_type
        return out


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def filter_size(raw: Mapping[str, Any] | str | bytes) -> int:
    if isinstance(raw, bytes):
        return len(raw)
    if isinstance(raw, str):
        return len(raw.encode("utf-8"))
    return len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8"))


def parse_filter(raw: Mapping[str, Any] | str | bytes, *, job_tenant_id: uuid.UUID) -> ExportFilter:
    size = filter_size(raw)
    if size > MAX_FILTER_BYTES:
        raise FilterError(
            "FILTER_TOO_LARGE",
            f"filter is {size} bytes, the limit is {MAX_FILTER_BYTES}",
            {"size": size, "limit": MAX_FILTER_BYTES},
        )
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise FilterError("FILTER_NOT_OBJECT", f"filter is not valid JSON: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise FilterError("FILTER_NOT_OBJECT", "filter must be a JSON object")
    unknown = sorted(str(key) for key in raw if key not in FILTER_FIELDS)
    if unknown:
        raise FilterError(
            "FILTER_UNKNOWN_FIELD",
            f"unknown filter field(s) {', '.join(unknown)}; allowed: {', '.join(FILTER_FIELDS)}",
            {"fields": unknown},
        )
    since = _timestamp(raw, "since")
    until = _timestamp(raw, "until")
    if until <= since:
        raise FilterError("FILTER_RANGE_INVALID", "until must be later than since (since inclusive, until exclusive)")
    if until - since > MAX_WINDOW:
        days = (until - since) / timedelta(days=1)
        raise FilterError(
            "FILTER_RANGE_TOO_WIDE",
            f"the window spans {days:.2f} days, the limit is {MAX_WINDOW.days}",
            {"days": round(days, 2), "limit": MAX_WINDOW.days},
        )
    return ExportFilter(
        since=since,
        until=until,
        tenant_id=_tenant(raw.get("tenantId"), job_tenant_id),
        actor_type=_actor_type(raw.get("actorType")),
        event_type=_event_type(raw.get("eventType")),
    )


def _timestamp(raw: Mapping[str, Any], name: str) -> datetime:
    value = raw.get(name)
    if value is None:
        raise FilterError("FILTER_MISSING_FIELD", f"{name} is required (an ISO 8601 timestamp with a zone)")
    if not isinstance(value, str):
        raise FilterError("FILTER_INVALID_VALUE", f"{name} must be an ISO 8601 string, got {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise FilterError("FILTER_INVALID_VALUE", f"{name} is not an ISO 8601 timestamp: {value!r}") from exc
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise FilterError("FILTER_INVALID_VALUE", f"{name} must include a zone (Z or +hh:mm): {value!r}")
    return moment.astimezone(UTC)


def _tenant(value: object, job_tenant_id: uuid.UUID) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        tenant = uuid.UUID(str(value))
    except ValueError as exc:
        raise FilterError("FILTER_INVALID_VALUE", f"tenantId must be a UUID, got {value!r}") from exc
    if job_tenant_id == ALL_TENANTS:
        return None if tenant == ALL_TENANTS else tenant
    if tenant != job_tenant_id:
        raise FilterError(
            "FILTER_TENANT_NOT_ALLOWED", "tenantId may only narrow an ALL_TENANTS export, not name another tenant"
        )
    return None  # the job's own tenant: the scope already says so


def _actor_type(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in ACTOR_TYPES:
        return value.lower()
    raise FilterError("FILTER_INVALID_VALUE", f"actorType must be one of {sorted(ACTOR_TYPES)}, got {value!r}")


def event_type_from_api(value: str) -> str:
    """``DATA_EXPORT_INITIATED`` -> ``data.export_initiated`` (the prefix is the first word)."""
    prefix, _, rest = value.partition("_")
    return f"{prefix.lower()}.{rest.lower()}"


def _event_type(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        dotted = event_type_from_api(value) if API_EVENT_TYPE.match(value) else value
        if EVENT_TYPE_PATTERN.match(dotted):
            return dotted
    raise FilterError(
        "FILTER_INVALID_VALUE",
        f"eventType must be like DATA_EXPORT_INITIATED or data.export_initiated with a known prefix "
        f"({', '.join(EVENT_TYPE_PREFIXES)}), got {value!r}",
    )


def object_key(job_tenant_id: uuid.UUID, job_id: uuid.UUID, export_format: ExportFormat) -> str:
    prefix = "multi-tenant" if job_tenant_id == ALL_TENANTS else str(job_tenant_id)
    return f"{prefix}/{job_id}.{export_format.extension}"


def where_clause(job_tenant_id: uuid.UUID, flt: ExportFilter) -> tuple[sql.Composed, dict[str, Any]]:
    """Conditions of the export: tenant scope (unless ALL_TENANTS), window and the optional filters."""
    conditions = [sql.SQL("occurred_at >= %(since)s"), sql.SQL("occurred_at < %(until)s")]
    params: dict[str, Any] = {"since": flt.since, "until": flt.until}
    tenant = job_tenant_id if job_tenant_id != ALL_TENANTS else flt.tenant_id
    if tenant is not None:
        conditions.insert(0, sql.SQL("tenant_id = %(tenant_id)s"))
        params["tenant_id"] = tenant
    if flt.actor_type is not None:
        conditions.append(sql.SQL("actor_type = %(actor_type)s"))
        params["actor_type"] = flt.actor_type
    if flt.event_type is not None:
        conditions.append(sql.SQL("event_type = %(event_type)s"))
        params["event_type"] = flt.event_type
    return sql.SQL(" AND ").join(conditions), params


def _utc(column: str) -> sql.Composed:
    return sql.SQL("to_char({} AT TIME ZONE 'UTC', {})").format(
        sql.Identifier(column), sql.Literal(SQL_TIMESTAMP_FORMAT)
    )


# CSV: Postgres formats every row. COPY's CSV quoting is RFC 4180's: a field containing the
# delimiter, a double quote, CR or LF is quoted and inner quotes are doubled; NULL (only
# prev_hash can be NULL) is an unquoted empty field. The schema forbids empty strings, so no
# field ever needs COPY's `""` for an empty value.
_CSV_COLUMNS = sql.SQL(", ").join(
    [
        sql.SQL("event_id"),
        sql.SQL("tenant_id"),
        sql.SQL("{} AS occurred_at").format(_utc("occurred_at")),
        sql.SQL("{} AS recorded_at").format(_utc("recorded_at")),
        sql.SQL("actor, actor_type, source, event_type, event_hash, prev_hash"),
        sql.SQL("payload::text AS payload_json"),
    ]
)

# NDJSON: one JSON text per row, assembled by Postgres. Strings go through to_json (JSON
# escaping, control characters as \uXXXX); UUIDs and the timestamp rendering contain no
# character that needs escaping; the payload is jsonb's own JSON text.
_NDJSON_LINE = sql.SQL(
    """'{{"event_id":"' || event_id::text || '","tenant_id":"' || tenant_id::text
    || '","occurred_at":"' || {occurred} || '","recorded_at":"' || {recorded}
    || '","actor":' || to_json(actor)::text || ',"actor_type":' || to_json(actor_type)::text
    || ',"source":' || to_json(source)::text || ',"event_type":' || to_json(event_type)::text
    || ',"event_hash":' || to_json(event_hash)::text
    || ',"prev_hash":' || coalesce(to_json(prev_hash)::text, 'null')
    || ',"payload":' || payload::text || '}}'"""
).format(occurred=_utc("occurred_at"), recorded=_utc("recorded_at"))

# COPY's text format would escape every backslash of the JSON; CSV format with a quote and a
# delimiter that JSON text can never contain raw (control characters are always escaped in
# JSON) passes each line through byte for byte.
_COPY_OPTIONS = {
    "csv": sql.SQL("(FORMAT csv, HEADER true)"),
    "json": sql.SQL("(FORMAT csv, DELIMITER E'\\x1e', QUOTE E'\\x1f')"),
}


def export_select(
    job_tenant_id: uuid.UUID, flt: ExportFilter, export_format: ExportFormat
) -> tuple[sql.Composed, dict[str, Any]]:
    where, params = where_clause(job_tenant_id, flt)
    columns = _CSV_COLUMNS if export_format.name == "csv" else _NDJSON_LINE
    # ORDER BY names the table's columns: a bare occurred_at would mean the to_char() output
    # column of the CSV select list and force a sort instead of an index-ordered scan.
    query = sql.SQL(
        "SELECT {} FROM compliance.audit_events WHERE {} ORDER BY audit_events.occurred_at, audit_events.event_id"
    ).format(columns, where)
    return query, params


def export_copy_statement(
    job_tenant_id: uuid.UUID, flt: ExportFilter, export_format: ExportFormat
) -> tuple[sql.Composed, dict[str, Any]]:
    """``COPY (SELECT ...) TO STDOUT`` producing the export file's bytes, and its parameters."""
    select, params = export_select(job_tenant_id, flt, export_format)
    statement = sql.SQL("COPY ({}) TO STDOUT WITH {}").format(select, _COPY_OPTIONS[export_format.name])
    return statement, params
