"""The dashboard in a real Chromium: sign in, fix a failing domain, disable a short link.
axe-core checks each dashboard page the tests look at (tests/axe.py).

DNS is real (challtestsrv); the dashboard and the redirect app run in real HTTP servers on
loopback; every *.test name resolves to 127.0.0.1 inside the browser.
"""
from __future__ import annotations

import datetime
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from werkzeug.serving import make_server

from admin.web import Admin
from admin_app import create_app
from control.wiring import Services
from devtools.pebble import PebbleStack
from kit.web import provided
from shortlinks.app import make_app
from tests import axe
from tests.conftest import ServicesWith

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"


@pytest.fixture
def services(services_with: ServicesWith, pebble: PebbleStack) -> Services:
    return services_with(dns_servers=["127.0.0.1"], dns_port=pebble.dns_port,
                         admin_cookie_secure=False, short_domains=["go.example.test"])


def serve(app: Callable[..., Any]) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, app, threaded=True)  # the kernel's free port, bound
    port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def admin_port(services: Services) -> Iterator[int]:
    app = create_app(services)
    provided(app, Admin).users.create("alice", PASSWORD)
    yield from serve(app)


@pytest.fixture
def links_port(services: Services) -> Iterator[int]:
    yield from serve(make_app(services.resolver))


@pytest.fixture
def page(browser: Any, admin_port: int) -> Iterator[Any]:
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(15000)
    tab.goto(f"http://admin.example.test:{admin_port}/admin/")
    tab.fill("input[name=username]", "alice")
    tab.fill("input[name=password]", PASSWORD)
    tab.click("button:has-text('Sign in')")
    tab.wait_for_selector("h1:has-text('Overview')")
    yield tab
    context.close()


def shows_a_visit_and_a_bot_today(page: Any, referrer: str) -> None:
    """A link's page (the admin's or the publisher's) after one visit from ``referrer`` and one
    from a bot today: the totals, the chart's bars, the referrer and the day's row."""
    assert (page.inner_text("#visits"), page.inner_text("#bots")) == ("1", "1")
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    bars = page.locator("#visits-chart svg rect title").all_text_contents()
    assert f"{today[5:]}: 1 visits" in bars and f"{today[5:]}: 1 bots and HEAD" in bars
    assert f"{referrer}\t1" in page.inner_text("#referrers")
    page.click("summary:has-text('Per day')")
    assert f"{today}\t1\t1" in page.inner_text("#days")


def test_find_a_failing_domain_and_recheck_it(services: Services, pebble: PebbleStack,
                                              page: Any, tmp_path: Path) -> None:
    domain, _ = services.domains.connect("broken.example.test", "pub_1")
    services.lifecycle.check_now("broken.example.test")  # fails: no ownership TXT yet
    assert services.domains.get("broken.example.test")["last_error"]
    page.reload()
    axe.check(page, "1-overview")
    page.screenshot(path=str(tmp_path / "1-overview.png"), full_page=True)
    page.click("text=Domains")
    page.select_option("select[name=status]", "pending_dns")
    page.click("button:has-text('Show')")
    row = page.locator("tr", has_text="broken.example.test")
    assert "_edge-challenge" in row.inner_text()
    row.locator("a").click()
    assert page.inner_text("#status") == "Waiting for DNS"
    assert "txt_missing" in page.content()
    axe.check(page, "2-failing-domain")
    page.screenshot(path=str(tmp_path / "2-failing-domain.png"), full_page=True)

    pebble.set_txt("_edge-challenge.broken.example.test", domain["token"])
    page.click("button:has-text('Re-check now')")
    page.wait_for_selector("text=DNS re-checked.")
    assert page.inner_text("#status") == "DNS verified"
    assert "pending_dns -> verified\tadmin:alice" in page.inner_text("table.timeline")
    axe.check(page, "3-verified")
    page.screenshot(path=str(tmp_path / "3-verified.png"), full_page=True)
    assert services.domains.get("broken.example.test")["status"] == "verified"


def test_disable_a_short_link_and_its_redirect_stops(services: Services, page: Any,
                                                     admin_port: int, links_port: int,
                                                     tmp_path: Path) -> None:
    target = f"http://target.example.test:{admin_port}/healthz"
    services.links.create("go.example.test", target, "pub_1", slug="spring", code=302)
    short = f"http://go.example.test:{links_port}/spring"
    page.goto(short)
    assert page.url == target and '"ok"' in page.content()  # redirected (and now cached)

    page.goto(f"http://admin.example.test:{admin_port}/admin/links")
    row = page.locator("tr", has_text="go.example.test/spring")
    row.locator("button:has-text('Disable')").click()
    page.wait_for_selector("button:has-text('Enable')")
    assert "disabled" in page.locator("tr", has_text="go.example.test/spring").inner_text()
    axe.check(page, "4-link-disabled")
    page.screenshot(path=str(tmp_path / "4-link-disabled.png"), full_page=True)

    answer = page.goto(short)
    assert answer.status == 410 and page.url == short
    assert "This short link has been disabled." in page.content()
    page.screenshot(path=str(tmp_path / "5-redirect-stopped.png"), full_page=True)
    page.goto(f"http://admin.example.test:{admin_port}/admin/audit")
    assert "link disabled" in page.inner_text("table")


def test_a_link_page_charts_its_visits_and_referrers(services: Services, browser: Any,
                                                      page: Any, admin_port: int,
                                                      links_port: int, tmp_path: Path) -> None:
    """Issue 18: a visit from a browser (with a Referer) and one from headless Chromium (a bot
    by CrawlerDetect's list) show on the link's page: the chart's bar, the per-day table and
    the referrer hosts."""
    target = f"http://target.example.test:{admin_port}/healthz"
    services.links.create("go.example.test", target, "pub_1", slug="chart", code=302)
    short = f"http://go.example.test:{links_port}/chart"
    visitor = browser.new_context(user_agent=(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0 Safari/537.36"))
    try:
        tab = visitor.new_page()
        tab.goto(short, referer="https://news.example.org/some/post?id=1")
        assert tab.url == target
    finally:
        visitor.close()
    page.goto(short)  # headless Chromium says so in its User-Agent: a bot
    services.resolver.flush_visits()

    page.goto(f"http://admin.example.test:{admin_port}/admin/links")
    page.click("a:has-text('go.example.test/chart')")
    page.wait_for_selector("h1:has-text('go.example.test/chart')")
    shows_a_visit_and_a_bot_today(page, "news.example.org")
    page.click("a:has-text('90 days')")
    page.wait_for_selector("strong:has-text('90 days')")
    chart = page.locator("#visits-chart svg")
    assert chart.get_attribute("aria-label") == "Visits per day over the last 90 days (UTC)"
    assert chart.locator("rect[fill='#2c7fb8']").count() == 2  # today's bar and the legend
    axe.check(page, "6-link-stats")
    page.screenshot(path=str(tmp_path / "6-link-stats.png"), full_page=True)
