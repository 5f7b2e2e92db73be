"""A table inside a table: the edge keeps one state per shard in the same tables.

:func:`namespaced` gives a view of a real table in which every key is ``f"{ns}|{key}"`` and
every value of the spec's indexes and range-index keys gets the same prefix on write (a query
prefixes the value it asks for), stripped again on every read: code written for a whole table
(the edge state's changes, feed and reports) runs unchanged on its namespace's share of it. No
hostname, link key (``host/slug``), certificate key or node id holds a ``|``, and no shard name
does, so no key of one namespace is another's. The view of namespace ``""`` is the table as it
always was (the same keys, the one the default shard keeps) less the other namespaces' items.

Reads by key and by index cost what they cost on the table. A scan cannot be narrowed to a
prefix (DynamoDB scans the table, whatever filter it is given), so a namespace whose every item
carries a range index's key (``listing``: the edge feed's index, which lists every route and
link with its revision) is scanned through that index: a shard's snapshot reads its own share,
not every shard's. Without one, a scan reads every namespace's items and keeps its own. The
namespace ``""`` always scans the table (items written before namespaces may lack the index's
key). The edge scans only to reconcile and to take a snapshot, never per change or long poll.
"""
from __future__ import annotations

from store import ConflictError, Item, Page, Table, TableSpec

SEPARATOR = "|"


def namespaced(table: Table, ns: str, listing: tuple[str, str] | None = None) -> Table:
    """``table`` seen through namespace ``ns`` ("" : the items of no namespace); ``listing``
    names a range index and the value every item of the namespace has there (see above)."""
    if SEPARATOR in ns:
        raise ValueError(f"a namespace holds no {SEPARATOR!r}: {ns!r}")
    return NamespacedTable(table, ns, listing if ns else None)


class NamespacedTable:
    """See the module docstring; implements :class:`store.Table`."""

    def __init__(self, table: Table, ns: str, listing: tuple[str, str] | None = None) -> None:
        self.table = table
        self.ns = ns
        self.listing = listing
        self.spec: TableSpec = table.spec
        self.lacking: frozenset[str] = table.lacking
        self._prefix = f"{ns}{SEPARATOR}" if ns else ""
        self._fields = tuple(dict.fromkeys((table.spec.key, *table.spec.indexes,
                                            *(index.key for index in table.spec.ranges))))

    def _in(self, value: str) -> str:
        return self._prefix + value

    def _mine(self, item: Item) -> bool:
        key = str(item.get(self.spec.key, ""))
        if self._prefix:
            return key.startswith(self._prefix)
        return SEPARATOR not in key

    def _stored(self, item: Item) -> Item:
        stored = dict(item)
        for field in self._fields:
            if isinstance(stored.get(field), str):
                stored[field] = self._prefix + stored[field]
        return stored

    def _read(self, item: Item | None) -> Item | None:
        return None if item is None else self._strip(item)

    def _strip(self, item: Item) -> Item:
        if not self._prefix:
            return item
        found = dict(item)
        for field in self._fields:
            value = found.get(field)
            if isinstance(value, str) and value.startswith(self._prefix):
                found[field] = value[len(self._prefix):]
        return found

    def _page(self, page: Page) -> Page:
        return Page([self._strip(item) for item in page.items], page.next_cursor)

    def get(self, key: str) -> Item | None:
        return self._read(self.table.get(self._in(key)))

    def get_many(self, keys: list[str]) -> dict[str, Item]:
        found = self.table.get_many([self._in(key) for key in keys])
        return {key[len(self._prefix):]: self._strip(item) for key, item in found.items()}

    def put(self, item: Item, expected_version: int | None = None) -> Item:
        try:
            return self._strip(self.table.put(self._stored(item), expected_version))
        except ConflictError as exc:
            raise self._conflict(exc) from None

    def delete(self, key: str, expected_version: int | None = None) -> bool:
        try:
            return self.table.delete(self._in(key), expected_version)
        except ConflictError as exc:
            raise self._conflict(exc) from None

    def _conflict(self, exc: ConflictError) -> ConflictError:
        """The error names the key as the caller knows it."""
        return ConflictError(exc.table, exc.key[len(self._prefix):] if exc.key.startswith(
            self._prefix) else exc.key, exc.expected_version)

    def query(self, index: str, value: str, limit: int = 100,
              cursor: str | None = None) -> Page:
        return self._page(self.table.query(index, self._in(value), limit, cursor))

    def query_range(self, index: str, value: str, lower: float | None = None,
                    upper: float | None = None, limit: int = 100,
                    cursor: str | None = None) -> Page:
        return self._page(self.table.query_range(index, self._in(value), lower, upper,
                                                  limit, cursor))

    def scan(self, limit: int = 100, cursor: str | None = None) -> Page:
        """This namespace's items: one page of its ``listing`` index (in that index's order),
        else of the table, filtered after it is read (perhaps none, with a cursor to go on)."""
        if self.listing is not None:
            index, value = self.listing
            return self.query_range(index, value, limit=limit, cursor=cursor)
        page = self.table.scan(limit, cursor)
        return self._page(Page([item for item in page.items if self._mine(item)],
                               page.next_cursor))

    def increment(self, key: str, counter: str, amount: int = 1, *,
                  existing_only: bool = False, at_most: int | None = None) -> int | None:
        return self.table.increment(self._in(key), counter, amount,
                                    existing_only=existing_only, at_most=at_most)

    def purge_expired(self, now: float | None = None, limit: int = 100) -> int:
        """Every namespace's expired items: expiry is the item's, whoever's it is."""
        return self.table.purge_expired(now, limit)

    def respread(self) -> int:
        return self.table.respread()
