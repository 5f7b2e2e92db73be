"""The small table interface every part stores its data through, with two backends.

An item is a JSON-able dict. Each table has one string key attribute, optional indexes
(string attributes that can be queried by equality) and optional range indexes (a string
attribute queried by equality plus a number attribute queried by a range, in its order: what is
due by a time, say). Writes are conditional on a ``version``
that the backend bumps on every put; a lost race raises :class:`ConflictError`. An item whose
``expires_at`` (epoch seconds) has passed is treated as absent on every read, whether or not
the backend has deleted it yet. Counters live beside the item and are updated atomically.
"""
from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Any, Callable, Iterator, Protocol

Item = dict[str, Any]

VERSION = "version"
EXPIRES_AT = "expires_at"
ABSENT = 0
"""Pass as ``expected_version`` to require that the item does not exist yet."""
FIRST_VERSIONS = (1 << 32, 1 << 52)
"""A new item's version is drawn from this range (:func:`first_version`), then counts up by
one a write. Were it 1, an item deleted and made again would repeat its versions, and a write
conditional on a copy read before the delete would land on the new item (ABA): a removed
domain's stale copy over the next owner's claim. Versions are only ever compared for
equality; every one stays below 2**53, exact in JSON and in DynamoDB numbers."""


def first_version() -> int:
    """The version of an item written where none lives (:data:`FIRST_VERSIONS`)."""
    return secrets.randbelow(FIRST_VERSIONS[1] - FIRST_VERSIONS[0]) + FIRST_VERSIONS[0]
SPREAD = 16
"""Partition key values per spread index key (docs/dynamodb.md counts what this buys)."""
BATCH_GET = 100
"""Keys per request of :meth:`Table.get_many` (DynamoDB's BatchGetItem takes at most 100)."""
META = "store_meta"
SCHEMA_ITEM = "schema"
"""The table and item that hold the store's schema version (control/migrations.py)."""
SPREAD_SCHEMA = 3
"""The schema from which writers spread index keys: before it, a replica of the release
before may still run beside and reads each index key's one value (docs/upgrades.md)."""


class StoreError(Exception):
    """Root of the storage errors."""


class Throttled(StoreError):
    """The store refused the request for lack of capacity even after the client's retries:
    the caller slows down (the worker waits longer between rounds) rather than fail what it
    was doing."""


class ConflictError(StoreError):
    """A conditional write lost: the item was not at the expected version."""

    def __init__(self, table: str, key: str, expected_version: int | None) -> None:
        super().__init__(f"{table}/{key}: not at version {expected_version}")
        self.table = table
        self.key = key
        self.expected_version = expected_version


@dataclasses.dataclass(frozen=True)
class RangeIndex:
    """Items whose ``key`` attribute (a string) equals a value, ordered by their ``sort``
    attribute (a number). An item without either attribute is not in the index (sparse, like a
    DynamoDB global secondary index), so clearing ``sort`` takes an item off a work queue."""

    name: str
    key: str
    sort: str
    keys_only: bool = False
    """Its entries hold the keys alone (the table's key, ``key`` and ``sort``), and a query of
    it answers items of those three attributes: a write that leaves them as they were (a
    counter, any other attribute) does not write the index, which on DynamoDB is billed per
    write. The caller reads the items it needs (:meth:`Table.get_many`)."""


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    key: str
    indexes: tuple[str, ...] = ()
    ranges: tuple[RangeIndex, ...] = ()
    expiring: bool = False
    """Its items carry ``expires_at`` and must go once it passes: the backend keeps them in an
    index on it, so :meth:`Table.purge_expired` deletes what is due without reading the rest
    (or leaves the deleting to the server: DynamoDB's TTL)."""
    spread: tuple[str, ...] = ()
    """Index key attributes whose one value would carry writes that grow with the fleet (a
    status, a work queue's flag, the edge feed): a backend with partitions (DynamoDB) stores
    such a value as ``SPREAD`` values ``<value>#<n>``, ``n`` a stable hash of the item's key,
    and a query merges their ranges in order. Callers see no difference."""

    optional: tuple[str, ...] = ()
    """Range indexes added after v0.1.0 that a table of a server unable to add an index to an
    existing table (dynalite) may lack: it opens without them (``Table.lacking`` names them),
    and their callers fall back to the read they replaced."""

    def range_index(self, name: str) -> RangeIndex:
        for index in self.ranges:
            if index.name == name:
                return index
        raise ValueError(f"{self.name} has no range index {name!r}")


@dataclasses.dataclass
class Page:
    items: list[Item]
    next_cursor: str | None = None


class Table(Protocol):
    spec: TableSpec
    lacking: frozenset[str]
    """The ``spec.optional`` range indexes this table does not have (see TableSpec)."""

    def get(self, key: str) -> Item | None:
        """The item with this key (counters included), or None if absent or expired."""

    def get_many(self, keys: list[str]) -> dict[str, Item]:
        """The live items of these keys (counters included), by key; an absent or expired one
        is left out. Consistent like :meth:`get`, and costs about one request per
        ``BATCH_GET`` keys rather than one per key (what a joining edge node's certificate
        batch reads)."""

    def put(self, item: Item, expected_version: int | None = None) -> Item:
        """Store ``item`` and return it with its new version.

        ``expected_version=None`` writes unconditionally, ``ABSENT`` only if no live item has
        the key, any other number only if the stored item is at that version.
        """

    def delete(self, key: str, expected_version: int | None = None) -> bool:
        """Delete the item; False if it was absent. Conditional like :meth:`put`."""

    def query(self, index: str, value: str, limit: int = 100,
              cursor: str | None = None) -> Page:
        """Live items whose ``index`` attribute equals ``value``, ordered by key."""

    def query_range(self, index: str, value: str, lower: float | None = None,
                    upper: float | None = None, limit: int = 100,
                    cursor: str | None = None) -> Page:
        """Live items of range index ``index`` whose key attribute equals ``value`` and whose
        sort attribute lies in [``lower``, ``upper``] (None: unbounded), ordered by it (of a
        ``keys_only`` index: the table's key, the index's key and sort of each, no version)."""

    def scan(self, limit: int = 100, cursor: str | None = None) -> Page:
        """All live items, ordered by key (one page)."""

    def increment(self, key: str, counter: str, amount: int = 1, *,
                  existing_only: bool = False, at_most: int | None = None) -> int | None:
        """Atomically add ``amount`` to a counter of the item and return the new value. With
        ``existing_only``, only if the item exists (checked in the same step): None, and
        nothing created, when it does not (a count racing a delete leaves no orphan). With
        ``at_most``, only if the new value would not pass it (checked in the same step): None,
        and nothing added, when it would."""

    def purge_expired(self, now: float | None = None, limit: int = 100) -> int:
        """Delete up to ``limit`` items whose ``expires_at`` is at most ``now`` (default: the
        time), soonest first, with their counters; return how many went. Reads only those
        items (an index on expiry), so a table with nothing due costs one request. Each delete
        is conditional on the item being still expired (one rewritten meanwhile stays). A
        backend whose server deletes expired items itself (DynamoDB TTL) returns 0 at once.
        Only for a table whose spec is ``expiring``."""

    def respread(self) -> int:
        """Store the ``spread`` index keys of items written before they were spread in their
        spread form (the data, and the version, stay); return how many items changed.
        Idempotent and resumable; 0 on a backend that does not spread (SQLite)."""


class Backend(Protocol):
    requests: int
    """Store requests made so far (SQLite transactions, DynamoDB API calls): what tests and
    benchmarks count to show that idle work does not grow with the data."""

    operations: dict[tuple[str, str], int]
    """The same requests by (table, operation): which table the work falls on."""

    def table(self, spec: TableSpec) -> Table:
        """Open (creating if needed) the table described by ``spec``."""

    def spread_keys(self) -> None:
        """Write ``spread`` index keys spread from now on, whatever the recorded schema (the
        migration that spreads them calls it first)."""

    def close(self) -> None:
        ...


def every(read_page: Callable[[str | None], Page]) -> Iterator[Item]:
    """Every item of a paged read (``lambda cursor: table.query(..., cursor=cursor)``), page
    by page, following cursors; stop iterating to stop reading."""
    cursor = None
    while True:
        page = read_page(cursor)
        yield from page.items
        cursor = page.next_cursor
        if not cursor:
            return


def all_items(table: Table, page_size: int = 500) -> list[Item]:
    """Every live item of ``table``, following cursors."""
    return list(every(lambda cursor: table.scan(limit=page_size, cursor=cursor)))


def rewrite_field(table: Table, field: str, change: Any) -> int:
    """Apply ``change`` to ``field`` of every item holding it (conditional writes; a lost race
    is retried with the fresh item). Returns how many items were rewritten."""
    count = 0
    for found in all_items(table):
        item: Item | None = found
        while item is not None and item.get(field) is not None:
            try:
                table.put({**item, field: change(item[field])}, expected_version=item[VERSION])
                count += 1
                break
            except ConflictError:
                item = table.get(str(item[table.spec.key]))
    return count


def range_values(item: Item, index: RangeIndex) -> list[Any]:
    """(key, sort) of ``item`` in a range index, or (None, None) when it is not in it."""
    key, sort = item.get(index.key), item.get(index.sort)
    if key is None or isinstance(sort, bool) or not isinstance(sort, (int, float)):
        return [None, None]
    return [str(key), float(sort)]


def is_expired(item: Item, now: float | None = None) -> bool:
    expires_at = item.get(EXPIRES_AT)
    return expires_at is not None and float(expires_at) <= (now or time.time())


def open_backend(settings: Any) -> Backend:
    """The backend chosen by ``settings.storage_backend``."""
    if settings.storage_backend == "dynamodb":
        from store.dynamo import DynamoBackend
        return DynamoBackend.from_settings(settings)
    from store.sqlite import SqliteBackend
    return SqliteBackend(settings.sqlite_path)
