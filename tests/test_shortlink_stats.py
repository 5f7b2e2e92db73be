"""Issue 18: short-link rules (expired_url, per-device targets, UTM) and visit statistics per
link per day, on SQLite and on DynamoDB (dynalite)."""
from __future__ import annotations

import datetime
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from werkzeug.test import Client

from control.wiring import Services
from kit.settings import Settings
from shortlinks.app import make_app
from shortlinks.changes import LINK_CHANGES
from shortlinks.leases import LINK_LEASES, VisitLeases
from shortlinks.links import LINKS, InvalidLink, LinkService, is_plain
from shortlinks.resolver import Resolver
from shortlinks.stats import DAY, LINK_DAYS, BotDetector, VisitStats, referrer_host
from store import Backend
from store.dynamo import DynamoBackend
from store.sweep import ExpirySweeper
from tests.supervised_dynalite import SupervisedDynalite

DOMAINS = ["acme.link"]
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")
ANDROID = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/124.0 Mobile Safari/537.36")
DESKTOP = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/124.0 Safari/537.36")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.fixture
def stats(backend: Backend) -> VisitStats:
    return VisitStats(backend.table(LINK_DAYS))


@pytest.fixture
def links(backend: Backend, stats: VisitStats) -> LinkService:
    return LinkService(backend.table(LINKS), DOMAINS, stats=stats)


def visit(resolver: Resolver, slug: str, agent: str = DESKTOP, referrer: str = "",
          method: str = "GET") -> tuple[int, str | None, str | None]:
    answer = Client(make_app(resolver)).open(f"/{slug}", method=method, headers={
        "Host": "acme.link", "User-Agent": agent, "Referer": referrer})
    return answer.status_code, answer.headers.get("Location"), answer.headers.get("Vary")


def test_expired_and_exhausted_links_go_to_their_expired_url(links: LinkService) -> None:
    now = [time.time()]
    over = {"expired_url": "https://example.com/over"}
    links.create("acme.link", "https://example.com/a", "p", slug="soon",
                 valid_until=now[0] + 10, rules=over)
    links.create("acme.link", "https://example.com/b", "p", slug="once", max_visits=1,
                 rules=over)
    links.create("acme.link", "https://example.com/c", "p", slug="off", rules=over)
    links.update("acme.link", "off", {"disabled": True})
    resolver = Resolver(links.table, clock=lambda: now[0])
    assert visit(resolver, "soon")[:2] == (302, "https://example.com/a")
    assert visit(resolver, "once")[:2] == (302, "https://example.com/b")
    assert visit(resolver, "once")[:2] == (302, "https://example.com/over")  # exhausted
    assert visit(resolver, "off")[0] == 410, "a disabled link is off, not expired"
    now[0] += 11
    assert visit(resolver, "soon")[:2] == (302, "https://example.com/over")
    links.update("acme.link", "soon", {"expired_url": None})
    assert visit(Resolver(links.table, clock=lambda: now[0]), "soon")[0] == 410


def test_device_targets_follow_the_user_agent(links: LinkService) -> None:
    links.create("acme.link", "https://example.com/app", "p", slug="app", rules={
        "device_targets": {"ios": "https://apps.apple.com/app/id1", "android":
                    "https://play.google.com/store/apps/details?id=x"}})
    resolver = Resolver(links.table)
    assert visit(resolver, "app", IPHONE) == (302, "https://apps.apple.com/app/id1",
                                              "User-Agent")
    assert visit(resolver, "app", ANDROID)[1] == "https://play.google.com/store/apps/details?id=x"
    assert visit(resolver, "app", DESKTOP)[1] == "https://example.com/app"
    assert visit(resolver, "app", "")[1] == "https://example.com/app"
    assert is_plain(links.get("acme.link", "app")), "HAProxy picks the device too"
    links.update("acme.link", "app", {"device_targets": {"desktop": "https://example.com/web"}})
    resolver = Resolver(links.table)
    assert visit(resolver, "app", IPHONE)[1] == "https://example.com/app"
    assert visit(resolver, "app", DESKTOP)[1] == "https://example.com/web"


def test_utm_parameters_are_appended_to_every_target(links: LinkService) -> None:
    links.create("acme.link", "https://example.com/p?a=1&utm_source=old#top", "p", slug="u",
                 rules={"utm": {"utm_source": "news letter", "utm_campaign": "été"},
                        "device_targets": {"ios": "https://apps.apple.com/x"}})
    resolver = Resolver(links.table)
    assert visit(resolver, "u")[1] == ("https://example.com/p?a=1&utm_source=news%20letter"
                                       "&utm_campaign=%C3%A9t%C3%A9#top")
    assert visit(resolver, "u", IPHONE)[1] == ("https://apps.apple.com/x?utm_source=news%20letter"
                                               "&utm_campaign=%C3%A9t%C3%A9")
    links.create("acme.link", "https://example.com/", "p", slug="tagged",
                 rules={"utm": {"utm_medium": "email"}})
    assert is_plain(links.get("acme.link", "tagged")), "a fixed URL: the map holds it, tagged"


@pytest.mark.parametrize("rules,field", [
    ({"expired_url": "javascript:alert(1)"}, "expired_url"),
    ({"expired_url": "https://acme.link/loop"}, "expired_url"),
    ({"expired_url": "https://ACME.link\u3002/loop"}, "expired_url"),
    ({"device_targets": {"ios": "//evil.example/"}}, "device_targets.ios"),
    ({"device_targets": {"watch": "https://example.com/"}}, "device_targets"),
    ({"device_targets": "https://example.com/"}, "device_targets"),
    ({"utm": {"utm_source": "a\nb"}}, "utm.utm_source"),
    ({"utm": {"utm_source": "x" * 201}}, "utm.utm_source"),
    ({"utm": {"utm_id": "x"}}, "utm"),
    ({"utm": {"utm_term": "x" * 200, "utm_content": "y" * 200}, "expired_url": None}, None),
    ({"redirect_to": "https://example.com/"}, "redirect_to"),
])
def test_rules_are_validated_like_targets(links: LinkService, rules: dict[str, object],
                                          field: str | None) -> None:
    if field is None:  # long, but the target stays within the limit
        assert links.create("acme.link", "https://example.com/", "p", rules=rules)
        return
    with pytest.raises(InvalidLink) as refused:
        links.create("acme.link", "https://example.com/", "p", rules=rules)
    assert refused.value.field == field


def test_non_latin1_rule_targets_are_stored_encoded_and_served(links: LinkService) -> None:
    links.create("acme.link", "https://example.com/", "p", slug="intl", rules={
        "expired_url": "https://bücher.example/über",
        "device_targets": {"ios": "https://例え.jp/パス"}},
        max_visits=0)
    stored = links.get("acme.link", "intl")
    assert stored["expired_url"] == "https://xn--bcher-kva.example/%C3%BCber"
    assert stored["device_targets"]["ios"] == "https://xn--r8jz45g.jp/%E3%83%91%E3%82%B9"
    assert visit(Resolver(links.table), "intl")[:2] == (302, stored["expired_url"])


def test_visits_per_day_bots_apart_and_referrer_hosts(links: LinkService, stats: VisitStats,
                                                      backend: Backend) -> None:
    links.create("acme.link", "https://example.com/", "p", slug="s")
    links.create("acme.link", "https://example.com/", "p", slug="lim", max_visits=100)
    day = [time.time()]
    resolver = Resolver(links.table, stats=stats, clock=lambda: day[0])
    for agent, referrer, method in ((DESKTOP, "https://news.ycombinator.com/item?id=1", "GET"),
                                    (IPHONE, "https://NEWS.ycombinator.com./x", "GET"),
                                    (ANDROID, "android-app://com.slack/", "GET"),
                                    (DESKTOP, "not a url", "GET"), (DESKTOP, "", "HEAD"),
                                    (GOOGLEBOT, "https://google.com/", "GET"),
                                    ("curl/8.5.0", "", "GET")):
        assert visit(resolver, "s", agent, referrer, method)[0] == 302
        assert visit(resolver, "lim", agent, referrer, method)[0] == 302
    day[0] -= DAY  # yesterday's visits, counted under yesterday
    visit(resolver, "s", DESKTOP, "https://bücher.example/")
    assert resolver.flush_visits() == 8 + 3, "a limited link's visits are counted per visit"
    link = links.get("acme.link", "s")
    assert (link["visits"], link["bots"]) == (5, 3)
    limited = links.get("acme.link", "lim")
    assert (limited["visits"], limited["bots"]) == (7, 3), "its limit counts bots too"

    before = backend.requests
    found = links.visit_stats("acme.link", "s", 3)
    assert backend.requests - before == 1, "one query, whatever the number of days"
    today = datetime.datetime.fromtimestamp(time.time(), datetime.timezone.utc).date()
    dates = [(today - datetime.timedelta(days=n)).isoformat() for n in (2, 1, 0)]
    assert found["days"] == [{"date": dates[0], "visits": 0, "bots": 0},
                             {"date": dates[1], "visits": 1, "bots": 0},
                             {"date": dates[2], "visits": 4, "bots": 3}]
    assert found["referrers"] == [{"host": "news.ycombinator.com", "visits": 2},
                                  {"host": "com.slack", "visits": 1},
                                  {"host": "xn--bcher-kva.example", "visits": 1}]
    assert links.visit_stats("acme.link", "lim", 1)["days"][0] | {"date": ""} == {
        "date": "", "visits": 4, "bots": 3}
    assert links.visit_stats("acme.link", "s", 90)["days"][-1]["visits"] == 4


def test_reported_edge_visits_join_the_day(links: LinkService) -> None:
    links.create("acme.link", "https://example.com/", "p", slug="hot")
    assert links.add_visits({"acme.link/hot": 7, "acme.link/gone": 3}) == 7
    assert links.add_visits({"acme.link/hot": 2}) == 2
    assert links.visit_stats("acme.link", "hot", 1)["days"][0]["visits"] == 9
    assert links.get("acme.link", "hot")["visits"] == 9


def test_referrer_hosts_are_bounded_per_link_and_day(backend: Backend) -> None:
    stats = VisitStats(backend.table(LINK_DAYS), max_referrers=2)
    assert stats.add("acme.link/r", {"visits": 3, "ref:a.example": 1, "ref:b.example": 1,
                                     "ref:c.example": 1}) == {}
    stats.add("acme.link/r", {"visits": 2, "ref:a.example": 1, "ref:d.example": 1})
    referrers = {r["host"]: r["visits"] for r in stats.read("acme.link/r", 1)["referrers"]}
    assert referrers == {"a.example": 2, "b.example": 1, "(other)": 2}


def test_days_leave_after_90_days_and_with_their_link(links: LinkService, stats: VisitStats,
                                                      backend: Backend) -> None:
    links.create("acme.link", "https://example.com/", "p", slug="old")
    now = time.time()
    stats.add("acme.link/old", {"visits": 5}, now=now - 91 * DAY)
    stats.add("acme.link/old", {"visits": 4}, now=now - 89 * DAY)
    table = backend.table(LINK_DAYS)
    assert len(table.query_range("by_link", "acme.link/old").items) == 1, "91 days: expired"
    assert stats.read("acme.link/old", 90)["days"][0]["visits"] == 4
    if getattr(table, "sweep", True):  # a server with TTL deletes them itself
        sweeper = ExpirySweeper([table])
        sweeper.tick()
        assert sweeper.deleted == 1
    other = VisitStats(table)  # another process, which has made today's item
    other.add("acme.link/old", {"visits": 2})
    links.delete("acme.link", "old")
    links.create("acme.link", "https://example.com/new", "p", slug="old")
    assert sum(d["visits"] for d in stats.read("acme.link/old", 90)["days"]) == 0
    other.add("acme.link/old", {"visits": 3})  # the new link's visits are not lost
    assert sum(d["visits"] for d in stats.read("acme.link/old", 90)["days"]) == 3


def changing(backend: Backend, check_every: float = 1.0) -> tuple[LinkService, Resolver]:
    """Links with their change counter and a redirect process (its own day statistics, as
    `edgectl shortlinks` has), which reads the counter at most every ``check_every`` s."""
    links = LinkService(backend.table(LINKS), DOMAINS, changes=backend.table(LINK_CHANGES),
                        stats=VisitStats(backend.table(LINK_DAYS)))
    return links, Resolver(links.table, changes=links.changes, check_every=check_every,
                           stats=VisitStats(backend.table(LINK_DAYS)))


def nothing_of(links: LinkService, slug: str) -> None:
    link = links.get("acme.link", slug)
    assert (link.get("visits"), link.get("bots")) == (None, None)
    found = links.visit_stats("acme.link", slug, 2)
    assert [(day["visits"], day["bots"]) for day in found["days"]] == [(0, 0), (0, 0)]
    assert found["referrers"] == []


@pytest.mark.parametrize("made_today", [False, True])
def test_visits_flushed_after_their_link_was_deleted_go_to_no_later_link(
        backend: Backend, made_today: bool) -> None:
    """The redirect process holds visits until its flush (every 2 s). Flushed after their
    link was deleted, they are dropped: the next link made with the slug, by another
    publication and with a visit limit, starts with no visits, bots or referrers, and is not
    used up. ``made_today``: the process had made the deleted link's day item already."""
    links, resolver = changing(backend)
    links.create("acme.link", "https://a.example/", "pub_a", slug="promo")
    if made_today:
        visit(resolver, "promo", DESKTOP, "https://a.example/")
        assert resolver.flush_visits() == 1
    for agent in (DESKTOP, IPHONE, GOOGLEBOT):
        assert visit(resolver, "promo", agent, "https://partner.example/private")[0] == 302
    links.delete("acme.link", "promo")
    assert resolver.flush_visits() == 0
    links.create("acme.link", "https://b.example/", "pub_b", slug="promo", max_visits=2)
    nothing_of(links, "promo")
    fresh = Resolver(links.table, changes=links.changes)
    assert [visit(fresh, "promo")[0] for _ in range(3)] == [302, 302, 410]


def test_visits_of_a_link_made_again_before_the_flush_stay_with_their_link(
        backend: Backend) -> None:
    """Deleted and made again between two flushes, the slug's two links get each their own
    visits: the deleted one's are dropped, the new one's counted, with their referrers."""
    links, resolver = changing(backend, check_every=0.0)
    links.create("acme.link", "https://a.example/", "pub_a", slug="promo")
    for _ in range(3):
        visit(resolver, "promo", DESKTOP, "https://old.example/")
    links.delete("acme.link", "promo")
    links.create("acme.link", "https://b.example/", "pub_b", slug="promo")
    assert visit(resolver, "promo", DESKTOP, "https://new.example/")[1] == "https://b.example/"
    assert resolver.flush_visits() == 1
    assert links.get("acme.link", "promo")["visits"] == 1
    found = links.visit_stats("acme.link", "promo", 1)
    assert found["days"][0]["visits"] == 1
    assert found["referrers"] == [{"host": "new.example", "visits": 1}]


def test_a_link_deleted_while_its_visits_are_flushed_gets_no_day_item(
        backend: Backend) -> None:
    """The flush reads which links are there, then makes their day items: a delete landing
    between the two (its days' delete finds no item yet) is seen by the one batch read that
    follows the puts, and the item goes again; the next link with the slug starts empty."""
    links, resolver = changing(backend)
    links.create("acme.link", "https://a.example/", "pub_a", slug="promo")
    visit(resolver, "promo", DESKTOP, "https://partner.example/private")
    read = resolver._links_now

    def deleted_meanwhile(keys: set[str]) -> dict[str, Any]:
        found = read(keys)
        links.delete("acme.link", "promo")
        return found
    resolver._links_now = deleted_meanwhile  # type: ignore[method-assign]
    resolver.flush_visits()
    links.create("acme.link", "https://b.example/", "pub_b", slug="promo")
    nothing_of(links, "promo")


@pytest.mark.parametrize("still", [False, True])
def test_a_day_item_is_made_again_only_for_the_link_the_counts_came_to(
        links: LinkService, stats: VisitStats, still: bool) -> None:
    """A day item this process made is gone (its link was deleted): made again only when
    ``still`` says the counts are the link's that now has the slug; a new day item made for
    a link that is no longer the counts' is deleted again. Either way nothing is left to
    fail (no count to retry)."""
    links.create("acme.link", "https://example.com/", "p", slug="d")
    assert stats.add("acme.link/d", {"visits": 1}) == {}
    links.delete("acme.link", "d")  # its day goes
    links.create("acme.link", "https://example.com/", "q", slug="d")
    counts = {"visits": 2, "ref:a.example": 2}
    assert stats.add("acme.link/d", counts, still=lambda: still) == {}
    assert VisitStats(stats.table).add("acme.link/e", counts, still=lambda: still) == {}
    for link in ("acme.link/d", "acme.link/e"):
        found = stats.read(link, 1)
        assert found["days"][0]["visits"] == (2 if still else 0)
        assert found["referrers"] == ([{"host": "a.example", "visits": 2}] if still else [])
    assert len(stats.table.query_range("by_link", "acme.link/e").items) == int(still)


def test_a_limited_links_bots_are_totalled_too(backend: Backend, links: LinkService,
                                               stats: VisitStats) -> None:
    """Its ``visits`` is its limit's counter (every answer, a bot's too); its ``bots`` total
    is kept as a plain link's is."""
    links.create("acme.link", "https://example.com/", "p", slug="lim", max_visits=100)
    resolver = Resolver(links.table, stats=stats, leases=VisitLeases(
        links.table, backend.table(LINK_LEASES), "p"))
    for agent, method in ((GOOGLEBOT, "GET"), (GOOGLEBOT, "GET"), (DESKTOP, "HEAD"),
                          (DESKTOP, "GET")):
        assert visit(resolver, "lim", agent, method=method)[0] == 302
    assert resolver.flush_visits() == 3
    assert resolver.leases is not None
    resolver.leases.close()  # what the lease did not serve goes back
    link = links.get("acme.link", "lim")
    assert (link["visits"], link.get("bots")) == (4, 3)
    day = links.visit_stats("acme.link", "lim", 1)["days"][0]
    assert (day["visits"], day["bots"]) == (1, 3)


def test_bot_verdicts_are_cached_and_bounded() -> None:
    bots = BotDetector(size=2)
    assert bots.is_bot(GOOGLEBOT) and not bots.is_bot(DESKTOP)
    assert bots.is_bot("python-requests/2.32") and len(bots._cache) == 1  # started over
    assert referrer_host("https://a.example:8443/x") == "a.example"
    assert referrer_host("https://a b/") is None and referrer_host("") is None


def test_visits_kept_through_a_store_outage_are_written_once(tmp_path: Path) -> None:
    """A flush while DynamoDB (dynalite) is down writes nothing and keeps every count; the
    next one, once it is back, writes each exactly once, link totals and days alike."""
    dynalite = SupervisedDynalite(tmp_path)
    try:
        client = boto3.client("dynamodb", endpoint_url=dynalite.url, region_name="us-east-1",
                              config=Config(retries={"max_attempts": 1, "mode": "standard"},
                                            connect_timeout=0.5, read_timeout=2))
        backend = DynamoBackend(client, prefix="outage_")
        stats = VisitStats(backend.table(LINK_DAYS))
        links = LinkService(backend.table(LINKS), DOMAINS, stats=stats)
        links.create("acme.link", "https://example.com/", "p", slug="s")
        resolver = Resolver(links.table, stats=stats)
        visit(resolver, "s", DESKTOP, "https://a.example/")
        assert resolver.flush_visits() == 1  # the day item exists now
        for agent in (DESKTOP, IPHONE, GOOGLEBOT):
            visit(resolver, "s", agent, "https://b.example/")
        down = threading.Thread(target=dynalite.outage, args=(3.0,))
        down.start()
        assert dynalite.down.wait(30), "the outage never began"
        assert resolver.flush_visits() == 0, "nothing written while the store is down"
        down.join()
        visit(resolver, "s", DESKTOP)
        assert resolver.flush_visits() == 4
        assert resolver.flush_visits() == 0
        link = links.get("acme.link", "s")
        assert (link["visits"], link["bots"]) == (4, 1)
        found = links.visit_stats("acme.link", "s", 1)
        assert found["days"][0] | {"date": ""} == {"date": "", "visits": 4, "bots": 1}
        assert found["referrers"] == [{"host": "b.example", "visits": 2},
                                      {"host": "a.example", "visits": 1}]
    finally:
        dynalite.stop()


def test_the_control_worker_sweeps_the_days(settings: Settings) -> None:
    services = Services.from_settings(settings)
    try:
        assert services.sweeper is not None
        assert "short_link_days" in {table.spec.name for table in services.sweeper.tables}
    finally:
        services.close()
