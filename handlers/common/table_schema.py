"""What it takes to create one DynamoDB table: keys, indexes, stream, TTL.

Each subsystem describes its tables once with these values (``handlers/<subsystem>/schema.py``);
the constructs create the tables from them (``infra/constructs/encrypted_table.py``) and the tests
create their moto tables from the same values, so a key name cannot drift between the code, the
template and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KeyType = Literal["S", "N"]


@dataclass(frozen=True)
class KeyAttribute:
    name: str
    type: KeyType


@dataclass(frozen=True)
class IndexSchema:
    name: str
    partition_key: KeyAttribute
    sort_key: KeyAttribute | None = None
    projection: Literal["ALL", "KEYS_ONLY"] = "ALL"


@dataclass(frozen=True)
class TableSchema:
    """What the construct and the test tables need to create one table."""

    role: str
    partition_key: KeyAttribute
    sort_key: KeyAttribute | None = None
    stream_view: str | None = None
    ttl_attribute: str | None = None
    indexes: tuple[IndexSchema, ...] = ()
