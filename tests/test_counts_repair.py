"""The kept counts of domains (domains/counts.py) are recounted from the domains once a week
by one replica (a worker step of ``edgectl serve``), so a drift (an ADD counted twice after its
answer was lost, a crash between a write and its ADD) does not last."""
from __future__ import annotations

import uuid
from typing import Iterable

from domains.counts import EVERY, LEASE, CountRepair
from domains.repository import PENDING_DNS
from edgectl.serving import count_repair
from store import Item
from tests.conftest import FakeClock, ServicesWith
from tests.dynamo_nemesis import Nemesis

def test_a_count_added_twice_by_a_lost_answer_is_repaired_by_the_weekly_step(
        nemesis: str, dynamo_nemesis: Nemesis, services_with: ServicesWith,
        clock: FakeClock) -> None:
    services = services_with(storage_backend="dynamodb", dynamodb_endpoint_url=nemesis,
                             dynamodb_table_prefix=f"r{uuid.uuid4().hex[:8]}_", clock=clock)
    dynamo_nemesis.fail_rate = dynamo_nemesis.slow_rate = 0.0
    domains = services.domains
    for n in range(3):
        domains.connect(f"d{n}.repair.example.test", "pub_1")
    # The answer to the connect's count ADD is lost: carried out, answered 500, sent again.
    dynamo_nemesis.tables, dynamo_nemesis.only = ("domain_counts",), ("UpdateItem",)
    dynamo_nemesis.lose_next = 1
    domains.connect("d3.repair.example.test", "pub_1")
    assert dynamo_nemesis.injected["lost"] == 1
    dynamo_nemesis.tables = dynamo_nemesis.only = ()
    assert domains.by_status()[PENDING_DNS] == 5, "4 domains, counted 5"

    steps = count_repair(services)  # the step `serve` runs
    for step in steps:
        step()  # the store was counted when it was opened: not due for a week
    assert domains.by_status()[PENDING_DNS] == 5
    clock.advance(EVERY - 60)
    for step in steps:
        step()
    assert domains.by_status()[PENDING_DNS] == 5, "nor a minute before"
    clock.advance(61)
    for step in steps:
        step()
    assert domains.by_status()[PENDING_DNS] == 4
    assert domains.failing() == 0


def test_one_replica_recounts_while_the_others_read_one_item(
        services_with: ServicesWith, clock: FakeClock) -> None:
    first, second = services_with(clock=clock), services_with(clock=clock)
    for n in range(3):
        first.domains.connect(f"d{n}.lease.example.test", "pub_1")
    first.domains.counts.table.increment("by_status", PENDING_DNS, 7)  # type: ignore[union-attr]
    counts = first.domains.repository.counts
    assert counts is not None
    other = CountRepair(second.domains.repository.counts,  # type: ignore[arg-type]
                        second.domains.repository.each_with_status, clock=clock)
    counted: list[str] = []

    def each(status: str) -> Iterable[Item]:
        if not counted:  # the other replica's step comes while this one counts
            before = second.backend.requests
            other.tick()
            assert second.backend.requests - before == 1, "one read: the lease is held"
        counted.append(status)
        return first.domains.repository.each_with_status(status)

    mine = CountRepair(counts, each, clock=clock)
    clock.advance(EVERY + 1)
    mine.tick()
    assert first.domains.by_status()[PENDING_DNS] == 3
    assert len(counted) == len(first.domains.by_status())
    before = second.backend.requests
    other.tick()  # it looks again only when the lease it saw could have run out
    assert second.backend.requests == before
    clock.advance(LEASE + 1)
    other.tick()  # done for the week: one read, and none at the next rounds
    other.tick()
    assert second.backend.requests - before == 1
    assert second.domains.by_status()[PENDING_DNS] == 3
