"""Finding short links for the dashboard without reading the whole table: by link (its short
URL, ``domain/slug`` or a bare slug), by publication (the ``owner`` index), or by a piece of
the target (one bounded page of the table per request, to continue from)."""
from __future__ import annotations

import dataclasses
from typing import Literal
from urllib.parse import urlsplit

from shortlinks.links import SLUG, LinkService, link_id
from store import Item

By = Literal["link", "publication", "target"]
BY: tuple[By, ...] = ("link", "publication", "target")
TARGET_PAGE = 500
"""Links one target search request reads (one scan page); the answer says how to go on."""


@dataclasses.dataclass(frozen=True)
class Found:
    links: list[Item]
    next_cursor: str | None
    read: int
    """Links read from the store to answer (what DynamoDB bills)."""


def search(links: LinkService, by: By, text: str, limit: int = 50,
           cursor: str | None = None) -> Found:
    """The links matching ``text``; ``cursor`` continues a publication's or a target's search.
    A bad cursor is a ValueError (as for every list)."""
    text = text.strip()
    if not text:
        return Found([], None, 0)
    if by == "publication":
        page = links.list_for(text, limit=limit, cursor=cursor)
        return Found(page.items, page.next_cursor, len(page.items))
    if by == "target":
        page = links.browse(limit=TARGET_PAGE, cursor=cursor)
        wanted = text.lower()
        return Found([link for link in page.items if wanted in str(link["target"]).lower()],
                     page.next_cursor, len(page.items))
    return _by_link(links, text)


def _by_link(links: LinkService, text: str) -> Found:
    """A short URL or ``domain/slug``: one read; a bare slug: one read per short domain."""
    parts = urlsplit(text if "//" in text else "//" + text)
    domain, slug = (parts.hostname or ""), parts.path.strip("/")
    if not slug and "." not in text:  # a bare slug
        candidates = [(domain_, text) for domain_ in links.short_domains]
    else:
        candidates = [(domain, slug)]
    found = [link for domain_, slug_ in candidates
             if SLUG.fullmatch(slug_) and links.is_short_domain(domain_)
             for link in [links.table.get(link_id(domain_, slug_))] if link is not None]
    return Found(found, None, len(candidates))
