"""What the claim and atomicity tests share: a one-key table and a clock the test moves."""

from __future__ import annotations

from typing import Any


def create_pk_table(ddb: Any, name: str) -> None:
    """An on-demand table keyed by the string ``pk`` (claims of their own items, race targets)."""
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


class FakeClock:
    """Epoch milliseconds that move only when the test says so (``ClaimStore(clock=...)``)."""

    def __init__(self, now_ms: int = 1_800_000_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms
