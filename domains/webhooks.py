"""Webhooks to the platform: a durable queue, delivered in the background with retries.

``emit`` only writes the event to the queue table, so the domain worker never waits on HTTP.
What emits a domain's webhooks is the drain of that domain's outbox (domains/outbox.py): the
webhook is written with the status change it reports, in the same conditional write, and its id
is fixed there. A crash before ``emit`` leaves the entry on the domain's item, and the worker's
drain emits it later with the same id; ``emit`` stores an id only once. Once stored, an event
survives any crash of the sender. Webhooks emitted without an id (not from an outbox) are
stored only when ``emit`` returns: a crash before that loses them.

``deliver_due`` (run by the thread from ``start``) asks the ``due`` range index for what is due
(so a round with nothing due costs the same whatever the backlog), claims each due event with a
conditional write and a short lease, POSTs it, and records the outcome. Delivery is at least
once: a sender that dies after the POST but before recording it sends again when its lease runs
out, with the same ``X-Edge-Delivery`` id, which a receiver must use to ignore repeats. An
attempt has a hard deadline shorter than the lease (domains/webhook_post.py), so a live sender
is never taken over, however slowly the receiver answers.

Each request is a JSON body ``{"version": 1, "id", "type", "created_at", "data", "sequence"}``
with these headers::

    X-Edge-Event: <event type>
    X-Edge-Delivery: <event id>
    X-Edge-Timestamp: <unix seconds when this attempt was sent>
    X-Edge-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.".encode() + raw body)>

``version`` is the body's format (:data:`PAYLOAD_VERSION`); a receiver refuses (answers 4xx to)
a version it does not know, so a mismatch is seen as failing deliveries, not misread data.
``sequence`` orders a domain's webhooks: it only grows per hostname (also across a removal and
a new connection), with gaps. Deliveries are not in order (a failed POST is retried after later
ones went through), so a receiver keeps the highest ``sequence`` it applied per hostname and
ignores a webhook with a lower one. During an upgrade from the release before (whose bodies had
neither field), events that release wrote are still delivered, without ``sequence``: a receiver
applies such a webhook as before (by its ``created_at``). The supported skew is one release.

To verify, recompute the HMAC over the timestamp header, a dot and the raw body bytes, compare in
constant time, and reject timestamps more than a few minutes from your clock: the timestamp is
inside the signed payload, so a captured request cannot be replayed later
(:func:`verify_signature` does all of this). Any 2xx answer counts as delivered; anything else,
a redirect, a connection error or a timeout is retried with jittered exponential backoff (at
most ``retry_max`` apart) for ``retry_window`` seconds from the event's creation (72 hours by
default: a receiver's weekend outage loses nothing), after which the event is left in state
``failed`` with ``last_error``; ``redeliver_failed`` (``edgectl webhooks redeliver --failed``)
queues the failed ones again. A delivered event expires ``retention`` seconds after its
delivery, a failed one as long after its last attempt.

A ``counted`` sender keeps the events pending and the outcomes with atomic ADDs on one item of
its table (``/metrics`` reads it; docs/monitoring.md). A crash between an event's write and its
ADD leaves a count off by one; the release before kept none, so the migration that follows it
recounts the queued events (control/migrations.py).

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

from domains.outbox import SEQUENCE  # an entry's data carries it; ``emit`` moves it out
from domains.webhook_post import post, watched_session
from kit.backoff import jittered_backoff
from store import (ABSENT, ConflictError, Item, RangeIndex, StoreError, Table, TableSpec,
                   every)

log = logging.getLogger(__name__)

WEBHOOKS = TableSpec("webhook_outbox", key="id", indexes=("state",), expiring=True,
                     ranges=(RangeIndex("due", key="state", sort="next_attempt_at"),),
                     optional=("due",))
"""``due``: the queued events (``pending``, and ``sending`` ones by when their lease ends) by
when they are due; a delivered or failed event leaves it (``next_attempt_at`` cleared)."""
EVENT_TYPES = frozenset({
    "domain.verified", "domain.awaiting_traffic", "domain.active", "domain.suspended",
    "domain.removed",
    "domain.taken_over",  # to the previous holder: the DNS owner moved it (domains/takeover.py)
    "certificate.issued", "certificate.renewal_failed",
    "certificate.uploaded", "certificate.fallback",  # a publisher's own (domains/byo.py)
})
PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"
PAYLOAD_VERSION = 1
"""The body's format. 1: ``version`` and ``sequence`` added to the release before's body."""
DUE_INDEXED = "~due-indexed"
"""The item that says every queued event is in the ``due`` index: written by the migration
that puts the events of the release before in it (control/migrations.py), or on a new store.
Until then each round also reads the first page of queued events by state."""
COUNTS = "~counts"
"""The item that holds the kept counts (in neither index)."""
INDEX_CHECK = 60.0
"""Seconds between two reads of ``DUE_INDEXED`` while it is absent."""


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


def body_of(event: Item) -> bytes:
    """The JSON body of ``event`` (:data:`PAYLOAD_VERSION`); ``sequence`` only if it has one."""
    body = {"version": PAYLOAD_VERSION, "id": event["id"], "type": event["type"],
            "created_at": event["created_at"], "data": event["data"]}
    if event.get(SEQUENCE) is not None:
        body[SEQUENCE] = event[SEQUENCE]
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


class WebhookSender:
    def __init__(self, table: Table, url: str, secret: str, *,
                 session: Any = None, max_attempts: int | None = None,
                 retry_base: float = 5.0, retry_max: float = 3600.0,
                 retry_window: float = 72 * 3600.0, timeout: float = 5.0,
                 retention: float = 30 * 86400.0, counted: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.counted = counted
        self._url = url
        self._secret = secret
        self._session = session or watched_session()
        self._max_attempts = max_attempts
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._retry_window = retry_window
        self._timeout = timeout
        self._lease = 3 * timeout + 10  # longer than any one attempt can take
        self._deadline = 2 * timeout + 5  # the attempt's; the rest of the lease records it
        self._retention = retention
        self._clock = clock
        self._last_ns = 0
        self._indexed_at: float | None = None
        self._indexed = False
        self._counts_made = False

    @property
    def enabled(self) -> bool:
        return bool(self._url)

    def emit(self, event_type: str, data: dict[str, Any], event_id: str | None = None) -> str:
        """Store the event for delivery and return its id ("" when disabled).

        An ``event_id`` given by the caller (a domain's outbox entry) is stored once: emitting
        it again, as a drain repeated after a crash does, changes nothing. ``data`` may carry
        the domain's :data:`SEQUENCE`, which becomes the event's own."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {event_type!r}")
        if not self.enabled:
            return ""
        data = dict(data)
        sequence = data.pop(SEQUENCE, None)
        now = self._clock()
        event_id = event_id or f"{self._nanoseconds(now):020d}-{uuid.uuid4().hex[:12]}"
        event = {"id": event_id, "type": event_type, "data": data, "created_at": now,
                 "attempts": 0, "next_attempt_at": now, "state": PENDING, "last_error": None}
        if sequence is not None:
            event[SEQUENCE] = int(sequence)
        try:
            self.table.put(event, expected_version=ABSENT)
        except ConflictError:
            return event_id  # enqueued already (and maybe delivered): the first one stands
        self._count(pending=1)
        return event_id

    def _nanoseconds(self, now: float) -> int:
        """``now`` in nanoseconds, after any this sender stamped before: ids sort oldest first
        even for events emitted in one tick of the clock."""
        self._last_ns = max(int(now * 1e9), self._last_ns + 1)
        return self._last_ns

    def deliver_due(self, limit: int = 50) -> int:
        """Send up to ``limit`` due events, soonest due first; return how many were
        delivered."""
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
        """What is due now: one index query per queued state (a lease that ran out is due);
        and, on a store whose queued events may not all be in the index yet, the first page
        of each state too; or, on one without the index (dynalite), every queued event."""
        now = self._clock()
        if "due" in self.table.lacking:
            found = [e for state in (PENDING, SENDING) for e in self._every(state)]
        else:
            found = [e for state in (PENDING, SENDING)
                     for e in self.table.query_range("due", state, upper=now, limit=limit).items]
            if not self._all_indexed():
                found += [e for state in (PENDING, SENDING)
                          for e in self.table.query("state", state, limit=limit).items]
        due = {e["id"]: e for e in found if _is_due(e, now)}
        return sorted(due.values(), key=lambda e: (float(e.get("next_attempt_at") or 0),
                                                   e["id"]))[:limit]

    def _every(self, state: str) -> list[Item]:
        return list(every(lambda cursor: self.table.query("state", state, limit=100,
                                                          cursor=cursor)))

    def _all_indexed(self) -> bool:
        now = time.monotonic()
        if self._indexed or (self._indexed_at is not None
                             and now - self._indexed_at < INDEX_CHECK):
            return self._indexed
        self._indexed_at = now
        self._indexed = self.table.get(DUE_INDEXED) is not None
        return self._indexed

    def _claim(self, event: Item) -> Item | None:
        """The event leased to us, or None if another sender got there first. Its due time
        becomes the lease's end: the index finds it again only if we die with it."""
        until = self._clock() + self._lease
        claim = {**event, "state": SENDING, "lease_until": until, "next_attempt_at": until}
        try:
            return self.table.put(claim, expected_version=event["version"])
        except ConflictError:
            return None

    def _send(self, event: Item) -> bool:
        body = body_of(event)
        timestamp = int(self._clock())
        headers = {"Content-Type": "application/json", "X-Edge-Event": event["type"],
                   "X-Edge-Delivery": event["id"], "X-Edge-Timestamp": str(timestamp),
                   "X-Edge-Signature": sign(self._secret, timestamp, body)}
        error = post(self._session, self._url, body, headers, self._timeout, self._deadline)
        if error is None:
            now = self._clock()
            if self._finish(event, state=DELIVERED, delivered_at=now, last_error=None,
                            next_attempt_at=None, expires_at=now + self._retention):
                self._count(pending=-1, delivered=1)
            return True
        self._failed_attempt(event, error)
        return False

    def _failed_attempt(self, event: Item, error: str) -> None:
        attempts = int(event.get("attempts") or 0) + 1
        now = self._clock()
        delay = jittered_backoff(attempts, self._retry_base, self._retry_max)
        since = float(event.get("retry_from") or event["created_at"])
        if now + delay > since + self._retry_window or (
                self._max_attempts is not None and attempts >= self._max_attempts):
            log.warning("webhook %s (%s) failed for good after %d attempts in %.0f s: %s",
                        event["id"], event["type"], attempts, now - since, error)
            # Kept for operators as long as a delivered one, then swept (never forever).
            if self._finish(event, state=FAILED, attempts=attempts, last_error=error,
                            next_attempt_at=None, expires_at=now + self._retention):
                self._count(pending=-1, failed=1)
            return
        log.info("webhook %s (%s) attempt %d failed: %s; retrying in %.1fs",
                 event["id"], event["type"], attempts, error, delay)
        self._finish(event, state=PENDING, attempts=attempts, last_error=error,
                     next_attempt_at=now + delay)

    def _finish(self, event: Item, **changes: Any) -> bool:
        try:
            self.table.put({**event, **changes, "lease_until": None},
                           expected_version=event["version"])
            return True
        except ConflictError:  # our lease ran out and another sender took the event over
            log.warning("webhook %s: lease lost before recording the outcome", event["id"])
            return False

    def redeliver_failed(self) -> int:
        """Queue every failed event again, due now, with a new retry window; return how many
        (``edgectl webhooks redeliver --failed``). Reads the failed events only."""
        redelivered = 0
        for event in list(self._every(FAILED)):
            now = self._clock()
            try:
                self.table.put({**event, "state": PENDING, "attempts": 0, "retry_from": now,
                                "next_attempt_at": now, "expires_at": None},
                               expected_version=event["version"])
            except ConflictError:
                continue  # redelivered meanwhile
            redelivered += 1
            self._count(pending=1, redelivered=1)
        return redelivered

    def _count(self, **amounts: int) -> None:
        """Move the kept counts; a failure is logged, never raised (the event is written)."""
        if not self.counted:
            return
        try:
            if not self._counts_made:  # counters show only on an item: make it once
                try:
                    self.table.put({"id": COUNTS}, expected_version=ABSENT)
                except ConflictError:
                    pass
                self._counts_made = True
            for name, amount in amounts.items():
                self.table.increment(COUNTS, name, amount)
        except StoreError as exc:
            log.warning("webhook counts not updated (off until a recount): %s", exc)

    def stats(self) -> dict[str, float]:
        """The kept counts (``pending``, ``delivered``, ``failed``, ``redelivered``) and, when
        an event is queued, ``oldest_pending_at``: its creation time (events are keyed by it,
        so that is one item of each queued state). Empty when not ``counted``."""
        if not self.counted:
            return {}
        kept = self.table.get(COUNTS) or {}
        found: dict[str, float] = {name: float(kept.get(name) or 0) for name in
                                   ("pending", "delivered", "failed", "redelivered")}
        oldest = [float(e["created_at"]) for state in (PENDING, SENDING)
                  for e in self.table.query("state", state, limit=1).items]
        if oldest:
            found["oldest_pending_at"] = min(oldest)
        return found


def _is_due(event: Item, now: float) -> bool:
    if event.get("state") == PENDING:
        return float(event.get("next_attempt_at") or 0) <= now
    return event.get("state") == SENDING and float(event.get("lease_until") or 0) <= now
