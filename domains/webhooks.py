"""Webhooks to the platform: a durable queue, delivered in the background with retries.

``emit`` only writes the event to the queue table, so the domain worker never waits on HTTP.
What emits a domain's webhooks is the drain of that domain's outbox (domains/outbox.py): the
webhook is written with the status change it reports, in the same conditional write, and its id
is fixed there. A crash before ``emit`` leaves the entry on the domain's item, and the worker's
drain emits it later with the same id; ``emit`` stores an id only once. Once stored, an event
survives any crash of the sender. Webhooks emitted without an id (not from an outbox) are
stored only when ``emit`` returns: a crash before that loses them.

``deliver_due`` (run by the thread from ``start``) claims each due event with a conditional
write and a short lease, POSTs it, and records the outcome. Delivery is at least once: a sender
that dies after the POST but before recording it sends again when its lease runs out, with the
same ``X-Edge-Delivery`` id, which a receiver must use to ignore repeats.

Each request is a JSON body ``{"id", "type", "created_at", "data"}`` with these headers::

    X-Edge-Event: <event type>
    X-Edge-Delivery: <event id>
    X-Edge-Timestamp: <unix seconds when this attempt was sent>
    X-Edge-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.".encode() + raw body)>

To verify, recompute the HMAC over the timestamp header, a dot and the raw body bytes, compare in
constant time, and reject timestamps more than a few minutes from your clock: the timestamp is
inside the signed payload, so a captured request cannot be replayed later
(:func:`verify_signature` does all of this). Any 2xx answer counts as delivered; anything else,
a redirect, a connection error or a timeout is retried with jittered exponential backoff until
``max_attempts``, after which the event is left in state ``failed`` with ``last_error``.
A delivered event expires ``retention`` seconds after its delivery, a failed one as long
after its last attempt.

``domain.taken_over`` goes to the publication that held a domain when the owner of its DNS
moved it to their own publication with a TXT proof (domains/takeover.py, docs/takeover.md):
``data`` is ``{"hostname", "publication_id"`` (the previous holder)``, "status": "taken_over",
"previous_status"}``; the new holder is not named (its own ``domain.verified`` and
``domain.active`` follow as usual).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from typing import Any, Callable

import requests

from kit.backoff import jittered_backoff
from store import ABSENT, ConflictError, Item, Table, TableSpec, every

log = logging.getLogger(__name__)

WEBHOOKS = TableSpec("webhook_outbox", key="id", indexes=("state",), expiring=True)
EVENT_TYPES = frozenset({
    "domain.verified", "domain.awaiting_traffic", "domain.active", "domain.suspended",
    "domain.removed",
    "domain.taken_over",  # to the previous holder: the DNS owner moved it (domains/takeover.py)
    "certificate.issued", "certificate.renewal_failed",
    "certificate.uploaded", "certificate.fallback",  # a publisher's own (domains/byo.py)
})
PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Edge-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify_signature(secret: str, timestamp: int | str, body: bytes, signature_header: str,
                     tolerance: float = 300, now: float | None = None) -> bool:
    """True if the signature matches and the timestamp is within ``tolerance`` seconds of now."""
    try:
        sent_at = int(str(timestamp).strip())
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent_at) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, sent_at, body).encode(),
                               (signature_header or "").strip().encode())


class WebhookSender:
    def __init__(self, table: Table, url: str, secret: str, *,
                 session: requests.Session | None = None, max_attempts: int = 12,
                 retry_base: float = 5.0, retry_max: float = 3600.0, timeout: float = 5.0,
                 retention: float = 30 * 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self._url = url
        self._secret = secret
        self._session = session or requests.Session()
        self._max_attempts = max_attempts
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._timeout = timeout
        self._lease = 3 * timeout + 10  # longer than any one attempt can take
        self._retention = retention
        self._clock = clock
        self._last_ns = 0

    @property
    def enabled(self) -> bool:
        return bool(self._url)

    def emit(self, event_type: str, data: dict[str, Any], event_id: str | None = None) -> str:
        """Store the event for delivery and return its id ("" when disabled).

        An ``event_id`` given by the caller (a domain's outbox entry) is stored once: emitting
        it again, as a drain repeated after a crash does, changes nothing."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {event_type!r}")
        if not self.enabled:
            return ""
        now = self._clock()
        event_id = event_id or f"{self._nanoseconds(now):020d}-{uuid.uuid4().hex[:12]}"
        try:
            self.table.put({"id": event_id, "type": event_type, "data": data, "created_at": now,
                            "attempts": 0, "next_attempt_at": now, "state": PENDING,
                            "last_error": None}, expected_version=ABSENT)
        except ConflictError:
            pass  # enqueued already (and maybe delivered): the first one stands
        return event_id

    def _nanoseconds(self, now: float) -> int:
        """``now`` in nanoseconds, after any this sender stamped before: ids sort oldest first
        even for events emitted in one tick of the clock."""
        self._last_ns = max(int(now * 1e9), self._last_ns + 1)
        return self._last_ns

    def deliver_due(self, limit: int = 50) -> int:
        """Send up to ``limit`` due events, oldest first; return how many were delivered."""
        if not self.enabled:
            return 0
        delivered = 0
        for event in self._due(limit):
            claimed = self._claim(event)
            if claimed is not None and self._send(claimed):
                delivered += 1
        return delivered

    def start(self, stop: threading.Event, interval: float = 1.0) -> threading.Thread:
        """Deliver in a daemon thread until ``stop`` is set; errors are logged, never raised."""
        thread = threading.Thread(target=self._loop, args=(stop, interval),
                                  name="webhook-sender", daemon=True)
        thread.start()
        return thread

    def _loop(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                if self.deliver_due() > 0:
                    continue  # there may be more waiting: do not sleep on a backlog
            except Exception:
                log.exception("webhook delivery round failed")
            stop.wait(interval)

    def _due(self, limit: int) -> list[Item]:
        now = self._clock()
        pending = self._query(PENDING, lambda e: float(e.get("next_attempt_at") or 0) <= now)
        stale = self._query(SENDING, lambda e: float(e.get("lease_until") or 0) <= now)
        return sorted(pending + stale, key=lambda e: e["id"])[:limit]

    def _query(self, state: str, due: Callable[[Item], bool]) -> list[Item]:
        return [item for item in every(lambda cursor: self.table.query(
            "state", state, limit=100, cursor=cursor)) if due(item)]

    def _claim(self, event: Item) -> Item | None:
        """The event leased to us, or None if another sender got there first."""
        claim = {**event, "state": SENDING, "lease_until": self._clock() + self._lease}
        try:
            return self.table.put(claim, expected_version=event["version"])
        except ConflictError:
            return None

    def _send(self, event: Item) -> bool:
        body = json.dumps({"id": event["id"], "type": event["type"],
                           "created_at": event["created_at"], "data": event["data"]},
                          separators=(",", ":"), sort_keys=True).encode()
        timestamp = int(self._clock())
        headers = {"Content-Type": "application/json", "X-Edge-Event": event["type"],
                   "X-Edge-Delivery": event["id"], "X-Edge-Timestamp": str(timestamp),
                   "X-Edge-Signature": sign(self._secret, timestamp, body)}
        try:
            with self._session.post(self._url, data=body, headers=headers,
                                    timeout=self._timeout, allow_redirects=False) as response:
                error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            error = type(exc).__name__  # the message may hold the URL, which may hold a token
        if error is None:
            now = self._clock()
            self._finish(event, state=DELIVERED, delivered_at=now, last_error=None,
                         expires_at=now + self._retention)
            return True
        self._failed_attempt(event, error)
        return False

    def _failed_attempt(self, event: Item, error: str) -> None:
        attempts = int(event.get("attempts") or 0) + 1
        if attempts >= self._max_attempts:
            log.warning("webhook %s (%s) failed for good after %d attempts: %s",
                        event["id"], event["type"], attempts, error)
            # Kept for operators as long as a delivered one, then swept (never forever).
            self._finish(event, state=FAILED, attempts=attempts, last_error=error,
                         expires_at=self._clock() + self._retention)
            return
        delay = jittered_backoff(attempts, self._retry_base, self._retry_max)
        log.info("webhook %s (%s) attempt %d failed: %s; retrying in %.1fs",
                 event["id"], event["type"], attempts, error, delay)
        self._finish(event, state=PENDING, attempts=attempts, last_error=error,
                     next_attempt_at=self._clock() + delay)

    def _finish(self, event: Item, **changes: Any) -> None:
        try:
            self.table.put({**event, **changes, "lease_until": None},
                           expected_version=event["version"])
        except ConflictError:  # our lease ran out and another sender took the event over
            log.warning("webhook %s: lease lost before recording the outcome", event["id"])
