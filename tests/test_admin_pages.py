"""The admin dashboard through Flask's test client: access, CSRF, lockout, pages, actions."""
from __future__ import annotations

import dataclasses
import datetime
import re
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient

from admin.web import Admin
from admin_app import create_app
from control.wiring import Services
from kit.settings import Settings
from kit.web import provided
from admin.summary import FAILING_GRACE
from tests.conftest import FakeClock, ServicesWith

PASSWORD = "correct horse battery"


@pytest.fixture
def services(services_with: ServicesWith) -> Services:
    return services_with(admin_cookie_secure=False, admin_max_failures=3,
                         short_domains=["acme.link"])


@pytest.fixture
def app(services: Services) -> Flask:
    flask_app = create_app(services)
    provided(flask_app, Admin).users.create("alice", PASSWORD)
    return flask_app


def login(client: FlaskClient, username: str = "alice", password: str = PASSWORD,
          next_url: str = "") -> object:
    page = client.get("/admin/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    return client.post("/admin/login", data={"csrf_token": token.group(1), "next": next_url,
                                             "username": username, "password": password})


def csrf(client: FlaskClient, path: str = "/admin/") -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(True))
    assert found is not None
    return found.group(1)


def admin_rules(app: Flask) -> list[tuple[str, str]]:
    """(method, url) of every dashboard route, with sample arguments."""
    samples = {"hostname": "x.example.test", "domain": "acme.link", "slug": "s",
               "action": "disable", "filename": "admin.css"}
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("admin."):
            continue
        url = rule.rule
        for name in rule.arguments:
            url = url.replace(f"<{name}>", samples[name])
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, url, rule.endpoint))
    return [(m, u) for m, u, e in found
            if e not in ("admin.auth.login", "admin.auth.login_post", "admin.static")]


def test_every_route_refuses_anonymous_users(app: Flask) -> None:
    client = app.test_client()
    rules = admin_rules(app)
    assert len(rules) >= 14, rules
    for method, url in rules:
        answer = client.open(url, method=method)
        if method == "GET":
            assert answer.status_code == 302, url
            assert answer.headers["Location"].startswith("/admin/login?next="), url
        else:
            assert answer.status_code == 401, (method, url)
    assert client.get("/admin/login").status_code == 200


def test_every_state_changing_route_needs_the_csrf_token(app: Flask, services: Services) -> None:
    services.domains.connect("x.example.test", "pub_1")
    client = app.test_client()
    assert login(client).status_code == 303
    posts = [url for method, url in admin_rules(app) if method == "POST"]
    assert len(posts) >= 7
    for url in posts:
        assert client.post(url, data={}).status_code == 403, url
        assert client.post(url, data={"csrf_token": "wrong"}).status_code == 403, url
    assert services.domains.get("x.example.test")["status"] == "pending_dns"
    anonymous = app.test_client()
    anonymous.get("/admin/login")
    refused = anonymous.post("/admin/login", data={"username": "alice", "password": PASSWORD})
    assert refused.status_code == 403 and "edge_admin=" not in refused.headers.get(
        "Set-Cookie", "")


def test_login_lockout_per_username_and_address(app: Flask) -> None:
    client = app.test_client()
    for _ in range(3):
        assert login(client, password="wrong password!").status_code == 401
    locked = login(client)
    assert locked.status_code == 429
    assert "Too many failed logins. Try again in 15 minutes." in locked.get_data(True)
    # Someone elsewhere cannot lock the admin out: the real admin still signs in.
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "10.0.0.9"
    assert login(other).status_code == 303
    provided(app, Admin).users.create("bob", PASSWORD + "!")
    assert login(client, "bob", PASSWORD + "!").status_code == 303
    audit = provided(app, Admin).audit
    actions = [a["action"] for a in audit.day(audit.today()).items]
    assert actions.count("login failed") == 3 and "login refused (locked)" in actions


def test_session_cookie_flags_fixation_and_logout(services: Services) -> None:
    app = create_app(dataclasses.replace(services, settings=dataclasses.replace(
        services.settings, admin_cookie_secure=True)))
    provided(app, Admin).users.create("alice", PASSWORD)
    client = app.test_client()
    answer = login(client)
    cookie = [c for c in answer.headers.getlist("Set-Cookie") if c.startswith("edge_admin=")][0]
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/admin"):
        assert flag in cookie
    first = cookie.split(";")[0].split("=", 1)[1]
    again = login(client)
    second = [c for c in again.headers.getlist("Set-Cookie") if c.startswith("edge_admin=")][0]
    assert second.split(";")[0].split("=", 1)[1] != first, "a new session at every login"
    assert provided(app, Admin).sessions.get(first) is None, "the old one ended"
    stored = provided(app, Admin).users.table.get("alice")
    assert stored is not None and stored["password_hash"].startswith(
        services.settings.admin_password_hash + "$"), "hashed at the setting's cost"


def test_logout_is_post_only_and_ends_the_session(app: Flask) -> None:
    client = app.test_client()
    login(client)
    assert client.get("/admin/logout").status_code == 405
    token = csrf(client)
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/admin/").status_code == 302


def test_next_parameter_is_never_an_open_redirect(app: Flask) -> None:
    for evil in ("https://evil.test/", "//evil.test/admin/", "/\\evil.test", "/elsewhere",
                 "///admin/x", "////admin/x"):
        answer = login(app.test_client(), next_url=evil)
        assert answer.headers["Location"] == "/admin/", evil
    assert login(app.test_client(), next_url="/admin/domains?status=active").headers[
        "Location"] == "/admin/domains?status=active"


def test_pages_render_escaped_with_security_headers(app: Flask, services: Services) -> None:
    services.domains.connect("x.example.test", "<script>alert(1)</script>")
    services.links.create("acme.link", "https://example.com/<b>", "pub_1", slug="spring")
    client = app.test_client()
    login(client)
    for path in ("/admin/", "/admin/domains", "/admin/domains?status=pending_dns",
                 "/admin/domains?q=x.example.test", "/admin/domains/x.example.test",
                 "/admin/certificates", "/admin/nodes", "/admin/links", "/admin/audit",
                 "/admin/domains/x.example.test/remove", "/admin/links/acme.link/spring",
                 "/admin/links/acme.link/spring?days=90"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert "<script>alert" not in answer.get_data(True), path
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["X-Frame-Options"] == "DENY"
    listed = client.get("/admin/domains?q=<script>alert(1)</script>").get_data(True)
    assert "x.example.test" in listed and "&lt;script&gt;" in listed
    assert client.get("/admin/domains/nope.example.test").status_code == 404
    assert "<svg" in client.get("/admin/").get_data(True)


def _self_signed(hostname: str, days: int = 5) -> tuple[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(0xABCDEF)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def test_certificate_shown_without_its_key_and_counted_as_expiring(
        app: Flask, services: Services) -> None:
    services.domains.connect("cert.example.test", "pub_1")
    chain, key = _self_signed("cert.example.test")
    services.certificates.save(["cert.example.test"], chain, key)
    client = app.test_client()
    login(client)
    page = client.get("/admin/domains/cert.example.test").get_data(True)
    assert "abcdef" in page and "ec256" in page and "CN=cert.example.test" in page
    listed = client.get("/admin/certificates").get_data(True)
    assert "cert.example.test" in listed and "ec256" in listed
    overview = client.get("/admin/").get_data(True)
    assert "<b>1</b> certificate expires within 7 days" in overview
    for body in (page, listed, overview):
        assert "PRIVATE KEY" not in body and "key_enc" not in body


def test_actions_change_the_domain_and_are_audited(app: Flask, services: Services) -> None:
    services.domains.connect("x.example.test", "pub_1")
    client = app.test_client()
    login(client)
    token = csrf(client)
    base = "/admin/domains/x.example.test"
    assert client.post(f"{base}/suspend", data={"csrf_token": token}).status_code == 303
    held = services.domains.get("x.example.test")
    assert held["status"] == "suspended" and held["held"]
    assert client.post(f"{base}/resume", data={"csrf_token": token}).status_code == 303
    assert services.domains.get("x.example.test")["status"] == "pending_dns"
    page = client.get(base).get_data(True)
    assert "Renew now" not in page and "Suspend" in page, "only the actions that apply"
    refused = client.post(f"{base}/renew", data={"csrf_token": token})
    assert refused.status_code == 409 and "only an active domain" in refused.get_data(True)
    wrong = client.post(f"{base}/remove", data={"csrf_token": token, "confirm": "other"})
    assert wrong.status_code == 400 and services.domains.get("x.example.test")
    assert client.post(f"{base}/remove", data={"csrf_token": token,
                                               "confirm": "x.example.test"}).status_code == 303
    assert services.domains.find("x.example.test") is None
    page = client.get("/admin/audit").get_data(True)
    for action in ("login", "domain suspend", "domain resume", "domain renew failed",
                   "domain remove"):
        assert f"<td>{action}</td>" in page, action
    assert "<td>alice</td>" in page


def test_disabling_a_link_stops_its_redirect(app: Flask, services: Services) -> None:
    services.links.create("acme.link", "https://example.com/a", "pub_1", slug="spring")
    assert services.resolver.resolve("acme.link", "spring").status == 302  # now cached
    client = app.test_client()
    login(client)
    token = csrf(client, "/admin/links")
    assert client.post("/admin/links/acme.link/spring/disable",
                       data={"csrf_token": token}).status_code == 303
    assert services.resolver.resolve("acme.link", "spring").status == 410
    assert "Enable" in client.get("/admin/links").get_data(True)
    client.post("/admin/links/acme.link/spring/enable", data={"csrf_token": token})
    assert services.resolver.resolve("acme.link", "spring").status == 302


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"])
def test_domain_pages_follow_cursors_on_both_backends(
        backend: str, settings: Settings, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if backend == "dynamodb":
        settings = dataclasses.replace(
            settings, storage_backend="dynamodb",
            dynamodb_endpoint_url=request.getfixturevalue("dynalite"),
            dynamodb_table_prefix=f"p{uuid.uuid4().hex[:8]}_")
    services = Services.from_settings(dataclasses.replace(settings, admin_cookie_secure=False))
    try:
        monkeypatch.setattr("admin.domains_views.PAGE", 2)
        for n in range(5):
            services.domains.connect(f"d{n}.example.test", f"pub_{n % 2}")
        app = create_app(services)
        provided(app, Admin).users.create("alice", PASSWORD)
        client = app.test_client()
        login(client)
        for query in ("status=pending_dns", "status="):
            seen, url = [], f"/admin/domains?{query}"
            while url:
                page = client.get(url).get_data(True)
                seen += re.findall(r"class=\"host\">(d\d\.example\.test)<", page)
                found = re.search(r'href="([^"]+)">Next page', page)
                url = found.group(1).replace("&amp;", "&") if found else ""
            assert sorted(seen) == [f"d{n}.example.test" for n in range(5)], query
        by_publication = client.get("/admin/domains?q=pub_1").get_data(True)
        assert re.findall(r"class=\"host\">(d\d\.example\.test)<", by_publication) == [
            "d1.example.test", "d3.example.test"]
        assert client.get("/admin/domains?cursor=%7Bbad").status_code in (200, 400)
        assert client.get("/admin/").status_code == 200
    finally:
        services.close()


def test_a_link_page_shows_its_visits_per_day_and_referrers(app: Flask,
                                                             services: Services) -> None:
    """Issue 18: visits of both paths (the Python path's, with bots apart and referrer hosts,
    and the edge's reported counts) on the link's page: chart, referrers, CSV."""
    services.links.create("acme.link", "https://example.com/a", "pub_1", slug="read",
                          rules={"utm": {"utm_source": "<i>x</i>"}})
    browser = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Version/17.0 Safari/604.1"
    for agent, referrer in ((browser, "https://t.co/x"), (browser, "https://t.co/y"),
                            (browser, ""), ("Googlebot/2.1 (+http://www.google.com/bot.html)",
                                            "https://t.co/z")):
        assert services.resolver.resolve("acme.link", "read", agent, referrer).status == 302
    services.resolver.resolve("acme.link", "read", browser, head=True)
    services.resolver.flush_visits()
    assert services.links.add_visits({"acme.link/read": 4}) == 4  # an edge report
    client = app.test_client()
    login(client)
    page = client.get("/admin/links/acme.link/read").get_data(True)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert '<dd id="visits">7</dd>' in page and '<dd id="bots">2</dd>' in page
    assert f"<title>{today[5:]}: 7 visits</title>" in page
    assert f"<title>{today[5:]}: 2 bots and HEAD</title>" in page
    assert "<td>t.co</td><td>2</td>" in page and "&lt;i&gt;x&lt;/i&gt;" in page
    assert page.count("<rect") == 2 + 2  # one day with bars (two series) and the legend's two
    assert "?days=90" in page and "stats.csv?days=30" in page
    csv = client.get("/admin/links/acme.link/read/stats.csv?days=7")
    assert csv.mimetype == "text/csv"
    rows = csv.get_data(True).splitlines()
    assert rows[0] == "date,visits,bots" and len(rows) == 8 and rows[-1] == f"{today},7,2"
    assert client.get("/admin/links/acme.link/nope").status_code == 404


def signed_in_client(services: Services) -> FlaskClient:
    app = create_app(services)
    provided(app, Admin).users.create("alice", PASSWORD)
    client = app.test_client()
    login(client)
    return client


def failing_figure(page: str) -> int:
    found = re.search(r"<b>(\d+)</b> failing", page)
    assert found is not None
    return int(found.group(1))


def test_a_domain_counts_as_failing_only_after_the_grace(services_with: ServicesWith,
                                                         clock: FakeClock) -> None:
    """Issue 28: a domain connected 20 s ago, whose first DNS check failed as expected (the
    publisher has not created its records yet), is not "failing" on the overview."""
    services = services_with(admin_cookie_secure=False, clock=clock)
    client = signed_in_client(services)
    domain, _ = services.domains.connect("fresh.example.test", "pub_1")
    services.domains.defer(domain, [{"code": "txt_missing", "message": "no TXT record yet"}])
    clock.advance(20)
    page = client.get("/admin/").get_data(True)
    assert failing_figure(page) == 0 and "fresh.example.test" not in page
    clock.advance(FAILING_GRACE)  # past the grace (and the figures' 30 s cache)
    page = client.get("/admin/").get_data(True)
    assert failing_figure(page) == 1
    assert re.search(r'class="host">fresh\.example\.test</span></a></td>\s*<td>Waiting for DNS'
                     r"</td>", page), "listed among the failing, in plain words"


def test_plain_words_and_plurals(app: Flask, services: Services) -> None:
    services.domains.connect("words.example.test", "pub_1")
    services.links.create("acme.link", "https://example.com/a", "pub_1", slug="one")
    client = app.test_client()
    login(client)
    overview = client.get("/admin/").get_data(True)
    assert "<b>1</b> Waiting for DNS" in overview and ">pending_dns<" not in overview
    assert "<p>1 link, 0 disabled, 0 visits counted.</p>" in overview
    listed = client.get("/admin/domains").get_data(True)
    assert '<option value="pending_dns" >Waiting for DNS</option>' in listed
    assert '<td class="status-pending_dns">Waiting for DNS</td>' in listed
    page = client.get("/admin/domains/words.example.test").get_data(True)
    assert '<dd id="status" class="status-pending_dns">Waiting for DNS</dd>' in page


def test_each_error_is_shown_once_on_the_domain_page(app: Flask, services: Services) -> None:
    domain, _ = services.domains.connect("errors.example.test", "pub_1")
    missing = "No TXT record at _edge-challenge.errors.example.test: create the one above"
    stray = "A stray AAAA record sends visitors elsewhere: remove it"
    services.domains.defer(domain, [
        {"code": "txt_missing", "message": missing},
        {"code": "stray_aaaa", "message": stray,
         "record": {"type": "AAAA", "name": "errors.example.test", "value": "2001:db8::1"}}],
        dns_seen={"127.0.0.1": {"TXT _edge-challenge.errors.example.test": []}})
    client = app.test_client()
    login(client)
    page = client.get("/admin/domains/errors.example.test").get_data(True)
    before_timeline = page.split("<h2>Timeline</h2>")[0]  # the timeline is the history
    assert before_timeline.count(missing) == 1 and before_timeline.count(stray) == 1
    assert "its DNS check (problems below)" in page
    # A failure elsewhere (an issuance) is the latest error itself.
    services.domains.defer(services.domains.get("errors.example.test"),
                           [{"code": "issue_failed", "message": "the CA said no"}])
    page = client.get("/admin/domains/errors.example.test").get_data(True)
    assert page.split("<h2>Timeline</h2>")[0].count("the CA said no") == 1


def test_the_expiry_chart_shows_certificates_beyond_eleven_weeks(app: Flask,
                                                                  services: Services) -> None:
    """A fresh 90-day certificate expires in week 12, a one-year one later: both are charted."""
    for hostname, days in (("ninety.example.test", 88), ("year.example.test", 365)):
        services.domains.connect(hostname, "pub_1")
        chain, key = _self_signed(hostname, days)
        services.certificates.save([hostname], chain, key)
    client = app.test_client()
    login(client)
    chart = client.get("/admin/").get_data(True)
    assert "<title>+12w: 1 later</title>" in chart
    assert "<title>later: 1 later</title>" in chart


def test_a_wrong_password_keeps_the_username(app: Flask) -> None:
    answer = login(app.test_client(), "alice", "not the password")
    page = answer.get_data(True)  # type: ignore[attr-defined]
    assert answer.status_code == 401  # type: ignore[attr-defined]
    assert 'name="username" autocomplete="username" required value="alice"' in page
    assert "not the password" not in page


def _luminance(colour: str) -> float:
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_muted_text_has_enough_contrast(app: Flask) -> None:
    css = app.test_client().get("/admin/static/admin.css").get_data(True)
    muted = re.search(r"\.muted \{ color: (#[0-9a-f]{6}); \}", css)
    backgrounds = re.findall(r"background: (#[0-9a-f]{6})", css)
    assert muted is not None and backgrounds
    for background in backgrounds:  # the page's and every card's and table's
        light, dark = sorted((_luminance(muted.group(1)), _luminance(background)), reverse=True)
        assert (light + 0.05) / (dark + 0.05) >= 4.5 or background == "#1f2d3d", background


def test_the_removal_prompt_of_a_domain_that_never_went_live(app: Flask,
                                                               services: Services) -> None:
    services.domains.connect("never.example.test", "pub_1")
    services.domains.connect("served.example.test", "pub_1")
    chain, key = _self_signed("served.example.test")
    services.certificates.save(["served.example.test"], chain, key)
    client = app.test_client()
    login(client)
    never = client.get("/admin/domains/never.example.test/remove").get_data(True)
    assert "never went live" in never and "certificate" not in never.split("<h1>")[1]
    served = client.get("/admin/domains/served.example.test/remove").get_data(True)
    assert "its certificate is discarded" in served and "never went live" not in served
