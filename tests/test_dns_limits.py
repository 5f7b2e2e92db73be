"""What a publisher's zone cannot make the DNS check do (dnsops/dnscheck.py, dnsops/nameservers.py),
against real knotd servers: a big TXT answer stays small in what is stored and said; a broken or
unreachable nameserver makes a check inconclusive, never "moved away"; the servers asked are
bounded, globally routable and asked in parallel under one deadline."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Iterator

import dns.resolver
import pytest

from control.wiring import Services
from devtools.dns_server import KnotServer
from dnsops.dnscheck import DnsCheck, DnsChecker
from dnsops.nameservers import MAX_SERVERS, allows_loopback, askable
from domains import decide
from domains.service import ACTIVE, AWAITING_TRAFFIC, PENDING_DNS, VERIFIED
from kit.settings import Settings
from store import StoreError
from tests.conftest import ServicesWith

TOKEN = "tok-123"
HEAD = """@ NS ns1.acme.test.
@ NS ns2.acme.test.
ns1 A 127.0.0.1
"""
GOOD = f"""blog CNAME edge.platform.test.
_edge-challenge.blog TXT "{TOKEN}"
"""
BIG_TXT = " ".join(f'"{i:03d}' + "x" * 240 + '"' for i in range(250))
"""One TXT value of about 61 KB (250 strings)."""


class KnotBeside(KnotServer):
    """A knotd on another loopback address that also listens on ``shared``, the port the
    checker asks every nameserver on."""

    def __init__(self, directory: Path, zones: dict[str, str], address: str,
                 shared: int) -> None:
        self.address = address
        self.shared = shared
        super().__init__(directory, zones)

    def _config(self, zones: list[str]) -> str:
        own = f"    listen: {self.address}@{self.port}\n"
        return super()._config(zones).replace(
            own, f"    listen: [{self.address}@{self.port}, {self.address}@{self.shared}]\n")


@pytest.fixture
def beside(tmp_path: Path) -> Iterator[Callable[[KnotServer, dict[str, str]], KnotServer]]:
    """Starts a knotd on 127.0.0.2 answering on ``first``'s port too; stopped after the test."""
    started: list[KnotServer] = []

    def start(first: KnotServer, zones: dict[str, str]) -> KnotServer:
        server = KnotBeside(tmp_path / "beside", zones, "127.0.0.2", first.port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def checker(server: KnotServer, timeout: float = 2.0) -> DnsChecker:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port
    resolver.lifetime = timeout
    resolver.cache = None
    return DnsChecker(resolver, "edge.platform.test", ["127.0.0.1"], port=server.port,
                      timeout=timeout)


def codes(result: DnsCheck) -> list[str]:
    return [p.code for p in result.problems]


# A big answer


def test_a_big_txt_answer_is_kept_short_in_what_the_check_keeps_and_says(
        knot: Callable[..., KnotServer]) -> None:
    values = [" ".join(f'"{n}' + "x" * 250 + '"' for _ in range(60)) for n in range(4)]
    server = knot({"acme.test": "blog CNAME edge.platform.test.\n" + "\n".join(
        f"_edge-challenge.blog TXT {value}" for value in values)})  # four of 15 KB
    result = checker(server).check("blog.acme.test", TOKEN)
    assert codes(result) == ["txt_mismatch"]
    assert len(json.dumps(result.errors)) < 1000, "three values, each cut to 64 characters"
    assert len(json.dumps(result.seen)) < 1000
    assert "and 1 more" in result.problems[0].message


@pytest.fixture
def zone_services(services_with: ServicesWith, any_backend: Settings,
                  knot: Callable[..., KnotServer]) -> tuple[Services, KnotServer]:
    server = knot({"acme.test": "@ A 127.0.0.1\n", "fat.test": "@ A 127.0.0.1\n"})
    return services_with(base=dataclasses.replace(
        any_backend, dns_servers=["127.0.0.1"], dns_port=server.port),
        max_pending_domains=0), server


def test_a_big_txt_answer_leaves_the_round_and_the_other_domains_alone(
        zone_services: tuple[Services, KnotServer]) -> None:
    """On DynamoDB the review's 61 KB TXT made the domain's item too big to write (400 KB):
    every round failed there, for every domain after it."""
    services, server = zone_services
    services.domains.connect("evil.acme.test", "pub_evil")
    good, _ = services.domains.connect("good.acme.test", "pub_good")
    server.set_zone("acme.test", "good CNAME edge.platform.test.\n"
                    f'_edge-challenge.good TXT "{good["token"]}"\n'
                    f"evil CNAME edge.platform.test.\n_edge-challenge.evil TXT {BIG_TXT}\n")
    services.lifecycle.tick()
    assert services.domains.get("good.acme.test")["status"] == VERIFIED
    evil = services.domains.get("evil.acme.test")
    assert evil["status"] == PENDING_DNS and evil["attempts"] == 1
    assert [e["code"] for e in evil["validation_errors"]] == ["txt_mismatch"]
    assert len(evil["last_error"]) < 500
    assert len(json.dumps(evil["dns_seen"])) < 1000


def fill(services: Services, hostname: str, room: int) -> None:
    """Pad ``hostname``'s item until it is ``room`` bytes short of what the store takes."""
    low, high = 0, 409_600
    while high - low > 8:
        middle = (low + high) // 2
        domain = services.domains.get(hostname)
        try:
            services.domains.repository.write(domain, {**domain, "pad": "x" * middle})
            low = middle
        except StoreError:
            high = middle
    domain = services.domains.get(hostname)
    services.domains.repository.write(domain, {**domain, "pad": "x" * (low - room)})


@pytest.mark.parametrize("any_backend", ["dynamodb"], indirect=True)
def test_a_domain_whose_item_the_store_refuses_is_deferred_alone(
        zone_services: tuple[Services, KnotServer]) -> None:
    """The store refuses one domain's write (its item would pass 400 KB): that domain is
    deferred with a short error and the round goes on; a store that is down ends it still."""
    services, server = zone_services
    services.domains.connect("www.fat.test", "pub_fat")
    good, _ = services.domains.connect("good.acme.test", "pub_good")
    long_txt = "\n".join(f'_edge-challenge.www TXT "{n}' + "y" * 200 + '"' for n in range(5))
    server.set_zone("fat.test", '@ CAA 0 issue "otherca.example"\n'
                    f"www CNAME {'z' * 60}.elsewhere.test.\n{long_txt}\n")
    server.set_zone("acme.test", "good CNAME edge.platform.test.\n"
                    f'_edge-challenge.good TXT "{good["token"]}"\n')
    fill(services, "www.fat.test", room=1500)  # the check's errors take more, a failure less
    services.lifecycle.tick()
    assert services.domains.get("good.acme.test")["status"] == VERIFIED
    fat = services.domains.get("www.fat.test")
    assert fat["status"] == PENDING_DNS and fat["attempts"] == 1
    assert [e["code"] for e in fat["validation_errors"]] == ["step_failed"]
    assert "ValidationException" in fat["last_error"] and len(fat["last_error"]) < 300


# A broken nameserver


def test_a_refusing_nameserver_is_left_out_of_the_verdict(
        knot: Callable[..., KnotServer],
        beside: Callable[[KnotServer, dict[str, str]], KnotServer]) -> None:
    """ns2 (127.0.0.2) serves another zone and answers REFUSED: ns1 alone decides."""
    first = knot({"acme.test": HEAD + "ns2 A 127.0.0.2\n" + GOOD})
    beside(first, {"other.test": "@ A 127.0.0.9\n"})
    result = checker(first).check("blog.acme.test", TOKEN)
    assert result.ok, result.problems
    assert "REFUSED" in result.seen[f"127.0.0.2:{first.port}"]["error"][0]
    missing = checker(first).check("gone.acme.test", TOKEN)
    assert codes(missing) == ["nxdomain", "txt_missing"], "ns1's answer, without an (on ...)"


def test_a_check_no_server_answers_is_inconclusive_and_moves_nothing(
        knot: Callable[..., KnotServer],
        beside: Callable[[KnotServer, dict[str, str]], KnotServer]) -> None:
    """The zone's only NS refuses: no "records missing", no suspension after the grace, no
    pre-validated domain taken off the edge."""
    first = knot({"acme.test": "@ NS ns2.acme.test.\nns2 A 127.0.0.2\n" + GOOD})
    beside(first, {"other.test": "@ A 127.0.0.9\n"})
    result = checker(first).check("blog.acme.test", TOKEN)
    assert result.inconclusive and set(codes(result)) == {"dns_error"}
    now = time.time()
    active = {"hostname": "blog.acme.test", "status": ACTIVE, "claimed_at": now - 10 * 86400,
              "dns_away_since": now - 2 * 86400}
    step = decide.decide(active, decide.Seen(result), now)
    assert (step.action, step.status, step.route) == (decide.RETRY, ACTIVE, False)
    assert step.changes.get(decide.DNS_AWAY_SINCE) is None, "the away clock is left as it was"
    fresh = {**active, "dns_away_since": None}
    assert decide.DNS_AWAY_SINCE not in decide.decide(fresh, decide.Seen(result), now).changes
    awaiting = {"hostname": "blog.acme.test", "status": AWAITING_TRAFFIC, "claimed_at": now}
    step = decide.decide(awaiting, decide.Seen(result, delegated=True), now,
                         decide.Rules(dcv_zone="dcv.test"))
    assert (step.status, step.route) == (AWAITING_TRAFFIC, False)


# Which servers, how many, how fast


def test_only_global_addresses_are_asked_and_loopback_only_beside_a_loopback_resolver(
        knot: Callable[..., KnotServer]) -> None:
    server = knot({"acme.test": HEAD + "ns2 A 10.0.0.1\nns2 A 169.254.169.254\n"
                   "ns2 AAAA 2001:db8::53\n" + GOOD})
    fast = checker(server, timeout=1.0)
    assert fast.authoritative_servers("blog.acme.test") == ["127.0.0.1"]
    started = time.monotonic()
    assert fast.check("blog.acme.test", TOKEN).ok
    assert time.monotonic() - started < 0.9, "no internal address was waited for"
    assert allows_loopback(["127.0.0.1"]) and not allows_loopback(["192.0.2.1"])
    assert askable(["127.0.0.1", "10.0.0.1", "fe80::1"], 53, loopback=False) == []


def test_many_silent_servers_are_bounded_and_asked_at_once(
        knot: Callable[..., KnotServer]) -> None:
    """20 addresses that never answer, one that does: at most 13 asked, in parallel, under one
    deadline (one by one, the review's 13 took 24 seconds)."""
    silent = "\n".join(f"ns2 A 127.0.1.{i}" for i in range(1, 21))
    server = knot({"acme.test": HEAD + silent + "\n" + GOOD})
    fast = checker(server, timeout=0.5)
    assert len(fast.authoritative_servers("blog.acme.test")) == MAX_SERVERS
    started = time.monotonic()
    result = fast.check("blog.acme.test", TOKEN)
    assert time.monotonic() - started < 2.5
    assert result.ok, "judged on the server that answered"
