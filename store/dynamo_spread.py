"""Spread index keys on DynamoDB (``TableSpec.spread``): one index key value becomes
``SPREAD`` partition key values, and a query reads them all and merges them in order.

DynamoDB gives one partition key value of a global secondary index about 1,000 write units a
second, whatever the table's capacity: a status every domain has, a work queue's flag or the
edge feed would meet that limit as the fleet grows (docs/dynamodb.md counts it). A spread
attribute is stored as ``<value>#<n>``, ``n`` a stable hash of the item's key (the item keeps
its ``n`` for life, so a rewrite stays in one partition), while the item's data keeps the
value itself. A query for ``value`` reads ``value`` (what the release before wrote, and what
this release writes until the store's schema spreads, store.SPREAD_SCHEMA) and the ``SPREAD``
spread values, each in its own order, and merges them: by sort value for a range index, by
key for a plain one, as one query of one value would answer. A page's cursor names, for each
value, the position of the last item taken from it, where that value's query starts again
(``ExclusiveStartKey``): items of one sort value come in the server's own order (dynalite's,
like DynamoDB's, is not the key's), so no single position could end a page among them. By
key (a plain index, whose range key is the table's key) one position serves every value.
"""
from __future__ import annotations

import heapq
import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

from store import SPREAD, Item, Page

Raw = dict[str, Any]
_POOL = ThreadPoolExecutor(max_workers=4 * (SPREAD + 1), thread_name_prefix="spread")
"""The first query of each value of a merged read is sent at once (the client is safe
across threads): a read takes about one round trip, as one query did."""
Fetch = Callable[[str, Raw | None, int], tuple[list[Raw], Raw | None]]
"""(value, exclusive start key, limit) -> (raw items, last evaluated key): one query."""


def shard(key: str) -> int:
    """The item's partition among a spread key's values: a stable hash of its key."""
    return zlib.crc32(key.encode()) % SPREAD


def spread_value(value: str, key: str) -> str:
    """The stored form of index key ``value`` for the item whose key is ``key``."""
    suffix = f"#{shard(key)}"
    return value if value.endswith(suffix) else value + suffix


def values_of(value: str) -> list[str]:
    """Every stored value a query for ``value`` reads: the one value first, then the spread."""
    return [value] + [f"{value}#{n}" for n in range(SPREAD)]


class Order:
    """How the items of one index are ordered, and where a query starts again."""

    def __init__(self, key_attr: str, sort_attr: str | None = None) -> None:
        self.key_attr = key_attr
        self.sort_attr = sort_attr

    def rank(self, raw: Raw) -> Any:
        """What the merge orders by: the sort value (items of one sort value come in the
        server's order, which is not the key's: a page ends by position, not by rank), or the
        key for a plain index (its range key)."""
        return raw["pk"]["S"] if self.sort_attr is None else float(raw[self.sort_attr]["N"])

    def position(self, raw: Raw) -> list[Any]:
        pk = raw["pk"]["S"]
        return [pk] if self.sort_attr is None else [raw[self.sort_attr]["N"], pk]

    def start(self, value: str, position: list[Any]) -> Raw:
        """The exclusive start key of ``value``'s query at an item's ``position``."""
        key: Raw = {self.key_attr: {"S": value}, "pk": {"S": str(position[-1])}}
        if self.sort_attr is not None:
            key[self.sort_attr] = {"N": str(position[0])}
        return key

    def starts(self, cursor: str | None, values: list[str]) -> dict[int, Raw]:
        """Where each value's query starts again after the page a cursor ends (a value
        absent: from its start). A cursor of the one value's query (a page handed out before
        the index was spread) is that value's start."""
        if not cursor:
            return {}
        try:
            found = json.loads(cursor)
            if self.sort_attr is None and isinstance(found, dict) \
                    and isinstance(found.get("after"), list) and len(found["after"]) == 1:
                return {n: self.start(value, found["after"]) for n, value in enumerate(values)}
            if isinstance(found, dict) and isinstance(found.get("after"), dict):
                width = 1 if self.sort_attr is None else 2
                return {int(n): self.start(values[int(n)], position)
                        for n, position in found["after"].items()
                        if isinstance(position, list) and len(position) == width}
            if isinstance(found, dict) and "pk" in found:
                stored = found.get(self.key_attr, {}).get("S")
                return {values.index(stored) if stored in values else 0: found}
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            pass
        raise ValueError("malformed cursor")


def merged_page(fetch: Fetch, value: str, order: Order, convert: Callable[[Raw], Item | None],
                limit: int, cursor: str | None) -> Page:
    """Up to ``limit`` live items of every stored value of ``value``, in order, after where
    the cursor's page ended. Each value is read a chunk at a time, only as far as the merge
    needs: a page costs one query per value, and more only where a spread value holds more
    than twice its share of it.
    The cursor names, for each value the page took items from, its last one's position (by
    key, the last position alone: every value starts again after it)."""
    if limit < 1:
        raise ValueError("limit must be positive")
    values = values_of(value)
    starts = order.starts(cursor, values)
    chunk = max(2, 2 * -(-limit // SPREAD))
    chunks = [limit] + [chunk] * SPREAD  # the one value may hold all of a page
    firsts = list(_POOL.map(lambda n: fetch(values[n], starts.get(n), chunks[n]),
                            range(len(values))))  # at once: one round trip, not seventeen
    streams = [_stream(fetch, values[n], n, firsts[n], chunks[n], order)
               for n in range(len(values))]
    positions = {n: order.position(start) for n, start in starts.items()}
    items: list[Item] = []
    seen: set[str] = set()
    last: list[Any] = []
    for _, n, raw in heapq.merge(*streams, key=lambda entry: entry[0]):
        if len(items) >= limit:  # by key, one position ends the page for every value
            return Page(items, json.dumps({"after": last if order.sort_attr is None
                                           else positions}))
        positions[n] = last = order.position(raw)
        if raw["pk"]["S"] in seen:
            continue  # moved from the one value to its spread value while we read
        seen.add(raw["pk"]["S"])
        item = convert(raw)
        if item is not None:
            items.append(item)
    return Page(items)


def _stream(fetch: Fetch, value: str, n: int, first: tuple[list[Raw], Raw | None], chunk: int,
            order: Order) -> Iterator[tuple[Any, int, Raw]]:
    raws, start = first
    while True:
        for raw in raws:
            yield order.rank(raw), n, raw
        if not start:
            return
        raws, start = fetch(value, start, chunk)
