"""A worker round asks a status's due index only where work may be (domains/due_hints.py):
after a write that gave a domain work within the window, while work was found, when the
earliest time seen ahead comes, and at least once a window; never on an idle round otherwise.
The round's other index reads follow the same idea: outboxes left behind (domains/drain.py),
issuances to resume (domains/lifecycle.py) and expired links (control/publisher.py). On
DynamoDB each ask is seventeen queries (a spread key), so an idle round went from 122 store
requests to 3 (tests/test_scale.py)."""
from __future__ import annotations

from typing import Callable

import pytest

from control.publisher import EXPIRED_LINKS_EVERY
from control.wiring import Services
from domains.due_hints import WINDOW
from domains.repository import ACTIVE, ISSUING, PENDING_DNS, VERIFIED
from store import Throttled
from tests.conftest import FakeClock, ServicesWith


@pytest.fixture
def services(any_backend: object, services_with: ServicesWith, clock: FakeClock) -> Services:
    return services_with(base=any_backend, clock=clock, max_pending_domains=0)


def round_asks(services: Services, status: str) -> tuple[list[str], int]:
    """A round's due work of ``status`` (hostnames) and the store requests it took."""
    services.domains.begin_round()
    before = services.backend.requests
    due = services.domains.due_this_round(status)
    return [d["hostname"] for d in due], services.backend.requests - before


def settled(services: Services, clock: FakeClock, status: str) -> None:
    """``status`` asked with nothing due, and again once the index-lag allowance has gone by
    since its count last moved (the first round counts as a move)."""
    assert round_asks(services, status)[0] == []
    clock.advance(services.domains.repository.hints.lag + 0.1)
    assert round_asks(services, status)[0] == []


def test_a_round_asks_an_index_only_after_work_moved_there(services: Services,
                                                            clock: FakeClock) -> None:
    settled(services, clock, PENDING_DNS)
    assert round_asks(services, PENDING_DNS) == ([], 0), "nothing moved: nothing asked"
    domain, _ = services.domains.connect("new.hints.test", "pub_1")
    found, cost = round_asks(services, PENDING_DNS)
    assert found == ["new.hints.test"] and cost > 0, "a connect is due at once"
    assert round_asks(services, PENDING_DNS)[0] == ["new.hints.test"], "found: asked again"
    # Its next check 5 s ahead (within the window): the ask that finds nothing due looks at
    # the earliest time ahead, and the index is asked again when it comes, not before.
    services.domains.transition(domain, PENDING_DNS, "retry", next_attempt_at=clock() + 5)
    settled(services, clock, PENDING_DNS)
    assert round_asks(services, PENDING_DNS) == ([], 0)
    clock.advance(5)
    assert round_asks(services, PENDING_DNS)[0] == ["new.hints.test"]


def test_work_written_without_a_count_is_found_within_the_window(services: Services,
                                                                  clock: FakeClock) -> None:
    """A process of the release before writes no count, nor does one that dies between its
    write and the count: the window's ask finds their work."""
    domain, _ = services.domains.connect("old.hints.test", "pub_1")
    domain = services.domains.transition(domain, ACTIVE, "seeded", next_attempt_at=clock() + 3600)
    settled(services, clock, ACTIVE)
    services.domains.table.put({**domain, "next_attempt_at": clock()},  # no count moves
                               expected_version=domain["version"])
    hints = services.domains.repository.hints
    assert round_asks(services, ACTIVE) == ([], 0)
    clock.advance(hints.window)
    assert round_asks(services, ACTIVE)[0] == ["old.hints.test"]


def test_an_index_is_asked_again_while_it_may_lag_a_count_that_moved(
        services: Services, clock: FakeClock) -> None:
    """DynamoDB's global secondary indexes follow their items a little later: an ask that
    began less than ``lag`` after the count moved may not see the item yet."""
    hints = services.domains.repository.hints
    settled(services, clock, PENDING_DNS)
    should_ask: Callable[[], bool] = lambda: hints.should_ask(PENDING_DNS)  # noqa: E731
    assert not should_ask()
    services.domains.counts.table.increment("due", PENDING_DNS, 1)  # the item: not yet seen
    services.domains.begin_round()
    assert should_ask()
    assert round_asks(services, PENDING_DNS)[0] == []
    clock.advance(hints.lag / 2)
    services.domains.begin_round()
    assert should_ask(), "asked too soon after the count moved: ask again"
    assert round_asks(services, PENDING_DNS)[0] == []
    clock.advance(hints.lag)
    assert round_asks(services, PENDING_DNS)[0] == [], "an ask begun after the allowance"
    services.domains.begin_round()
    assert not should_ask()


def cost(services: Services, step: Callable[[], object]) -> tuple[object, int]:
    before = services.backend.requests
    done = step()
    return done, services.backend.requests - before


def test_outboxes_left_behind_are_asked_for_after_a_failed_drain_and_once_a_window(
        services: Services, clock: FakeClock) -> None:
    grace = services.settings.outbox_grace_seconds
    drain = services.domains.drain_outboxes
    assert cost(services, drain)[1] > 0, "a process's first round asks"
    assert cost(services, drain) == (0, 0), "then not before the window"
    failures = [ConnectionError("the consumer is out of reach")]

    def consumer(entry: object) -> None:
        if failures:
            raise failures.pop()

    services.domains.consumers.register("probe", consumer)
    domain, _ = services.domains.connect("left.hints.test", "pub_1")
    services.domains.transition(domain, VERIFIED, "probe", effects=[{"kind": "probe"}])
    assert services.domains.get("left.hints.test")["outbox_state"] == "pending"
    clock.advance(grace / 2)
    assert cost(services, drain) == (0, 0), "a writer may still be on it"
    clock.advance(grace / 2 + 0.1)
    drained, requests = cost(services, drain)
    assert drained == 1 and requests > 0, "this process's drain failed: asked after the grace"
    assert services.domains.get("left.hints.test")["outbox"] == []
    assert cost(services, drain)[0] == 0, "the last ask found some: asked again"
    assert cost(services, drain) == (0, 0)
    clock.advance(WINDOW)
    assert cost(services, drain)[1] > 0, "what a dead process left: found within the window"


def test_an_issuance_a_failure_left_behind_is_resumed_at_the_next_round(
        services: Services, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not when its lease runs out (minutes): the worker knows it left one."""
    domain, _ = services.domains.connect("order.hints.test", "pub_1")
    services.domains.transition(domain, VERIFIED, "seeded", next_attempt_at=clock())
    services.lifecycle.tick()  # the edge's first state: no order before a node serves it
    edge = services.edge_state
    edge.report("node-1", edge.current_version(), None, True)  # port 80 answers: orders go
    orders: list[str] = []

    def issue(hostnames: list[str]) -> None:
        orders.extend(hostnames)
        if len(orders) == 1:
            raise Throttled("the store throttles midway")

    monkeypatch.setattr(services.lifecycle.issuer, "issue", issue)
    with pytest.raises(Throttled):
        services.lifecycle.tick()
    assert services.domains.get("order.hints.test")["status"] == ISSUING
    clock.advance(1)
    services.lifecycle.tick()
    assert orders == ["order.hints.test"] * 2
    assert services.domains.get("order.hints.test")["status"] == ACTIVE


def test_expired_links_are_asked_for_once_a_window_when_none_were_due(
        services: Services, clock: FakeClock) -> None:
    """HAProxy stops answering a link at its expiry itself: the map entry may stay a while."""
    expire = services.publisher.expire_links
    assert cost(services, expire)[1] > 0
    assert cost(services, expire) == (0, 0)
    clock.advance(EXPIRED_LINKS_EVERY)
    assert cost(services, expire)[1] > 0
