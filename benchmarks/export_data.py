"""Benchmark data for the export runner: many audit events with a valid hash chain.

Events are generated deterministically from their index. Their canonical forms (RFC 8785, the
expensive part: the pure-Python JCS encoder) are computed by ``chain.canonical_event`` in a
process pool, the hashes are chained in order in this process (sha256 only), and the rows go in
through COPY with the same bulk path the tests use (tests/support/export_fixtures.bulk_append).
The benchmark verifies a sample export with ``verify`` afterwards, which proves the chain valid.

    python -m benchmarks.export_data --database-url postgresql://... --rows 1000000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tests.support.export_fixtures import EventSpec, bulk_append

BENCH_TENANT = uuid.UUID("b3a1c0de-0000-4000-8000-000000000001")
NOISE_TENANT = uuid.UUID("b3a1c0de-0000-4000-8000-000000000002")
START = datetime(2024, 3, 1, tzinfo=UTC)
STEP = timedelta(seconds=2)  # 1,000,000 events span 23 days: one export window
CHUNK = 20_000
NOISE_EVERY = 50  # one event of another tenant after every 50th: the tenant filter has something to skip

ACTORS = [f"user-{n}@example.com" for n in range(40)] + ["svc-billing", "agent:triage-bot"]
ACTOR_TYPES = {"svc-billing": "system", "agent:triage-bot": "agent"}
EVENT_TYPES = ("data.record_viewed", "data.record_updated", "auth.signin", "workspace.member_added", "mcp.tool_called")
SOURCES = ("api", "web", "mcp-gateway")


def event_at(index: int, tenant: uuid.UUID = BENCH_TENANT) -> EventSpec:
    """The index-th generated event of ``tenant`` (the same on every run)."""
    rng = random.Random(f"{tenant}:{index}")
    actor = ACTORS[rng.randrange(len(ACTORS))]
    occurred = START + STEP * index
    return EventSpec(
        tenant_id=tenant,
        event_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        occurred_at=occurred,
        recorded_at=occurred + timedelta(milliseconds=rng.randrange(1, 900)),
        actor=actor,
        actor_type=ACTOR_TYPES.get(actor, "user"),
        source=SOURCES[rng.randrange(len(SOURCES))],
        event_type=EVENT_TYPES[rng.randrange(len(EVENT_TYPES))],
        payload={
            "requestId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            "resource": {"type": "document", "id": f"doc-{rng.randrange(10**6)}"},
            "change": {"field": "title", "to": 'Q1 "final", v2' if rng.random() < 0.2 else "Q1 draft"},
            "durationMs": rng.randrange(1, 5000),
        },
    )


def generate_chunk(bounds: tuple[int, int]) -> tuple[list[EventSpec], list[bytes]]:
    specs = []
    for index in range(*bounds):
        specs.append(event_at(index))
        if index % NOISE_EVERY == NOISE_EVERY - 1:
            specs.append(event_at(index, NOISE_TENANT))
    return specs, [spec.canonical() for spec in specs]


def chunks(total: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, CHUNK):
        yield start, min(start + CHUNK, total)


def bench_event_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM compliance.audit_events WHERE tenant_id = %s", (BENCH_TENANT,)).fetchone()
    return int(row[0]) if row else 0


def generate(database_url: str, rows: int, *, workers: int | None = None) -> float:
    """Write ``rows`` events of the benchmark tenant (and 1 in 50 more of another); return seconds."""
    started = time.monotonic()
    workers = workers or max(1, (os.cpu_count() or 2))
    # fork: the workers inherit the imported modules instead of re-importing them.
    with (
        multiprocessing.get_context("fork").Pool(workers) as pool,
        psycopg.connect(database_url, autocommit=True) as conn,
    ):
        for specs, canonicals in pool.imap(generate_chunk, chunks(rows)):
            bulk_append(conn, specs, canonicals)
        conn.execute("VACUUM ANALYZE compliance.audit_events")
    return time.monotonic() - started


def window_end(rows: int) -> datetime:
    """The exclusive end of the window holding the first ``rows`` events of the benchmark tenant."""
    return START + STEP * rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    seconds = generate(args.database_url, args.rows)
    print(f"{args.rows} events of tenant {BENCH_TENANT} written in {seconds:.1f} s")


if __name__ == "__main__":
    main()
