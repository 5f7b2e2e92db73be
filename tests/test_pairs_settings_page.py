"""The www/apex pair on the publisher settings page, in real Chromium: connected with one form,
listed as one, both names' records on the domain's page, removed together."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest

from admin_app import create_app
from control.wiring import Services
from domains.service import ACTIVE
from kit.settings import Settings
from tests.conftest import SSO_COOKIE_KEY, SSO_PLATFORM, serving

pytestmark = pytest.mark.slow


@pytest.fixture
def site(sso_settings: Settings) -> Iterator[tuple[Services, str]]:
    services = Services.from_settings(sso_settings)
    try:
        with serving(create_app(services)) as url:
            yield services, f"http://{SSO_PLATFORM}:{url.rpartition(':')[2]}"
    finally:
        services.close()


def signed_in(browser: Any, base: str) -> Any:
    token = jwt.encode({"sub": "pat", "publications": ["pub_1"], "exp": int(time.time()) + 600},
                       SSO_COOKIE_KEY, algorithm="HS256")
    context = browser.new_context()
    context.add_cookies([{"name": "platform_session", "value": token, "url": base}])
    return context


def test_a_pair_is_connected_shown_and_removed_as_one(site: tuple[Services, str], browser: Any,
                                                      tmp_path: Path) -> None:
    services, base = site
    context = signed_in(browser, base)
    page = context.new_page()
    page.goto(f"{base}/_edge/settings/domains")
    page.fill("#hostname", "www.duo.test")
    assert page.is_checked("input[name=with_www][value=redirect]"), "redirect is the default"
    page.click("button:has-text('Connect')")
    page.wait_for_url(f"{base}/_edge/settings/domains/www.duo.test")
    page.screenshot(path=str(tmp_path / "pair.png"), full_page=True)
    assert page.inner_text("#pair-heading") == "Also duo.test"
    assert "www.duo.test redirects visitors to duo.test" not in page.inner_text("#pair")
    pair_records = [row.query_selector_all("code")[0].inner_text()
                    for row in page.query_selector_all("#pair tbody tr")]
    assert pair_records == ["duo.test", "_edge-challenge.duo.test"]
    own = [row.query_selector_all("code")[0].inner_text() for row in
           page.query_selector_all("section[aria-labelledby=records-heading] tbody tr")]
    assert own == ["www.duo.test", "_edge-challenge.www.duo.test"]
    assert services.domains.get("duo.test")["redirect_to"] == "www.duo.test"
    assert "duo.test redirects visitors to www.duo.test" in page.inner_text("#pair")

    # The list shows one row for the two names.
    page.goto(f"{base}/_edge/settings/domains")
    rows = page.query_selector_all("section[aria-labelledby=pub-1] tbody tr")
    assert len(rows) == 1
    assert "www.duo.test" in rows[0].inner_text() and "duo.test (redirects here)" in \
        rows[0].inner_text()

    # A name that is not an apex or its www connects alone: the choice is not even asked.
    page.fill("#hostname", "blog.duo2.test")
    assert not page.is_visible("#with-www")
    page.click("button:has-text('Connect')")
    page.wait_for_url(f"{base}/_edge/settings/domains/blog.duo2.test")
    assert page.query_selector("#pair") is None

    # Removing one removes both.
    page.goto(f"{base}/_edge/settings/domains/duo.test")
    page.click("text=Remove duo.test and www.duo.test")
    page.click("button:has-text('Remove duo.test and www.duo.test')")
    page.wait_for_url(f"{base}/_edge/settings/domains?removed=duo.test")
    assert "www.duo.test" not in page.inner_text("main")
    for name in ("duo.test", "www.duo.test"):
        assert services.domains.find(name) is None

    # A domain another one redirects to is not removed from under it.
    main, _ = services.domains.connect("main.trio.test", "pub_1")
    services.domains.transition(main, ACTIVE, "set up for this test")
    services.domains.connect("old.trio.test", "pub_1", extra={"redirect_to": "main.trio.test"})
    page.goto(f"{base}/_edge/settings/domains/main.trio.test/remove")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("button:has-text('Remove main.trio.test')")
    assert answer.value.status == 409
    assert "old.trio.test redirect(s) to main.trio.test" in page.inner_text("body")
    assert services.domains.find("main.trio.test") is not None
    context.close()
