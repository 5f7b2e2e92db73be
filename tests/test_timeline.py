"""A domain's timeline reads the service's one clock: events made in one tick of it (a test's
clock standing still) keep the order they were made in, and say the time the clock told."""
from __future__ import annotations

import time
from pathlib import Path

from domains.service import DOMAINS, EVENTS, DomainService
from kit.clock import iso
from store.sqlite import SqliteBackend

NOW = float(int(time.time()))
"""The store reads the real clock for expiry: the test's stands still near it."""


def test_events_of_one_tick_keep_their_order_and_the_clock_s_time(tmp_path: Path) -> None:
    backend = SqliteBackend(str(tmp_path / "store.db"))
    try:
        domains = DomainService(backend.table(DOMAINS), backend.table(EVENTS),
                                cname_target="edge.platform.test", edge_addresses=["127.0.0.1"],
                                platform_domains=["platform.test"], clock=lambda: NOW)
        domain, _ = domains.connect("tick.example.test", "pub_1")
        domain = domains.transition(domain, "verified", "DNS is right")
        domains.history.append(domain, "looked again", "nothing changed", "test")
        domain = domains.record(domain, "noted with the item", "an event and no effects")
        domains.transition(domain, "issuing", "ordering a certificate")

        events = domains.timeline(domains.get("tick.example.test"))
        assert [e["what"] for e in events] == [
            "verified -> issuing", "noted with the item", "looked again",
            "pending_dns -> verified", "connected"]
        assert {e["at"] for e in events} == {iso(NOW)}
        assert {e["expires_at"] for e in events} == {NOW + 30 * 86400.0}
    finally:
        backend.close()
