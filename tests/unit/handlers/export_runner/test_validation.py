import uuid
from datetime import datetime

import pytest

from handlers.export_runner.audit_writer import AuditEvent, AuditEventError, validate_audit_event
from handlers.export_runner.filters import ALL_TENANTS
from handlers.export_runner.producer import ExportRequest, ExportRequestError, validate_request

WINDOW = {"since": "2024-01-01T00:00:00Z", "until": "2024-02-01T00:00:00Z"}
TENANT = uuid.UUID("7f3c2b1a-0000-4000-8000-000000000001")


def request(**overrides: object) -> ExportRequest:
    fields: dict[str, object] = {
        "tenant_id": str(TENANT),
        "requested_by_actor_id": "alice",
        "filter": WINDOW,
        "format": "csv",
    }
    fields.update(overrides)
    return ExportRequest(**fields)  # type: ignore[arg-type]


def test_a_valid_request() -> None:
    valid = validate_request(request(format="JSON"))
    assert valid.tenant_id == TENANT and valid.format.name == "json" and valid.actor_type == "user"


def test_all_tenants_by_name_or_sentinel() -> None:
    assert validate_request(request(tenant_id="ALL_TENANTS", cross_tenant=True)).tenant_id == ALL_TENANTS
    assert validate_request(request(tenant_id=str(ALL_TENANTS), cross_tenant=True)).tenant_id == ALL_TENANTS


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"tenant_id": "acme"}, "INVALID_TENANT_ID"),
        ({"requested_by_actor_id": ""}, "INVALID_ACTOR_ID"),
        ({"requested_by_actor_id": "a" * 257}, "INVALID_ACTOR_ID"),
        ({"requested_by_actor_id": "nul\x00byte"}, "INVALID_ACTOR_ID"),
        ({"actor_type": "robot"}, "INVALID_ACTOR_TYPE"),
        ({"tenant_id": "ALL_TENANTS"}, "CROSS_TENANT_NOT_ALLOWED"),
        ({"tenant_id": "ALL_TENANTS", "cross_tenant": True, "actor_type": "agent"}, "CROSS_TENANT_NOT_ALLOWED"),
        ({"format": "xml"}, "FORMAT_UNSUPPORTED"),
        ({"filter": {**WINDOW, "where": "1=1"}}, "FILTER_UNKNOWN_FIELD"),
        ({"filter": {"since": "2024-01-01T00:00:00Z", "until": "2024-06-01T00:00:00Z"}}, "FILTER_RANGE_TOO_WIDE"),
        ({"filter": {"since": "2024-01-02T00:00:00Z", "until": "2024-01-01T00:00:00Z"}}, "FILTER_RANGE_INVALID"),
        ({"filter": {**WINDOW, "eventType": "A" * 5000}}, "FILTER_TOO_LARGE"),
    ],
)
def test_refusals_carry_a_code(overrides: dict[str, object], code: str) -> None:
    with pytest.raises(ExportRequestError) as caught:
        validate_request(request(**overrides))
    assert caught.value.code == code
    assert caught.value.as_json()["code"] == code


def event(**overrides: object) -> AuditEvent:
    fields: dict[str, object] = {
        "tenant_id": TENANT,
        "actor": "alice",
        "actor_type": "user",
        "source": "api",
        "event_type": "auth.signin",
        "payload": {},
    }
    fields.update(overrides)
    return AuditEvent(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tenant_id": "acme"}, "tenant_id must be a UUID"),
        ({"actor": ""}, "actor must be a non-empty string"),
        ({"actor_type": "robot"}, "actor_type must be one of"),
        ({"event_type": "Auth.SignIn"}, "event_type must be dotted lower case"),
        ({"event_type": "billing.paid"}, "known prefix"),
        ({"payload": ["not", "an", "object"]}, "payload must be a JSON object"),
        ({"payload": {"k": ["ok", "nul\x00"]}}, r"payload.k\[1\] contains a NUL"),
        ({"source": "a\x00"}, "source contains a NUL"),
        ({"occurred_at": datetime(2024, 1, 1)}, "timezone-aware"),
    ],
)
def test_audit_events_are_validated_before_touching_the_chain(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(AuditEventError, match=message):
        validate_audit_event(event(**overrides))
