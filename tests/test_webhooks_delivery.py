"""Webhook delivery under what receivers and operators really do: an unusable URL, a receiver
that trickles its answer, one that is down for hours, out-of-order retries, an event written
by the release before, and a backlog that must not be read by every idle round."""
from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import FakeClock
from control.migrations import index_webhooks
from control.wiring import Services
from domains.outbox import webhook, with_entries
from domains.webhooks import DUE_INDEXED, WEBHOOKS, WebhookSender
from edgectl.app import ControlMetrics
from edgectl.cli import main
from kit.settings import Settings, SettingsError, load_settings
from store import Backend, TableSpec
from store.sqlite import SqliteBackend
from tests.webhook_receiver import Receiver

SECRET = "whsec-test-0123456789"
HOURS = 3600.0
PREVIOUS_RELEASE = TableSpec("webhook_outbox", key="id", indexes=("state",), expiring=True)
"""The webhook table as the release before declared it: its writes are not in ``due``."""


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SqliteBackend]:
    db = SqliteBackend(str(tmp_path / "db"))
    try:
        yield db
    finally:
        db.close()


def bodies(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(r["body"]) for r in receiver.requests]


# --- a URL no request can be sent to (5) ----------------------------------------------------

def test_an_unusable_url_is_a_failed_attempt_not_a_stuck_event(sqlite: SqliteBackend) -> None:
    clock = FakeClock()
    table = sqlite.table(WEBHOOKS)
    hooks = WebhookSender(table, "https://" + "a" * 64 + ".example/h", SECRET, clock=clock,
                          retry_window=2 * HOURS)
    event_id = hooks.emit("domain.active", {"hostname": "blog.acme.test"})
    assert hooks.deliver_due() == 0  # no exception out of the round
    event = table.get(event_id)
    assert event is not None and event["state"] == "pending" and event["attempts"] == 1
    assert event["last_error"] in {"LocationParseError", "InvalidURL"}
    for _ in range(40):
        clock.advance(HOURS / 4)
        hooks.deliver_due()
    assert (table.get(event_id) or {})["state"] == "failed"


@pytest.mark.parametrize("url", ["https://" + "a" * 64 + ".example/h", "ftp://hooks.example/h",
                                 "http://hooks.example/h", "https://hooks.example:x/h"])
def test_a_webhook_url_no_request_could_use_is_refused_at_start(url: str) -> None:
    env = {"EDGE_WEBHOOK_URL": url, "EDGE_WEBHOOK_SECRET": SECRET}
    with pytest.raises(SettingsError, match="webhook_url") as refused:
        load_settings(env=env, required=())
    assert url not in str(refused.value), "the URL may hold a token"
    assert load_settings(env={**env, "EDGE_WEBHOOK_URL": "http://127.0.0.1:9/h"},
                         required=()).webhook_url
    assert load_settings(env={**env, "EDGE_WEBHOOK_URL": "http://hooks.example/h",
                              "EDGE_ALLOW_INSECURE_CONTROL": "true"}, required=()).webhook_url


# --- a trickling receiver (4) ---------------------------------------------------------------

def test_a_trickling_receiver_is_cut_before_the_lease_ends(sqlite: SqliteBackend) -> None:
    """Each header line comes well within the timeout, so no socket read ever times out: only
    a deadline on the whole attempt ends it before another replica may take the event."""
    server = socket.create_server(("127.0.0.1", 0))
    cut = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: ")
            for _ in range(600):  # a minute of one header, a byte at a time, if not cut
                conn.sendall(b"x")
                if cut.wait(0.1):
                    break
            conn.sendall(b"\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            cut.set()  # the sender shut the connection
        conn.close()
    threading.Thread(target=trickle, daemon=True).start()
    table = sqlite.table(WEBHOOKS)
    hooks = WebhookSender(table, f"http://127.0.0.1:{server.getsockname()[1]}/h", SECRET,
                          timeout=0.5)
    event_id = hooks.emit("domain.active", {"hostname": "blog.acme.test"})
    try:
        assert hooks.deliver_due() == 0
    finally:
        server.close()
    event = table.get(event_id)
    assert event is not None and event["state"] == "pending"
    assert event["last_error"] == "DeadlineExceeded" and event["lease_until"] is None


# --- versions and order (6, 2) --------------------------------------------------------------

def test_a_domains_webhooks_carry_a_version_and_a_growing_sequence(
        sqlite: SqliteBackend, receiver: Receiver) -> None:
    """One failed POST delivers ``suspended`` after ``active``; the sequence says which is
    newer, and keeps growing when the domain is removed and connected again (a new item)."""
    clock = FakeClock()
    hooks = WebhookSender(sqlite.table(WEBHOOKS), receiver.url, SECRET, clock=clock,
                          retry_base=60)
    domain: dict[str, Any] = {"hostname": "blog.acme.test", "claim": "c1"}
    for status in ("suspended", "active"):
        domain = with_entries(domain, clock(), [webhook(f"domain.{status}", status=status,
                                                        hostname="blog.acme.test")])
        clock.advance(1)
    again = with_entries({"hostname": "blog.acme.test", "claim": "c2"}, clock(),
                         [webhook("domain.verified", hostname="blog.acme.test")])
    receiver.fail_next(1)
    for entry in domain["outbox"] + again["outbox"]:  # what the drain hands the sender
        hooks.emit(entry["type"], dict(entry["data"]), entry["id"])
    hooks.deliver_due()
    clock.advance(HOURS)
    hooks.deliver_due()
    delivered = {b["type"]: b for b in bodies(receiver)[1:]}
    assert [b["type"] for b in bodies(receiver)[1:]] == [
        "domain.active", "domain.verified", "domain.suspended"]
    assert {b["version"] for b in delivered.values()} == {1}
    assert "sequence" not in delivered["domain.active"]["data"]
    assert delivered["domain.suspended"]["sequence"] < delivered["domain.active"]["sequence"] \
        < delivered["domain.verified"]["sequence"]


def test_an_event_the_release_before_wrote_is_still_delivered(
        sqlite: SqliteBackend, receiver: Receiver) -> None:
    """Written in the previous format (no sequence, not in the ``due`` index), while its
    replicas still run: found and sent as it is; the migration then indexes what is left."""
    clock = FakeClock()
    table = sqlite.table(WEBHOOKS)  # this release's replica opened it first
    before = sqlite.table(PREVIOUS_RELEASE)
    old = {"type": "domain.active", "data": {"hostname": "old.acme.test"},
           "created_at": clock(), "attempts": 0, "next_attempt_at": clock(),
           "state": "pending", "last_error": None}
    before.put({**old, "id": "00000000000000000001-old"})
    hooks = WebhookSender(table, receiver.url, SECRET, clock=clock)
    assert hooks.deliver_due() == 1
    [body] = bodies(receiver)
    assert body["id"] == "00000000000000000001-old" and body["version"] == 1
    assert "sequence" not in body and body["data"] == {"hostname": "old.acme.test"}

    before.put({**old, "id": "00000000000000000002-old", "next_attempt_at": clock() + 60})
    assert index_webhooks(sqlite) == 1
    assert sqlite.table(WEBHOOKS).get(DUE_INDEXED) is not None
    clock.advance(60)
    indexed = WebhookSender(sqlite.table(WEBHOOKS), receiver.url, SECRET, clock=clock)
    assert indexed.deliver_due() == 1 and len(receiver.requests) == 2


# --- a long outage, counted (1) -------------------------------------------------------------

def metrics(services: Services, clock: FakeClock) -> dict[str, float]:
    found = {}
    for family in ControlMetrics(services, clock).collect():
        for sample in family.samples:
            if sample.name.startswith("edge_webhook"):
                label = ",".join(sample.labels.values())
                found[f"{sample.name}{{{label}}}" if label else sample.name] = sample.value
    return found


def test_a_two_day_outage_loses_nothing_and_the_counts_show_it(
        services_with: Callable[..., Services], receiver: Receiver, settings: Settings,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    services = services_with(clock=clock, webhook_url=receiver.url, webhook_secret=SECRET,
                             webhook_retry_hours=72.0)
    hooks = services.webhooks
    first = hooks.emit("domain.active", {"hostname": "blog.acme.test"})
    receiver.fail_next(10_000, status=503)
    for _ in range(48 * 4):  # 48 hours down, a round every 15 minutes
        hooks.deliver_due()
        clock.advance(HOURS / 4)
    assert (hooks.table.get(first) or {})["state"] == "pending"
    seen = metrics(services, clock)
    assert seen["edge_webhooks{pending}"] == 1
    assert seen["edge_webhooks_oldest_pending_seconds"] == pytest.approx(48 * HOURS)
    for _ in range(30 * 4):  # down past the retry window: failed for good, and counted
        hooks.deliver_due()
        clock.advance(HOURS / 4)
    assert (hooks.table.get(first) or {})["state"] == "failed"
    seen = metrics(services, clock)
    assert seen["edge_webhooks{pending}"] == 0
    assert seen["edge_webhook_outcomes_total{failed}"] == 1
    assert seen["edge_webhooks_oldest_pending_seconds"] == 0

    receiver._plan.clear()  # the receiver is back
    monkeypatch.setenv("EDGE_DATA_DIR", settings.data_dir)
    monkeypatch.delenv("EDGE_CONFIG", raising=False)
    assert main(["webhooks", "redeliver", "--failed"]) == 0
    assert "1 failed webhook(s) queued again" in capsys.readouterr().out
    assert hooks.deliver_due() == 1 and receiver.deliveries()[-1] == first
    seen = metrics(services, clock)
    assert seen["edge_webhook_outcomes_total{redelivered}"] == 1
    assert seen["edge_webhook_outcomes_total{delivered}"] == 1
    assert seen["edge_webhooks{pending}"] == 0


# --- an idle round whatever the backlog (3) -------------------------------------------------

def test_an_idle_round_costs_the_same_whatever_the_backlog(backend: Backend) -> None:
    """Events backing off are not read by a round before they are due."""
    index_webhooks(backend)  # a store whose queued webhooks are all in the index
    clock = FakeClock()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/h"
    hooks = WebhookSender(backend.table(WEBHOOKS), dead, SECRET, clock=clock, retry_base=60)
    costs = []
    for backlog in (3, 250):
        for n in range(backlog):
            hooks.emit("domain.active", {"hostname": f"d{n}.test"})
        for _ in range(backlog // 100 + 2):
            hooks.deliver_due(limit=100)  # each fails once and backs off; the clock stands
        before = backend.requests
        assert hooks.deliver_due() == 0
        costs.append(backend.requests - before)
    assert costs[0] == costs[1] <= 2, costs
