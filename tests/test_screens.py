"""Every publisher and admin page in real Chromium at a phone's width (390 px) and a laptop's
(1280 px): nothing scrolls sideways, axe-core finds no accessibility violation, the admin nav
does not overlap "Log out"; and the publisher's domain card follows its domain live, without a
reload.

The control app runs in a real HTTP server on loopback; DNS asks a loopback port where nothing
answers (every check fails, quickly), so the pages show their problems and reports."""
from __future__ import annotations

import time
from typing import Any, Iterator

import jwt
import pytest

from admin.web import Admin
from admin_app import create_app
from control.wiring import Services
from domains import pairs
from edge.shards import ShardNode
from kit.procs import free_port
from kit.settings import Settings
from kit.web import provided
from tests import axe
from tests.conftest import SSO_COOKIE_KEY, SSO_PLATFORM, ServicesWith, serving
from tests.test_admin_pages import PASSWORD, _self_signed

pytestmark = pytest.mark.slow
WIDTHS = (390, 1280)
LONG = "a-rather-long-subdomain-for-wrapping-checks.an-even-longer-publication-name.example.test"
SHORT = "go.example.test"
NAMES = (LONG, "b\u00fccher.example.test", "pair.test", "live.example.test")
OVERFLOW = """() => {
  const width = window.innerWidth;
  const wide = [...document.querySelectorAll("body *")].filter((element) => {
    const box = element.getBoundingClientRect();
    return box.right > width + 1 && !element.closest(".scroll");
  }).slice(0, 5).map((element) => element.tagName + "." + element.className + ": "
                   + (element.textContent || "").trim().slice(0, 60));
  return {scroll: document.documentElement.scrollWidth, width, wide};
}"""


@pytest.fixture
def services(services_with: ServicesWith, sso_settings: Settings) -> Services:
    built = services_with(base=sso_settings, admin_cookie_secure=False,
                          dns_servers=["127.0.0.1"], dns_port=free_port(), dns_timeout=0.2,
                          short_domains=["go.example.test"])
    for name in NAMES:
        pairs.connect(built.domains, name, "pub_1", "redirect" if name == "pair.test" else None,
                      {})
    for name in (LONG, "xn--bcher-kva.example.test", "pair.test"):
        built.lifecycle.check_now(name)  # problems, a report, what DNS said
    live = built.domains.get("live.example.test")
    built.domains.transition(live, "active", "set up for this test")
    chain, key = _self_signed("live.example.test", 88)
    built.certificates.save(["live.example.test"], chain, key)
    built.links.create("go.example.test", "https://example.com/" + "a-long-path-segment/" * 8,
                       "pub_1", slug="spring")
    # the publisher's own short domain, verified: their link pages offer it
    pairs.connect(built.domains, SHORT, "pub_1", None, {})
    built.domains.transition(built.domains.get(SHORT), "verified", "set up for this test")
    built.links.create(SHORT, "https://example.com/" + "b\u00fccher-" * 12, "pub_1",
                       slug="a-rather-long-short-name-to-wrap-on-a-phone-screen", code=301)
    built.links.add_visits({f"{SHORT}/a-rather-long-short-name-to-wrap-on-a-phone-screen": 3})
    assert built.shards is not None
    built.shards.put_shard("eu-west-1", [ShardNode("2001:db8:ffff:ffff:ffff:ffff:ffff:1", 8443,
                                                   8080), ShardNode("10.0.1.5", 8443, 8080)])
    built.shards.pin(LONG, "eu-west-1")
    return built


@pytest.fixture
def base(services: Services) -> Iterator[str]:
    app = create_app(services)
    provided(app, Admin).users.create("alice", PASSWORD)
    with serving(app) as url:
        yield f"http://{SSO_PLATFORM}:{url.rsplit(':', 1)[1]}"


def publisher_tab(browser: Any, publications: list[str], width: int = 1280) -> Any:
    """A new tab signed in to the platform as alice, who manages ``publications``."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    token = jwt.encode({"sub": "alice", "publications": publications,
                        "exp": int(time.time()) + 600}, SSO_COOKIE_KEY, algorithm="HS256")
    context.add_cookies([{"name": "platform_session", "value": token,
                          "domain": SSO_PLATFORM, "path": "/"}])
    page = context.new_page()
    page.set_default_timeout(15000)
    return page


@pytest.fixture
def tab(browser: Any, base: str) -> Iterator[Any]:
    page = publisher_tab(browser, ["pub_1"])
    yield page
    page.context.close()


def publisher_pages() -> list[str]:
    pages = ["/_edge/settings/domains"]
    for name in (LONG, "xn--bcher-kva.example.test", "pair.test", "www.pair.test",
                 "live.example.test"):
        pages += [f"/_edge/settings/domains/{name}", f"/_edge/settings/domains/{name}/remove"]
    return pages + ["/_edge/settings/links", f"/_edge/settings/links/{SHORT}/spring",
                    f"/_edge/settings/links/{SHORT}/spring/delete",
                    f"/_edge/settings/links/{SHORT}/a-rather-long-short-name-to-wrap-on-a-phone-"
                    "screen?days=7"]


ADMIN_PAGES = ["/admin/", "/admin/domains", "/admin/domains?status=pending_dns",
               f"/admin/domains/{LONG}", f"/admin/domains/{LONG}/remove",
               "/admin/domains/xn--bcher-kva.example.test", "/admin/domains/live.example.test",
               "/admin/certificates", "/admin/nodes", "/admin/links",
               "/admin/links/go.example.test/spring", "/admin/links?by=link&q=spring",
               "/admin/links?by=target&q=a-long-path", "/admin/audit", "/admin/shards",
               "/admin/shards/remove?name=eu-west-1"]


def fits(page: Any, path: str, width: int) -> None:
    """Nothing scrolls sideways, and axe finds nothing wrong (measured once the stylesheets
    are in: after a click's navigation, a loaded machine may not have them yet)."""
    page.wait_for_load_state("load")
    measured = page.evaluate(OVERFLOW)
    assert measured["scroll"] <= measured["width"], (path, width, measured)
    axe.check(page, f"{path} at {width} px")


def sign_in(page: Any, base: str) -> None:
    page.goto(f"{base}/admin/login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('Overview')")


@pytest.mark.parametrize("width", WIDTHS)
def test_no_page_scrolls_sideways(tab: Any, base: str, width: int) -> None:
    tab.set_viewport_size({"width": width, "height": 900})
    for path in publisher_pages():
        answer = tab.goto(base + path)
        assert answer.status == 200, path
        fits(tab, path, width)
    tab.goto(f"{base}/_edge/settings/domains")
    tab.fill("#hostname", "news_1." + LONG)  # a refusal, shown inline
    tab.click("button:has-text('Connect')")
    tab.wait_for_selector("#hostname-error")
    fits(tab, "connect refused", width)

    tab.goto(f"{base}/admin/login")
    fits(tab, "/admin/login", width)
    sign_in(tab, base)
    for path in ADMIN_PAGES:
        answer = tab.goto(base + path)
        assert answer.status == 200, path
        fits(tab, path, width)
        nav = tab.locator("header nav").bounding_box()
        logout = tab.locator("header form.logout").bounding_box()
        apart = nav["y"] + nav["height"] <= logout["y"] or \
            nav["x"] + nav["width"] <= logout["x"]
        assert apart, (path, width, nav, logout)


def test_the_card_goes_live_without_a_reload(services: Services, tab: Any, base: str) -> None:
    tab.set_viewport_size({"width": 390, "height": 900})
    tab.goto(f"{base}/_edge/settings/domains/{LONG}")
    assert tab.inner_text("#status") == "Waiting for DNS"
    assert tab.evaluate("document.getElementById('setup').open")
    assert "not configured yet" in tab.inner_text("#report")
    navigations: list[str] = []
    tab.on("framenavigated", lambda frame: navigations.append(frame.url))

    # "Check now": progress, then its result, and the time of the check moves.
    before = tab.get_attribute("#checked-at", "datetime")
    tab.evaluate("""() => { window.seenLabels = [];
      new MutationObserver(() => window.seenLabels.push(
        document.getElementById("check-button").textContent)).observe(
        document.getElementById("check-button"), {childList: true, characterData: true,
                                                   subtree: true}); }""")
    time.sleep(1.1)  # the check's time is to the second
    tab.click("#check-button")
    tab.wait_for_selector("#check-result:has-text('Checked')")
    assert "Checking…" in tab.evaluate("window.seenLabels")
    assert "still to fix" in tab.inner_text("#check-result")
    assert tab.get_attribute("#checked-at", "datetime") != before
    assert tab.get_attribute("#checked-at", "title").endswith(" UTC")

    domain = services.domains.get(LONG)
    services.domains.transition(domain, "active", "test", validation_errors=[],
                                last_error=None)
    tab.wait_for_selector("#status.status-active")
    assert tab.inner_text("#status") == "Live"
    assert tab.is_visible("#active-note") and not tab.is_visible("#errors")
    assert not tab.evaluate("document.getElementById('setup').open"), "set-up folded away"
    assert "not configured yet" not in tab.inner_text("#report")
    assert tab.get_attribute("#live", "data-state") == "live"
    assert navigations == []  # all of it without a reload
    fits(tab, "live card", 390)


def test_the_www_choice_follows_what_is_typed(tab: Any, base: str) -> None:
    tab.goto(f"{base}/_edge/settings/domains")
    assert not tab.is_visible("#with-www"), "nothing typed: nothing to ask"
    for typed, asked in (("example.org", True), ("www.example.org", True),
                         ("blog.example.org", False), ("https://Example.co.uk/x", True),
                         ("news.example.co.uk", False)):
        tab.fill("#hostname", typed)
        assert tab.is_visible("#with-www") == asked, typed
    tab.fill("#hostname", "example.org")
    radio = tab.locator("input[value=serve]").bounding_box()
    text = tab.locator("label.choice:has(input[value=serve]) span").bounding_box()
    assert 0 <= text["x"] - (radio["x"] + radio["width"]) < 24, "each radio sits by its label"
