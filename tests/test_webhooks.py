"""Webhooks against a real HTTP receiver on loopback, with the outbox in SQLite."""
from __future__ import annotations

import collections
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from domains.webhooks import WEBHOOKS, WebhookSender, verify_signature
from store import Item, Page, Table
from store.sqlite import SqliteBackend
from tests.webhook_receiver import Receiver

SECRET = "whsec-test-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SqliteBackend]:
    db = SqliteBackend(str(tmp_path / "db"))
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def table(backend: SqliteBackend) -> Table:
    return backend.table(WEBHOOKS)


def sender(table: Table, url: str, **options: Any) -> WebhookSender:
    return WebhookSender(table, url, SECRET, **{"retry_base": 0.001, "timeout": 2.0, **options})


def deliver_until(predicate: Callable[[], bool], *senders: WebhookSender,
                  deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        for each in senders:
            each.deliver_due()
        time.sleep(0.002)


def test_delivery_is_signed_and_verifiable(table: Table, receiver: Receiver) -> None:
    hooks = sender(table, receiver.url)
    event_id = hooks.emit("domain.active", {"hostname": "blog.acme.test", "publication_id": "p1"})

    assert hooks.deliver_due() == 1
    [request] = receiver.requests
    headers, body = request["headers"], request["body"]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Edge-Event"] == "domain.active"
    assert headers["X-Edge-Delivery"] == event_id
    payload = json.loads(body)
    assert payload["id"] == event_id and payload["type"] == "domain.active"
    assert payload["data"] == {"hostname": "blog.acme.test", "publication_id": "p1"}
    assert isinstance(payload["created_at"], float)

    stamp, signature = headers["X-Edge-Timestamp"], headers["X-Edge-Signature"]
    assert signature.startswith("sha256=")
    assert verify_signature(SECRET, stamp, body, signature)
    assert not verify_signature("another-secret", stamp, body, signature)
    assert not verify_signature(SECRET, stamp, body.replace(b"p1", b"p2"), signature)
    assert not verify_signature(SECRET, str(int(stamp) + 1), body, signature)
    assert not verify_signature(SECRET, stamp, body, signature, now=int(stamp) + 301)
    assert verify_signature(SECRET, stamp, body, signature, now=int(stamp) + 299)
    assert not verify_signature(SECRET, "not-a-number", body, signature)
    assert not verify_signature(SECRET, stamp, body, signature.removeprefix("sha256="))

    stored = table.get(event_id)
    assert stored is not None and stored["state"] == "delivered" and stored["attempts"] == 0
    assert hooks.deliver_due() == 0 and len(receiver.requests) == 1


def test_emit_makes_no_request_and_a_hanging_receiver_only_delays_delivery(
        table: Table, receiver: Receiver) -> None:
    receiver.hang_next(1)
    hooks = sender(table, receiver.url, timeout=0.3)
    ids = [hooks.emit("domain.verified", {"n": n}) for n in range(3)]

    assert receiver.requests == []
    assert [e["id"] for e in table.query("state", "pending").items] == ids

    assert hooks.deliver_due() == 2
    assert receiver.deliveries() == ids
    first = table.get(ids[0])
    assert first is not None and first["state"] == "pending"
    assert first["attempts"] == 1 and first["last_error"] == "ReadTimeout"


def test_retries_with_backoff_until_the_receiver_recovers(table: Table, receiver: Receiver) -> None:
    clock = Clock()
    receiver.fail_next(2, status=500)
    hooks = sender(table, receiver.url, retry_base=0.01, clock=clock)
    event_id = hooks.emit("certificate.issued", {"hostname": "blog.acme.test"})

    assert hooks.deliver_due() == 0
    failed = table.get(event_id)
    assert failed is not None and failed["attempts"] == 1 and failed["last_error"] == "HTTP 500"
    assert clock.now < failed["next_attempt_at"] <= clock.now + 0.01
    assert hooks.deliver_due() == 0 and len(receiver.requests) == 1  # not due yet

    clock.now += 0.01
    assert hooks.deliver_due() == 0 and len(receiver.requests) == 2
    failed = table.get(event_id)
    assert failed is not None and failed["attempts"] == 2
    assert clock.now < failed["next_attempt_at"] <= clock.now + 0.02

    clock.now += 0.02
    assert hooks.deliver_due() == 1
    assert receiver.deliveries() == [event_id] * 3
    done = table.get(event_id)
    assert done is not None and done["state"] == "delivered" and done["attempts"] == 2


def test_gives_up_after_max_attempts(table: Table, receiver: Receiver) -> None:
    receiver.fail_next(100, status=503)
    hooks = sender(table, receiver.url, max_attempts=3)
    event_id = hooks.emit("domain.suspended", {"hostname": "blog.acme.test"})

    deliver_until(lambda: (table.get(event_id) or {}).get("state") == "failed", hooks)
    failed = table.get(event_id)
    assert failed is not None and failed["attempts"] == 3 and failed["last_error"] == "HTTP 503"
    assert failed["expires_at"] > time.time() + 29 * 86400, "kept, then swept like the delivered"
    assert len(receiver.requests) == 3
    assert hooks.deliver_due() == 0 and len(receiver.requests) == 3


def test_connection_refused_counts_as_a_failed_attempt(table: Table) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    hooks = sender(table, f"http://127.0.0.1:{closed_port}/hooks", max_attempts=1)
    event_id = hooks.emit("domain.removed", {"hostname": "blog.acme.test"})

    assert hooks.deliver_due() == 0
    failed = table.get(event_id)
    assert failed is not None and failed["state"] == "failed"
    assert failed["last_error"] == "ConnectionError"


def test_events_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    first = SqliteBackend(str(tmp_path / "db"))
    ids = [sender(first.table(WEBHOOKS), receiver.url).emit("domain.verified", {"n": n})
           for n in range(3)]
    first.close()  # the process dies before any delivery

    second = SqliteBackend(str(tmp_path / "db"))
    try:
        assert sender(second.table(WEBHOOKS), receiver.url).deliver_due() == 3
    finally:
        second.close()
    assert receiver.deliveries() == ids


def test_a_crashed_claim_is_delivered_after_its_lease(table: Table, receiver: Receiver) -> None:
    hooks = sender(table, receiver.url, timeout=1.0)
    event_id = hooks.emit("domain.active", {"hostname": "blog.acme.test"})
    event = table.get(event_id)
    assert event is not None
    table.put({**event, "state": "sending", "lease_until": time.time() + 13},
              expected_version=event["version"])  # what a sender that died mid-send leaves

    assert hooks.deliver_due() == 0 and receiver.requests == []
    later = sender(table, receiver.url, clock=lambda: time.time() + 14)
    assert later.deliver_due() == 1
    assert receiver.deliveries() == [event_id]


def test_two_senders_deliver_each_event_exactly_once(tmp_path: Path, receiver: Receiver) -> None:
    backends = [SqliteBackend(str(tmp_path / "db")) for _ in range(2)]
    tables = [b.table(WEBHOOKS) for b in backends]
    ids = [sender(tables[0], receiver.url).emit("certificate.issued", {"n": n}) for n in range(40)]
    senders = [sender(t, receiver.url) for t in tables]
    counts = [0, 0]
    start = threading.Barrier(2)

    def run(index: int) -> None:
        start.wait()
        end = time.monotonic() + 20
        while time.monotonic() < end and (tables[index].query("state", "pending").items
                                          or tables[index].query("state", "sending").items):
            counts[index] += senders[index].deliver_due(limit=5)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
    finally:
        for b in backends:
            b.close()
    assert collections.Counter(receiver.deliveries()) == collections.Counter(ids)
    assert sum(counts) == 40


class FlakyTable:
    """Delegates to a real table, but its first query fails, as a database hiccup would."""

    def __init__(self, table: Table) -> None:
        self._table = table
        self.spec = table.spec
        self.failures = 1

    def _hiccup(self) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database is locked")

    def query(self, index: str, value: str, limit: int = 100, cursor: str | None = None) -> Page:
        self._hiccup()
        return self._table.query(index, value, limit, cursor)

    def query_range(self, *args: Any, **kwargs: Any) -> Page:
        self._hiccup()
        return self._table.query_range(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def test_background_thread_survives_errors_and_delivers(table: Table, receiver: Receiver) -> None:
    flaky = FlakyTable(table)
    hooks = WebhookSender(flaky, receiver.url, SECRET)  # type: ignore[arg-type]
    event_id = hooks.emit("certificate.renewal_failed", {"hostname": "blog.acme.test"})
    stop = threading.Event()
    thread = hooks.start(stop, interval=0.01)
    try:
        deliver_until(lambda: receiver.deliveries() == [event_id])
    finally:
        stop.set()
        thread.join(5)
    assert flaky.failures == 0 and thread.daemon and not thread.is_alive()


def test_unknown_event_type_is_refused(table: Table, receiver: Receiver) -> None:
    hooks = sender(table, receiver.url)
    with pytest.raises(ValueError):
        hooks.emit("domain.exploded", {})
    assert table.scan().items == []


def test_disabled_sender_is_a_noop(table: Table, receiver: Receiver) -> None:
    hooks = sender(table, "")
    assert hooks.emit("domain.active", {"hostname": "blog.acme.test"}) == ""
    assert table.scan().items == []
    assert hooks.deliver_due() == 0
    assert receiver.requests == []


def test_the_timeout_setting_sets_the_post_timeout_and_the_lease(tmp_path: Path) -> None:
    from control.wiring import Services
    from kit.settings import SettingsError, load_settings

    env = {"EDGE_API_TOKEN": "hooks-token-0123456789", "EDGE_EDGE_TOKEN": "edge-token-0123456789",
           "EDGE_ENCRYPTION_KEYS": "xFreonI_B1HKunu9ky9i-dkbXuov6Mj02E4tzTYxmzU=",
           "EDGE_DATA_DIR": str(tmp_path), "EDGE_WEBHOOK_URL": "http://127.0.0.1:9/hooks",
           "EDGE_WEBHOOK_SECRET": "whsec-0123456789abcdef", "EDGE_WEBHOOK_TIMEOUT_SECONDS": "2"}
    services = Services.from_settings(load_settings(env=env))
    try:
        assert (services.webhooks._timeout, services.webhooks._lease) == (2.0, 16.0)
    finally:
        services.close()
    with pytest.raises(SettingsError, match="webhook_timeout_seconds"):
        load_settings(env={**env, "EDGE_WEBHOOK_TIMEOUT_SECONDS": "0"})
