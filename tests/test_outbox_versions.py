"""An outbox entry of a kind this process has no consumer for was written by a newer release
(the fleet runs two during an upgrade): the drain leaves it, with what follows it, for a
replica that knows it, instead of taking it as done and losing its effect."""
from __future__ import annotations

import logging

import pytest

from control.wiring import Services
from domains import outbox
from store import Item

NEW_KIND = "from_the_next_release"


def test_an_entry_of_an_unknown_kind_stays_until_a_consumer_for_it_applies_it(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    domains = services.domains
    domain, _ = domains.connect("kinds.example.test", "pub_1")
    with caplog.at_level(logging.WARNING, logger="domains.drain"):
        left = domains.record(domain, "a change of the next release", "test", effects=[
            {"kind": NEW_KIND, "hostname": domain["hostname"]},
            outbox.webhook("domain.verified", hostname=domain["hostname"])])
    assert [outbox.kind_of(e) for e in left["outbox"]] == [NEW_KIND, outbox.WEBHOOK], \
        "the unknown entry and the one after it stay"
    assert NEW_KIND in caplog.text
    assert domains.get("kinds.example.test")["outbox"] == left["outbox"]
    assert domains.outbox.drain(domains.get("kinds.example.test"))["outbox"] == left["outbox"]

    applied: list[Item] = []
    domains.consumers.register(NEW_KIND, applied.append)  # a replica of the next release
    drained = domains.outbox.drain(domains.get("kinds.example.test"))
    assert drained["outbox"] == []
    assert [e["id"] for e in applied] == [left["outbox"][0]["id"]]
