import json
import uuid
from datetime import UTC, datetime

import pytest

from handlers.export_runner.filters import (
    ALL_TENANTS,
    FORMATS,
    MAX_FILTER_BYTES,
    ExportFilter,
    FilterError,
    event_type_from_api,
    export_copy_statement,
    object_key,
    parse_filter,
    parse_format,
    where_clause,
)

TENANT = uuid.UUID("7f3c2b1a-0000-4000-8000-000000000001")
OTHER = uuid.UUID("7f3c2b1a-0000-4000-8000-000000000002")
WINDOW = {"since": "2024-01-01T00:00:00Z", "until": "2024-02-01T00:00:00Z"}


def code_of(raw: object, tenant: uuid.UUID = TENANT) -> str:
    with pytest.raises(FilterError) as caught:
        parse_filter(raw, job_tenant_id=tenant)  # type: ignore[arg-type]
    return caught.value.code


def test_a_full_filter_is_normalised() -> None:
    parsed = parse_filter(
        {**WINDOW, "actorType": "AGENT", "eventType": "DATA_EXPORT_INITIATED", "tenantId": str(OTHER)},
        job_tenant_id=ALL_TENANTS,
    )
    assert parsed == ExportFilter(
        since=datetime(2024, 1, 1, tzinfo=UTC),
        until=datetime(2024, 2, 1, tzinfo=UTC),
        tenant_id=OTHER,
        actor_type="agent",
        event_type="data.export_initiated",
    )
    assert parse_filter(parsed.as_json(), job_tenant_id=ALL_TENANTS) == parsed


def test_filters_arrive_as_json_text_too() -> None:
    assert parse_filter(json.dumps(WINDOW), job_tenant_id=TENANT).since == datetime(2024, 1, 1, tzinfo=UTC)


def test_offsets_are_converted_to_utc() -> None:
    parsed = parse_filter({"since": "2024-01-01T02:00:00+02:00", "until": "2024-01-02T00:00:00Z"}, job_tenant_id=TENANT)
    assert parsed.since == datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("api", "stored"),
    [
        ("DATA_EXPORT_INITIATED", "data.export_initiated"),
        ("AUTH_SIGNIN", "auth.signin"),
        ("MCP_TOOL_CALLED", "mcp.tool_called"),
        ("approval.request_granted", "approval.request_granted"),
    ],
)
def test_event_types_convert_from_upper_underscore_to_dotted(api: str, stored: str) -> None:
    assert parse_filter({**WINDOW, "eventType": api}, job_tenant_id=TENANT).event_type == stored


def test_event_type_codec() -> None:
    assert event_type_from_api("WORKSPACE_MEMBER_ADDED") == "workspace.member_added"


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter({**WINDOW, "actor": "alice", "eventTypes": []}, job_tenant_id=TENANT)
    assert caught.value.code == "FILTER_UNKNOWN_FIELD"
    assert caught.value.details == {"fields": ["actor", "eventTypes"]}


def test_a_window_over_90_days_is_refused_with_its_size() -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter({"since": "2024-01-01T00:00:00Z", "until": "2024-04-01T00:00:00.000001Z"}, job_tenant_id=TENANT)
    assert caught.value.code == "FILTER_RANGE_TOO_WIDE"
    assert caught.value.details["limit"] == 90
    assert parse_filter({"since": "2024-01-01T00:00:00Z", "until": "2024-03-31T00:00:00Z"}, job_tenant_id=TENANT)


@pytest.mark.parametrize("until", ["2024-01-01T00:00:00Z", "2023-12-31T23:59:59Z"])
def test_until_must_be_after_since(until: str) -> None:
    assert code_of({"since": "2024-01-01T00:00:00Z", "until": until}) == "FILTER_RANGE_INVALID"


def test_a_filter_over_4_kb_is_refused_before_anything_else() -> None:
    oversized = {**WINDOW, "eventType": "x" * MAX_FILTER_BYTES, "bogus": 1}
    with pytest.raises(FilterError) as caught:
        parse_filter(oversized, job_tenant_id=TENANT)
    assert caught.value.code == "FILTER_TOO_LARGE"
    assert caught.value.details["limit"] == 4096
    assert code_of(json.dumps(oversized)) == "FILTER_TOO_LARGE"


def test_size_counts_utf8_bytes() -> None:
    # 1400 three-byte characters: under 4096 characters, over 4096 bytes.
    assert code_of({**WINDOW, "eventType": "€" * 1400}) == "FILTER_TOO_LARGE"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ({"until": "2024-02-01T00:00:00Z"}, "FILTER_MISSING_FIELD"),
        ({"since": "2024-01-01T00:00:00Z"}, "FILTER_MISSING_FIELD"),
        ({"since": "2024-01-01T00:00:00", "until": "2024-02-01T00:00:00Z"}, "FILTER_INVALID_VALUE"),
        ({"since": "yesterday", "until": "2024-02-01T00:00:00Z"}, "FILTER_INVALID_VALUE"),
        ({"since": 1704067200, "until": "2024-02-01T00:00:00Z"}, "FILTER_INVALID_VALUE"),
        ({**WINDOW, "actorType": "robot"}, "FILTER_INVALID_VALUE"),
        ({**WINDOW, "eventType": "BILLING_INVOICE_PAID"}, "FILTER_INVALID_VALUE"),
        ({**WINDOW, "eventType": "data.x'; DROP TABLE compliance.audit_events; --"}, "FILTER_INVALID_VALUE"),
        ({**WINDOW, "tenantId": "not-a-uuid"}, "FILTER_INVALID_VALUE"),
        ({**WINDOW, "tenantId": str(OTHER)}, "FILTER_TENANT_NOT_ALLOWED"),
        ([WINDOW], "FILTER_NOT_OBJECT"),
        ("{not json", "FILTER_NOT_OBJECT"),
    ],
)
def test_bad_values_are_refused_with_a_code(raw: object, code: str) -> None:
    assert code_of(raw) == code


def test_a_tenant_job_may_repeat_its_own_tenant() -> None:
    assert parse_filter({**WINDOW, "tenantId": str(TENANT)}, job_tenant_id=TENANT).tenant_id is None


def test_nulls_mean_absent_for_optional_fields() -> None:
    parsed = parse_filter({**WINDOW, "actorType": None, "eventType": None, "tenantId": None}, job_tenant_id=TENANT)
    assert (parsed.actor_type, parsed.event_type, parsed.tenant_id) == (None, None, None)


def test_formats() -> None:
    assert parse_format("CSV") == FORMATS["csv"]
    assert parse_format("json").extension == "ndjson"
    assert parse_format("json").content_type == "application/x-ndjson"
    with pytest.raises(FilterError) as caught:
        parse_format("xlsx")
    assert caught.value.code == "FORMAT_UNSUPPORTED"


def test_object_keys() -> None:
    job = uuid.UUID("0b8e9a4c-2f1d-4c3b-9a77-5d2e8f1c6a10")
    assert object_key(TENANT, job, FORMATS["csv"]) == f"{TENANT}/{job}.csv"
    assert object_key(ALL_TENANTS, job, FORMATS["json"]) == f"multi-tenant/{job}.ndjson"


def test_tenant_jobs_are_scoped_to_their_tenant_by_parameter() -> None:
    flt = parse_filter({**WINDOW, "actorType": "user", "eventType": "AUTH_SIGNIN"}, job_tenant_id=TENANT)
    where, params = where_clause(TENANT, flt)
    text = where.as_string()
    assert text == (
        "tenant_id = %(tenant_id)s AND occurred_at >= %(since)s AND occurred_at < %(until)s"
        " AND actor_type = %(actor_type)s AND event_type = %(event_type)s"
    )
    assert params == {
        "tenant_id": TENANT,
        "since": flt.since,
        "until": flt.until,
        "actor_type": "user",
        "event_type": "auth.signin",
    }


def test_all_tenants_jobs_have_no_tenant_condition_unless_the_filter_names_one() -> None:
    unscoped, params = where_clause(ALL_TENANTS, parse_filter(WINDOW, job_tenant_id=ALL_TENANTS))
    assert "tenant_id" not in unscoped.as_string() and "tenant_id" not in params
    narrowed, params = where_clause(
        ALL_TENANTS, parse_filter({**WINDOW, "tenantId": str(OTHER)}, job_tenant_id=ALL_TENANTS)
    )
    assert narrowed.as_string().startswith("tenant_id = %(tenant_id)s") and params["tenant_id"] == OTHER


def test_copy_statements_order_by_table_columns_and_keep_values_out_of_the_text() -> None:
    flt = parse_filter(WINDOW, job_tenant_id=TENANT)
    for export_format in FORMATS.values():
        statement, _ = export_copy_statement(TENANT, flt, export_format)
        text = statement.as_string()
        assert text.startswith("COPY (SELECT ")
        assert "ORDER BY audit_events.occurred_at, audit_events.event_id) TO STDOUT" in text
        assert str(TENANT) not in text and "2024" not in text
    csv_statement, _ = export_copy_statement(TENANT, flt, FORMATS["csv"])
    assert csv_statement.as_string().endswith("(FORMAT csv, HEADER true)")
