"""Taking a domain over (domains/takeover.py): the owner of a hostname's DNS proves it with a TXT
record served by a real authoritative server (knotd) and moves the hostname to their
publication; every refusal answers a 4xx with a sentence; two racing moves never both win."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
from typing import Any, Callable

import pytest
import requests
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from devtools.dns_server import KnotServer
from domains import pairs
from domains.takeover import TAKEOVERS, Takeovers, TakeoverRefused
from domains.webhooks import verify_signature
from kit.settings import Settings
from store import ConflictError
from tests.conftest import FakeClock, ServicesWith, serving, wait_until
from tests.v010 import v010_command
from tests.webhook_receiver import Receiver

AUTH = {"Authorization": "Bearer test-token-0123456789"}
HOST = "blog.example.test"
SECRET = "webhook-secret-0123456789"


class Zone:
    """The example.test zone on knotd, as its owner edits it."""

    def __init__(self, knot: KnotServer) -> None:
        self.knot = knot
        self.records: dict[str, str] = {}

    def set(self, name: str, line: str) -> None:
        self.records[name] = line
        self.knot.set_zone("example.test", "@ A 127.0.0.1\n" + "\n".join(self.records.values()))

    def takeover_txt(self, *tokens: str, host: str = "blog") -> None:
        self.set(f"takeover {host}", "\n".join(f'_edge-takeover.{host} TXT "{t}"'
                                               for t in tokens))


@pytest.fixture
def zone(knot: Callable[..., KnotServer]) -> Zone:
    return Zone(knot({"example.test": "@ A 127.0.0.1\n"}))


@pytest.fixture
def services(services_with: ServicesWith, settings: Settings, zone: Zone,
             receiver: Receiver, clock: FakeClock) -> Services:
    return services_with(base=dataclasses.replace(
        settings, dns_servers=["127.0.0.1"], dns_port=zone.knot.port, webhook_url=receiver.url,
        webhook_secret=SECRET), clock=clock)


def takeovers(services: Services) -> Takeovers:
    assert services.takeovers is not None
    return services.takeovers


def api(client: FlaskClient, path: str, publication: str) -> Any:
    return client.post(f"/api/v1/domains/{HOST}/{path}", headers=AUTH,
                       json={"publication_id": publication})


def test_the_dns_owner_moves_a_verified_domain_and_its_holder_is_told(
        services: Services, client: FlaskClient, zone: Zone, receiver: Receiver) -> None:
    holder = services.domains.connect(HOST, "pub_a")[0]
    zone.set("cname", "blog CNAME edge.platform.test.")
    zone.set("challenge", f'_edge-challenge.blog TXT "{holder["token"]}"')
    assert services.lifecycle.check_now(HOST)[0]["status"] == "verified"

    asked = api(client, "takeover", "pub_b")
    assert asked.status_code == 200, asked.get_json()
    body = asked.get_json()
    assert body["record"]["name"] == "_edge-takeover.blog.example.test"
    assert body["holder"] == {"verified": True, "claim_expires_at": None}
    assert "pub_a" not in asked.text, "the holder is never named"
    assert api(client, "takeover", "pub_b").get_json()["record"] == body["record"], \
        "asking again shows the same record"

    zone.takeover_txt(body["record"]["value"])
    moved = api(client, "takeover/verify", "pub_b")
    assert moved.status_code == 200, moved.get_json()
    domain = moved.get_json()
    assert domain["publication_id"] == "pub_b" and domain["status"] == "pending_dns"
    assert {"type": "TXT", "name": "_edge-challenge.blog.example.test",
            "value": body["record"]["value"]} in domain["dns_records"]
    stored = services.domains.get(HOST)
    assert stored["claim"] != holder["claim"] and not stored.get("outbox")
    assert stored["taken_over_from"]["publication_id"] == "pub_a"
    assert services.domains.by_status()["verified"] == 0
    assert services.domains.by_status()["pending_dns"] == 1

    # The new holder's own timeline says what happened without naming the previous holder;
    # the previous claim's timeline (the admin's) names the new one.
    mine = client.get(f"/api/v1/domains/{HOST}", headers=AUTH).get_json()["events"]
    assert [e["what"] for e in mine] == ["taken over"] and "pub_a" not in str(mine)
    theirs = services.domains.events.query("claim", holder["claim"]).items
    assert any(e["what"] == "taken over" and "pub_b" in e["why"] for e in theirs)

    # The webhook reaches the platform, for the previous holder, signed.
    services.webhooks.deliver_due()
    wait_until(lambda: any(r["type"] == "domain.taken_over" for r in receiver.received()), 10,
               "the domain.taken_over webhook")
    sent = [r for r in receiver.requests if r["headers"]["X-Edge-Event"] == "domain.taken_over"]
    hook = [r["body"] for r in receiver.received() if r["type"] == "domain.taken_over"][0]
    assert hook["data"] == {"hostname": HOST, "publication_id": "pub_a",
                            "status": "taken_over", "previous_status": "verified"}
    assert verify_signature(SECRET, sent[0]["headers"]["X-Edge-Timestamp"], sent[0]["body"],
                            sent[0]["headers"]["X-Edge-Signature"])

    # Single-use: the request went with the move; the new holder verifies as usual.
    assert api(client, "takeover/verify", "pub_b").status_code == 409
    zone.set("challenge", f'_edge-challenge.blog TXT "{body["record"]["value"]}"')
    assert services.lifecycle.check_now(HOST)[0]["status"] == "verified"


def test_refusals_say_why_in_a_4xx(services: Services, client: FlaskClient, zone: Zone,
                                   clock: FakeClock) -> None:
    services.domains.connect(HOST, "pub_a")

    def refused(publication: str) -> tuple[int, str, str]:
        answer = api(client, "takeover/verify", publication)
        return answer.status_code, answer.get_json()["code"], answer.get_json()["error"]

    status, code, message = refused("pub_b")
    assert (status, code) == (409, "no_request") and "Ask for a takeover record" in message
    token_b = api(client, "takeover", "pub_b").get_json()["record"]["value"]
    token_c = api(client, "takeover", "pub_c").get_json()["record"]["value"]
    assert token_b != token_c

    status, code, message = refused("pub_b")  # no TXT at all
    assert (status, code) == (403, "txt_missing")
    assert f"_edge-takeover.{HOST} with the value {token_b!r}" in message
    zone.takeover_txt("not-the-token")
    assert refused("pub_b")[:2] == (403, "txt_mismatch")
    zone.takeover_txt(token_c)  # another publication's token proves nothing for pub_b
    status, code, message = refused("pub_b")
    assert (status, code) == (403, "txt_mismatch") and token_c in message
    assert refused("pub_a")[:2] == (409, "yours")
    assert api(client, "takeover", "pub_a").status_code == 409

    clock.advance(2 * 86400 + 1)  # pub_c's token expired (and pub_b's)
    status, code, message = refused("pub_c")
    assert (status, code) == (410, "expired") and "ask for a new one" in message
    fresh = api(client, "takeover", "pub_c").get_json()["record"]["value"]
    assert fresh != token_c
    assert services.domains.get(HOST)["publication_id"] == "pub_a", "nothing moved"

    free = client.post("/api/v1/domains/free.example.test/takeover", headers=AUTH,
                       json={"publication_id": "pub_b"})
    assert free.status_code == 409 and "connect it instead" in free.get_json()["error"]
    bad = client.post("/api/v1/domains/not_a_host!/takeover", headers=AUTH,
                      json={"publication_id": "pub_b"})
    assert bad.status_code == 400
    assert api(client, "takeover", "bad id!").status_code == 400
    assert client.post(f"/api/v1/domains/{HOST}/takeover", json={}).status_code == 401


def test_the_claim_expiry_is_told_and_a_token_dies_when_the_domain_changes_hands(
        services: Services, zone: Zone, clock: FakeClock) -> None:
    moves = takeovers(services)
    holder = services.domains.connect(HOST, "pub_a")[0]
    view = moves.holder_view(HOST, "pub_b")
    assert view["verified"] is False
    assert view["claim_expires_at"] is not None
    assert services.domains.claim_expires_at(holder) == holder["claimed_at"] + 7 * 86400
    request = moves.request(HOST, "pub_b")
    zone.takeover_txt(request["token"])
    # The holder removes it and connects it again: a new claim, so the old token is dead.
    services.lifecycle.remove(HOST)
    services.domains.connect(HOST, "pub_a")
    with pytest.raises(TakeoverRefused) as refused:
        moves.take_over(HOST, "pub_b")
    assert refused.value.code == "claim_changed" and refused.value.status == 409
    assert moves.request(HOST, "pub_b")["token"] != request["token"]


class Interleaved:
    """The real DNS checker, running ``meanwhile`` once just after the takeover looked at the
    holder and before it writes: the other side of a race, at the worst moment."""

    def __init__(self, checker: Any, meanwhile: Callable[[], object]) -> None:
        self._checker = checker
        self._meanwhile: Callable[[], object] | None = meanwhile

    def txt_everywhere(self, name: str, value: str) -> bool:
        proven = bool(self._checker.txt_everywhere(name, value))
        meanwhile, self._meanwhile = self._meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return proven

    def records(self, name: str, rdtype: str) -> list[str]:
        return list(self._checker.records(name, rdtype))


def racing(services: Services, meanwhile: Callable[[], object]) -> Takeovers:
    return Takeovers(services.domains, services.backend.table(TAKEOVERS),
                     Interleaved(services.lifecycle.checker, meanwhile), clock=services.clock)


def test_two_publications_racing_exactly_one_wins(services: Services, zone: Zone) -> None:
    services.domains.connect(HOST, "pub_a")
    moves = takeovers(services)
    token_b = moves.request(HOST, "pub_b")["token"]
    token_c = moves.request(HOST, "pub_c")["token"]
    zone.takeover_txt(token_b, token_c)  # the zone's owner let both in

    # pub_c's move lands while pub_b's is between its look and its write.
    with pytest.raises(TakeoverRefused) as lost:
        racing(services, lambda: moves.take_over(HOST, "pub_c")).take_over(HOST, "pub_b")
    assert lost.value.code == "changed" and lost.value.status == 409
    assert services.domains.get(HOST)["publication_id"] == "pub_c"
    # pub_b's token was for pub_a's claim: it moves nothing now.
    with pytest.raises(TakeoverRefused) as late:
        moves.take_over(HOST, "pub_b")
    assert late.value.code == "claim_changed"
    assert services.domains.get(HOST)["publication_id"] == "pub_c"


def test_a_takeover_racing_the_holders_verification(services: Services, zone: Zone) -> None:
    holder = services.domains.connect(HOST, "pub_a")[0]
    zone.set("cname", "blog CNAME edge.platform.test.")
    zone.set("challenge", f'_edge-challenge.blog TXT "{holder["token"]}"')
    token = takeovers(services).request(HOST, "pub_b")["token"]
    zone.takeover_txt(token)

    # The holder's check verifies it while the takeover is between its look and its write.
    with pytest.raises(TakeoverRefused):
        racing(services, lambda: services.lifecycle.check_now(HOST)).take_over(HOST, "pub_b")
    stored = services.domains.get(HOST)
    assert (stored["publication_id"], stored["status"]) == ("pub_a", "verified")

    # The other order: the holder's worker read the domain before the move; its next step
    # (verified -> issuing, before it orders a certificate) loses.
    seen = services.domains.get(HOST)
    moved = takeovers(services).take_over(HOST, "pub_b")
    assert moved["publication_id"] == "pub_b"
    with pytest.raises(ConflictError):
        services.domains.transition(seen, "issuing", "ordering a certificate")
    assert services.domains.get(HOST)["publication_id"] == "pub_b"


@pytest.mark.slow
def test_two_publications_racing_over_http(services_with: ServicesWith, settings: Settings,
                                           zone: Zone) -> None:
    """Two control replicas on one store, each asked at once by another publication."""
    both = [services_with(base=dataclasses.replace(settings, dns_servers=["127.0.0.1"],
                                                   dns_port=zone.knot.port)) for _ in range(2)]
    both[0].domains.connect(HOST, "pub_a")
    tokens = [takeovers(s).request(HOST, p)["token"] for s, p in zip(both, ("pub_b", "pub_c"))]
    zone.takeover_txt(*tokens)
    answers: dict[str, int] = {}
    start = threading.Barrier(2)

    def move(url: str, publication: str) -> None:
        start.wait(5)
        answers[publication] = requests.post(
            f"{url}/api/v1/domains/{HOST}/takeover/verify", headers=AUTH,
            json={"publication_id": publication}, timeout=10).status_code

    with serving(create_app(both[0])) as first, serving(create_app(both[1])) as second:
        threads = [threading.Thread(target=move, args=(url, publication))
                   for url, publication in ((first, "pub_b"), (second, "pub_c"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    assert sorted(answers.values()) == [200, 409], answers
    winner = [p for p, status in answers.items() if status == 200][0]
    assert both[1].domains.get(HOST)["publication_id"] == winner


def test_the_holders_www_companion_goes_with_the_apex(services: Services, zone: Zone) -> None:
    pairs.connect(services.domains, "example.test", "pub_a", "redirect", {})
    assert services.domains.get("www.example.test")["redirect_to"] == "example.test"
    token = takeovers(services).request("example.test", "pub_b")["token"]
    zone.set("takeover apex", f'_edge-takeover TXT "{token}"')
    moved = takeovers(services).take_over("example.test", "pub_b")
    assert moved["publication_id"] == "pub_b" and not moved.get("pair")
    assert services.domains.find("www.example.test") is None, \
        "the companion redirected to a name that is no longer its publication's"


V010_STEP = """
import json, sys
from kit.settings import load_settings
from control.wiring import Services
args = json.loads(sys.argv[1])
services = Services.from_settings(load_settings(env={}, **args))
domain, _ = services.lifecycle.check_now(%r)
print(json.dumps([domain["publication_id"], domain["status"]]))
"""


@pytest.mark.slow
def test_a_replica_of_the_release_before_carries_a_moved_domain_on(
        services: Services, zone: Zone) -> None:
    """The moved item is an ordinary claim: v0.1.0's worker verifies it for its new holder."""
    services.domains.connect(HOST, "pub_a")
    token = takeovers(services).request(HOST, "pub_b")["token"]
    zone.takeover_txt(token)
    takeovers(services).take_over(HOST, "pub_b")
    zone.set("cname", "blog CNAME edge.platform.test.")
    zone.set("challenge", f'_edge-challenge.blog TXT "{token}"')
    settings = services.settings
    argv, env, cwd = v010_command()
    args = {"api_token": settings.api_token, "edge_token": settings.edge_token,
            "encryption_keys": ",".join(settings.encryption_keys),
            "data_dir": settings.data_dir, "platform_domains": ["platform.test"],
            "edge_cname_target": "edge.platform.test", "edge_addresses": ["127.0.0.1"],
            "dns_servers": ["127.0.0.1"], "dns_port": zone.knot.port}
    done = subprocess.run([argv[0], "-c", V010_STEP % HOST, json.dumps(args)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["pub_b", "verified"]


def test_no_move_while_a_certificate_is_being_ordered(services: Services, zone: Zone,
                                                      clock: FakeClock) -> None:
    """An order in flight would store the holder's certificate after the revocation."""
    domain = services.domains.connect(HOST, "pub_a")[0]
    services.domains.transition(domain, "issuing", "ordering", next_attempt_at=clock() + 120)
    token = takeovers(services).request(HOST, "pub_b")["token"]
    zone.takeover_txt(token)
    with pytest.raises(TakeoverRefused) as busy:
        takeovers(services).take_over(HOST, "pub_b")
    assert (busy.value.code, busy.value.status) == ("busy", 409)
    clock.advance(121)  # the order's lease ran out: its worker is gone
    assert takeovers(services).take_over(HOST, "pub_b")["publication_id"] == "pub_b"
