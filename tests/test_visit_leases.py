"""A limited link's visits leased in blocks (shortlinks/leases.py): never a visit past the limit,
whether processes race, stop cleanly, die, stall, or run v0.1.0 beside them; and what a
process did not serve comes back, so the link reaches exactly its limit."""
from __future__ import annotations

import concurrent.futures
import uuid
from pathlib import Path

import pytest
import requests

from shortlinks.changes import LINK_CHANGES
from shortlinks.leases import LINK_LEASES, KEPT, VisitLeases
from shortlinks.links import LINKS, LinkService
from shortlinks.resolver import Resolver
from store import Backend, Table
from tests.conftest import FakeClock, stop_together, wait_until
from tests.v010 import current_command, start_shortlinks, v010_command

KEY = "acme.link/lim"
BORN = 1_700_000_000.25
"""The ``created_at`` of the link ``KEY``: the link a lease takes visits from."""


@pytest.fixture
def links(backend: Backend) -> Table:
    table = backend.table(LINKS)
    LinkService(table, ["acme.link"], clock=lambda: BORN).create(
        "acme.link", "https://example.com/", "p", slug="lim", max_visits=100)
    return table


def process(backend: Backend, links: Table, clock: FakeClock, name: str) -> VisitLeases:
    return VisitLeases(links, backend.table(LINK_LEASES), name, block=30, step=10,
                       seconds=30.0, clock=clock)


def serve_all(leases: VisitLeases, limit: int = 100, born: float = BORN) -> int:
    served = 0
    while leases.take(KEY, limit, born) is not None:
        served += 1
    return served


def test_the_counter_is_taken_in_blocks_and_never_past_the_limit(backend: Backend) -> None:
    table = backend.table(LINKS)
    table.put({"id": "k"})
    assert table.increment("k", "visits", 60, at_most=100) == 60
    assert table.increment("k", "visits", 60, at_most=100) is None, "it would pass the limit"
    assert table.increment("k", "visits", 40, at_most=100) == 100
    assert table.increment("k", "visits", 1, at_most=100) is None
    assert table.increment("k", "visits", -10) == 90
    assert table.increment("none", "visits", 1, existing_only=True, at_most=5) is None
    assert table.get("k")["visits"] == 90


def test_racing_processes_share_the_limit_and_a_clean_stop_gives_back_the_rest(
        backend: Backend, links: Table, clock: FakeClock) -> None:
    a, b = (process(backend, links, clock, name) for name in "ab")
    served = sum(a.take(KEY, 100, BORN) is not None for _ in range(10))
    served += serve_all(b)
    assert served < 100, "a still holds the rest of its block"
    a.close()  # a clean stop: its unused visits go back
    served += serve_all(b)
    assert served == 100
    assert links.get(KEY)["visits"] == 100
    assert a.take(KEY, 100, BORN) is None, "stopped: one conditional ADD a visit, still refused"


def test_a_busy_link_costs_a_store_request_per_block_or_step_not_per_visit(
        backend: Backend, links: Table, clock: FakeClock) -> None:
    busy = VisitLeases(links, backend.table(LINK_LEASES), "busy", block=200, step=50,
                       clock=clock)
    for _ in range(1000):  # slow start: blocks of 8, 8, 16... 128, then 200
        assert busy.take(KEY, 10**6, BORN) is not None
    before = backend.requests
    for _ in range(1000):
        assert busy.take(KEY, 10**6, BORN) is not None
    assert backend.requests - before <= 1000 // 200 + 1000 // 50, "an ADD a block, a put a step"
    assert links.get(KEY)["visits"] - 2000 < 200, "one block at most ahead of the visits"
    assert backend.table(LINK_LEASES).get(f"{KEY}|busy")["upto"] >= 2000


def test_a_dead_process_visits_come_back_once_its_lease_expires(
        backend: Backend, links: Table, clock: FakeClock) -> None:
    dead, alive = (process(backend, links, clock, name) for name in ("dead", "alive"))
    served = sum(dead.take(KEY, 100, BORN) is not None for _ in range(20))  # then it dies
    announced = int(backend.table(LINK_LEASES).get(f"{KEY}|dead")["upto"])
    served += serve_all(alive)
    assert served < 100
    assert alive.reclaim(KEY) == 0, "its lease has not expired: nothing comes back yet"
    clock.advance(31)
    served += serve_all(alive)  # the exhausted link takes back the dead lease's unserved part
    assert 100 - 10 < served <= 100, "at most one step of the dead process is lost"
    assert served == 100 - (announced - 20), "what it had announced it might serve is lost"


def test_a_stalled_process_whose_lease_was_taken_back_serves_no_more_of_it(
        backend: Backend, links: Table, clock: FakeClock) -> None:
    slow, other = (process(backend, links, clock, name) for name in ("slow", "other"))
    served = sum(slow.take(KEY, 100, BORN) is not None for _ in range(5))
    served += serve_all(other)
    clock.advance(31)  # slow stalls past its lease: other takes its unserved visits back
    served += serve_all(other)
    served += serve_all(slow)  # it wakes: what it may still serve was counted as served
    served += serve_all(other)
    assert served <= 100 and links.get(KEY)["visits"] <= 100
    slow.close()
    other.close()
    fresh = process(backend, links, clock, "fresh")
    assert served + serve_all(fresh) == 100


def test_idle_leases_are_given_back_at_a_flush(backend: Backend, links: Table,
                                              clock: FakeClock) -> None:
    idle = process(backend, links, clock, "idle")
    assert idle.take(KEY, 100, BORN) is not None
    assert links.get(KEY)["visits"] == 8, "blocks start at 8 visits"
    clock.advance(20)
    idle.renew()
    assert links.get(KEY)["visits"] == 1
    assert backend.table(LINK_LEASES).query("link", KEY).items == []


def test_a_link_visited_now_and_then_far_from_its_limit_costs_no_store_request_a_visit(
        backend: Backend, links: Table, clock: FakeClock) -> None:
    """Visited every 100 s (the flusher runs every 2 s), far from its limit: the lease stays
    in memory, unrenewed, and neither the visit nor the flushes around it reach the store
    (giving the idle lease back and taking a new block cost four writes a visit). Once unused
    for ``forget`` seconds it goes back."""
    quiet = VisitLeases(links, backend.table(LINK_LEASES), "quiet", block=30, step=10,
                        seconds=30.0, clock=clock, forget=300.0)
    assert quiet.take(KEY, 10**6, BORN) is not None
    for _ in range(3):
        clock.advance(98)
        before = backend.requests
        quiet.renew()
        assert quiet.take(KEY, 10**6, BORN) is not None
        clock.advance(2)
        quiet.renew()
        assert backend.requests == before, "kept, unrenewed, and served from memory"
    assert links.get(KEY)["visits"] == 8
    clock.advance(300)
    quiet.renew()
    assert links.get(KEY)["visits"] == 4, "forgotten: what it did not serve is back"
    assert backend.table(LINK_LEASES).query("link", KEY).items == []


@pytest.mark.parametrize("left", [4 * 30, 4 * 30 + 1])
def test_only_a_lease_within_four_blocks_of_its_limit_is_renewed_or_given_back_when_idle(
        backend: Backend, links: Table, clock: FakeClock, left: int) -> None:
    """Near the limit, as this process's last ADD saw it, the others may soon need the
    visits it holds: it renews its lease while it serves and gives it back once idle."""
    table = backend.table(LINK_LEASES)
    leases = process(backend, links, clock, "p")
    limit = 8 + left  # its first block of 8 leaves ``left``
    assert leases.take(KEY, limit, BORN) is not None
    near = left <= 4 * 30
    clock.advance(20)  # used 10 s before the flush, its lease 20 s from its end
    assert leases.take(KEY, limit, BORN) is not None
    clock.advance(10)
    until = table.get(f"{KEY}|p")["until"]
    leases.renew()
    assert (table.get(f"{KEY}|p")["until"] > until) is near, "renewed only near the limit"
    clock.advance(16)
    leases.renew()
    assert (table.get(f"{KEY}|p") is None) is near, "given back when idle only near"
    assert links.get(KEY)["visits"] == (2 if near else 8)


def test_a_lowered_limit_counts_at_the_next_flush(backend: Backend, links: Table,
                                                 clock: FakeClock) -> None:
    leases = process(backend, links, clock, "p")
    assert leases.take(KEY, 10**6, BORN) is not None  # far from it: kept when idle
    assert leases.take(KEY, 100, BORN) is not None  # max_visits lowered meanwhile: near
    clock.advance(16)
    leases.renew()
    assert backend.table(LINK_LEASES).get(f"{KEY}|p") is None


@pytest.mark.parametrize("step, stop", [(50, "close"), (2, "forget")])
def test_a_kept_lease_taken_back_by_another_process_loses_no_visit(
        backend: Backend, links: Table, clock: FakeClock, step: int, stop: str) -> None:
    """The kept lease expires unrenewed and a process that exhausts the link takes it back,
    giving back what it had not announced; its own process gives back the rest it did not
    serve at its next release (a clean stop, or forgotten), so the link still reaches exactly
    its limit. With the shipped sizes (a step larger than a first block: all of it announced)
    and with a smaller step."""
    key, table = "acme.link/big", backend.table(LINK_LEASES)
    born = LinkService(links, ["acme.link"]).create("acme.link", "https://example.com/", "p",
                                                    slug="big", max_visits=1000)["created_at"]
    quiet, busy, fresh = (VisitLeases(links, table, name, step=step, clock=clock)
                          for name in ("quiet", "busy", "fresh"))

    def served(leases: VisitLeases, visits: int | None = None) -> int:
        count = 0
        while count != visits and leases.take(key, 1000, born) is not None:
            count += 1
        return count
    total = served(quiet, 3)
    clock.advance(61)
    quiet.renew()  # idle, 992 left at its ADD: kept
    total += served(busy)
    clock.advance(60)  # its lease has expired
    total += served(busy)  # exhausted: takes the quiet lease back
    assert table.get(f"{key}|quiet") is None
    if stop == "close":
        quiet.close()
    else:
        clock.advance(600)
        quiet.renew()
    busy.close()
    total += served(fresh)
    assert total == 1000 == links.get(key)["visits"]


# A link deleted and made again with its slug, or whose limit is lowered: what a process holds
# belongs to the link as it was.

def redirects(backend: Backend, clock: FakeClock, name: str = "p") -> tuple[
        LinkService, Resolver]:
    """The links (made at the clock's time) and one redirect process with its leases, which
    follows every link change at its next visit."""
    links = LinkService(backend.table(LINKS), ["acme.link"], changes=backend.table(LINK_CHANGES),
                        clock=clock)
    leases = process(backend, links.table, clock, name)
    return links, Resolver(links.table, changes=links.changes, check_every=0.0, leases=leases,
                           clock=clock)


def answers(resolver: Resolver, visits: int, slug: str = "promo") -> list[int]:
    return [resolver.resolve("acme.link", slug).status for _ in range(visits)]


def made_again(links: LinkService, clock: FakeClock, max_visits: int) -> float:
    """``acme.link/promo`` deleted, then made again by another publication: its created_at."""
    links.delete("acme.link", "promo")
    clock.advance(1)
    return float(links.create("acme.link", "https://b.example/", "pub_b", slug="promo",
                              max_visits=max_visits)["created_at"])


def test_a_link_made_again_is_served_to_its_own_limit_not_from_the_old_lease(
        backend: Backend, clock: FakeClock) -> None:
    """The process holds visits of the deleted link in its lease: the new link (another
    publication's, limited to 5) is served 5 times, none of them from the old lease, and
    no idle release gives the old lease's visits to it."""
    links, resolver = redirects(backend, clock)
    links.create("acme.link", "https://a.example/", "pub_a", slug="promo", max_visits=10_000)
    assert answers(resolver, 20) == [302] * 20  # blocks of 8, 8, 16: 12 held
    made_again(links, clock, max_visits=5)
    assert answers(resolver, 10) == [302] * 5 + [410] * 5
    clock.advance(700)
    resolver.flush_visits()
    assert resolver.leases is not None
    resolver.leases.renew()
    assert links.get("acme.link", "promo")["visits"] == 5


def test_a_lease_of_a_deleted_link_gives_nothing_back_to_the_next_one(
        backend: Backend, clock: FakeClock) -> None:
    """Released as idle (forgotten) after the link was made again, unvisited: the new
    link's counter is left alone (it went to -12)."""
    links, resolver = redirects(backend, clock)
    links.create("acme.link", "https://a.example/", "pub_a", slug="promo", max_visits=10_000)
    assert answers(resolver, 20) == [302] * 20
    made_again(links, clock, max_visits=1000)
    clock.advance(700)
    assert resolver.leases is not None
    resolver.leases.renew()
    assert links.get("acme.link", "promo").get("visits") is None
    assert backend.table(LINK_LEASES).query("link", "acme.link/promo").items == []


def test_a_dead_process_lease_on_a_deleted_link_is_not_given_to_the_next_one(
        backend: Backend, clock: FakeClock) -> None:
    """Another process that exhausts the new link takes the dead one's expired lease back:
    deleted, with nothing given back (its visits were the deleted link's)."""
    links, dead = redirects(backend, clock, "dead")
    links.create("acme.link", "https://a.example/", "pub_a", slug="promo", max_visits=100)
    assert answers(dead, 20) == [302] * 20  # then it dies
    made_again(links, clock, max_visits=10)
    _, alive = redirects(backend, clock, "alive")
    assert answers(alive, 12) == [302] * 10 + [410] * 2
    clock.advance(31)  # the dead lease has expired: the exhausted link takes it back
    assert answers(alive, 2) == [410] * 2
    assert backend.table(LINK_LEASES).get("acme.link/promo|dead") is None
    assert links.get("acme.link", "promo")["visits"] == 10


@pytest.mark.parametrize("written", ["after", "before"])
def test_a_lease_item_without_born_is_given_back_only_to_a_link_made_before_it(
        backend: Backend, links: Table, clock: FakeClock, written: str) -> None:
    """A lease item written before leases named their link (no ``born``), left by a process
    that died: taken back as before when it was written after the link was made (its
    ``until`` less a lease's life); a leftover from before the link was made (a link of the
    same slug deleted since) is deleted and gives nothing back."""
    table = backend.table(LINK_LEASES)
    until = clock() + 30 if written == "after" else BORN - 60
    if written == "after":
        links.increment(KEY, "visits", 30)  # what it took from this link
    table.put({"id": f"{KEY}|old", "link": KEY, "owner": "old", "format": 1, "granted": 30,
               "upto": 10, "until": until, "expires_at": until + KEPT})
    alive = process(backend, links, clock, "alive")
    served = serve_all(alive)
    clock.advance(31)
    served += serve_all(alive)
    assert table.get(f"{KEY}|old") is None
    assert served == (100 - 10 if written == "after" else 100), "its 10 announced are lost"
    assert links.get(KEY)["visits"] == 100


def test_a_lowered_limit_stops_what_the_processes_hold(backend: Backend,
                                                      clock: FakeClock) -> None:
    """Two processes hold visits past the limit the owner sets: together they serve only
    what the new limit leaves, and give back what they held (the counter ends at it)."""
    links, a = redirects(backend, clock, "a")
    _, b = redirects(backend, clock, "b")
    links.create("acme.link", "https://a.example/", "pub_a", slug="promo", max_visits=10_000)
    assert answers(a, 300) + answers(b, 100) == [302] * 400
    assert links.get("acme.link", "promo")["visits"] > 420, "both hold visits"
    links.update("acme.link", "promo", {"max_visits": 420})
    assert (answers(a, 30) + answers(b, 30)).count(302) == 20
    assert links.get("acme.link", "promo")["visits"] == 420
    links.update("acme.link", "promo", {"max_visits": 0})
    assert answers(a, 5) + answers(b, 5) == [410] * 10


# Real processes: `edgectl shortlinks` (this release, and v0.1.0) on one dynalite store.

def hammer(ports: list[int], until_refused: int = 60) -> int:
    """Visits to every port, 2 threads each, until each has answered 410 ``until_refused``
    times in a row: how many were redirects."""
    def one(port: int) -> int:
        served = refused = 0
        with requests.Session() as session:
            while refused < until_refused:
                answer = session.get(f"http://127.0.0.1:{port}/lim", allow_redirects=False,
                                     headers={"Host": "acme.link"}, timeout=10)
                assert answer.status_code in (302, 410), answer.text
                served, refused = (served + 1, 0) if answer.status_code == 302 else \
                    (served, refused + 1)
        return served
    with concurrent.futures.ThreadPoolExecutor(2 * len(ports)) as pool:
        return sum(pool.map(one, ports * 2))


@pytest.mark.slow
@pytest.mark.parametrize("releases", [("new",) * 4, ("new", "new", "v0.1.0", "v0.1.0")])
def test_four_processes_race_for_a_limit_of_1000(dynalite: str, tmp_path: Path,
                                                 releases: tuple[str, ...]) -> None:
    """Four processes (with two of v0.1.0, in the middle of an upgrade) never serve past the
    limit together; once they stop cleanly, the visits they leased and did not serve are back
    and a new process serves the link exactly to its limit."""
    from store.dynamo import DynamoBackend
    from tests.conftest import dynamo_client

    prefix = f"l{uuid.uuid4().hex[:8]}_"
    backend = DynamoBackend(dynamo_client(dynalite), prefix=prefix)
    table = backend.table(LINKS)
    LinkService(table, ["acme.link"]).create("acme.link", "https://example.com/", "p",
                                             slug="lim", max_visits=1000)
    started = [start_shortlinks(tmp_path, dynalite, prefix,
                     v010_command if release == "v0.1.0" else current_command, n)
               for n, release in enumerate(releases)]
    try:
        served = hammer([port for _, port in started])
        assert served <= 1000
    finally:
        stop_together([running for running, _ in started])  # SIGTERM: a clean stop
    assert all(running.popen.returncode == 0 for running, _ in started)
    fresh, port = start_shortlinks(tmp_path, dynalite, prefix, current_command, 9)
    try:
        served += hammer([port], until_refused=10)
    finally:
        fresh.stop()
    assert served == 1000 if "v0.1.0" not in releases else served <= 1000
    assert int(table.get("acme.link/lim")["visits"]) >= 1000
    backend.close()


@pytest.mark.slow
def test_a_running_process_follows_a_link_made_again_and_a_lowered_limit(
        dynalite: str, tmp_path: Path) -> None:
    """`edgectl shortlinks` on dynalite holds visits of two links in its leases. One is
    deleted and made again with its slug, limited to 5: 5 visits. The other's limit is
    lowered to 5 past what was served: 5 more. After a clean stop, each counter is its
    limit (nothing of the deleted link's lease given back to the new one)."""
    from store.dynamo import DynamoBackend
    from tests.conftest import dynamo_client

    prefix = f"l{uuid.uuid4().hex[:8]}_"
    backend = DynamoBackend(dynamo_client(dynalite), prefix=prefix)
    links = LinkService(backend.table(LINKS), ["acme.link"],
                        changes=backend.table(LINK_CHANGES))
    for slug in ("again", "lowered"):
        links.create("acme.link", "https://example.com/old", "p", slug=slug, max_visits=10_000)
    links.create("acme.link", "https://example.com/old", "p", slug="last")  # changed last
    running, port = start_shortlinks(tmp_path, dynalite, prefix, current_command, 0)

    def answers(slug: str, visits: int) -> list[requests.Response]:
        with requests.Session() as session:
            return [session.get(f"http://127.0.0.1:{port}/{slug}", allow_redirects=False,
                                headers={"Host": "acme.link"}, timeout=10)
                    for _ in range(visits)]

    def served(slug: str, visits: int) -> list[int]:
        return [answer.status_code for answer in answers(slug, visits)]
    try:
        assert served("again", 20) + served("lowered", 20) + served("last", 1) == [302] * 41
        links.delete("acme.link", "again")
        links.create("acme.link", "https://example.com/new", "q", slug="again", max_visits=5)
        links.update("acme.link", "lowered", {"max_visits": 25})
        links.update("acme.link", "last", {"target": "https://example.com/seen"})
        # The process reads the change counter once a second: once it follows the change
        # made last, it follows those before it (a visit of "last" counts for nothing here).
        wait_until(lambda: answers("last", 1)[0].headers["location"].endswith("/seen"), 30,
                   "the process following the link changes")
        assert served("again", 10) == [302] * 5 + [410] * 5
        assert served("lowered", 10) == [302] * 5 + [410] * 5
    finally:
        running.stop()
    assert running.popen.returncode == 0
    assert [links.get("acme.link", slug)["visits"] for slug in ("again", "lowered")] == [5, 25]
    backend.close()
