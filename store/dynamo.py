"""DynamoDB backend through boto3 (real DynamoDB, dynalite or moto_server via ``endpoint_url``).

Layout of an item: ``pk`` (the key), ``version``, ``expires_at`` (the TTL attribute), ``data``
(the item as JSON, so no Decimal conversions leak out), one top-level string attribute per index
(each backed by a global secondary index ``by_<name>`` with ``pk`` as range key), and counters
as ``c_<name>`` numbers. An item exists when it has a ``version``; counters alone do not make one.
"""
from __future__ import annotations

import json
import time
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from store import ABSENT, EXPIRES_AT, VERSION, ConflictError, Item, Page, StoreError, TableSpec

_CONDITION_FAILED = "ConditionalCheckFailedException"


class DynamoBackend:
    def __init__(self, client: Any, prefix: str = "edge_") -> None:
        self._client = client
        self._prefix = prefix

    @classmethod
    def from_settings(cls, settings: Any) -> "DynamoBackend":
        client = boto3.client(
            "dynamodb",
            endpoint_url=settings.dynamodb_endpoint_url or None,
            region_name=settings.dynamodb_region,
            config=Config(retries={"max_attempts": 5, "mode": "standard"},
                          connect_timeout=3, read_timeout=10),
        )
        return cls(client, settings.dynamodb_table_prefix)

    def table(self, spec: TableSpec) -> "DynamoTable":
        name = self._prefix + spec.name
        try:
            self._client.describe_table(TableName=name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise StoreError(f"cannot open table {name}: {exc}") from None
            self._create(name, spec)
        return DynamoTable(self._client, name, spec)

    def _create(self, name: str, spec: TableSpec) -> None:
        attributes = [{"AttributeName": "pk", "AttributeType": "S"}]
        attributes += [{"AttributeName": i, "AttributeType": "S"} for i in spec.indexes]
        indexes = [{
            "IndexName": f"by_{i}",
            "KeySchema": [{"AttributeName": i, "KeyType": "HASH"},
                          {"AttributeName": "pk", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"},
        } for i in spec.indexes]
        kwargs: dict[str, Any] = {"GlobalSecondaryIndexes": indexes} if indexes else {}
        try:
            self._client.create_table(
                TableName=name, AttributeDefinitions=attributes, BillingMode="PAY_PER_REQUEST",
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], **kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":
                raise StoreError(f"cannot create table {name}: {exc}") from None
        deadline = time.monotonic() + 60
        while self._client.describe_table(TableName=name)["Table"]["TableStatus"] != "ACTIVE":
            if time.monotonic() > deadline:
                raise StoreError(f"table {name} did not become active")
            time.sleep(0.05)
        try:
            self._client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": EXPIRES_AT})
        except ClientError:
            pass  # dynalite has no TTL API; expired items are filtered on read anyway

    def close(self) -> None:
        self._client.close()


class DynamoTable:
    def __init__(self, client: Any, name: str, spec: TableSpec) -> None:
        self._client = client
        self._name = name
        self.spec = spec

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(TableName=self._name, **kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == _CONDITION_FAILED:
                raise
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
        for attr in (*self.spec.indexes, EXPIRES_AT):
            names[f"#{attr}"] = attr
            if data.get(attr) is None:
                removes.append(f"#{attr}")
            elif attr == EXPIRES_AT:
                values[f":{attr}"] = {"N": repr(float(data[attr]))}
                sets.append(f"#{attr} = :{attr}")
            else:
                values[f":{attr}"] = {"S": str(data[attr])}
                sets.append(f"#{attr} = :{attr}")
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

    def scan(self, limit: int = 100, cursor: str | None = None) -> Page:
        return self._page("scan", limit, cursor)

    def increment(self, key: str, counter: str, amount: int = 1) -> int:
        raw = self._call("update_item", Key={"pk": {"S": key}},
                         UpdateExpression="ADD #c :n", ExpressionAttributeNames={"#c": f"c_{counter}"},
                         ExpressionAttributeValues={":n": {"N": str(amount)}},
                         ReturnValues="UPDATED_NEW")["Attributes"]
        return int(raw[f"c_{counter}"]["N"])
