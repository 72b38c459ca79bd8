"""DynamoDB-typed items <-> plain Python values, the one conversion the handlers share.

``to_plain`` also turns boto3's ``Decimal`` numbers into ``int`` (or ``float`` when not
integral), so the result is JSON-ready and compares with plain integers.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_plain(item: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A typed item (``{"n": {"N": "1"}}``) as plain values (``{"n": 1}``); None for no item."""
    if not item:
        return None
    return {name: plain_value(_deserializer.deserialize(value)) for name, value in item.items()}


def plain_value(value: Any) -> Any:
    """A deserialized value with its Decimals turned into int/float, recursively."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {key: plain_value(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return [plain_value(inner) for inner in value]
    if isinstance(value, set):
        return {plain_value(inner) for inner in value}
    return value


def serialize_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Expression attribute values (or item attributes) in DynamoDB's typed form."""
    return {name: _serializer.serialize(value) for name, value in values.items()}
