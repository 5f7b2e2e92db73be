"""Property-based: the normalizer never crashes and is idempotent; the API never answers 5xx
(a 429 only when a publication has as many unproven claims as `max_pending_domains` allows)."""
from __future__ import annotations

from typing import Iterator

import re

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from admin_app import create_app
from control.wiring import Services
from domains.errors import InvalidHostname
from dnsops.hostnames import FULL_STOPS, normalize_hostname, unicode_form
from kit.settings import Settings
from kit.web import provided

pytestmark = pytest.mark.slow

AUTH = {"Authorization": "Bearer test-token-0123456789"}
LABEL = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True)
HOSTLIKE = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(LABEL, st.text(min_size=1, max_size=70)), min_size=1, max_size=6)
    .map(".".join),
    st.lists(LABEL, min_size=2, max_size=5).map(lambda labels: ".".join(labels) + "."),
)


@given(HOSTLIKE)
@hsettings(max_examples=400, deadline=None)
def test_normalizer_accepts_or_explains_and_is_idempotent(raw: str) -> None:
    try:
        name = normalize_hostname(raw, ["platform.test"])
    except InvalidHostname as exc:
        assert exc.reason and not IDNA_WORDS.search(exc.reason), exc.reason
        return
    assert name == name.lower() and not name.endswith(".") and len(name) <= 253
    assert normalize_hostname(name, ["platform.test"]) == name
    assert not (name == "platform.test" or name.endswith(".platform.test"))


IDNA_WORDS = re.compile(r"Codepoint|codepoint|Empty Label|at position|Label must|Label has|"
                        r"Label too|Label begins|IDNA")
"""The idna library's own phrases: a publisher reads our sentences, never these."""
UNICODE_LABEL = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Lo", "Nd")),
                        min_size=1, max_size=12)
UNICODE_FULL_STOPS = st.sampled_from(FULL_STOPS)


@given(st.lists(LABEL, min_size=2, max_size=4).map(".".join),
       st.sampled_from(["https://", "http://", "HTTPS://", "https://user@", ""]),
       st.sampled_from(["", ":8443", "/", "/path?x=1#top", "?q", "#frag"]),
       st.sampled_from(["", " ", "\t", "\u3000"]), UNICODE_FULL_STOPS | st.just(""))
@hsettings(max_examples=300, deadline=None)
def test_a_pasted_url_or_a_trailing_full_stop_is_trimmed_to_the_hostname(
        name: str, scheme: str, tail: str, space: str, stop: str) -> None:
    try:
        bare = normalize_hostname(name)
    except InvalidHostname:
        return  # e.g. a public suffix: the same refusal however it is pasted
    if not scheme and "@" in tail:
        return
    pasted = f"{space}{scheme}{name}{stop if not tail else ''}{tail}{space}"
    if scheme or tail:
        pasted = f"{space}{scheme}{name}{tail}{space}"
    assert normalize_hostname(pasted) == bare, pasted
    assert normalize_hostname(f"{space}{name}{stop}{space}") == bare


@given(st.lists(st.one_of(LABEL, UNICODE_LABEL), min_size=2, max_size=4).map(".".join))
@hsettings(max_examples=300, deadline=None)
def test_a_unicode_name_reads_as_typed_and_normalizes_back(typed: str) -> None:
    try:
        name = normalize_hostname(typed)
    except InvalidHostname as exc:
        assert not IDNA_WORDS.search(exc.reason), exc.reason
        return
    shown = unicode_form(name)
    assert normalize_hostname(shown) == name
    assert ("xn--" in name) == (shown != name)


@pytest.mark.parametrize("typed, expected", [
    ("https://Blog.Example.com/path?x", "blog.example.com"),
    ("  blog.example.com.  ", "blog.example.com"),
    ("blog.example.com\u3002", "blog.example.com"),
    ("blog.example.com\uff0e", "blog.example.com"),
    ("blog.example.com\uff61", "blog.example.com"),
    ("blog\u3002example\uff0ecom", "blog.example.com"),
    ("blog.example.com:8443/admin", "blog.example.com"),
    ("https://user:secret@B\u00fccher.example.com:443/x", "xn--bcher-kva.example.com"),
])
def test_what_people_paste_is_trimmed(typed: str, expected: str) -> None:
    assert normalize_hostname(typed) == expected


@pytest.mark.parametrize("typed, says", [
    ("news..example.com", "empty label"),
    ("news_1.example.com", "'_' is not allowed in a hostname"),
    ("-news.example.com", "starts or ends with a hyphen"),
    ("ab--cd.example.com", "third and fourth places"),
    ("x" * 64 + ".example.com", "at most 63 characters"),
    ("a\u200db.example.com", "U+200D"),
    ("blog example.com", "no spaces"),
    ("alice@example.com", "not an email address"),
    ("https:///path", "has no hostname"),
])
def test_refusals_are_our_own_sentences(typed: str, says: str) -> None:
    with pytest.raises(InvalidHostname) as refused:
        normalize_hostname(typed)
    assert says in refused.value.reason and not IDNA_WORDS.search(refused.value.reason)


def test_unicode_names_are_shown_as_typed() -> None:
    assert unicode_form("xn--bcher-kva.example.com") == "b\u00fccher.example.com"
    assert unicode_form("blog.example.com") == "blog.example.com"
    assert unicode_form("xn--zz.example.com") == "xn--zz.example.com"  # not decodable: as is


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    from cryptography.fernet import Fernet

    from kit.settings import load_settings
    built: Settings = load_settings(
        env={}, api_token="test-token-0123456789", edge_token="edge-token-0123456789",
        encryption_keys=Fernet.generate_key().decode(),
        data_dir=str(tmp_path_factory.mktemp("prop")), platform_domains=["platform.test"])
    services = Services.from_settings(built)
    yield create_app(services).test_client()
    services.close()


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=80),
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=8)


@given(hostname=st.one_of(HOSTLIKE, JSONISH), publication=st.one_of(st.text(max_size=40), JSONISH))
@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_answers_4xx_or_success_never_5xx(client: FlaskClient, hostname: object,
                                              publication: object) -> None:
    created = client.post("/api/v1/domains", headers=AUTH,
                          json={"hostname": hostname, "publication_id": publication})
    assert created.status_code in (200, 201, 400, 409, 429), created.get_data()
    if created.status_code == 429:  # only the cap on unproven claims, and only once reached
        services = provided(client.application, Services)
        limit = services.settings.max_pending_domains
        assert isinstance(publication, str) and limit > 0, created.get_data()
        pending = [d for d in services.domains.list_for(publication, limit=limit + 100).items
                   if d["status"] == "pending_dns"]
        assert len(pending) >= limit, created.get_data()
        assert "waiting for their DNS records" in created.get_json()["error"]
    if isinstance(hostname, str):
        for method, path in (("get", f"/api/v1/domains/{hostname}"),
                             ("delete", f"/api/v1/domains/{hostname}")):
            answer = getattr(client, method)(path.replace("#", "%23").replace("?", "%3F"),
                                             headers=AUTH)
            assert answer.status_code < 500, (method, path, answer.get_data())
