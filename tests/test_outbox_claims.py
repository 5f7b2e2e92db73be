"""A drain that read a removal's outbox and then paused (a GC pause, a slow store call) while
the removal was finished elsewhere and the hostname connected again by a new owner must not
apply the old entries to the new owner: a revoke deletes whatever certificate the hostname
holds, a disabling every link on it. Entries bound to a claim are applied only while that
claim still holds the hostname (domains/drain.py)."""
from __future__ import annotations

from typing import Callable

from domains import outbox
from kit.settings import Settings
from store import Item
from tests.conftest import FakeClock
from tests.test_outbox_crashes import (  # noqa: F401  (settings_with_hooks: a fixture)
    SHORT, Process, activate, left_removing, restart, settings_with_hooks)


def paused_at_first_entry(process: Process, meanwhile: Callable[[], None]) -> None:
    """``process``'s drains pause at their first entry, the first time, while ``meanwhile``
    runs (the consumer itself is the real one, called after)."""
    consumers = process.services.domains.consumers
    apply, once = consumers.apply, []

    def paused(entry: Item) -> None:
        if not once:
            once.append(1)
            meanwhile()
        apply(entry)

    consumers.apply = paused  # type: ignore[method-assign]


def assert_new_owner_intact(process: Process, hostname: str) -> None:
    domain = process.services.domains.get(hostname)
    assert domain["publication_id"] == "pub_2" and domain["status"] == "active"
    assert process.services.certificates.get(hostname) is not None, \
        "the new owner's certificate was deleted by the old removal"
    assert process.services.links.get(hostname, "pub_2")["disabled"] is False, \
        "the new owner's link was disabled by the old removal"


def test_a_paused_drain_does_not_replay_a_removal_into_the_next_claim(
        settings_with_hooks: Settings, clock: FakeClock) -> None:
    """Two replicas drain a removal a dead process left; one pauses after its read."""
    settings, hostname = settings_with_hooks, SHORT[5]
    left_removing(settings, clock, hostname)
    paused, quick = restart(settings, clock), Process(settings, clock)

    def quick_removal_and_new_owner() -> None:
        assert quick.services.domains.drain_outboxes() == 1  # removal finished: deleted
        assert quick.services.domains.find(hostname) is None
        activate(quick, hostname, "pub_2")

    paused_at_first_entry(paused, quick_removal_and_new_owner)
    try:
        paused.services.domains.drain_outboxes()
        assert_new_owner_intact(quick, hostname)
    finally:
        paused.services.close()
        quick.services.close()


def test_a_connect_that_finishes_a_removal_mid_drain_keeps_the_new_claim(
        settings_with_hooks: Settings, clock: FakeClock) -> None:
    """The publisher's removal pauses in its drain; a new owner's connect finds the item
    ``removing``, finishes the removal itself and claims the hostname."""
    settings, hostname = settings_with_hooks, SHORT[6]
    removing, other = Process(settings, clock), Process(settings, clock)
    activate(removing, hostname, "pub_1")

    def new_owner() -> None:
        assert other.services.domains.get(hostname)["status"] == "removing"
        activate(other, hostname, "pub_2")

    paused_at_first_entry(removing, new_owner)
    try:
        removing.lifecycle.remove(hostname)
        assert_new_owner_intact(other, hostname)
    finally:
        removing.services.close()
        other.services.close()


def test_entries_name_their_claim_and_the_removal_is_still_done(
        settings_with_hooks: Settings, clock: FakeClock) -> None:
    """Without a race nothing is skipped: the removal revokes, disables and deletes."""
    settings, hostname = settings_with_hooks, SHORT[7]
    process = Process(settings, clock, die_at=10 ** 6)
    services = process.services
    try:
        activate(process, hostname, "pub_1")
        claim = services.domains.get(hostname)["claim"]
        seen: list[Item] = []
        drain = services.domains.outbox.drain

        def watched(domain: Item) -> Item:
            seen.extend(domain.get("outbox") or [])
            return drain(domain)

        services.domains.outbox.drain = watched  # type: ignore[method-assign]
        process.lifecycle.remove(hostname)
        assert seen and all(entry.get("claim") == claim for entry in seen)
        assert {outbox.kind_of(e) for e in seen} - {"event", "webhook", "route"}, "some entries are bound to the claim"
        assert services.domains.find(hostname) is None
        assert services.certificates.get(hostname) is None
        assert services.links.get(hostname, "pub_1")["disabled"] is True
    finally:
        services.close()
