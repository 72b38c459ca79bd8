import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from handlers.export_runner import chain
from handlers.export_runner.filters import CSV_HEADER
from handlers.export_runner.verify import VerifyError, read_csv, read_ndjson, verify_file, verify_records

TENANT_A = "7f3c2b1a-0000-4000-8000-00000000000a"
TENANT_B = "7f3c2b1a-0000-4000-8000-00000000000b"


def chain_rows(tenant: str, count: int, *, start: int = 0, prev_hash: str | None = None) -> list[dict[str, Any]]:
    """Exported records of one tenant with a valid chain, as verify reads them."""
    rows = []
    for i in range(start, start + count):
        row: dict[str, Any] = {
            "event_id": f"00000000-0000-4000-8000-{i:012d}",
            "tenant_id": tenant,
            "occurred_at": f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}.000000Z",
            "recorded_at": f"2024-01-01T01:{i // 60:02d}:{i % 60:02d}.000001Z",
            "actor": f'user "{i}", admin',
            "actor_type": "user",
            "source": "api\r\n",
            "event_type": "data.record_viewed",
            "payload": {"seq": i, "text": 'quote " comma , backslash \\ newline \n', "nested": {"ok": True}},
            "prev_hash": prev_hash,
        }
        canonical = chain.canonical_event(**{k: row[k] for k in chain.CANONICAL_FIELDS})
        row["event_hash"] = chain.event_hash(prev_hash, canonical)
        prev_hash = row["event_hash"]
        rows.append(row)
    return rows


def rehash(row: dict[str, Any]) -> None:
    row["event_hash"] = chain.event_hash(
        row["prev_hash"], chain.canonical_event(**{k: row[k] for k in chain.CANONICAL_FIELDS})
    )


def test_an_intact_chain_verifies() -> None:
    report = verify_records(chain_rows(TENANT_A, 5))
    assert report.ok and report.records == 5 and report.tenants == 1 and report.gaps == 0


def test_interleaved_tenants_in_export_order_verify() -> None:
    a, b = chain_rows(TENANT_A, 4), chain_rows(TENANT_B, 4)
    # Export order (occurred_at) differs from chain order (recorded_at): shuffle it.
    mixed = [a[2], b[0], a[0], b[3], a[1], b[1], a[3], b[2]]
    assert verify_records(mixed).ok


def test_a_changed_field_is_the_first_broken_link() -> None:
    rows = chain_rows(TENANT_A, 5)
    rows[2]["payload"] = {**rows[2]["payload"], "seq": 99}
    report = verify_records(rows)
    assert report.broken is not None
    assert (report.broken.record, report.broken.event_id) == (3, rows[2]["event_id"])
    assert "does not match the record's content" in report.broken.reason


def test_a_changed_and_rehashed_event_breaks_its_successors_link() -> None:
    rows = chain_rows(TENANT_A, 5)
    rows[1]["actor"] = "mallory"
    rehash(rows[1])
    report = verify_records(rows)
    assert report.broken is not None and report.broken.record == 3
    assert "does not match the preceding exported event" in report.broken.reason


def test_gaps_are_broken_unless_allowed() -> None:
    rows = chain_rows(TENANT_A, 6)
    del rows[3]
    assert verify_records(rows).broken is not None
    lenient = verify_records(rows, allow_gaps=True)
    assert lenient.ok and lenient.gaps == 1 and lenient.first_gap is not None and lenient.first_gap.record == 4


def test_a_window_starting_mid_chain_is_intact() -> None:
    rows = chain_rows(TENANT_A, 6)[2:]
    assert verify_records(rows).ok


def test_forks_and_restarts_are_broken_even_with_gaps_allowed() -> None:
    rows = chain_rows(TENANT_A, 4)
    forked = dict(rows[3], prev_hash=rows[1]["event_hash"])
    rehash(forked)
    report = verify_records([*rows[:3], forked], allow_gaps=True)
    assert report.broken is not None and "fork or reordering" in report.broken.reason

    restarted = dict(rows[3], prev_hash=None)
    rehash(restarted)
    report = verify_records([*rows[:3], restarted], allow_gaps=True)
    assert report.broken is not None and "chain restarts" in report.broken.reason


def test_duplicated_events_are_broken() -> None:
    rows = chain_rows(TENANT_A, 3)
    report = verify_records([*rows, dict(rows[2])], allow_gaps=True)
    assert report.broken is not None and "appears twice" in report.broken.reason


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        writer.writerow(
            [row[name] if name != "prev_hash" else row[name] or "" for name in CSV_HEADER[:-1]]
            + [json.dumps(row["payload"])]
        )
    return out.getvalue()


def to_ndjson(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.mark.parametrize(("suffix", "render"), [(".csv", to_csv), (".ndjson", to_ndjson)])
def test_files_verify_and_report_the_tampered_record(tmp_path: Path, suffix: str, render: Any) -> None:
    rows = chain_rows(TENANT_A, 4)
    good = tmp_path / f"good{suffix}"
    good.write_text(render(rows), encoding="utf-8", newline="")
    assert verify_file(good).ok
    rows[1]["source"] = "forged"
    bad = tmp_path / f"bad{suffix}"
    bad.write_text(render(rows), encoding="utf-8", newline="")
    report = verify_file(bad)
    assert report.broken is not None and report.broken.record == 2


def test_a_csv_with_another_header_is_not_an_export() -> None:
    with pytest.raises(VerifyError, match="header"):
        list(read_csv(io.StringIO("a,b,c\n1,2,3\n")))


def test_unreadable_records_are_broken_links() -> None:
    lines = to_ndjson(chain_rows(TENANT_A, 2)) + "{not json\n"
    report = verify_records(read_ndjson(io.StringIO(lines)))
    assert report.broken is not None and report.broken.record == 3 and "not JSON" in report.broken.reason
    short_row = to_csv(chain_rows(TENANT_A, 1)) + "only,three,fields\n"
    report = verify_records(read_csv(io.StringIO(short_row)))
    assert report.broken is not None and "fields" in report.broken.reason
