"""What a DynamoDB write is billed in write units, its global secondary indexes included: a
model of DynamoDB's published rules, applied to the items as they were before and after.

DynamoDB bills an item write one unit per started KB of the larger of the item before and
after (a transactional write two), and then, for each global secondary index of the table:

- the item in the index neither before nor after: nothing;
- in it after only (a key attribute set) or before only (one removed): one write, a put or a
  delete of the index entry;
- in it both times with a key attribute (its partition or sort key) changed: two writes, the
  delete of the old entry and the put of the new one;
- in it both times, same keys: one write if an attribute the index projects changed (every
  attribute for ``ALL``, ours but dynalite's ``expiry``), else nothing.

An index write costs one unit per started KB of the entry (the whole item for ``ALL``, the
key attributes for ``KEYS_ONLY``). Sizes follow DynamoDB's rule of thumb: attribute names plus
values, strings in UTF-8, numbers about one byte per two digits plus one. A failed conditional
write costs the table's units and no index's. Index writes of a transaction are counted at one
unit a KB, as for any write (the model's assumption: DynamoDB documents the doubling for the
table's items).
"""
from __future__ import annotations

import math
from typing import Any

Raw = dict[str, dict[str, Any]]
"""An item in DynamoDB's wire form: attribute -> {type: value}."""
KB = 1024


def value_size(value: dict[str, Any]) -> int:
    (kind, data), = value.items()
    if kind == "S":
        return len(str(data).encode())
    if kind == "N":
        return len(str(data).lstrip("-").replace(".", "")) // 2 + 1
    if kind == "B":
        return len(data)
    if kind in ("SS", "NS", "BS"):
        return sum(value_size({kind[0]: part}) for part in data)
    if kind == "L":
        return 3 + sum(1 + value_size(part) for part in data)
    if kind == "M":
        return 3 + sum(len(name) + 1 + value_size(part) for name, part in data.items())
    return 1  # BOOL, NULL


def item_size(raw: Raw | None) -> int:
    return 0 if not raw else sum(len(name.encode()) + value_size(value)
                                 for name, value in raw.items())


def units(size: int) -> int:
    """Write units of ``size`` bytes: one per started KB."""
    return max(1, math.ceil(size / KB))


def table_units(old: Raw | None, new: Raw | None, transactional: bool = False) -> int:
    return units(max(item_size(old), item_size(new))) * (2 if transactional else 1)


def index_units(index: dict[str, Any], key: str, old: Raw | None, new: Raw | None) -> int:
    """Write units ``index`` (a ``describe_table`` GlobalSecondaryIndexes entry) costs when
    a write turns ``old`` into ``new`` (None: absent); ``key`` is the table's key attribute."""
    keys = [part["AttributeName"] for part in index["KeySchema"]]

    def entry(raw: Raw | None) -> Raw | None:
        if not raw or any(name not in raw for name in keys):
            return None
        if index["Projection"]["ProjectionType"] == "ALL":
            return raw
        projected = {key, *keys, *index["Projection"].get("NonKeyAttributes", [])}
        return {name: value for name, value in raw.items() if name in projected}

    before, after = entry(old), entry(new)
    if before is None and after is None:
        return 0
    if before is None or after is None:
        return units(item_size(before or after))
    if any(before[name] != after[name] for name in keys):
        return units(item_size(before)) + units(item_size(after))
    return units(max(item_size(before), item_size(after))) if before != after else 0


def write_units(indexes: list[dict[str, Any]], key: str, old: Raw | None, new: Raw | None,
                transactional: bool = False, failed: bool = False
                ) -> tuple[int, dict[str, int]]:
    """The table's write units of one item's write from ``old`` to ``new``, and each index's
    that it writes."""
    table = table_units(old, old if failed else new, transactional)
    if failed:
        return table, {}
    found = {index["IndexName"]: index_units(index, key, old, new) for index in indexes}
    return table, {name: n for name, n in found.items() if n}
