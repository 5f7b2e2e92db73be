"""The redirect app's cache across processes: a link change reaches every process's cache
through the links' change counter and the slot that names it, costing a read of that link
only; what the slots cannot name drops everything, as v0.1.0's changes do."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import cast

import pytest
import requests

from shortlinks.links import GENERATION, LINK_CHANGES, LINKS, LinkService
from shortlinks.resolver import Resolver
from store import BATCH_GET, Backend, Item, Table
from store.dynamo import DynamoBackend
from tests.conftest import dynamo_client, stop_together, wait_until
from tests.v010 import current_command, start_shortlinks, v010_command

DOMAINS = ["acme.link", "go.example.test"]


def test_a_change_reaches_other_processes_caches_within_a_second(backend: Backend) -> None:
    """The redirect app runs in other processes than the API and the dashboard: their caches
    learn of any change from the links' change counter within a second, not from the TTL."""
    changes = backend.table(LINK_CHANGES)
    links = LinkService(backend.table(LINKS), DOMAINS, changes=changes)
    now = [1000.0]
    elsewhere = Resolver(links.table, clock=lambda: now[0], changes=changes)
    links.create("acme.link", "https://example.com/", owner="p", slug="bad")
    assert elsewhere.resolve("acme.link", "bad").status == 302
    assert elsewhere.resolve("acme.link", "new").status == 404  # cached as unknown
    links.update("acme.link", "bad", {"disabled": True})
    links.create("acme.link", "https://example.com/new", owner="p", slug="new")
    assert elsewhere.resolve("acme.link", "bad").status == 302  # within the check interval
    now[0] += 1.0
    assert elsewhere.resolve("acme.link", "bad").status == 410
    assert elsewhere.resolve("acme.link", "new").status == 302


def link_reads(backend: Backend) -> int:
    return sum(n for (table, _), n in backend.operations.items() if table == LINKS.name)


def test_a_change_drops_only_the_link_it_names_from_other_processes_caches(
        backend: Backend) -> None:
    """A cached link stays until a change names it: neither a change of another link nor the
    time (past the 30 s a cached link once lived) costs a read of it."""
    changes = backend.table(LINK_CHANGES)
    links = LinkService(backend.table(LINKS), DOMAINS, changes=changes)
    now = [1000.0]
    elsewhere = Resolver(links.table, clock=lambda: now[0], changes=changes)
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


@pytest.mark.parametrize("change", ["of v0.1.0", "of a domain's links", "past a batch",
                                    "back (a restore)"])
def test_a_change_no_slot_names_drops_every_cached_link(backend: Backend, change: str) -> None:
    """v0.1.0 moves the counter and names nothing; disabling a domain's links names them all;
    more changes than one batch read holds, or a counter put back, cannot be followed."""
    changes = backend.table(LINK_CHANGES)
    links = LinkService(backend.table(LINKS), DOMAINS, changes=changes)
    now = [1000.0]
    elsewhere = Resolver(links.table, clock=lambda: now[0], changes=changes)
    links.create("go.example.test", "https://example.com/", owner="p", slug="kept")
    links.create("acme.link", "https://example.com/", owner="p", slug="gone")
    assert elsewhere.resolve("go.example.test", "kept").status == 302
    {"of v0.1.0": lambda: changes.increment(GENERATION, "n"),  # its LinkService._changed
     "of a domain's links": lambda: links.disable_domain("acme.link"),
     "past a batch": lambda: changes.increment(GENERATION, "n", BATCH_GET + 1),
     "back (a restore)": lambda: changes.increment(GENERATION, "n", -1)}[change]()
    now[0] += 1
    reads = link_reads(backend)
    assert elsewhere.resolve("go.example.test", "kept").status == 302
    assert link_reads(backend) == reads + 1


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
