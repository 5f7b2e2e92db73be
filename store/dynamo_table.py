"""A DynamoDB table as store/dynamo.py lays it out (its module docstring): the reads and
writes of one :class:`store.TableSpec`."""
from __future__ import annotations

import json
import random
import secrets
import time
from decimal import Decimal
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError

from store import (ABSENT, BATCH_GET, EXPIRES_AT, VERSION, ConflictError, Item, Page,
                   StoreError, TableSpec, Throttled, first_version, range_values)
from store.dynamo_schema import EXPIRY_INDEX, EXPIRY_SHARD
from store.dynamo_spread import Order, Raw, merged_page, spread_value
from store.dynamo_wire import MAYBE_APPLIED

_CONDITION_FAILED = "ConditionalCheckFailedException"
THROTTLING = ("ProvisionedThroughputExceededException", "ThrottlingException",
              "RequestLimitExceeded")
BATCH_ROUNDS, BATCH_BACKOFF = 8, 0.05
"""Requests a batch read makes at most for keys left unprocessed, and the seconds before it
asks again (doubling, at most 1 s, jittered): about 4 s in all, the order of botocore's own
retries of a throttled request."""
WRITE_ID = "write_id"
"""A conditional write's random mark (store/dynamo.py lays it out): not data, never read."""
_ONE_SHARD = "1"
"""Only servers without TTL (dynalite, for development) use the expiry index: one partition."""


def _same(stored: dict[str, str] | None, written: dict[str, str] | None) -> bool:
    """Whether an attribute as read back is the one written (a number as DynamoDB
    normalizes it: ``1.0`` comes back ``1``)."""
    if stored and written and "N" in stored and "N" in written:
        return Decimal(stored["N"]) == Decimal(written["N"])
    return stored == written


class DynamoTable:
    def __init__(self, client: Any, name: str, spec: TableSpec, sweep: bool = False,
                 spreads: Callable[[], bool] = lambda: False) -> None:
        self._client = client
        self._spreads = spreads
        self._name = name
        self.name = name
        self.spec = spec
        self.sweep = sweep
        """Whether expired items are found through the expiry index (no TTL on the server)."""
        self.lacking: frozenset[str] = frozenset()

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self._request(method, TableName=self._name, **kwargs)

    def _request(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(**kwargs)
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

    def get_many(self, keys: list[str]) -> dict[str, Item]:
        """BatchGetItem, ``BATCH_GET`` keys a request (consistent reads). The keys a request
        leaves unprocessed (throttling, its 16 MB limit) are asked again with jittered
        exponential backoff; still unprocessed after ``BATCH_ROUNDS`` requests:
        :class:`Throttled`, as a throttled single read after its retries."""
        wanted = list(dict.fromkeys(keys))  # the same key twice is refused
        found: dict[str, Item] = {}
        for start in range(0, len(wanted), BATCH_GET):
            pending = [{"pk": {"S": key}} for key in wanted[start:start + BATCH_GET]]
            for attempt in range(BATCH_ROUNDS):
                answer = self._request("batch_get_item", RequestItems={
                    self._name: {"Keys": pending, "ConsistentRead": True}})
                now = time.time()
                for raw in answer.get("Responses", {}).get(self._name, []):
                    item = self._item(raw, now)
                    if item is not None:
                        found[raw["pk"]["S"]] = item
                pending = answer.get("UnprocessedKeys", {}).get(self._name, {}).get("Keys", [])
                if not pending:
                    break
                if attempt < BATCH_ROUNDS - 1:
                    time.sleep(random.uniform(0.5, 1) * min(BATCH_BACKOFF * 2 ** attempt, 1.0))
            else:
                raise Throttled(f"batch_get_item on {self._name}: {len(pending)} keys still "
                                f"unprocessed after {BATCH_ROUNDS} requests")
        return found

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
        laid_out = self._laid_out(key, data)
        values: dict[str, Any] = {}
        sets: list[str] = []
        removes: list[str] = []
        names = {"#version": "version"}
        for n, (attr, value) in enumerate(laid_out.items()):
            names[f"#a{n}"] = attr
            if value is None:
                removes.append(f"#a{n}")
            else:
                values[f":a{n}"] = value
                sets.append(f"#a{n} = :a{n}")
        condition = self._condition(expected_version, values)
        if condition:  # this write's own mark, for a retry after a lost answer to know it
            names["#w"], values[":w"] = WRITE_ID, {"S": secrets.token_hex(8)}
            sets.append("#w = :w")
        first = {"N": str(first_version())}  # where no item lives (store.FIRST_VERSIONS)
        if expected_version == ABSENT:
            sets.append("#version = :first")
            values[":first"] = first
        else:
            sets.append("#version = if_not_exists(#version, :before) + :one")
            values.update({":before": {"N": str(int(first["N"]) - 1)}, ":one": {"N": "1"}})
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            raw = self._call("update_item", Key={"pk": {"S": key}}, UpdateExpression=expression,
                             ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                             ReturnValues="ALL_NEW", **condition)["Attributes"]
        except ClientError as exc:
            written = {**laid_out, WRITE_ID: values.get(":w"), "version": first
                       if expected_version == ABSENT else {"N": str((expected_version or 0) + 1)}}
            now = self._after_a_lost_answer(exc, key)
            if now is None or any(not _same(now.get(attr), value)
                                  for attr, value in written.items()):
                raise ConflictError(self.spec.name, key, expected_version) from None
            raw = now
        return {**data, VERSION: int(raw["version"]["N"])}

    def _after_a_lost_answer(self, failed: ClientError, key: str) -> Raw | None:
        """The item as it stands (``{}``: none) when a write failed by its condition on a
        retry whose earlier attempt may have been carried out (store/dynamo_wire.py), else
        None. A conditional write compares it with what it wrote, its own random
        ``WRITE_ID`` included: its own attempt, not a conflict. Without that mark, a writer
        that read the same version and wrote the same data (two replicas taking one more
        slot of a budget) would take the other's write for its own."""
        if not failed.response.get("ResponseMetadata", {}).get(MAYBE_APPLIED):
            return None
        return dict(self._call("get_item", Key={"pk": {"S": key}},
                               ConsistentRead=True).get("Item") or {})

    def raw_item(self, key: str, text: str | None, version: int | None,
                 counters: dict[str, int]) -> Raw:
        """The whole item as :meth:`put` of the item stored as ``text`` (JSON), its version
        then set to ``version``, and :meth:`increment` of each counter from nothing lay it
        out: one PutRequest writes it. ``text`` None: counters kept without an item."""
        raw: Raw = {"pk": {"S": key}}
        if text is not None:
            laid_out = self._laid_out(key, json.loads(text), text)
            raw.update({attr: value for attr, value in laid_out.items() if value is not None})
            raw["version"] = {"N": str(version)}
        raw.update({f"c_{name}": {"N": str(value)} for name, value in counters.items()})
        return raw

    def _laid_out(self, key: str, data: Item,
                  text: str | None = None) -> dict[str, dict[str, str] | None]:
        """The attributes an item's data sets besides its key and version: the stored text
        (``text``, or the data's own) and :meth:`_top`'s."""
        stored = json.dumps(data, sort_keys=True) if text is None else text
        return {"data": {"S": stored}, **self._top(key, data)}

    def _top(self, key: str, data: Item) -> dict[str, dict[str, str] | None]:
        """The top-level attributes the indexes read (None: remove it, out of the index)."""
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
        spread = [attr for attr in self.spec.spread if top.get(attr) is not None]
        if spread and self._spreads():
            for attr in spread:
                top[attr] = {"S": spread_value(str(data[attr]), key)}
        return top

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
        except ClientError as exc:
            if self._after_a_lost_answer(exc, key) != {}:
                raise ConflictError(self.spec.name, key, expected_version) from None
            return expected_version != ABSENT  # gone: deleted by the attempt it lost
        return bool(old) and self._item(old, time.time()) is not None

    def _page(self, method: str, limit: int, cursor: str | None,
              convert: Callable[[Raw, float], Item | None] | None = None, **kwargs: Any) -> Page:
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
                item = (convert or self._item)(raw, now)
                if item is not None:
                    items.append(item)
            start = response.get("LastEvaluatedKey")
            if not start or len(items) >= limit:
                return Page(items, json.dumps(start) if start else None)

    def _merged(self, index_name: str, order: Order, value: str, limit: int,
                cursor: str | None, condition: str = "", names: dict[str, str] | None = None,
                values: dict[str, Any] | None = None) -> Page:
        """A query of a spread key: every stored value's, merged (store/dynamo_spread.py)."""
        def fetch(stored: str, start: Raw | None, chunk: int) -> tuple[list[Raw], Raw | None]:
            extra = {"ExclusiveStartKey": start} if start else {}
            answer = self._call("query", IndexName=index_name, Limit=chunk,
                                KeyConditionExpression="#k = :v" + condition,
                                ExpressionAttributeNames={"#k": order.key_attr, **(names or {})},
                                ExpressionAttributeValues={":v": {"S": stored},
                                                           **(values or {})}, **extra)
            return answer.get("Items", []), answer.get("LastEvaluatedKey")
        now = time.time()
        return merged_page(fetch, value, order, lambda raw: self._item(raw, now), limit, cursor)

    def query(self, index: str, value: str, limit: int = 100, cursor: str | None = None) -> Page:
        if index not in self.spec.indexes:
            raise ValueError(f"{self.spec.name} has no index {index!r}")
        if index in self.spec.spread:
            return self._merged(f"by_{index}", Order(index), value, limit, cursor)
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
        if found.key in self.spec.spread:
            return self._merged(
                f"range_{found.name}", Order(found.key, found.sort), value, limit, cursor,
                condition.removeprefix("#k = :v"), {"#s": found.sort} if len(values) > 1 else {},
                {k: v for k, v in values.items() if k != ":v"})
        keys = None if not found.keys_only else lambda raw, now: {
            self.spec.key: raw["pk"]["S"], found.key: raw[found.key]["S"],
            found.sort: float(raw[found.sort]["N"])}
        return self._page("query", limit, cursor, keys, IndexName=f"range_{found.name}",
                          KeyConditionExpression=condition,
                          ExpressionAttributeNames={"#k": found.key, **(
                              {"#s": found.sort} if ":lo" in values or ":hi" in values else {})},
                          ExpressionAttributeValues=values)

    def scan(self, limit: int = 100, cursor: str | None = None) -> Page:
        """A consistent page of the table: the scans serve reconciliations, listings and
        migrations, where a write missed by an eventually consistent read would be undone
        (twice the read units of an eventual one, for reads done at start or on request)."""
        return self._page("scan", limit, cursor, ConsistentRead=True)

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

    def respread(self) -> int:
        """Rewrite the spread index keys of the items stored before they were spread (only
        those attributes, conditional on the item's version, which stays: no writer's
        conditional write is disturbed). Reads every item once; an item done is skipped, so a
        second run, or one after a crash, goes on where the first stopped. Returns how many
        items it rewrote."""
        if not self.spec.spread:
            return 0
        changed, start = 0, None
        while True:
            extra: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
            page = self._call("scan", ConsistentRead=True, **extra)
            for raw in page.get("Items", []):
                changed += self._respread_item(raw)
            start = page.get("LastEvaluatedKey")
            if not start:
                return changed

    def _respread_item(self, raw: Raw) -> int:
        """1 if this item's spread attributes were rewritten, 0 if they needed nothing."""
        while raw:
            key = raw["pk"]["S"]
            wanted = {attr: spread_value(raw[attr]["S"], key) for attr in self.spec.spread
                      if "S" in raw.get(attr, {})}
            wanted = {attr: value for attr, value in wanted.items() if raw[attr]["S"] != value}
            if not wanted or "version" not in raw:
                return 0
            names = {f"#a{n}": attr for n, attr in enumerate(wanted)}
            values = {f":a{n}": {"S": value} for n, value in enumerate(wanted.values())}
            try:
                self._call("update_item", Key={"pk": {"S": key}},
                           UpdateExpression="SET " + ", ".join(
                               f"#a{n} = :a{n}" for n in range(len(wanted))),
                           ConditionExpression="version = :version",
                           ExpressionAttributeNames=names,
                           ExpressionAttributeValues={**values, ":version": raw["version"]})
                return 1
            except ClientError:  # written meanwhile (perhaps unspread): look again
                raw = self._call("get_item", Key={"pk": {"S": key}},
                                 ConsistentRead=True).get("Item") or {}
        return 0

    def increment(self, key: str, counter: str, amount: int = 1, *,
                  existing_only: bool = False, at_most: int | None = None) -> int | None:
        conditions = ["attribute_exists(version)"] if existing_only else []
        values = {":n": {"N": str(amount)}}
        if at_most is not None:
            if amount > at_most:
                return None
            conditions.append("(attribute_not_exists(#c) OR #c <= :most)")
            values[":most"] = {"N": str(at_most - amount)}
        condition = {"ConditionExpression": " AND ".join(conditions)} if conditions else {}
        try:
            raw = self._call("update_item", Key={"pk": {"S": key}}, UpdateExpression="ADD #c :n",
                             ExpressionAttributeNames={"#c": f"c_{counter}"},
                             ExpressionAttributeValues=values,
                             ReturnValues="UPDATED_NEW", **condition)["Attributes"]
        except ClientError:  # only a failed condition gets here (_call turns the rest)
            return None
        return int(raw[f"c_{counter}"]["N"])
