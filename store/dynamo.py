"""DynamoDB backend through boto3 (real DynamoDB, dynalite or moto_server via ``endpoint_url``).

Layout of an item: ``pk`` (the key), ``version``, ``expires_at`` (the TTL attribute), ``data``
(the item as JSON, so no Decimal conversions leak out), one top-level string attribute per index
(each backed by a global secondary index ``by_<name>`` with ``pk`` as range key), for each range
index its key (string) and sort (number) attributes (a global secondary index ``range_<name>``),
and counters as ``c_<name>`` numbers. An item exists when it has a ``version``; counters alone do not make one.
A conditional write also sets ``write_id``, its own random mark, so that its retry after a lost
answer tells its own write from another writer's identical one (not data: backups leave it).
An index key attribute the spec spreads holds ``<value>#<n>`` once the store's schema spreads
them (store/dynamo_spread.py). The table's reads and writes are store/dynamo_table.py's,
sent by store/dynamo_wire.py; boto3's client creates and describes the tables.

Expired items (``expires_at`` passed) are filtered on every read. An ``expiring`` table lets the
server delete them (TTL on ``expires_at``); on a server without TTL (dynalite) its items that
expire also carry ``expiry_shard``, the key of a keys-only index ``expiry`` ordered by
``expires_at``, through which :meth:`DynamoTable.purge_expired` finds what is due.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from store import (EXPIRES_AT, META, SCHEMA_ITEM, SPREAD_SCHEMA, VERSION, ConflictError,
                   StoreError, TableSpec, every)
from store.dynamo_schema import (EXPIRY_INDEX, EXPIRY_SHARD, _attributes, _expiry_index,
                                 _indexes)
from store.dynamo_table import THROTTLING, DynamoTable
from store.dynamo_wire import WireClient

__all__ = ["DynamoBackend", "DynamoTable", "EXPIRY_INDEX", "EXPIRY_SHARD", "THROTTLING",
           "_attributes", "_indexes", "client_config"]

log = logging.getLogger(__name__)
RETRIES = {"mode": "standard", "total_max_attempts": 5}
"""Standard mode, five attempts in all: throttling and 5xx are retried with jittered
exponential backoff (under a second in all at these attempts), and its retry quota stops
retrying when most requests fail, so an outage fails fast rather than piling up retries.
Not adaptive: its client-side rate limiter (experimental in botocore) would make every thread
of a replica wait behind one hot table, agents' long polls included. What is still throttled
after five attempts surfaces as :class:`Throttled`, and the worker slows down."""
USER_AGENT = "edge-router"
"""The User-Agent given to botocore's client config (which adds its own name and version); the
store's requests carry what the config then holds (store/dynamo_wire.py)."""


def client_config(**changes: Any) -> Config:
    """The product's DynamoDB client settings (``changes`` for a tool or a test)."""
    return Config(**{"retries": RETRIES, "connect_timeout": 3, "read_timeout": 10,
                     "max_pool_connections": 64, "user_agent": USER_AGENT, **changes})


SCHEMA_CHECK = 60.0
"""Seconds between two reads of the store's schema by a writer that does not spread index keys
yet: a replica started before ``edgectl migrate --apply`` spreads within this long after it."""


class DynamoBackend:
    """Every request goes through a :class:`WireClient`; ``client``, boto3's, gives it the
    endpoint, region, timeouts, pool size, attempts and User-Agent, and ``credentials`` sign
    it (default: those of boto3's default session, which ``boto3.client`` uses: the chain it
    resolves, refreshed as they expire). An https endpoint is verified against the CA bundle
    botocore's configuration names (``AWS_CA_BUNDLE``, or ``ca_bundle`` in the profile), else
    the system's store."""

    def __init__(self, client: Any, prefix: str = "edge_", credentials: Any = None) -> None:
        self._sdk = client
        if credentials is None:
            credentials = (boto3.DEFAULT_SESSION or boto3.Session()).get_credentials()
        config = client.meta.config
        retries = config.retries or {}
        ca_bundle = botocore.session.get_session().get_config_variable("ca_bundle") \
            if client.meta.endpoint_url.startswith("https:") else None  # 10 ms: only for TLS
        self._client = WireClient(
            client.meta.endpoint_url, client.meta.region_name, credentials,
            user_agent=config.user_agent or USER_AGENT, connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout, max_pool_connections=config.max_pool_connections,
            max_attempts=retries.get("total_max_attempts") or retries.get("max_attempts", 4) + 1,
            counted=self._counted, throttled=self._count_throttled,
            ca_bundle=ca_bundle)
        self._prefix = prefix
        self.requests = 0
        self._lock = threading.Lock()
        self.operations: dict[tuple[str, str], int] = {}
        """Requests by (table without the prefix, API operation), as /metrics exports them."""
        self.throttled: dict[str, int] = {}
        """Attempts the server throttled, by table (without the prefix): retried or not."""
        self._ttl: bool | None = None
        self._spread = False
        self._meta: DynamoTable | None = None
        self._schema_read_at: float | None = None

    def _counted(self, table: str, operation: str) -> None:
        key = (table.removeprefix(self._prefix), operation)
        with self._lock:  # a merged read sends its queries from several threads
            self.requests += 1
            self.operations[key] = self.operations.get(key, 0) + 1

    def _count_throttled(self, name: str) -> None:
        table = name.removeprefix(self._prefix)
        with self._lock:
            self.throttled[table] = self.throttled.get(table, 0) + 1

    @classmethod
    def from_settings(cls, settings: Any) -> "DynamoBackend":
        client = boto3.client("dynamodb", endpoint_url=settings.dynamodb_endpoint_url or None,
                              region_name=settings.dynamodb_region, config=client_config())
        return cls(client, settings.dynamodb_table_prefix)

    def supports_ttl(self) -> bool:
        """Whether the server deletes expired items itself. Asked once: enabling TTL on a
        table that does not exist is refused as such by a server that has the API."""
        if self._ttl is None:
            try:
                self._client.update_time_to_live(
                    TableName=f"{self._prefix}ttl_probe_never_created",
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": EXPIRES_AT})
                self._ttl = True
            except ClientError as exc:
                # moto answers "ResourceNotFound", DynamoDB "...Exception", dynalite
                # "UnknownOperationException" (it has no TTL)
                self._ttl = exc.response["Error"]["Code"].startswith("ResourceNotFound")
            except BotoCoreError as exc:
                raise StoreError(f"cannot reach the store: {exc}") from None
        return self._ttl

    def spreads(self) -> bool:
        """Whether writes spread index keys (``TableSpec.spread``): once the store's schema
        is ``SPREAD_SCHEMA`` (read at most every ``SCHEMA_CHECK`` seconds until it is; a schema
        never goes back). Before, a replica of the release before may run beside and read
        only the one value. Unspread writes are always read too, so a late switch loses
        nothing: it only leaves the partitions uneven for a while."""
        now = time.monotonic()
        if self._spread or (self._schema_read_at is not None
                            and now - self._schema_read_at < SCHEMA_CHECK):
            return self._spread
        self._schema_read_at = now
        try:
            self._meta = self._meta or self.table(TableSpec(META, key="name"))
            item = self._meta.get(SCHEMA_ITEM)
        except StoreError as exc:
            log.warning("cannot read the store's schema (index keys stay unspread): %s", exc)
            return False
        self._spread = item is not None and int(item["schema_version"]) >= SPREAD_SCHEMA
        return self._spread

    def spread_keys(self) -> None:
        """Spread index keys from now on (the migration to ``SPREAD_SCHEMA`` is running)."""
        self._spread = True

    def table(self, spec: TableSpec) -> "DynamoTable":
        name = self._prefix + spec.name
        sweep = spec.expiring and not self.supports_ttl()
        try:
            described = self._client.describe_table(TableName=name)["Table"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise StoreError(f"cannot open table {name}: {exc}") from None
            self._create(name, spec, sweep)
            return DynamoTable(self._client, name, spec, sweep, self.spreads)
        except BotoCoreError as exc:  # nobody answers at the endpoint
            raise StoreError(f"cannot open table {name}: {exc}") from None
        table = DynamoTable(self._client, name, spec, sweep, self.spreads)
        if described.get("TableStatus") != "ACTIVE":  # another replica is creating it
            self._wait_active(name)
        have = {index["IndexName"] for index in described.get("GlobalSecondaryIndexes", [])}
        missing = [index for index in _indexes(spec) if index["IndexName"] not in have]
        optional = [index for index in missing
                    if index["IndexName"] in {f"range_{name}" for name in spec.optional}]
        if optional and len(optional) == len(missing):
            try:
                self._add_indexes(table, missing)
            except StoreError as exc:  # dynalite: the callers read as before these indexes
                table.lacking = frozenset(index["IndexName"].removeprefix("range_")
                                          for index in optional)
                log.warning("%s opens without %s: %s", name, ", ".join(sorted(table.lacking)),
                            exc)
        elif missing:
            self._add_indexes(table, missing)
        if sweep and EXPIRY_INDEX not in have:
            self._add_expiry_index(table)
        return table

    def _add_expiry_index(self, table: "DynamoTable") -> None:
        """A table from before it expired its items, on a server without TTL: without the
        index its expired items are still filtered on read, only never deleted."""
        try:
            self._add_indexes(table, [_expiry_index()])
        except StoreError as exc:
            table.sweep = False
            log.warning("expired items of %s will not be deleted: %s", table.name, exc)

    def _add_indexes(self, table: "DynamoTable", missing: list[dict[str, Any]]) -> None:
        """A table from an earlier version: add its new indexes, then rewrite every item once so
        the index holds it (each rewrite is conditional; an item changed meanwhile was indexed
        by that change)."""
        for index in missing:
            try:
                self._client.update_table(
                    TableName=table.name, AttributeDefinitions=_attributes(table.spec,
                                                                           table.sweep),
                    GlobalSecondaryIndexUpdates=[{"Create": index}])
            except ClientError as exc:
                if exc.response["Error"]["Code"] not in ("ResourceInUseException",
                                                         "ValidationException"):
                    raise StoreError(f"cannot add {index['IndexName']} to {table.name}: "
                                     f"{exc}") from None
            self._wait_active(table.name)
        described = self._client.describe_table(TableName=table.name)["Table"]
        have = {index["IndexName"] for index in described.get("GlobalSecondaryIndexes", [])}
        for index in missing:
            if index["IndexName"] not in have:  # dynalite accepts the update and ignores it
                raise StoreError(f"table {table.name} lacks its index {index['IndexName']} and "
                                 "this server did not add it; recreate the table (export, "
                                 "delete, start, import) or use one that can add indexes")
        for item in every(lambda cursor: table.scan(limit=500, cursor=cursor)):
            try:
                table.put(item, expected_version=item[VERSION])
            except ConflictError:
                continue

    def _wait_active(self, name: str) -> None:
        """Until the table and its indexes are ACTIVE: asked again after 10 ms, then less
        often (DynamoDB takes seconds, dynalite a moment)."""
        deadline = time.monotonic() + 120
        pause = 0.01
        while True:
            described = self._client.describe_table(TableName=name)["Table"]
            if described["TableStatus"] == "ACTIVE" and all(
                    index.get("IndexStatus", "ACTIVE") == "ACTIVE"
                    for index in described.get("GlobalSecondaryIndexes", [])):
                return
            if time.monotonic() > deadline:
                raise StoreError(f"table {name} did not become active")
            time.sleep(pause)
            pause = min(2 * pause, 0.5)

    def _create(self, name: str, spec: TableSpec, sweep: bool) -> None:
        attributes = _attributes(spec, sweep)
        indexes = _indexes(spec) + ([_expiry_index()] if sweep else [])
        kwargs: dict[str, Any] = {"GlobalSecondaryIndexes": indexes} if indexes else {}
        try:
            self._client.create_table(
                TableName=name, AttributeDefinitions=attributes, BillingMode="PAY_PER_REQUEST",
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], **kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":
                raise StoreError(f"cannot create table {name}: {exc}") from None
        self._wait_active(name)
        if not self.supports_ttl():
            return  # dynalite has no TTL API; expired items are filtered on read anyway
        try:
            self._client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": EXPIRES_AT})
        except ClientError:
            pass  # enabled already (another replica created the table too)

    def close(self) -> None:
        self._client.close()
        self._sdk.close()
