"""The dashboard's link search (issue 28) on SQLite and DynamoDB (dynalite): what it finds, and
that it reads what it says, never the whole table in one request (DynamoDB bills every read)."""
from __future__ import annotations

import pytest

from shortlinks.links import LINKS, LinkService
from shortlinks.search import BY, TARGET_PAGE, By, search
from store import Backend

DOMAINS = ["acme.link", "news.link", "shop.link"]


@pytest.fixture
def links(backend: Backend) -> LinkService:
    made = LinkService(backend.table(LINKS), DOMAINS)
    for n in range(12):
        made.create(DOMAINS[n % 3], f"https://example.com/item-{n}", f"pub_{n % 2}",
                    slug=f"s{n}")
    made.create("news.link", "https://Example.com/Winter-Sale?x=1", "pub_7", slug="winter")
    made.create("shop.link", "https://example.com/winter-coats", "pub_7", slug="Winter")
    made.backend = backend  # type: ignore[attr-defined]  # what the tests count requests of
    return made


def _ids(links: LinkService, by: By, text: str) -> tuple[list[str], int]:
    """The ids found, and the store requests the search made."""
    backend: Backend = links.backend  # type: ignore[attr-defined]
    before = backend.requests
    found = search(links, by, text)
    return sorted(link["id"] for link in found.links), backend.requests - before


def test_a_short_url_or_domain_and_slug_is_one_read(links: LinkService) -> None:
    for text in ("https://news.link/winter", "NEWS.link/winter", " news.link/winter/ ",
                 "http://news.link/winter?utm=x"):
        assert _ids(links, "link", text) == (["news.link/winter"], 1), text
    assert _ids(links, "link", "news.link/nothing") == ([], 1)
    # not a short domain, not a slug: nothing read
    assert _ids(links, "link", "example.com/winter") == ([], 0)
    assert _ids(links, "link", "news.link/a/b") == ([], 0)


def test_a_bare_slug_is_looked_up_on_every_short_domain(links: LinkService) -> None:
    assert _ids(links, "link", "winter") == (["news.link/winter"], len(DOMAINS))
    assert _ids(links, "link", "Winter") == (["shop.link/Winter"], len(DOMAINS))  # case counts
    assert _ids(links, "link", "s4") == (["news.link/s4"], len(DOMAINS))


def test_a_publication_is_its_index_a_page_at_a_time(links: LinkService) -> None:
    first = search(links, "publication", "pub_0", limit=4)
    assert len(first.links) == 4 and first.next_cursor
    rest = search(links, "publication", "pub_0", limit=4, cursor=first.next_cursor)
    ids = {link["id"] for link in first.links + rest.links}
    assert ids == {f"{DOMAINS[n % 3]}/s{n}" for n in range(0, 12, 2)}
    assert _ids(links, "publication", "pub_7") == (["news.link/winter", "shop.link/Winter"], 1)
    assert _ids(links, "publication", "pub_9") == ([], 1)


def test_a_target_is_looked_for_a_bounded_page_at_a_time(links: LinkService) -> None:
    found = search(links, "target", "winter-SALE")
    assert [link["id"] for link in found.links] == ["news.link/winter"]
    assert found.read == 14 and found.next_cursor is None
    assert search(links, "target", "item-1").read == 14
    assert {link["id"] for link in search(links, "target", "item-1").links} == \
        {"news.link/s1", "news.link/s10", "shop.link/s11"}
    # more links than a page: each request reads one page, and says how to go on
    for n in range(TARGET_PAGE):
        links.table.put({"id": f"acme.link/bulk{n}", "domain": "acme.link", "slug": f"bulk{n}",
                         "target": "https://example.com/bulk", "owner": "pub_2"})
    seen: set[str] = set()
    cursor, requests = None, 0
    while True:
        before = links.backend.requests  # type: ignore[attr-defined]
        page = search(links, "target", "winter", cursor=cursor)
        requests += 1
        assert page.read <= TARGET_PAGE
        assert links.backend.requests - before <= 2  # type: ignore[attr-defined]
        seen |= {link["id"] for link in page.links}
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == {"news.link/winter", "shop.link/Winter"} and requests >= 2


def test_nothing_typed_reads_nothing(links: LinkService) -> None:
    for by in BY:
        assert _ids(links, by, "  ") == ([], 0)
