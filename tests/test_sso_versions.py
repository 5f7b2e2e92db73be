"""SSO's formats carry a version (the session token's ``v`` claim, the code items' ``v``, the
state cookie's ``v<N>.`` prefix), and during an upgrade replicas of this release and of the
release before (v0.1.0, run from its own tree) read what the other writes. A version this
release does not know is refused with a sentence. The edge's side is in
test_sso_end_to_end.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jwt
import pytest
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from edge.sso import SESSION_COOKIE, STATE_COOKIE, TRIED_COOKIE
from kit.settings import Settings
from tests.conftest import ServicesWith, with_sso
from tests.test_sso_silent import BLOG, _activate, _code, _login, cookies_set
from tests.v010 import v010_source


@pytest.fixture
def services(services_with: ServicesWith, settings: Settings) -> Services:
    return _activate(services_with(base=with_sso(settings)), BLOG)


@pytest.fixture
def client(services: Services) -> FlaskClient:
    return create_app(services).test_client(use_cookies=False)


def _callback(client: FlaskClient, code: str, state: str, cookie: str) -> object:
    return client.get(f"https://{BLOG}/_edge/sso/callback",
                      query_string={"code": code, "state": state},
                      headers={"Cookie": f"{STATE_COOKIE}={cookie}"})


def test_this_release_marks_its_session_and_its_codes(client: FlaskClient,
                                                      services: Services) -> None:
    assert services.sso is not None
    state, cookie = _login(client)
    code = _code(client, state)
    assert services.sso.codes.get(code)["v"] == 1  # type: ignore[index]
    landed = _callback(client, code, state, cookie)
    claims = jwt.decode(cookies_set(landed)[SESSION_COOKIE], options={"verify_signature": False})
    assert claims["v"] == 1


def test_a_version_this_release_does_not_know_is_refused_with_a_sentence(
        client: FlaskClient, services: Services) -> None:
    assert services.sso is not None
    state, cookie = _login(client)
    newer = _callback(client, _code(client, state), state, f"v2.{cookie}")
    assert newer.status_code == 400 and "newer release" in newer.text  # type: ignore[attr-defined]
    code = _code(client, state)
    item = services.sso.codes.get(code)
    assert item is not None
    services.sso.codes.put({**item, "v": 2})
    newer = _callback(client, code, state, cookie)
    assert newer.status_code == 400 and "newer release" in newer.text  # type: ignore[attr-defined]
    assert services.sso.codes.get(code) is None, "burnt all the same"
    # The marked form of this release's own version is read like the unmarked one.
    marked = _callback(client, _code(client, state), state, f"v1.{cookie}")
    assert SESSION_COOKIE in cookies_set(marked)


OLD_REPLICA = """
import json, sys
from edge.sso import SSO_CODES, SingleSignOn, read_state_cookie, state_cookie
from store.sqlite import SqliteBackend

path, cookie, code, host, state = sys.argv[1:]
sso = SingleSignOn(None, SqliteBackend(path).table(SSO_CODES), lambda h: ("pub_1", False),
                   platform_url="https://platform.example.test")
seen = {"read": read_state_cookie(cookie), "user": sso.consume_code(code, host, state)}
minted = "o" * 32  # a state of its own: a login it started
seen.update(code=sso.mint_code("olga", host, minted), state=minted,
            cookie=state_cookie(minted, "/from/v010"))
print(json.dumps(seen))
"""


def test_the_release_before_and_this_one_read_each_others_formats(
        client: FlaskClient, services: Services) -> None:
    """A login on one replica, its authorize on another, its callback on a third: during an
    upgrade any may run either release, on one store."""
    state, cookie = _login(client)
    code = _code(client, state, "alice")
    source = v010_source()
    old = subprocess.run(
        [sys.executable, "-c", OLD_REPLICA, services.settings.sqlite_path, cookie, code, BLOG,
         state], cwd=source, env={**os.environ, "PYTHONPATH": str(source)},
        capture_output=True, text=True, timeout=60)
    assert old.returncode == 0, old.stderr
    seen = json.loads(old.stdout)
    assert seen["read"] == [state, "/p/1"] and seen["user"] == "alice"
    # What v0.1.0 wrote (a code item without "v", its state cookie) is traded here.
    landed = _callback(client, seen["code"], seen["state"], seen["cookie"])
    assert landed.headers["Location"] == "/from/v010"  # type: ignore[attr-defined]
    claims = jwt.decode(cookies_set(landed)[SESSION_COOKIE], options={"verify_signature": False})
    assert claims["sub"] == "olga"
    # v0.1.0's "no more silent attempts" cookie still means that here.
    silent = client.get(f"https://{BLOG}/_edge/sso/login",
                        query_string={"rd": "/p/1", "prompt": "none"},
                        headers={"Cookie": f"{TRIED_COOKIE}=1"})
    assert silent.headers["Location"] == "/p/1"
