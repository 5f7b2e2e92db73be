"""Short links on SQLite and on DynamoDB (dynalite): rules, redirects, caching, visit counts."""
from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from hypothesis import given, settings as hsettings, strategies as st
from werkzeug.test import Client

from kit.procs import ManagedProcess, start_listening
from shortlinks.app import make_app
from shortlinks.links import LINK_CHANGES, LINKS, InvalidLink, LinkService, SlugTaken
from shortlinks.resolver import Resolver
from store import Backend, Table
from store.dynamo import DynamoBackend
from store.sqlite import SqliteBackend
from tests.conftest import dynalite_command

DOMAINS = ["acme.link", "go.example.test"]


@pytest.fixture
def table(backend: Backend) -> Table:
    return backend.table(LINKS)


@pytest.fixture
def links(table: Table) -> LinkService:
    return LinkService(table, DOMAINS)


def redirect(table: Table, host: str, slug: str, resolver: Resolver | None = None) -> object:
    return Client(make_app(resolver or Resolver(table))).get(f"/{slug}", headers={"Host": host})


def test_random_and_custom_slugs_never_overwrite(links: LinkService) -> None:
    first = links.create("acme.link", "https://blog.example.com/a", owner="pub_1")
    assert len(first["slug"]) == 7 and first["code"] == 302
    links.create("acme.link", "https://example.com/x", owner="pub_1", slug="launch")
    with pytest.raises(SlugTaken):
        links.create("acme.link", "https://evil.example/", owner="pub_2", slug="launch")
    assert links.get("acme.link", "launch")["target"] == "https://example.com/x"
    assert links.create("go.example.test", "https://e.com/", owner="pub_2", slug="launch")
    assert [l["slug"] for l in links.list_for("pub_1").items] == sorted([first["slug"], "launch"])


@pytest.mark.parametrize("target,reason", [
    ("javascript:alert(1)", "only http"), ("data:text/html,x", "only http"),
    ("ftp://example.com/", "only http"), ("https://user:pw@example.com/", "credentials"),
    ("https:///path", "needs a host"), ("https://acme.link/loop", "loop"),
    ("https://example.com/" + "a" * 2048, "longer"), ("https://exa mple.com/", "spaces"),
    ("", "required"), (None, "required"), ("https://example.com:99999/", "not a valid URL"),
    # Loops however a browser would spell them: a backslash ends the host, %2E is a dot, and
    # the Kelvin sign folds to "k".
    ("https://acme.link\\x7Kq", "backslashes"), ("https://acme%2Elink/x", "percent-encoded"),
    ("https://ACME.LINK./x", "loop"), ("https://acme.lin\u212a/x", "loop"),
    # Battery finding 6: the ideographic, full-width and half-width full stops are dots too.
    ("https://acme.link\u3002/x", "loop"), ("https://acme.link\uff0e/x", "loop"),
    ("https://acme.link\uff61/x", "loop"), ("https://acme\u3002link\uff61", "loop"),
    # Battery finding 2: no line or paragraph separator, no C1 control, in any part.
    ("https://example.org/a\u2028b", "U+2028"), ("https://example.org/?q=\u2029", "U+2028"),
    ("https://example.org/#\x85", "control"), ("https://example.org/\x7f", "control")])
def test_bad_targets_are_refused_with_a_reason(links: LinkService, target: object,
                                               reason: str) -> None:
    with pytest.raises(InvalidLink) as caught:
        links.create("acme.link", target, owner="pub_1")
    assert reason in str(caught.value)


@pytest.mark.parametrize("slug", ["api", "healthz", "-dash", "a/b", "x" * 65, "", "é"])
def test_bad_or_reserved_slugs_are_refused(links: LinkService, slug: str) -> None:
    with pytest.raises(InvalidLink):
        links.create("acme.link", "https://example.com/", owner="pub_1", slug=slug)


def test_redirects_carry_fitting_cache_headers(links: LinkService, table: Table) -> None:
    links.create("acme.link", "https://example.com/p", owner="p", slug="temp")
    links.create("acme.link", "https://example.com/q", owner="p", slug="perm", code=301)
    temp = redirect(table, "ACME.link:443", "temp")
    assert temp.status_code == 302 and temp.headers["Location"] == "https://example.com/p"
    assert temp.headers["Cache-Control"] == "private, no-store"
    assert temp.headers["X-Robots-Tag"] == "noindex"
    perm = redirect(table, "acme.link", "perm")
    assert perm.status_code == 301 and perm.headers["Cache-Control"] == "public, max-age=86400"
    # A cache replays a 301/308 unasked: a limited link's never, an expiring one's no longer
    # than it lives (else visits past its limit or its end would be answered, uncounted).
    links.create("acme.link", "https://example.com/l", owner="p", slug="limited", code=308,
                 max_visits=10)
    links.create("acme.link", "https://example.com/b", owner="p", slug="brief", code=301,
                 valid_until=time.time() + 600)
    assert redirect(table, "acme.link", "limited").headers["Cache-Control"] == \
        "private, no-store"
    brief = redirect(table, "acme.link", "brief").headers["Cache-Control"]
    assert brief.startswith("public, max-age=") and 590 <= int(brief.split("=")[1]) <= 600
    assert redirect(table, "acme.link", "missing").status_code == 404
    assert redirect(table, "other.test", "temp").status_code == 404
    assert redirect(table, "acme.link", "../etc").status_code == 404


def test_disabled_expired_and_exhausted_links_are_gone(links: LinkService, table: Table) -> None:
    links.create("acme.link", "https://example.com/", owner="p", slug="off")
    links.update("acme.link", "off", {"disabled": True})
    links.create("acme.link", "https://example.com/", owner="p", slug="old",
                 valid_until=time.time() - 1)
    links.create("acme.link", "https://example.com/", owner="p", slug="twice", max_visits=2)
    resolver = Resolver(table)
    for slug in ("off", "old"):
        gone = redirect(table, "acme.link", slug, resolver)
        assert gone.status_code == 410 and b"<p>" in gone.data
    assert [redirect(table, "acme.link", "twice", resolver).status_code for _ in range(3)] == \
        [302, 302, 410]


def test_a_visit_limit_holds_across_processes_and_cached_entries(links: LinkService,
                                                                 table: Table) -> None:
    links.create("acme.link", "https://example.com/", owner="p", slug="three", max_visits=3)
    processes = [Resolver(table), Resolver(table)]  # each caches the item with 0 visits
    answers = []
    for turn in range(8):
        resolver = processes[turn % 2]
        answers.append(resolver.resolve("acme.link", "three").status)
        resolver.flush_visits()
    assert answers.count(302) == 3 and answers[3:] == [410] * 5


def test_visits_are_buffered_then_added_atomically(links: LinkService, table: Table) -> None:
    links.create("acme.link", "https://example.com/", owner="p", slug="viral")
    resolver = Resolver(table)
    for _ in range(25):
        assert resolver.resolve("acme.link", "viral").status == 302
    assert links.get("acme.link", "viral").get("visits") is None, "nothing written per click"
    assert resolver.flush_visits() == 25
    assert links.get("acme.link", "viral")["visits"] == 25
    other = Resolver(table)
    other.resolve("acme.link", "viral")
    other.flush_visits()
    assert links.get("acme.link", "viral")["visits"] == 26


def test_cached_links_keep_redirecting_when_dynamodb_is_down(tmp_path: Path) -> None:
    dynalite, port = start_listening(lambda port: ManagedProcess(
        "dynalite", dynalite_command(port, tmp_path / "db"), tmp_path / "dynalite.log"))
    try:
        # Fail fast once it is down: one attempt, short timeouts.
        client = boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{port}",
                              region_name="us-east-1", config=Config(
                                  retries={"max_attempts": 1, "mode": "standard"},
                                  connect_timeout=0.5, read_timeout=2))
        backend = DynamoBackend(client, prefix="down_")
        table = backend.table(LINKS)
        LinkService(table, DOMAINS).create("acme.link", "https://example.com/", owner="p",
                                           slug="hot")
        now = [time.time()]
        resolver = Resolver(table, ttl=30, clock=lambda: now[0])
        assert redirect(table, "acme.link", "hot", resolver).status_code == 302
    finally:
        dynalite.stop()
    now[0] += 31  # the cache entry is stale now, and DynamoDB is gone
    assert redirect(table, "acme.link", "hot", resolver).status_code == 302
    assert resolver.stale_served == 1 and resolver.store_errors == 1
    assert redirect(table, "acme.link", "cold", resolver).status_code == 503


@given(st.one_of(st.text(max_size=300),
                 st.builds("https://{}/{}".format, st.text(max_size=40), st.text(max_size=80))))
@hsettings(max_examples=300, deadline=None)
def test_target_validation_accepts_or_explains(text: str) -> None:
    """An accepted target is stored as printable ASCII (a Location header carries nothing else),
    and storing it again changes nothing."""
    service = LinkService(SqliteBackend(":memory:").table(LINKS), DOMAINS)
    try:
        stored = service.validate_target(text)
    except InvalidLink as exc:
        assert exc.reason
        return
    assert all(0x21 <= ord(c) <= 0x7e for c in stored), stored
    assert service.validate_target(stored) == stored


@pytest.mark.parametrize("target,stored", [
    ("https://example.org/日本", "https://example.org/%E6%97%A5%E6%9C%AC"),
    ("https://bücher.example/ä?q=ü#é",
     "https://xn--bcher-kva.example/%C3%A4?q=%C3%BC#%C3%A9"),
    ("https://example.org/caf\xe9", "https://example.org/caf%C3%A9"),  # Latin-1 went out raw
    ("https://EXAMPLE.org:8443/a%20b%zz?x=1&y=2", "https://example.org:8443/a%20b%25zz?x=1&y=2"),
    ("https://example.org\u3002/x", "https://example.org./x"),
    ("http://[::1]:8080/\xe9", "http://[::1]:8080/%C3%A9")])
def test_targets_are_stored_as_ascii_uris_and_redirect_through_waitress(
        tmp_path: Path, target: str, stored: str) -> None:
    """Battery finding 2: a non-Latin-1 target was accepted, then every visit answered 500
    (waitress cannot encode the Location header). The target is normalised when created, and
    a link stored before that (any character at all) is encoded when served."""
    from waitress.server import create_server
    from waitress.wasyncore import close_all

    table = SqliteBackend(str(tmp_path / "links.db")).table(LINKS)
    links = LinkService(table, DOMAINS)
    assert links.create("acme.link", target, owner="p", slug="new")["target"] == stored
    legacy = links.create("acme.link", "https://example.org/", owner="p", slug="old")
    table.put({**legacy, "target": target + "\u2028\x85"})  # as an older version stored it
    server = create_server(make_app(Resolver(table)), host="127.0.0.1", port=0, threads=1)
    loop = threading.Thread(target=server.run, daemon=True)
    loop.start()
    try:
        for slug in ("new", "old"):
            conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=10)
            conn.request("GET", f"/{slug}", headers={"Host": "acme.link"})
            response = conn.getresponse()
            assert response.status == 302, (slug, response.read())
            location = response.getheader("Location")
            assert location is not None and location.isascii() and location.isprintable()
            conn.close()
            assert location == stored if slug == "new" else location.startswith(stored)
    finally:  # the loop thread closes its sockets itself (not under its select), then ends
        try:
            server.trigger.pull_trigger(lambda: close_all(server._map))
        except OSError:  # the trigger is gone already (seen once under load): close here
            close_all(server._map)
        loop.join(timeout=30)
        server.task_dispatcher.shutdown()


def test_random_slugs_cannot_grow_the_cache_without_end(links: LinkService, table: Table) -> None:
    links.create("acme.link", "https://example.com/", owner="p", slug="real")
    resolver = Resolver(table, max_entries=40)
    for n in range(200):
        assert resolver.resolve("acme.link", f"made-up-{n}").status == 404
    assert resolver.resolve("acme.link", "real").status == 302
    assert resolver.cache_size <= 40


def test_cached_plain_links_are_answered_on_waitress_loop_thread_alike(tmp_path: Path) -> None:
    """Issue 18: a link the resolver holds in memory is answered on waitress's I/O thread, not
    handed to a pool thread. The answers must be those of the pool: redirects, 404 (cached
    unknown), 410 (disabled, expired), HEAD, 405, pipelined requests in order; a limited link
    and a due change check still go to the pool, and visits are counted once each."""
    from waitress.wasyncore import close_all

    from shortlinks.inline import create_server

    backend = SqliteBackend(str(tmp_path / "links.db"))
    table, changes = backend.table(LINKS), backend.table(LINK_CHANGES)
    links = LinkService(table, DOMAINS, changes=changes)
    now = [time.time()]
    links.create("acme.link", "https://example.com/go", owner="p", slug="go")
    links.create("acme.link", "https://example.com/perm", owner="p", slug="perm", code=301)
    links.create("acme.link", "https://example.com/", owner="p", slug="off")
    links.update("acme.link", "off", {"disabled": True})
    links.create("acme.link", "https://example.com/soon", owner="p", slug="soon",
                 valid_until=now[0] + 10)
    links.create("acme.link", "https://example.com/two", owner="p", slug="two", max_visits=2)
    resolver = Resolver(table, clock=lambda: now[0], changes=changes)
    server = create_server(make_app(resolver), resolver.answers_from_memory, threads=2,
                           host="127.0.0.1", port=0)
    dispatcher = server.task_dispatcher
    loop = threading.Thread(target=server.run, daemon=True)
    loop.start()

    def visit(slug: str, method: str = "GET") -> tuple[int, str | None, bytes, str | None]:
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=10)
        conn.request(method, f"/{slug}", headers={"Host": "ACME.link:8080"})
        response = conn.getresponse()
        answer = (response.status, response.getheader("Location"), response.read(),
                  response.getheader("Cache-Control"))
        conn.close()
        return answer

    try:
        slugs = ("go", "perm", "off", "soon", "nope", "two")
        first = {slug: visit(slug) for slug in slugs}  # cache misses: the pool answers
        assert dispatcher.served_inline == 0
        assert {slug: a[0] for slug, a in first.items()} == {
            "go": 302, "perm": 301, "off": 410, "soon": 302, "nope": 404, "two": 302}
        assert first["go"] == (302, "https://example.com/go", b"", "private, no-store")
        again = {slug: visit(slug) for slug in slugs[:-1]}  # from memory: the loop thread
        assert again == {slug: first[slug] for slug in slugs[:-1]}
        assert dispatcher.served_inline == 5
        head = visit("go", "HEAD")
        assert head == (302, "https://example.com/go", b"", "private, no-store")
        assert visit("go", "POST")[0] == 405 and dispatcher.served_inline == 6
        assert visit("two")[0] == 302 and visit("two")[0] == 410  # counted in the store
        assert dispatcher.served_inline == 6

        with socket.create_connection(("127.0.0.1", server.effective_port), timeout=10) as sock:
            sock.sendall(b"".join(f"GET /{slug} HTTP/1.1\r\nHost: acme.link\r\n\r\n".encode()
                                  for slug in ("go", "two", "perm", "nope")))
            received = b""
            while received.count(b"HTTP/1.1 ") < 4 or not received.endswith(b"</p>"):
                received += sock.recv(65536)
        assert re.findall(rb"HTTP/1.1 (\d+)", received) == [b"302", b"410", b"301", b"404"]
        # "go" on the loop thread; from "two" on the pool thread serves the rest in order
        # (unless the requests arrived in separate reads)
        assert 7 <= dispatcher.served_inline <= 9

        now[0] += 11  # "soon" expires; the change check is due: that request goes to the pool
        assert visit("soon")[0] == 410 and visit("soon")[0] == 410
        links.update("acme.link", "go", {"target": "https://example.com/moved"})
        assert visit("go")[1] == "https://example.com/go"  # within the check interval
        now[0] += 1.0
        assert visit("go")[1] == "https://example.com/moved"
        resolver.flush_visits()
        counted = table.get("acme.link/go")
        assert (counted["visits"], counted["bots"]) == (5, 1)  # the GETs; the HEAD apart
    finally:  # the loop thread closes its sockets itself (not under its select), then ends
        server.trigger.pull_trigger(lambda: close_all(server._map))
        loop.join(timeout=10)
        dispatcher.shutdown()
