"""Short links in the UI (issue 28), driven in real Chromium: a publisher makes a link on their
short domain, a reader visits it, the publisher sees the QR code and the visits (days,
referrers, bots), changes the target, disables, enables and deletes it; an admin finds links by
short URL, slug, publication and target. axe-core checks every page on the way, at 390 and
1280 px.

The control app and the redirect app run in real HTTP servers on loopback; every *.test name
resolves to 127.0.0.1 inside the browser."""
from __future__ import annotations

from typing import Any, Iterator

import pytest
import requests

from control.wiring import Services
from shortlinks.app import make_app
from shortlinks.errors import LinkNotFound
from tests import axe
from tests.conftest import SSO_PLATFORM, wait_until
from tests.test_admin_browser import serve, shows_a_visit_and_a_bot_today
from tests.test_screens import (SHORT, base, fits, publisher_tab, services,  # noqa: F401
                                sign_in)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("link_pages")]
BROWSER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                 "Chrome/124.0 Safari/537.36")


@pytest.fixture
def links_port(services: Services) -> Iterator[int]:  # noqa: F811
    yield from serve(make_app(services.resolver))


def _visit(browser: Any, url: str, referrer: str) -> None:
    """A reader's browser (not a bot by its User-Agent) following the link."""
    reader = browser.new_context(user_agent=BROWSER_AGENT)
    try:
        reader.new_page().goto(url, referer=referrer)
    finally:
        reader.close()


@pytest.mark.parametrize("width", [390, 1280])
def test_a_publisher_makes_follows_and_deletes_a_link(
        services: Services, browser: Any, base: str, links_port: int,  # noqa: F811
        width: int) -> None:
    tab = publisher_tab(browser, ["pub_1"], width)
    tab.goto(f"{base}/_edge/settings/domains")
    tab.click("header nav a:has-text('Short links')")
    tab.wait_for_selector("h1:has-text('Short links')")
    assert tab.locator("#domain option").all_text_contents() == [f"{SHORT} (pub_1)"]
    tab.fill("#target", "javascript:alert(1)")
    tab.click("button:has-text('Make the link')")
    assert "The target:" in tab.inner_text("#link-error")
    assert tab.get_attribute("#target", "aria-invalid") == "true"
    fits(tab, "a refused link", width)

    target = f"{base}/healthz"
    tab.fill("#target", target)
    tab.fill("#slug", f"launch{width}")
    tab.select_option("#code", "307")
    tab.click("button:has-text('Make the link')")
    tab.wait_for_selector("#link-notice:has-text('ready')")
    short = f"https://{SHORT}/launch{width}"
    assert tab.inner_text("#short-url") == short
    # The image loads after the page shows the link: wait for it (a loaded machine took longer
    # than the next line once), then check it decoded to something. Polled from here: Playwright's
    # wait_for_function polls a string with eval in the page, which the page's CSP refuses (only
    # its first try, over the DevTools protocol, is allowed).
    wait_until(lambda: tab.evaluate("document.getElementById('qr').complete"), 30,
               "the QR code image loaded", interval=0.1)
    assert tab.evaluate("document.getElementById('qr').naturalWidth") > 0, "the QR code shows"
    made = services.links.get(SHORT, f"launch{width}")
    assert (made["owner"], made["code"], made["target"]) == ("pub_1", 307, target)
    fits(tab, "a new link", width)

    # a reader comes from a post, headless Chromium (a bot by its User-Agent) comes too
    visit = f"http://{SHORT}:{links_port}/launch{width}"
    _visit(browser, visit, "https://news.example.org/post")
    tab.goto(visit)
    services.resolver.flush_visits()
    tab.goto(f"{base}/_edge/settings/links/{SHORT}/launch{width}")
    shows_a_visit_and_a_bot_today(tab, "news.example.org")
    tab.click("a:has-text('7 days')")
    tab.wait_for_selector("strong:has-text('7 days')")
    assert tab.locator("#visits-chart svg").get_attribute("aria-label") == \
        "Visits per day over the last 7 days (UTC)"
    fits(tab, "a link's visits", width)

    tab.fill("#target", f"{base}/healthz?changed=1")
    tab.click("button:has-text('Save')")
    tab.wait_for_selector("#link-notice:has-text('Saved')")
    assert services.links.get(SHORT, f"launch{width}")["target"].endswith("?changed=1")
    tab.fill("#target", "not a url")
    tab.click("button:has-text('Save')")
    assert "The target:" in tab.inner_text("#link-error")
    fits(tab, "a refused change", width)

    tab.goto(f"{base}/_edge/settings/links/{SHORT}/launch{width}")
    tab.click("#toggle-button:has-text('Disable')")
    tab.wait_for_selector("#link-state:has-text('Disabled')")
    assert tab.goto(visit).status == 410
    tab.goto(f"{base}/_edge/settings/links/{SHORT}/launch{width}")
    tab.click("#toggle-button:has-text('Enable')")
    tab.wait_for_selector("#link-state:has-text('Redirecting')")
    assert tab.goto(visit).url.endswith("/healthz?changed=1")

    tab.goto(f"{base}/_edge/settings/links/{SHORT}/launch{width}")
    tab.click("#delete-link")
    tab.wait_for_selector("h1:has-text('Delete')")
    fits(tab, "delete a link", width)
    tab.click("button:has-text('Delete')")
    tab.wait_for_selector(f".notice:has-text('{SHORT}/launch{width} was deleted')")
    assert tab.locator(f"a:has-text('launch{width}')").count() == 0
    with pytest.raises(LinkNotFound):
        services.links.get(SHORT, f"launch{width}")
    fits(tab, "the list after a delete", width)
    tab.context.close()


def test_another_publications_link_is_not_there(services: Services, browser: Any,  # noqa: F811
                                                base: str) -> None:
    services.links.create(SHORT, "https://example.com/theirs", "pub_2", slug="theirs")
    tab = publisher_tab(browser, ["pub_1"], 390)
    for path in ("", "/qr.svg", "/delete"):
        assert tab.goto(f"{base}/_edge/settings/links/{SHORT}/theirs{path}").status == 404
    assert "theirs" not in tab.goto(f"{base}/_edge/settings/links").text()
    # with the form's token, as the page would send it: still not there
    token = tab.get_attribute("input[name=csrf_token]", "value")
    assert _post(tab, base, f"{SHORT}/theirs/disable", token).status_code == 404
    assert not services.links.get(SHORT, "theirs")["disabled"]
    # their own link, without the form's token: refused, nothing changed
    answer = _post(tab, base, f"{SHORT}/spring/disable", "forged")
    assert answer.status_code == 400 and "expired" in answer.text
    assert not services.links.get(SHORT, "spring")["disabled"]
    tab.context.close()

    # a publisher with no verified short domain is told how to get one, not shown a form
    other = publisher_tab(browser, ["pub_3"], 390)
    other.goto(f"{base}/_edge/settings/links")
    assert other.is_visible("#no-short-domain") and not other.is_visible("#make-form")
    axe.check(other, "no short domain")
    other.context.close()


def _post(tab: Any, base: str, path: str, csrf_token: str) -> requests.Response:
    """A form post with the tab's session cookie, straight to the loopback server (the name
    resolves to it only inside the browser)."""
    port = base.rsplit(":", 1)[1]
    cookies = {c["name"]: c["value"] for c in tab.context.cookies()}
    return requests.post(f"http://127.0.0.1:{port}/_edge/settings/links/{path}",
                         data={"csrf_token": csrf_token}, cookies=cookies, timeout=10,
                         headers={"Host": f"{SSO_PLATFORM}:{port}"}, allow_redirects=False)


@pytest.mark.parametrize("width", [390, 1280])
def test_an_admin_finds_links(services: Services, browser: Any, base: str,  # noqa: F811
                              width: int) -> None:
    services.links.create(SHORT, "https://shop.example.com/winter-sale", "pub_2", slug="winter")
    context = browser.new_context(viewport={"width": width, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(15000)
    sign_in(tab, base)
    tab.click("header nav a:has-text('Short links')")
    found = {}
    for by, text in (("link", f"https://{SHORT}/winter"), ("link", f"{SHORT}/winter"),
                     ("link", "winter"), ("publication", "pub_2"), ("target", "WINTER-sale"),
                     ("link", "nothing-here"), ("publication", "pub_9"),
                     ("target", "no-such-target")):
        tab.fill("#q", text)
        tab.select_option("#by", by)
        tab.click("button:has-text('Search')")
        tab.wait_for_selector("#search-summary")
        fits(tab, f"search {by} {text}", width)
        found[(by, text)] = [row.split("\t")[0] for row in
                             tab.locator("table.links tbody tr").all_inner_texts()]
    winter = [f"{SHORT}/winter"]
    assert found[("link", f"https://{SHORT}/winter")] == winter
    assert found[("link", f"{SHORT}/winter")] == winter
    assert found[("link", "winter")] == winter  # on every short domain
    assert found[("publication", "pub_2")] == winter
    assert found[("target", "WINTER-sale")] == winter
    for nothing in (("link", "nothing-here"), ("publication", "pub_9"),
                    ("target", "no-such-target")):
        assert found[nothing] == ["Nothing found."], nothing
    assert "of the 3 links read here" in tab.inner_text("#search-summary")

    # disabling from a search comes back to the same search
    tab.fill("#q", "pub_2")
    tab.select_option("#by", "publication")
    tab.click("button:has-text('Search')")
    tab.click("button:has-text('Disable')")
    tab.wait_for_selector("button:has-text('Enable')")
    assert tab.input_value("#q") == "pub_2" and services.links.get(SHORT, "winter")["disabled"]
    context.close()
