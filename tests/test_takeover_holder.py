"""The previous holder after a takeover (domains/takeover.py): what it read before the move
gives it no hold on the moved domain. Its removal, its "check now" and its timeline act on, and
show, only the claim it was allowed to act on; the new holder never sees its events. DNS is a
real authoritative server (knotd); the takeover is the real one, landing between the holder's
ownership check and its action (the only way to reach that moment is to run it there)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pytest
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from devtools.dns_server import KnotServer
from domains.errors import DomainNotFound
from domains.takeover import Takeovers
from kit.settings import Settings
from publisher import auth
from store import ConflictError
from tests.conftest import FakeClock, ServicesWith
from tests.test_publisher_settings import PLATFORM, post, signed_in
from tests.test_takeover import Zone

HOST = "blog.example.test"


@pytest.fixture
def zone(knot: Callable[..., KnotServer]) -> Zone:
    return Zone(knot({"example.test": "@ A 127.0.0.1\n"}))


@pytest.fixture
def services(services_with: ServicesWith, sso_settings: Settings, zone: Zone,
             clock: FakeClock) -> Services:
    return services_with(base=dataclasses.replace(
        sso_settings, dns_servers=["127.0.0.1"], dns_port=zone.knot.port,
        admin_cookie_secure=False), clock=clock)


@pytest.fixture
def client(services: Services) -> FlaskClient:
    return create_app(services).test_client(use_cookies=False)


def takeovers(services: Services) -> Takeovers:
    assert services.takeovers is not None
    return services.takeovers


def verified_holder(services: Services, zone: Zone) -> dict[str, Any]:
    """pub_1 holds HOST, verified through its DNS; pub_b has its takeover TXT in the zone."""
    holder = services.domains.connect(HOST, "pub_1", actor="publisher:alice")[0]
    zone.set("cname", "blog CNAME edge.platform.test.")
    zone.set("challenge", f'_edge-challenge.blog TXT "{holder["token"]}"')
    verified = services.lifecycle.check_now(HOST)[0]
    assert verified["status"] == "verified"
    zone.takeover_txt(takeovers(services).request(HOST, "pub_b")["token"])
    return verified


def moved_after(monkeypatch: pytest.MonkeyPatch, services: Services, name: str) -> list[Any]:
    """pub_b's takeover lands right after ``publisher.auth.<name>`` authorised the holder (its
    "Verify and move", another request), once. Returns where the moved domain goes."""
    read = getattr(auth, name)
    moved: list[Any] = []

    def then_moved(*args: Any) -> Any:
        allowed = read(*args)
        if not moved:
            moved.append(takeovers(services).take_over(HOST, "pub_b"))
        return allowed

    monkeypatch.setattr(auth, name, then_moved)
    return moved


def still_pub_bs(services: Services, moved: list[Any]) -> None:
    now = services.domains.get(HOST)
    assert (now["publication_id"], now["claim"], now["status"]) == \
        ("pub_b", moved[0]["claim"], "pending_dns")
    assert now["attempts"] == 0 and not now["last_error"], "its DNS was not checked"
    assert [e["what"] for e in services.domains.timeline(now)] == ["taken over"]


def test_the_old_holders_api_delete_after_a_move_is_a_409_and_removes_nothing(
        services: Services, client: FlaskClient, zone: Zone,
        monkeypatch: pytest.MonkeyPatch) -> None:
    verified_holder(services, zone)
    token = {"Authorization": f"Bearer {services.tokens.create('pub_1')[0]}"}
    moved = moved_after(monkeypatch, services, "api_domain")
    deleted = client.delete(f"/api/v1/domains/{HOST}", headers=token)
    assert deleted.status_code == 409, deleted.get_json()
    assert deleted.get_json()["error"] == f"{HOST} changed while we worked on it; try again"
    assert "pub_b" not in deleted.text, "the new holder is never named"
    still_pub_bs(services, moved)

    monkeypatch.undo()
    # Asked again, it is no longer pub_1's: 404 as for any other publication's domain.
    assert client.delete(f"/api/v1/domains/{HOST}", headers=token).status_code == 404
    still_pub_bs(services, moved)


def test_the_old_holders_api_check_after_a_move_is_a_404(
        services: Services, client: FlaskClient, zone: Zone,
        monkeypatch: pytest.MonkeyPatch) -> None:
    verified_holder(services, zone)
    token = {"Authorization": f"Bearer {services.tokens.create('pub_1')[0]}"}
    moved = moved_after(monkeypatch, services, "api_domain")
    checked = client.post(f"/api/v1/domains/{HOST}/check", headers=token)
    assert checked.status_code == 404, checked.get_json()
    assert checked.get_json()["error"] == f"{HOST} is not connected"
    assert "pub_b" not in checked.text and moved[0]["token"] not in checked.text
    still_pub_bs(services, moved)


@pytest.mark.parametrize("action", ["check", "remove"])
def test_the_old_holders_page_after_a_move_touches_nothing(
        action: str, services: Services, client: FlaskClient, zone: Zone,
        monkeypatch: pytest.MonkeyPatch) -> None:
    verified_holder(services, zone)
    moved = moved_after(monkeypatch, services, "page_domain")
    answer = post(client, f"/domains/{HOST}/{action}", {}, **signed_in(),
                  Accept="application/json")
    if action == "check":
        assert answer.status_code == 404  # no longer the user's: as for any other domain
    else:
        assert answer.status_code == 409
        assert "changed while we worked on it: reload its page" in answer.text
    assert "pub_b" not in answer.text and moved[0]["token"] not in answer.text
    still_pub_bs(services, moved)
    assert client.get(f"{PLATFORM}/_edge/settings/domains/{HOST}",
                      headers=signed_in()).status_code == 404


def test_what_a_holder_read_before_a_move_neither_removes_nor_checks_the_moved_domain(
        services: Services, zone: Zone) -> None:
    """The lifecycle's side, without the web: an operator's hostname still acts on whoever
    holds it now."""
    seen = verified_holder(services, zone)
    moved = takeovers(services).take_over(HOST, "pub_b")
    with pytest.raises(ConflictError):
        services.lifecycle.remove(seen)
    with pytest.raises(DomainNotFound):
        services.lifecycle.check_now(seen)
    still_pub_bs(services, [moved])
    assert services.lifecycle.check_now(HOST)[0]["publication_id"] == "pub_b"


class Killed(BaseException):
    """The process died here: nothing after this point runs and no handler catches it."""


def test_the_new_holder_never_sees_the_previous_holders_undrained_events(
        services: Services, client: FlaskClient, zone: Zone, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder's process died after a write and before its drain, and so did the
    takeover's: the new claim's item carries the holder's events until the worker drains it."""
    holder = verified_holder(services, zone)
    history = services.domains.history
    services.domains.repository.carry(holder, [history.event(
        holder, "options changed", "redirect to secret-launch.pub-1.example", "publisher:alice")])
    drain = services.domains.outbox.drain

    def dies(domain: dict[str, Any]) -> dict[str, Any]:
        raise Killed("killed between the move and its drain")

    monkeypatch.setattr(services.domains.outbox, "drain", dies)
    with pytest.raises(Killed):
        takeovers(services).take_over(HOST, "pub_b")
    monkeypatch.setattr(services.domains.outbox, "drain", drain)
    carried = services.domains.get(HOST)
    assert any(e.get("what") == "options changed" for e in carried["outbox"])

    token = {"Authorization": f"Bearer {services.tokens.create('pub_b')[0]}"}

    def events() -> list[dict[str, Any]]:
        return client.get(f"/api/v1/domains/{HOST}", headers=token).get_json()["events"]

    assert [e["what"] for e in events()] == ["taken over"]
    assert "alice" not in str(events()) and "secret-launch" not in str(events())
    clock.advance(services.settings.outbox_grace_seconds + 1)
    assert services.domains.drain_outboxes() == 1  # the worker finds what the dead left
    assert [e["what"] for e in events()] == ["taken over"]
    theirs = services.domains.events.query("claim", holder["claim"]).items
    assert {"options changed", "taken over"} <= {e["what"] for e in theirs}
