"""DynamoDB backend through boto3 (real DynamoDB, dynalite or moto_server via ``endpoint_url``).

Layout of an item: ``pk`` (the key), ``version``, ``expires_at`` (the TTL attribute), ``data``
(the item as JSON, so no Decimal conversions leak out), one top-level string attribute per index
(each backed by a global secondary index ``by_<name>`` with ``pk`` as range key), for each range
index its key (string) and sort (number) attributes (a global secondary index ``range_<name>``),
and counters as ``c_<name>`` numbers. An item exists when it has a ``version``; counters alone do not make one.

Expired items (``expires_at`` passed) are filtered on every read. An ``expiring`` table lets the
server delete them (TTL on ``expires_at``); on a server without TTL (dynalite) its items that
expire also carry ``expiry_shard``, the key of a keys-only index ``expiry`` ordered by
``expires_at``, through which :meth:`DynamoTable.purge_expired` finds what is due.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from store import (ABSENT, EXPIRES_AT, VERSION, ConflictError, Item, Page, StoreError, TableSpec,
                   Throttled, every, range_values)
from store.dynamo_schema import (EXPIRY_INDEX, EXPIRY_SHARD, _attributes, _expiry_index,
                                 _indexes)

__all__ = ["DynamoBackend", "DynamoTable", "EXPIRY_INDEX", "EXPIRY_SHARD", "_attributes",
           "_indexes"]

log = logging.getLogger(__name__)
_CONDITION_FAILED = "ConditionalCheckFailedException"
THROTTLING = ("ProvisionedThroughputExceededException", "ThrottlingException",
              "RequestLimitExceeded")
RETRIES = {"mode": "standard", "total_max_attempts": 5}
"""Standard mode, five attempts in all: throttling and 5xx are retried with jittered
exponential backoff (under a second in all at these attempts), and its retry quota stops
retrying when most requests fail, so an outage fails fast rather than piling up retries.
Not adaptive: its client-side rate limiter (experimental in botocore) would make every thread
of a replica wait behind one hot table, agents' long polls included. What is still throttled
after five attempts surfaces as :class:`Throttled`, and the worker slows down."""
_ONE_SHARD = "1"
"""Only servers without TTL (dynalite, for development) use the expiry index: one partition."""


class DynamoBackend:
    def __init__(self, client: Any, prefix: str = "edge_") -> None:
        self._client = client
        self._prefix = prefix
        self.requests = 0
        self.operations: dict[tuple[str, str], int] = {}
        """Requests by (table without the prefix, API operation), as /metrics exports them."""
        self.throttled: dict[str, int] = {}
        """Attempts the server throttled, by table (without the prefix): retried or not."""
        self._ttl: bool | None = None
        client.meta.events.register("before-call.dynamodb", self._count)
        client.meta.events.register("before-parameter-build.dynamodb", self._count_operation)
        client.meta.events.register("needs-retry.dynamodb", self._count_throttled)

    def _count(self, **kwargs: Any) -> None:
        self.requests += 1

    def _count_operation(self, params: Any = None, model: Any = None, **kwargs: Any) -> None:
        table = str((params or {}).get("TableName", "*")).removeprefix(self._prefix)
        key = (table, getattr(model, "name", "other"))
        self.operations[key] = self.operations.get(key, 0) + 1

    def _count_throttled(self, response: Any = None, request_dict: Any = None,
                         **kwargs: Any) -> None:
        code = (response[1].get("Error") or {}).get("Code") if response else None
        if code in THROTTLING:
            try:
                name = str(json.loads((request_dict or {}).get("body") or b"{}")["TableName"])
            except (ValueError, KeyError, TypeError):
                name = "?"
            table = name.removeprefix(self._prefix)
            self.throttled[table] = self.throttled.get(table, 0) + 1

    @classmethod
    def from_settings(cls, settings: Any) -> "DynamoBackend":
        client = boto3.client(
            "dynamodb",
            endpoint_url=settings.dynamodb_endpoint_url or None,
            region_name=settings.dynamodb_region,
            config=Config(retries=RETRIES,  # type: ignore[arg-type]
                          connect_timeout=3, read_timeout=10),
        )
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

    def table(self, spec: TableSpec) -> "DynamoTable":
        name = self._prefix + spec.name
        sweep = spec.expiring and not self.supports_ttl()
        try:
            described = self._client.describe_table(TableName=name)["Table"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise StoreError(f"cannot open table {name}: {exc}") from None
            self._create(name, spec, sweep)
            return DynamoTable(self._client, name, spec, sweep)
        except BotoCoreError as exc:  # nobody answers at the endpoint
            raise StoreError(f"cannot open table {name}: {exc}") from None
        table = DynamoTable(self._client, name, spec, sweep)
        if described.get("TableStatus") != "ACTIVE":  # another replica is creating it
            self._wait_active(name)
        have = {index["IndexName"] for index in described.get("GlobalSecondaryIndexes", [])}
        missing = [index for index in _indexes(spec) if index["IndexName"] not in have]
        if missing:
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
        deadline = time.monotonic() + 120
        while True:
            described = self._client.describe_table(TableName=name)["Table"]
            if described["TableStatus"] == "ACTIVE" and all(
                    index.get("IndexStatus", "ACTIVE") == "ACTIVE"
                    for index in described.get("GlobalSecondaryIndexes", [])):
                return
            if time.monotonic() > deadline:
                raise StoreError(f"table {name} did not become active")
            time.sleep(0.05)

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
        try:
            self._client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": EXPIRES_AT})
        except ClientError:
            pass  # dynalite has no TTL API; expired items are filtered on read anyway

    def close(self) -> None:
        self._client.close()


class DynamoTable:
    def __init__(self, client: Any, name: str, spec: TableSpec, sweep: bool = False) -> None:
        self._client = client
        self._name = name
        self.name = name
        self.spec = spec
        self.sweep = sweep
        """Whether expired items are found through the expiry index (no TTL on the server)."""

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(TableName=self._name, **kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == _CONDITION_FAILED:
                raise
            if exc.response["Error"]["Code"] in THROTTLING:
                raise Throttled(f"{method} on {self._name}: throttled") from None
            raise StoreError(f"{method} on {self._name}: {exc}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{method} on {self._name}: {exc}") from None

    @staticmethod
    def _item(raw: dict[str, Any], now: float) -> Item | None:
        if "version" not in raw or "data" not in raw:
            return None
        if "expires_at" in raw and float(raw["expires_at"]["N"]) <= now:
            return None
        item = json.loads(raw["data"]["S"])
        item[VERSION] = int(raw["version"]["N"])
        for name, value in raw.items():
            if name.startswith("c_"):
                item[name[2:]] = int(value["N"])
        return item

    def get(self, key: str) -> Item | None:
        raw = self._call("get_item", Key={"pk": {"S": key}}, ConsistentRead=True).get("Item")
        return self._item(raw, time.time()) if raw else None

    def _condition(self, expected_version: int | None, values: dict[str, Any]) -> dict[str, Any]:
        now = {":now": {"N": repr(time.time())}}
        absent_or_expired = "(attribute_not_exists(version) OR expires_at <= :now)"
        if expected_version is None:
            return {}
        if expected_version == ABSENT:
            values.update(now)
            return {"ConditionExpression": absent_or_expired}
        values.update({":expected": {"N": str(expected_version)}, **now})
        return {"ConditionExpression":
                "version = :expected AND (attribute_not_exists(expires_at) OR expires_at > :now)"}

    def put(self, item: Item, expected_version: int | None = None) -> Item:
        key = str(item[self.spec.key])
        data = {k: v for k, v in item.items() if k != VERSION}
        values: dict[str, Any] = {":data": {"S": json.dumps(data, sort_keys=True)}}
        sets, removes = ["#data = :data"], []
        names = {"#data": "data", "#version": "version"}
        top: dict[str, dict[str, str] | None] = {
            attr: None if data.get(attr) is None else {"S": str(data[attr])}
            for attr in self.spec.indexes}
        top[EXPIRES_AT] = None if data.get(EXPIRES_AT) is None else {
            "N": repr(float(data[EXPIRES_AT]))}
        if self.sweep:
            top[EXPIRY_SHARD] = None if top[EXPIRES_AT] is None else {"S": _ONE_SHARD}
        for index in self.spec.ranges:
            in_key, in_sort = range_values(data, index)
            top.setdefault(index.key, None if in_key is None else {"S": in_key})
            top[index.sort] = None if in_key is None else {"N": repr(in_sort)}
        for n, (attr, value) in enumerate(top.items()):
            names[f"#a{n}"] = attr
            if value is None:
                removes.append(f"#a{n}")
            else:
                values[f":a{n}"] = value
                sets.append(f"#a{n} = :a{n}")
        condition = self._condition(expected_version, values)
        if expected_version == ABSENT:
            sets.append("#version = :one")
            values[":one"] = {"N": "1"}
        else:
            sets.append("#version = if_not_exists(#version, :zero) + :one")
            values.update({":zero": {"N": "0"}, ":one": {"N": "1"}})
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            raw = self._call("update_item", Key={"pk": {"S": key}}, UpdateExpression=expression,
                             ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                             ReturnValues="ALL_NEW", **condition)["Attributes"]
        except ClientError:
            raise ConflictError(self.spec.name, key, expected_version) from None
        return {**data, VERSION: int(raw["version"]["N"])}

    def delete(self, key: str, expected_version: int | None = None) -> bool:
        values: dict[str, Any] = {}
        condition = self._condition(expected_version, values)
        if expected_version == ABSENT:
            condition = {"ConditionExpression": "attribute_not_exists(version)"}
            values.clear()
        extra = {"ExpressionAttributeValues": values} if values else {}
        try:
            old = self._call("delete_item", Key={"pk": {"S": key}}, ReturnValues="ALL_OLD",
                             **condition, **extra).get("Attributes")
        except ClientError:
            raise ConflictError(self.spec.name, key, expected_version) from None
        return bool(old) and self._item(old, time.time()) is not None

    def _page(self, method: str, limit: int, cursor: str | None, **kwargs: Any) -> Page:
        if limit < 1:
            raise ValueError("limit must be positive")
        items: list[Item] = []
        start = json.loads(cursor) if cursor else None
        if start is not None and not (isinstance(start, dict) and "pk" in start):
            raise ValueError("malformed cursor")
        now = time.time()
        while True:
            extra = {"ExclusiveStartKey": start} if start else {}
            response = self._call(method, Limit=limit - len(items), **kwargs, **extra)
            for raw in response.get("Items", []):
                item = self._item(raw, now)
                if item is not None:
                    items.append(item)
            start = response.get("LastEvaluatedKey")
            if not start or len(items) >= limit:
                return Page(items, json.dumps(start) if start else None)

    def query(self, index: str, value: str, limit: int = 100, cursor: str | None = None) -> Page:
        if index not in self.spec.indexes:
            raise ValueError(f"{self.spec.name} has no index {index!r}")
        return self._page("query", limit, cursor, IndexName=f"by_{index}",
                          KeyConditionExpression="#i = :v",
                          ExpressionAttributeNames={"#i": index},
                          ExpressionAttributeValues={":v": {"S": value}})

    def query_range(self, index: str, value: str, lower: float | None = None,
                    upper: float | None = None, limit: int = 100,
                    cursor: str | None = None) -> Page:
        found = self.spec.range_index(index)
        if lower is not None and upper is not None and lower > upper:
            return Page([])  # an empty range (DynamoDB refuses BETWEEN with bounds reversed)
        condition = "#k = :v"
        values: dict[str, Any] = {":v": {"S": value}}
        if lower is not None and upper is not None:
            condition += " AND #s BETWEEN :lo AND :hi"
        elif lower is not None:
            condition += " AND #s >= :lo"
        elif upper is not None:
            condition += " AND #s <= :hi"
        if lower is not None:
            values[":lo"] = {"N": repr(float(lower))}
        if upper is not None:
            values[":hi"] = {"N": repr(float(upper))}
        return self._page("query", limit, cursor, IndexName=f"range_{found.name}",
                          KeyConditionExpression=condition,
                          ExpressionAttributeNames={"#k": found.key, **(
                              {"#s": found.sort} if ":lo" in values or ":hi" in values else {})},
                          ExpressionAttributeValues=values)

    def scan(self, limit: int = 100, cursor: str | None = None) -> Page:
        return self._page("scan", limit, cursor)

    def purge_expired(self, now: float | None = None, limit: int = 100) -> int:
        if not self.spec.expiring:
            raise ValueError(f"{self.spec.name} is not an expiring table")
        if limit < 1:
            raise ValueError("limit must be positive")
        if not self.sweep:
            return 0  # the server's TTL deletes them (reads filter them until it does)
        cutoff = {":now": {"N": repr(time.time() if now is None else now)}}
        due = self._call("query", IndexName=EXPIRY_INDEX, Limit=limit,
                         KeyConditionExpression="#s = :s AND #e <= :now",
                         ExpressionAttributeNames={"#s": EXPIRY_SHARD, "#e": EXPIRES_AT},
                         ExpressionAttributeValues={":s": {"S": _ONE_SHARD}, **cutoff})
        deleted = 0
        for raw in due.get("Items", []):
            try:
                self._call("delete_item", Key={"pk": raw["pk"]},
                           ConditionExpression="#e <= :now",
                           ExpressionAttributeNames={"#e": EXPIRES_AT},
                           ExpressionAttributeValues=cutoff)
                deleted += 1
            except ClientError:
                continue  # rewritten with a later expiry since the index was read
        return deleted

    def increment(self, key: str, counter: str, amount: int = 1, *,
                  existing_only: bool = False) -> int | None:
        condition = {"ConditionExpression": "attribute_exists(version)"} if existing_only else {}
        try:
            raw = self._call("update_item", Key={"pk": {"S": key}}, UpdateExpression="ADD #c :n",
                             ExpressionAttributeNames={"#c": f"c_{counter}"},
                             ExpressionAttributeValues={":n": {"N": str(amount)}},
                             ReturnValues="UPDATED_NEW", **condition)["Attributes"]
        except ClientError:  # only a failed condition gets here (_call turns the rest)
            return None
        return int(raw[f"c_{counter}"]["N"])
