"""A DynamoDB nemesis: an HTTP proxy on loopback in front of dynalite that behaves the way
DynamoDB does and dynalite does not (in the spirit of Toxiproxy and Jepsen's nemeses).

- **Index lag.** It remembers when each item was written (the keys in PutItem, UpdateItem,
  DeleteItem, TransactWriteItems and BatchWriteItem requests) and leaves items written in the
  last ``lag`` seconds out of Query answers on a global secondary index (``IndexName``), as
  an eventually consistent index does, and out of a Query or Scan of the table that does not
  ask for ``ConsistentRead`` (an eventually consistent read may miss a recent write).
  ``lag_random`` picks the lag per request in [0, ``lag``] (chaos).
- **Throttling and errors.** A ``fail_rate`` fraction of requests is answered with one of
  ``failures``: ``ProvisionedThroughputExceededException`` or ``ThrottlingException`` (400
  with DynamoDB's ``__type``) or ``InternalServerError`` (500), without reaching dynalite;
  the same request at most ``max_streak`` times in a row, when set.
- **Corruption.** ``corrupt`` among ``failures`` answers dynalite's answer with an
  ``x-amz-crc32`` header that does not match it (DynamoDB sends the body's CRC32; a client
  retries an answer damaged on the way).
- **Lost answers.** The next ``lose_next`` writes are carried out by dynalite, then answered
  with a 500 (``lose_as`` "internal") or a connection closed without an answer ("dropped"),
  as when DynamoDB's answer to a write is lost on the way: the client sends it again.
- **Slowness.** A ``slow_rate`` fraction waits ``slow`` seconds first.
- **Partial batches.** An ``unprocessed_rate`` fraction of the keys of a BatchGetItem (the
  writes of a BatchWriteItem) is left out of what dynalite is asked and answered as
  ``UnprocessedKeys`` (``UnprocessedItems``), at least one key read (one write done), as
  DynamoDB does under throttling or past 16 MB.
- **Consumed capacity** per index key: ``consumed[(table, key attribute, value)]`` counts the
  requests that read or wrote under each key value of each index, so a test sees a hot key.

Tests reach it through the ``nemesis`` fixture (tests/conftest.py); one runs per test worker
and is reset between tests.
"""
from __future__ import annotations

import json
import random
import socket
import socketserver
import threading
import time
import zlib
from collections import Counter
from typing import IO, Any
from urllib.parse import urlsplit

from store.wire_http import Broken, read_message

_TYPES = {
    "throughput": (400, "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                   "The level of configured provisioned throughput for the table was exceeded."),
    "throttling": (400, "com.amazon.coral.availability#ThrottlingException",
                   "Rate of requests exceeds the allowed throughput."),
    "internal": (500, "com.amazonaws.dynamodb.v20120810#InternalServerError",
                 "Internal server error"),
}
_UNPROCESSED = {"BatchGetItem": "UnprocessedKeys", "BatchWriteItem": "UnprocessedItems"}
"""The batch operations DynamoDB may answer in part, and the field naming what it left."""
WRITES = ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem")
INDEXED_KEYS = ("feed", "status", "expiry_shard", "expiring", "state", "owner", "expiry_set",
                "failing_set", "outbox_state")
"""Attributes counted as index key values when a write carries them (the hot-key counter)."""


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    """A merged read of a spread index key sends its seventeen queries at once (the default
    backlog of 5 would drop some connections, to be retried a second later)."""


_HOP = frozenset({"host", "connection", "content-length", "transfer-encoding", "keep-alive"})


class Nemesis:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream).netloc
        self._upstream = threading.local()
        self._lock = threading.Lock()
        self.written: dict[tuple[str, str], float] = {}
        self.consumed: Counter[tuple[str, str, str]] = Counter()
        self.injected: Counter[str] = Counter()
        self.agents: Counter[str] = Counter()
        """Requests by the User-Agent they carried."""
        self.hidden = 0
        """Items left out of index queries so far."""
        self.reset()
        nemesis = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:  # keep-alive: the clients reuse their connections
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while (message := read_message(self.rfile)) is not None:
                    _, headers, body = message
                    if not nemesis._handle(self.wfile, headers, body):
                        return  # dropped without an answer
                    if headers.get("connection", "").lower() == "close":
                        return

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        """Behave like dynalite again (the counters start from zero)."""
        self.lag = 0.0
        self.lag_random = False
        self.fail_rate = 0.0
        self.failures: tuple[str, ...] = ("throughput", "throttling", "internal")
        self.slow_rate = 0.0
        self.slow = 0.0
        self.unprocessed_rate = 0.0
        self.only: tuple[str, ...] = ()
        """Operations the faults apply to (empty: all)."""
        self.tables: tuple[str, ...] = ()
        """Ends of the table names the faults apply to (empty: all)."""
        self.lose_next = 0
        self.lose_as = "internal"
        self.max_streak: int | None = None
        """While ``fail_rate`` is under 1, the same request (operation and body: a client's
        retries send the same) fails at most this many times in a row, then goes through.
        The ``nemesis`` fixture sets fewer than any client's attempts, so its weather
        exercises retries and never makes a request give up by chance (at 3% and five
        attempts a request gave up 2.4e-8 of the time: about once in a thousand runs of the
        suite); a test that wants requests to give up sets ``fail_rate`` 1."""
        with self._lock:
            self._streaks: dict[tuple[str, int], int] = {}
            self.consumed.clear()
            self.injected.clear()
            self.agents.clear()
            self.hidden = 0

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def hot_keys(self, table_suffix: str = "") -> list[tuple[tuple[str, str, str], int]]:
        with self._lock:
            return [(key, n) for key, n in self.consumed.most_common()
                    if key[0].endswith(table_suffix)]

    # --- the proxy ---------------------------------------------------------------------

    def _handle(self, out: IO[bytes], headers: dict[str, str], body: bytes) -> bool:
        """Answer one request; False: the connection is to be closed without an answer."""
        operation = headers.get("x-amz-target", "").rpartition(".")[2]
        request = json.loads(body or b"{}")
        with self._lock:
            self.agents[headers.get("user-agent", "")] += 1
        if (not self.only or operation in self.only) and (
                not self.tables or str(request.get("TableName", "")).endswith(self.tables)):
            if operation in WRITES and self._loses():
                status, answer = self._forward(headers, body)
                if status == 200:
                    self._written(operation, request)
                if self.lose_as == "dropped":
                    return False
                status, kind_type, message = _TYPES["internal"]
                self._answer(out, status, json.dumps(
                    {"__type": kind_type, "message": message}).encode())
                return True
            if self.slow_rate and random.random() < self.slow_rate:
                time.sleep(self.slow)
            if self.fail_rate and self._fails((operation, hash(body))):
                kind = random.choice(self.failures)
                with self._lock:
                    self.injected[kind] += 1
                if kind == "corrupt":  # dynalite's answer, its checksum not matching it
                    status, answer = self._forward(headers, body)
                    self._answer(out, status, answer, crc32=zlib.crc32(answer) ^ 1)
                    return True
                status, kind_type, message = _TYPES[kind]
                self._answer(out, status, json.dumps(
                    {"__type": kind_type, "message": message}).encode())
                return True
        withheld: dict[str, Any] = {}
        if operation in _UNPROCESSED and self.unprocessed_rate:
            request, withheld = self._withhold(request)
            body = json.dumps(request).encode()
        try:
            status, answer = self._forward(headers, body)
        except OSError as exc:  # dynalite dropped the connection: a 500 the SDK retries
            status, kind_type, message = _TYPES["internal"]
            answer = json.dumps({"__type": kind_type, "message": str(exc)}).encode()
        self._count(operation, request)
        if status == 200 and operation in WRITES:
            self._written(operation, request)
        if status == 200 and operation in ("Query", "Scan") and (
                request.get("IndexName") or not request.get("ConsistentRead")):
            answer = self._lagging(request, answer)
        if status == 200 and withheld:
            answer = json.dumps({**json.loads(answer), _UNPROCESSED[operation]: withheld})\
                .encode()
        self._answer(out, status, answer)
        return True

    def _loses(self) -> bool:
        with self._lock:
            if self.lose_next <= 0:
                return False
            self.lose_next -= 1
            self.injected["lost"] += 1
            return True

    def _fails(self, request: tuple[str, int]) -> bool:
        """Whether to fail ``request`` (a draw of ``fail_rate``, within ``max_streak``). Only
        the requests failed last time they came are remembered."""
        with self._lock:
            streak = self._streaks.pop(request, 0)
            if random.random() >= self.fail_rate or (
                    self.max_streak is not None and self.fail_rate < 1
                    and streak >= self.max_streak):
                return False
            self._streaks[request] = streak + 1
            return True

    def _withhold(self, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The batch without the keys (writes) it leaves unprocessed, and those."""
        asked: dict[str, Any] = {}
        withheld: dict[str, Any] = {}
        left_out = 0
        for table, part in request.get("RequestItems", {}).items():
            reads = isinstance(part, dict)  # a read's {"Keys": [...]}; a write's list
            keys = list(part.get("Keys", []) if reads else part)
            left = [key for key in keys[1:] if random.random() < self.unprocessed_rate]
            kept = [key for key in keys if key not in left]
            asked[table] = {**part, "Keys": kept} if reads else kept
            if left:
                withheld[table] = {**part, "Keys": left} if reads else left
                left_out += len(left)
        with self._lock:
            self.injected["unprocessed"] += left_out
        return {**request, "RequestItems": asked}, withheld

    def _forward(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """To dynalite over this thread's kept connection (one new one if it was closed)."""
        head = "".join([f"POST / HTTP/1.1\r\nHost: {self.upstream}\r\n",
                        *(f"{name}: {value}\r\n" for name, value in headers.items()
                          if name not in _HOP),
                        f"Content-Length: {len(body)}\r\n\r\n"]).encode("latin-1")
        for attempt in (1, 2):
            kept = getattr(self._upstream, "connection", None)
            if kept is None:
                host, _, port = self.upstream.rpartition(":")
                connection = socket.create_connection((host, int(port)), timeout=30)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                kept = self._upstream.connection = (connection, connection.makefile("rb"))
            try:
                kept[0].sendall(head + body)
                message = read_message(kept[1], to_end=True)
                if message is None:
                    raise ConnectionResetError("dynalite closed the connection")
                return int(message[0].split()[1]), message[2]
            except (OSError, ValueError, IndexError, Broken):
                kept[1].close()
                kept[0].close()
                self._upstream.connection = None
                if attempt == 2:
                    raise OSError("dynalite did not answer") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _answer(out: IO[bytes], status: int, body: bytes, crc32: int | None = None) -> None:
        out.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/x-amz-json-1.0\r\n"
                  b"Content-Length: %d\r\nx-amz-crc32: %d\r\n\r\n%s" % (
                      status, b"OK" if status == 200 else b"Error", len(body),
                      zlib.crc32(body) if crc32 is None else crc32, body))

    def _lagging(self, request: dict[str, Any], answer: bytes) -> bytes:
        lag = random.uniform(0, self.lag) if self.lag_random else self.lag
        if lag <= 0:
            return answer
        doc = json.loads(answer)
        now = time.monotonic()
        table = request.get("TableName", "")
        with self._lock:
            kept = [item for item in doc.get("Items", [])
                    if now - self.written.get((table, _key(item)), -1e9) >= lag]
            self.hidden += len(doc.get("Items", [])) - len(kept)
        doc["Items"], doc["Count"] = kept, len(kept)
        return json.dumps(doc).encode()

    def _written(self, operation: str, request: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            for table, item in _writes(operation, request):
                self.written[(table, _key(item))] = now

    def _count(self, operation: str, request: dict[str, Any]) -> None:
        """One unit per request under each index key value it names (a query's key
        condition value, or a written item's indexed attributes)."""
        counted: list[tuple[str, str, str]] = []
        if operation == "Query" and request.get("IndexName"):
            names = request.get("ExpressionAttributeNames") or {}
            values = request.get("ExpressionAttributeValues") or {}
            first = next(iter(values.values()), {})
            counted.append((request.get("TableName", ""),
                            next(iter(names.values()), request["IndexName"]),
                            str(next(iter(first.values()), ""))))
        elif operation in WRITES:
            for table, item in _writes(operation, request):
                for attr, value in _indexed(item, request).items():
                    counted.append((table, attr, value))
        with self._lock:
            self.consumed.update(counted)


def _writes(operation: str, request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(table, item or key) of each item a write request touches."""
    if operation == "PutItem":
        return [(request["TableName"], request["Item"])]
    if operation in ("UpdateItem", "DeleteItem"):
        return [(request["TableName"], request["Key"])]
    if operation == "TransactWriteItems":
        found = []
        for entry in request.get("TransactItems", []):
            for kind, part in entry.items():
                if kind != "ConditionCheck":
                    found.append((part["TableName"], part.get("Item") or part["Key"]))
        return found
    if operation == "BatchWriteItem":
        return [(table, (entry.get("PutRequest") or {}).get("Item")
                 or (entry.get("DeleteRequest") or {}).get("Key"))
                for table, entries in request.get("RequestItems", {}).items()
                for entry in entries]
    return []


def _indexed(item: dict[str, Any], request: dict[str, Any]) -> dict[str, str]:
    """Indexed attribute -> value a write sets: from a put's item, or an update's values
    (``SET #a = :a`` with the attribute's name in ``ExpressionAttributeNames``)."""
    found = {attr: str(next(iter(item[attr].values()))) for attr in INDEXED_KEYS if attr in item}
    names = request.get("ExpressionAttributeNames") or {}
    values = request.get("ExpressionAttributeValues") or {}
    for alias, attr in names.items():
        value = values.get(":" + alias.lstrip("#"))
        if attr in INDEXED_KEYS and isinstance(value, dict):
            found[attr] = str(next(iter(value.values())))
    return found


def _key(item: dict[str, Any]) -> str:
    return json.dumps(item.get("pk"), sort_keys=True)
