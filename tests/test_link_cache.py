"""The redirect app's cache across processes: a link change reaches every process's cache
through the links' change counter and the slot that names it, costing a read of that link
only; what the slots cannot name drops everything, as v0.1.0's changes do."""
from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path
from typing import cast

import pytest
import requests

from edgectl.backup import run_backup, run_restore
from kit.settings import Settings
from shortlinks.changes import CHANGE_RING, GENERATION, LINK_CHANGES, change_slot
from shortlinks.links import LINKS, LinkNotFound, LinkService, SlugTaken
from shortlinks.resolver import Resolver
from store import ABSENT, BATCH_GET, Backend, Item, Table
from store.dynamo import DynamoBackend
from store.sqlite import SqliteBackend
from tests.conftest import dynamo_client, stop_together, wait_until
from tests.dynamo_nemesis import Nemesis
from tests.v010 import current_command, start_shortlinks, v010_command

DOMAINS = ["acme.link", "go.example.test"]


def processes(backend: Backend) -> tuple[LinkService, Resolver, list[float]]:
    """The API's links (which change them) and a redirect process elsewhere, whose clock
    (``now[0]``) the test moves, on one store."""
    changes = backend.table(LINK_CHANGES)
    links = LinkService(backend.table(LINKS), DOMAINS, changes=changes)
    now = [1000.0]
    return links, Resolver(links.table, clock=lambda: now[0], changes=changes), now


def test_a_change_reaches_other_processes_caches_within_a_second(backend: Backend) -> None:
    """The redirect app runs in other processes than the API and the dashboard: their caches
    learn of any change from the links' change counter within a second, not from the TTL."""
    links, elsewhere, now = processes(backend)
    links.create("acme.link", "https://example.com/", owner="p", slug="bad")
    assert elsewhere.resolve("acme.link", "bad").status == 302
    assert elsewhere.resolve("acme.link", "new").status == 404  # cached as unknown
    links.update("acme.link", "bad", {"disabled": True})
    links.create("acme.link", "https://example.com/new", owner="p", slug="new")
    assert elsewhere.resolve("acme.link", "bad").status == 302  # within the check interval
    now[0] += 1.0
    assert elsewhere.resolve("acme.link", "bad").status == 410
    assert elsewhere.resolve("acme.link", "new").status == 302


def test_a_wall_clock_stepped_back_holds_no_change_back(backend: Backend) -> None:
    """A host's clock stepped back an hour (NTP, a VM resumed from a snapshot) does not keep a
    redirect process serving a changed link for that hour: the cache's lifetimes and the
    change checks count monotonic time, only what is dated (a visit's day) the wall clock."""
    changes = backend.table(LINK_CHANGES)
    links = LinkService(backend.table(LINKS), DOMAINS, changes=changes)
    wall, ticks = [1_000_000.0], [50.0]
    elsewhere = Resolver(links.table, clock=lambda: wall[0], ticks=lambda: ticks[0],
                         changes=changes)
    links.create("acme.link", "https://example.com/", owner="p", slug="bad")
    assert elsewhere.resolve("acme.link", "bad").status == 302
    assert elsewhere.answers_from_memory("acme.link", "bad"), "the I/O thread's check"
    wall[0] -= 3600
    links.update("acme.link", "bad", {"disabled": True})
    wall[0] += 1.0
    ticks[0] += 1.0
    assert elsewhere.resolve("acme.link", "bad").status == 410
    assert Resolver(links.table, changes=changes)._ticks is time.monotonic, "as shipped"


def link_reads(backend: Backend) -> int:
    return sum(n for (table, _), n in backend.operations.items() if table == LINKS.name)


def test_a_change_drops_only_the_link_it_names_from_other_processes_caches(
        backend: Backend) -> None:
    """A cached link stays until a change names it: neither a change of another link nor the
    time (past the 30 s a cached link once lived) costs a read of it."""
    links, elsewhere, now = processes(backend)
    for slug in ("a", "b"):
        links.create("acme.link", f"https://example.com/{slug}", owner="p", slug=slug)
    assert [elsewhere.resolve("acme.link", slug).status for slug in "abc"] == [302, 302, 404]
    links.update("acme.link", "a", {"target": "https://example.com/a2"})
    links.create("acme.link", "https://example.com/c", owner="p", slug="c")
    now[0] += 120
    reads = link_reads(backend)
    assert elsewhere.resolve("acme.link", "b").target == "https://example.com/b"
    assert link_reads(backend) == reads, "b was read again"
    assert elsewhere.resolve("acme.link", "a").target == "https://example.com/a2"
    assert elsewhere.resolve("acme.link", "c").target == "https://example.com/c"
    assert link_reads(backend) == reads + 2
    links.delete("acme.link", "b")
    now[0] += 1
    assert elsewhere.resolve("acme.link", "b").status == 404


def other_link_changes(links: LinkService, count: int) -> None:
    for n in range(count):
        links.update("acme.link", "gone", {"target": f"https://example.com/{n}"})


def lap_before(changes: Table) -> None:
    """A change whose slot still holds the change of the lap before: its writer stopped
    between the counter and the slot."""
    n = int(changes.increment(GENERATION, "n") or 0)
    changes.put({"name": change_slot(n), "n": n - CHANGE_RING, "link": "acme.link/gone"})


@pytest.mark.parametrize("change", ["of v0.1.0", "of more links than a slot names",
                                    "past a batch", "back (a restore)",
                                    "of a writer stopped short"])
def test_a_change_no_slot_names_drops_every_cached_link(
        backend: Backend, change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """v0.1.0 moves the counter and names nothing; disabling more of a domain's links than a
    slot names (``MANY_LINKS``) names none; more changes than one batch read holds, a counter
    put back, or a slot still holding the lap before (its writer stopped short) cannot be
    followed."""
    monkeypatch.setattr("shortlinks.changes.MANY_LINKS", 0)
    links, elsewhere, now = processes(backend)
    changes = backend.table(LINK_CHANGES)
    links.create("go.example.test", "https://example.com/", owner="p", slug="kept")
    links.create("acme.link", "https://example.com/", owner="p", slug="gone")
    assert elsewhere.resolve("go.example.test", "kept").status == 302
    {"of v0.1.0": lambda: changes.increment(GENERATION, "n"),  # its LinkService._changed
     "of more links than a slot names": lambda: links.disable_domain("acme.link"),
     "past a batch": lambda: other_link_changes(links, BATCH_GET + 1),
     "back (a restore)": lambda: changes.increment(GENERATION, "n", -1),
     "of a writer stopped short": lambda: lap_before(changes)}[change]()
    now[0] += 1
    reads = link_reads(backend)
    assert elsewhere.resolve("go.example.test", "kept").status == 302
    assert link_reads(backend) == reads + 1


def test_a_short_domain_removed_drops_only_its_links_from_other_processes_caches(
        backend: Backend) -> None:
    """Removing a short domain disables its links in one change, whose slot names each of
    them: the other processes drop those, and keep every other link they cached."""
    links, elsewhere, now = processes(backend)
    links.create("go.example.test", "https://example.com/", owner="p", slug="kept")
    for slug in ("a", "b"):
        links.create("acme.link", f"https://example.com/{slug}", owner="p", slug=slug)
    assert {elsewhere.resolve(*link).status for link in (
        ("go.example.test", "kept"), ("acme.link", "a"), ("acme.link", "b"))} == {302}
    assert links.disable_domain("acme.link") == 2
    now[0] += 1
    reads = link_reads(backend)
    assert elsewhere.resolve("go.example.test", "kept").status == 302
    assert link_reads(backend) == reads, "a link of another domain was read again"
    assert [elsewhere.resolve("acme.link", slug).status for slug in "ab"] == [410, 410]
    assert link_reads(backend) == reads + 2


def test_a_repeat_of_a_change_whose_counter_did_not_move_moves_it(backend: Backend) -> None:
    """A change whose store write went through but whose counter move did not (the process
    died, the store throttled) is repeated by its caller: the API's client, the removal's
    outbox. The repeat finds the change made, and still tells the caches."""
    links, elsewhere, now = processes(backend)
    links.create("acme.link", "https://example.com/", owner="p", slug="off")
    links.create("go.example.test", "https://example.com/", owner="p", slug="gone")
    assert [elsewhere.resolve(*link.split("/")).status
            for link in ("acme.link/off", "go.example.test/gone", "go.example.test/made")] == \
        [302, 302, 404]
    links.table.put({**links.get("acme.link", "off"), "disabled": True})  # the first tries
    links.table.delete("go.example.test/gone")
    links.table.put({**links.get("acme.link", "off"), "id": "go.example.test/made",
                     "domain": "go.example.test", "slug": "made", "disabled": False},
                    expected_version=ABSENT)
    assert links.disable_domain("acme.link") == 0
    with pytest.raises(LinkNotFound):
        links.delete("go.example.test", "gone")
    with pytest.raises(SlugTaken):
        links.create("go.example.test", "https://example.com/", owner="p", slug="made")
    now[0] += 1
    assert [elsewhere.resolve(*link.split("/")).status
            for link in ("acme.link/off", "go.example.test/gone", "go.example.test/made")] == \
        [410, 404, 302]


def test_changes_that_cannot_be_read_drop_every_cached_link(dynamo_nemesis: Nemesis) -> None:
    """The counter moved but its slots do not answer (a policy without BatchGetItem, the
    store failing): what they name must not stay cached for the TTL."""
    backend = DynamoBackend(dynamo_client(dynamo_nemesis.url), prefix=f"c{uuid.uuid4().hex[:8]}_")
    links, elsewhere, now = processes(backend)
    links.create("acme.link", "https://example.com/", owner="p", slug="off")
    assert elsewhere.resolve("acme.link", "off").status == 302
    links.update("acme.link", "off", {"disabled": True})
    now[0] += 1
    dynamo_nemesis.only, dynamo_nemesis.failures = ("BatchGetItem",), ("internal",)
    dynamo_nemesis.fail_rate = 1.0
    try:
        assert elsewhere.resolve("acme.link", "off").status == 410
    finally:
        dynamo_nemesis.reset()
        backend.close()
    assert elsewhere.store_errors == 1


def test_a_restore_makes_every_process_drop_what_it_cached(settings: Settings,
                                                            tmp_path: Path) -> None:
    """A restore puts the counter back, perhaps to values a process saw, whose slots now name
    other changes; the process may not look while it is back. `edgectl restore` moves the
    counter on past both, so every process drops everything."""
    backend = SqliteBackend(settings.sqlite_path)
    links, elsewhere, now = processes(backend)
    links.create("acme.link", "https://example.com/a1", owner="p", slug="a")
    links.create("acme.link", "https://example.com/b1", owner="p", slug="b")
    assert run_backup(argparse.Namespace(file=str(tmp_path / "x.backup")), settings) == 0
    links.update("acme.link", "a", {"target": "https://example.com/a2"})
    now[0] += 1
    assert elsewhere.resolve("acme.link", "a").target == "https://example.com/a2"
    assert run_restore(argparse.Namespace(file=str(tmp_path / "x.backup"), force=True),
                       settings) == 0
    links.update("acme.link", "b", {"target": "https://example.com/b2"})  # the values again
    links.update("acme.link", "b", {"target": "https://example.com/b3"})
    now[0] += 1
    assert elsewhere.resolve("acme.link", "a").target == "https://example.com/a1"
    assert elsewhere.resolve("acme.link", "b").target == "https://example.com/b3"
    backend.close()


def test_a_link_read_while_a_change_is_followed_is_not_kept(backend: Backend) -> None:
    """One thread reads a link as it was; before it keeps it, another follows the change that
    names it. Kept, the old link would stay until the TTL."""
    changes = backend.table(LINK_CHANGES)
    links = LinkService(backend.table(LINKS), DOMAINS, changes=changes)
    links.create("acme.link", "https://example.com/old", owner="p", slug="go")
    now = [1000.0]

    class ChangedDuringTheRead:  # the store's answer, then, once, the other thread's work
        def __getattr__(self, name: str) -> object:
            return getattr(links.table, name)

        def get(self, key: str) -> Item | None:
            item = links.table.get(key)
            if key == "acme.link/go" and not changed:
                changed.append(links.update("acme.link", "go", {"target": "https://e.com/new"}))
                now[0] += 1
                elsewhere.resolve("go.example.test", "other")  # follows the change
            return item

    changed: list[Item] = []
    elsewhere = Resolver(cast(Table, ChangedDuringTheRead()), clock=lambda: now[0],
                         changes=changes)
    elsewhere.resolve("go.example.test", "other")
    assert elsewhere.resolve("acme.link", "go").target == "https://example.com/old"
    assert elsewhere.resolve("acme.link", "go").target == "https://e.com/new"


@pytest.mark.slow
def test_this_release_s_changes_reach_a_v010_redirect_process_beside_one_of_its_own(
        dynalite: str, tmp_path: Path) -> None:
    """Mid-upgrade, on one store: this release's writer names each change in a slot and moves
    the counter v0.1.0's resolvers follow, so both processes serve an edit within seconds."""
    prefix = f"u{uuid.uuid4().hex[:8]}_"
    backend = DynamoBackend(dynamo_client(dynalite), prefix=prefix)
    links = LinkService(backend.table(LINKS), ["acme.link"], changes=backend.table(LINK_CHANGES))
    links.create("acme.link", "https://example.com/old", owner="p", slug="go")
    started = [start_shortlinks(tmp_path, dynalite, prefix, release, n)
               for n, release in enumerate((v010_command, current_command))]

    def target(port: int) -> str | None:
        return requests.get(f"http://127.0.0.1:{port}/go", headers={"Host": "acme.link"},
                            allow_redirects=False, timeout=10).headers.get("Location")
    try:
        assert [target(port) for _, port in started] == ["https://example.com/old"] * 2
        links.update("acme.link", "go", {"target": "https://example.com/new"})
        for _, port in started:
            wait_until(lambda: target(port) == "https://example.com/new", 10, "the edit served")
    finally:
        stop_together([running for running, _ in started])
        backend.close()
