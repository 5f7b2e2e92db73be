"""A publisher's whole journey in real Chromium through real HAProxy, in the demo set-up: sign in
on the platform, connect a domain on the settings page, create the records it shows, watch it
become active without reloading, open it over HTTPS."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from devtools.demo import PLATFORM_HOST, LocalStack
from devtools.pebble import PebbleStack

pytestmark = pytest.mark.slow

NEWS = "news.example.test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleStack) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path_factory.mktemp("journey"), pebble=pebble, sso=True)
    try:
        local.wait_served(PLATFORM_HOST)
        yield local
    finally:
        local.stop()


def sign_in(page: Any, platform: str, user: str, publications: str) -> None:
    page.goto(f"{platform}/home")
    page.click("text=Publication settings")
    page.wait_for_url(f"{platform}/login?*")  # the settings page asked the platform who we are
    page.fill("#user", user)
    page.fill("#publications", publications)
    page.click("button[type=submit]")
    page.wait_for_url(f"{platform}/_edge/settings/domains")


def test_a_publisher_connects_a_domain_and_sees_it_go_live(stack: LocalStack, browser: Any,
                                                           tmp_path: Path) -> None:
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    sign_in(page, stack.platform_url, "nora", "pub_news")
    page.fill("#hostname", "not a domain")
    page.click("button:has-text('Connect')")
    assert page.get_attribute("#hostname", "aria-invalid") == "true"
    assert page.inner_text("#hostname-error")
    page.fill("#hostname", NEWS)
    page.select_option("#publication", "pub_news")
    page.click("button:has-text('Connect')")
    page.wait_for_url(f"{stack.platform_url}/_edge/settings/domains/{NEWS}")
    page.screenshot(path=str(tmp_path / "records.png"), full_page=True)
    records = [{"type": row.query_selector_all("td")[0].inner_text(),
                "name": row.query_selector_all("code")[0].inner_text(),
                "value": row.query_selector_all("code")[1].inner_text()}
               for row in page.query_selector_all("section[aria-labelledby=records-heading] tbody tr")]
    assert {r["type"] for r in records} == {"CNAME", "TXT"}
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    stack.create_records(records)  # what the publisher does at their DNS host
    page.wait_for_selector("#status.status-active", timeout=60_000)
    assert page.inner_text("#status") == "Live"
    assert navigations == []  # followed live, without a reload
    assert page.is_visible("#active-note") and page.inner_text("#cert-expiry")
    page.screenshot(path=str(tmp_path / "active.png"), full_page=True)
    page.click("#site-link")
    page.wait_for_url(f"https://{NEWS}:{stack.edge_https_port}/")
    seen = json.loads(page.inner_text("body"))
    assert (seen["host"].split(":")[0], seen["publication_id"]) == (NEWS, "pub_news")
    context.close()

    # Another publication's publisher sees nothing of it.
    other = browser.new_context(ignore_https_errors=True)
    page = other.new_page()
    sign_in(page, stack.platform_url, "mallory", "pub_other")
    assert NEWS not in page.content()
    response = page.goto(f"{stack.platform_url}/_edge/settings/domains/{NEWS}")
    assert response.status == 404
    other.close()
