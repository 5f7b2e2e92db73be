"""Issue 13 item 3 for short links: totals (links, disabled, visits) and the most-visited links
kept on every change, so the dashboard reads a few items instead of every link; they always
equal a count of every link, on SQLite and on DynamoDB (dynalite)."""
from __future__ import annotations

import threading
from typing import Any

from werkzeug.test import Client

from shortlinks.app import make_app
from shortlinks.errors import LinkBusy, LinkNotFound
from shortlinks.links import LINK_CHANGES, LINKS, LinkService
from shortlinks.resolver import Resolver
from shortlinks.totals import TOTALS
from store import Backend, ConflictError, all_items

DOMAIN = "acme.link"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def counted(links: LinkService) -> dict[str, Any]:
    """What a full read of every link says (the summary before kept totals)."""
    every = all_items(links.table)
    ranked = sorted(every, key=lambda link: (-int(link.get("visits") or 0), link["id"]))
    return {"links": len(every), "disabled": sum(1 for x in every if x.get("disabled")),
            "visits": sum(int(x.get("visits") or 0) for x in every),
            "top": [(x["id"], int(x.get("visits") or 0)) for x in ranked
                    if x.get("visits")][:3]}


def kept(links: LinkService) -> dict[str, Any]:
    summary = links.summary(3)
    return {**{name: summary[name] for name in ("links", "disabled", "visits")},
            "top": [(x["id"], int(x.get("visits") or 0)) for x in summary["top"]]}


def visit(resolver: Resolver, slug: str, agent: str = "Mozilla/5.0 (X11; Linux)") -> int:
    return Client(make_app(resolver)).get(f"/{slug}", headers={
        "Host": DOMAIN, "User-Agent": agent}).status_code


def test_totals_follow_every_change_and_cost_the_same_with_more_links(
        backend: Backend) -> None:
    links = LinkService(backend.table(LINKS), [DOMAIN], changes=backend.table(LINK_CHANGES))
    resolver = Resolver(links.table, changes=links.changes)
    for n in range(6):
        links.create(DOMAIN, f"https://example.com/{n}", "pub_1", slug=f"s{n}")
    links.create(DOMAIN, "https://example.com/limited", "pub_1", slug="lim", max_visits=2)
    for slug, times in (("s1", 3), ("s2", 1), ("lim", 4)):  # lim: 2 answered, 2 refused
        for _ in range(times):
            visit(resolver, slug)
    visit(resolver, "s2", BOT)  # a bot: not a visit of a plain link, one of a limited one
    assert visit(resolver, "lim", BOT) == 410  # refused visits are not counted: never past it
    resolver.flush_visits()
    assert links.add_visits({f"{DOMAIN}/s3": 5, f"{DOMAIN}/gone": 9}) == 5  # the edge's report
    links.update(DOMAIN, "s4", {"disabled": True})
    links.update(DOMAIN, "s4", {"target": "https://example.com/four"})  # still disabled
    links.update(DOMAIN, "s0", {"disabled": True})
    links.update(DOMAIN, "s0", {"disabled": False})
    links.delete(DOMAIN, "s1")  # its 3 visits leave the totals, and it the top
    assert kept(links) == counted(links) == {
        "links": 6, "disabled": 1, "visits": 5 + 1 + 2,
        "top": [(f"{DOMAIN}/s3", 5), (f"{DOMAIN}/lim", 2), (f"{DOMAIN}/s2", 1)]}

    def cost() -> int:
        before = backend.requests
        links.summary(3)
        return backend.requests - before

    assert cost() == 2 + 3, "the totals, the top, and each top link: no whole table"
    for n in range(6, 60):
        links.create(DOMAIN, f"https://example.com/{n}", "pub_1", slug=f"s{n}")
    assert cost() == 2 + 3
    assert kept(links)["links"] == 60


def test_a_store_from_before_the_totals_is_counted_once(backend: Backend) -> None:
    links = LinkService(backend.table(LINKS), [DOMAIN], changes=backend.table(LINK_CHANGES))
    for n in range(4):
        links.create(DOMAIN, f"https://example.com/{n}", "pub_1", slug=f"s{n}")
    links.add_visits({f"{DOMAIN}/s2": 7})
    links.update(DOMAIN, "s3", {"disabled": True})
    assert links.changes is not None
    links.changes.delete(TOTALS)  # as a store from an earlier version has it
    links.changes.delete("top")
    reopened = LinkService(backend.table(LINKS), [DOMAIN], changes=backend.table(LINK_CHANGES))
    assert kept(reopened) == counted(reopened) == {
        "links": 4, "disabled": 1, "visits": 7, "top": [(f"{DOMAIN}/s2", 7)]}
    again = LinkService(backend.table(LINKS), [DOMAIN], changes=backend.table(LINK_CHANGES))
    again.create(DOMAIN, "https://example.com/x", "pub_1", slug="x")
    assert kept(again)["links"] == 5, "counted once: the second process only adds"


def test_a_delete_racing_edits_takes_from_the_totals_what_it_deleted(backend: Backend) -> None:
    """Two replicas: one edits a link (disable, enable) while the other deletes and makes it
    again. A delete that subtracted what it had read before an edit would leave the kept
    ``disabled`` off by one for good; each delete takes exactly what it removed."""
    first = LinkService(backend.table(LINKS), [DOMAIN], changes=backend.table(LINK_CHANGES))
    second = LinkService(backend.table(LINKS), [DOMAIN], changes=backend.table(LINK_CHANGES))
    first.create(DOMAIN, "https://example.com/x", "pub_1", slug="x")
    done = threading.Event()
    errors: list[BaseException] = []

    def edit() -> None:
        flag = False
        while not done.is_set():
            flag = not flag
            try:
                first.update(DOMAIN, "x", {"disabled": flag})
            except (ConflictError, LinkNotFound):
                pass  # deleted or changed under it: the next round reads again
            except BaseException as exc:
                errors.append(exc)
                return

    editor = threading.Thread(target=edit)
    editor.start()
    try:
        for _ in range(150):
            try:
                second.delete(DOMAIN, "x")
            except LinkBusy:
                continue  # the edits won every attempt: the API answers 409, the client asks again
            second.create(DOMAIN, "https://example.com/x", "pub_1", slug="x")
    finally:
        done.set()
        editor.join(30)
    assert not errors, errors
    assert kept(second) == counted(second)
