"""Removing a short domain disables its links by reading that domain's links (the ``domain``
index, keys only, then a batch read), not every link of every domain: on each backend, with
links the release before wrote beside this one."""
from __future__ import annotations

from typing import Iterator

import pytest

from control import migrations
from shortlinks.links import BY_DOMAIN, LINK_CHANGES, LINKS, LinkService, index_links
from store import Backend, Item, TableSpec

GONE, KEPT = "gone.example.test", "kept.example.test"
RELEASE_BEFORE = TableSpec("short_links", key="id", indexes=("owner",))
"""The links table as the release before opens it: its writes set no ``domain`` index key."""


def service(backend: Backend) -> LinkService:
    return LinkService(backend.table(LINKS), [GONE, KEPT], changes=backend.table(LINK_CHANGES))


def written_before(backend: Backend, slug: str) -> None:
    """A link as a replica of the release before creates it, beside this one."""
    backend.table(RELEASE_BEFORE).put({
        "id": f"{GONE}/{slug}", "domain": GONE, "slug": slug, "target": "https://example.com/",
        "owner": "pub_1", "code": 302, "disabled": False, "created_at": 1.0, "updated_at": 1.0})


def scans(backend: Backend) -> int:
    return sum(n for (_, op), n in backend.operations.items() if op.lower() == "scan")


def disabled_at_a_cost(backend: Backend, links: LinkService) -> tuple[int, int]:
    """(links disabled, store requests it took, or -1 if it read every link); enabled again
    afterwards."""
    before, scanned = backend.requests, scans(backend)
    disabled = links.disable_domain(GONE)
    cost = backend.requests - before if scans(backend) == scanned else -1
    for link in links.links_on(GONE):
        links.update(GONE, link["slug"], {"disabled": False})
    return disabled, cost


def test_removing_a_short_domain_reads_its_links_not_every_link(backend: Backend) -> None:
    links = service(backend)
    for n in range(3):
        links.create(GONE, f"https://example.com/{n}", "pub_1", slug=f"g{n}")
    for n in range(20):
        links.create(KEPT, f"https://example.com/{n}", "pub_1", slug=f"k{n}")
    # Before the migration, the index may lack what the release before wrote: every link read.
    assert disabled_at_a_cost(backend, links)[0] == 3
    written_before(backend, "old")
    assert index_links(backend) == 1, "only the link the release before wrote is put again"
    assert backend.table(LINK_CHANGES).get(BY_DOMAIN) is not None
    disabled, cost = disabled_at_a_cost(backend, links)
    assert disabled == 4 and cost > 0, "the domain's links, not a scan of every link"
    for n in range(20, 140):
        links.create(KEPT, f"https://example.com/{n}", "pub_1", slug=f"k{n}")
    assert disabled_at_a_cost(backend, links) == (4, cost), \
        "the cost does not grow with the other domains' links"
    assert {link["slug"] for link in links.links_on(KEPT)} == {f"k{n}" for n in range(140)}
    assert not any(link["disabled"] for link in links.links_on(KEPT))
    assert index_links(backend) == 0, "idempotent"


def test_a_new_store_reads_a_domains_links_from_its_first_day(backend: Backend) -> None:
    """A store stamped new (nothing to migrate: `edgectl serve` on an empty store) is
    recorded as holding every link in the index, as migration 5 would record it."""
    migrations.stamp(backend)
    links = service(backend)
    for n in range(2):
        links.create(GONE, f"https://example.com/{n}", "pub_1", slug=f"g{n}")
    for n in range(5):
        links.create(KEPT, f"https://example.com/{n}", "pub_1", slug=f"k{n}")
    disabled, cost = disabled_at_a_cost(backend, links)
    assert disabled == 2 and cost > 0, "the domain's links, not a scan of every link"


def test_the_release_before_keeps_writing_links_until_the_migration(backend: Backend) -> None:
    """Its links are disabled with the domain whatever the schema: a scan until migration 5
    has put them in the index, the index after (the migration runs once every replica runs
    this release, docs/upgrades.md)."""
    links = service(backend)
    links.create(GONE, "https://example.com/new", "pub_1", slug="new")
    written_before(backend, "a")
    assert links.disable_domain(GONE) == 2
    written_before(backend, "b")  # a replica of the release before, still running
    done = migrations.apply(backend)
    assert {m.number: changed for m, changed in done}[5] == 1
    assert {link["slug"]: link["disabled"] for link in links.links_on(GONE)} == {
        "new": True, "a": True, "b": False}
    assert links.disable_domain(GONE) == 1


def test_a_link_edited_while_its_domain_leaves_is_released_too(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A takeover's drain disables the domain's links once: an edit its former owner lands
    between the drain's read and its write must not keep the link enabled on the domain's
    next owner's site."""
    links = service(backend)
    links.create(GONE, "https://example.com/", "pub_1", slug="g")
    read = links.links_on

    def edited_meanwhile(domain: str) -> Iterator[Item]:
        found = list(read(domain))
        links.update(GONE, "g", {"target": "https://example.com/edited"})
        return iter(found)
    monkeypatch.setattr(links, "links_on", edited_meanwhile)
    assert links.disable_domain(GONE) == 1
    link = links.get(GONE, "g")
    assert link["disabled"] and link["released"]
    assert link["target"] == "https://example.com/edited"

