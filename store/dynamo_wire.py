"""DynamoDB's JSON protocol over kept-alive connections (store/wire_http.py), for the store's
reads and writes of items (GetItem, UpdateItem, DeleteItem, Query, Scan, BatchGetItem,
BatchWriteItem) and of its tables (DescribeTable, CreateTable, UpdateTable, UpdateTimeToLive).

botocore's client spends 4.6 to 9.6 times this client's CPU on each of these requests (its
event hooks, endpoint rules, parameter validation, request objects, its SigV4 signer, the
response parser, urllib3 and http.client under it): 0.98 ms against 0.10 ms a GetItem
against dynalite (bench/store_client.py, docs/benchmarks.md).
The item operations carry the wire format the store already writes (``{"S": ...}``,
``{"N": ...}``), so they need none of that; nor do the table operations, whose answers the store
reads only for names and statuses (a date stays a number here, where botocore parses it). A
store's first open creates some thirty tables: about 90 requests, 0.12 s of client CPU through
botocore, 0.04 s here. botocore keeps the credentials chain and the endpoint it resolves.

What a request does is what botocore's ``standard`` retry mode does, so a store behaves the same
through either client: five attempts in all; throttling, 5xx, the transient error codes, a
connection failure, a timeout or a bad CRC32 retried after ``rand * min(2 ** (attempt - 1),
20)`` seconds; a retry quota of 500 (5 a retry, 10 after a timeout; a success gives back what its
call took, or 1). What still fails raises botocore's own ``ClientError`` (the error's code and
message) or ``BotoCoreError`` (nobody answered), as the store catches them. A TLS handshake
refused (a certificate the system does not trust) is not retried: botocore's ``SSLError``
says why at once.

A write retried after an attempt whose answer never came (a read timeout, a connection broken
after it was sent, a 5xx, a damaged answer) may have been applied by that attempt: its retry
then fails its own condition. The ``ClientError`` says so (``MAYBE_APPLIED`` in its
``ResponseMetadata``), and the store reads the item to tell (store/dynamo_table.py).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
import zlib
from typing import Any, Callable
from urllib.parse import urlsplit

from botocore.exceptions import (ClientError, ConnectTimeoutError, EndpointConnectionError,
                                 NoCredentialsError, ReadTimeoutError, SSLError)

from store.wire_http import (Broken, ConnectFailed, ConnectTimedOut, KeptConnections,
                             ReadTimedOut, TLSRefused)

OPERATIONS = {"get_item": "GetItem", "update_item": "UpdateItem", "delete_item": "DeleteItem",
              "query": "Query", "scan": "Scan", "batch_get_item": "BatchGetItem",
              "batch_write_item": "BatchWriteItem", "describe_table": "DescribeTable",
              "create_table": "CreateTable", "update_table": "UpdateTable",
              "update_time_to_live": "UpdateTimeToLive"}
"""The client methods this client answers, by their DynamoDB operation."""
THROTTLED = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException"})
"""botocore's throttling codes (retries/standard.py): retried, and counted as throttled."""
TRANSIENT = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
QUOTA, RETRY_COST, TIMEOUT_RETRY_COST, NO_RETRY_INCREMENT = 500, 5, 10, 1
MAX_BACKOFF = 20.0
MAYBE_APPLIED = "MaybeApplied"
TARGET = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"


def backoff(attempt: int) -> float:
    """Seconds before attempt ``attempt + 1`` (``attempt`` from 1): botocore's jittered
    exponential backoff. The tests scale it down for the clients inside their process."""
    return random.random() * min(2.0 ** (attempt - 1), MAX_BACKOFF)


class SigV4:
    """AWS Signature Version 4 for a POST to ``/`` with no query, as DynamoDB's JSON protocol
    sends (tests/test_dynamo_wire.py checks it signs as botocore's ``SigV4Auth`` does)."""

    def __init__(self, region: str, service: str = "dynamodb") -> None:
        self._region, self._service = region, service
        self._keys: dict[tuple[str, str], bytes] = {}

    def _key(self, secret: str, day: str) -> bytes:
        found = self._keys.get((secret, day))
        if found is None:
            key = f"AWS4{secret}".encode()
            for part in (day, self._region, self._service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, day): key}  # the day's key; yesterday's is not kept
            found = key
        return found

    def authorization(self, headers: dict[str, str], body: bytes, access_key: str,
                      secret: str) -> str:
        """The Authorization header for ``headers`` (lower-case names, X-Amz-Date among
        them; every one is signed) and ``body``."""
        stamp = headers["x-amz-date"]
        scope = f"{stamp[:8]}/{self._region}/{self._service}/aws4_request"
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join(["POST", "/", "", *(f"{n}:{' '.join(headers[n].split())}"
                                                   for n in names),
                               "", signed, hashlib.sha256(body).hexdigest()])
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._key(secret, stamp[:8]), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        return (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                f"SignedHeaders={signed}, Signature={signature}")


class WireClient:
    """The store's operations as methods named as boto3's (``client.get_item(**params)``),
    answering what boto3 answers for them. ``counted(table, operation)`` is called once a call,
    ``throttled(table)`` once an attempt the server throttled."""

    def __init__(self, endpoint_url: str, region: str, credentials: Any, *, user_agent: str,
                 connect_timeout: float = 3.0, read_timeout: float = 10.0,
                 max_pool_connections: int = 64, max_attempts: int = 5,
                 counted: Callable[[str, str], None] = lambda table, operation: None,
                 throttled: Callable[[str], None] = lambda table: None,
                 ca_bundle: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        parts = urlsplit(endpoint_url)
        self._host = parts.netloc  # as botocore signs it: the port only when the URL has one
        self._pool = KeptConnections(endpoint_url, connect_timeout, read_timeout,
                                     max_pool_connections, ca_bundle)
        self._credentials = credentials
        self._signer = SigV4(region)
        self._agent = user_agent
        self._attempts = max_attempts
        self._counted, self._throttled = counted, throttled
        self._quota = QUOTA
        self._lock = threading.Lock()

    def __getattr__(self, method: str) -> Callable[..., dict[str, Any]]:
        operation = OPERATIONS.get(method)
        if operation is None:
            raise AttributeError(method)
        return lambda **params: self.call(operation, params)

    def close(self) -> None:
        self._pool.close()

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        table = table_name(params)
        self._counted(table, operation)
        body = json.dumps(params, separators=(",", ":")).encode()
        charged = 0
        attempt = 1
        unsure = False
        while True:
            try:
                status, answer, code, message = self._send(operation, body)
                failure: Exception | None = None
            except (EndpointConnectionError, ReadTimeoutError, ConnectTimeoutError) as exc:
                status, answer, code, message, failure = 0, {}, "", str(exc), exc
            if 200 <= status < 300 and not code and failure is None:
                self._give_back(charged or NO_RETRY_INCREMENT)
                return answer
            if code in THROTTLED:
                self._throttled(table)
            retryable = failure is not None or code in THROTTLED or code in TRANSIENT \
                or status in TRANSIENT_STATUS or code == "CRC32CheckFailed"
            cost = TIMEOUT_RETRY_COST if isinstance(
                failure, (ReadTimeoutError, ConnectTimeoutError)) else RETRY_COST
            if not retryable or attempt >= self._attempts or not self._take(cost):
                if failure is not None:
                    raise failure
                raise ClientError({"Error": {"Code": code, "Message": message},
                                   "ResponseMetadata": {"HTTPStatusCode": status,
                                                        "RetryAttempts": attempt - 1,
                                                        MAYBE_APPLIED: unsure}},
                                  operation)
            unsure = unsure or _maybe_applied(status, code, failure)
            charged = cost
            time.sleep(backoff(attempt))
            attempt += 1

    def _send(self, operation: str, body: bytes) -> tuple[int, dict[str, Any], str, str]:
        """One attempt: (status, the answer, the error code and message when it failed)."""
        if self._credentials is None:
            raise NoCredentialsError()
        frozen = self._credentials.get_frozen_credentials()
        headers = {"content-type": CONTENT_TYPE, "host": self._host,
                   "x-amz-date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
                   "x-amz-target": TARGET + operation}
        if frozen.token:
            headers["x-amz-security-token"] = frozen.token
        headers["authorization"] = self._signer.authorization(
            headers, body, frozen.access_key, frozen.secret_key)
        headers["user-agent"] = self._agent
        try:
            response = self._pool.post(headers, body)
        except ConnectTimedOut as exc:
            raise ConnectTimeoutError(endpoint_url=self.endpoint_url, error=exc) from None
        except ReadTimedOut as exc:
            raise ReadTimeoutError(endpoint_url=self.endpoint_url, error=exc) from None
        except TLSRefused as exc:  # botocore's class, whose message says why
            raise SSLError(endpoint_url=self.endpoint_url, error=exc) from None
        except (ConnectFailed, Broken) as exc:
            raise EndpointConnectionError(endpoint_url=self.endpoint_url, error=exc) from None
        data = response.body
        crc = response.headers.get("x-amz-crc32")
        if crc is not None and zlib.crc32(data) & 0xFFFFFFFF != int(crc):
            return response.status, {}, "CRC32CheckFailed", "the answer's CRC32 does not match"
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {}
        if 200 <= response.status < 300:
            return response.status, answer, "", ""
        kind = str(answer.get("__type") or response.headers.get("x-amzn-errortype") or "")
        code = kind.rsplit("#", 1)[-1].split(":", 1)[0] or str(response.status)
        return response.status, {}, code, str(answer.get("message") or answer.get("Message")
                                              or response.reason or "")

    def _take(self, amount: int) -> bool:
        with self._lock:
            if self._quota < amount:
                return False
            self._quota -= amount
            return True

    def _give_back(self, amount: int) -> None:
        with self._lock:
            self._quota = min(QUOTA, self._quota + amount)


def _maybe_applied(status: int, code: str, failure: Exception | None) -> bool:
    """Whether an attempt that failed so may still have been carried out: not one refused
    before it was done (throttled) nor one never sent (no connection)."""
    if failure is not None:
        return not isinstance(failure, ConnectTimeoutError) and not isinstance(
            failure.kwargs.get("error"), ConnectFailed)  # type: ignore[attr-defined]
    return code not in THROTTLED and (status >= 500 or code in TRANSIENT
                                      or code == "CRC32CheckFailed")


def table_name(params: Any, unknown: str = "*") -> str:
    """The table a request names: ``TableName``, or a batch's one table (``RequestItems``)."""
    if not isinstance(params, dict):
        return unknown
    if "TableName" in params:
        return str(params["TableName"])
    tables = list(params.get("RequestItems") or {})
    return str(tables[0]) if len(tables) == 1 else unknown
