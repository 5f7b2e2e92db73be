"""A lockout goes to the audit log once: the refused attempts after it add no row, so one
client cannot grow the log (billed writes on DynamoDB) or bury the real entries in it."""
from __future__ import annotations

import re
from collections import Counter

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from admin.accounts import ADMIN_LOGIN_FAILURES, LoginLimiter
from admin.web import Admin
from admin_app import create_app
from kit.settings import Settings
from kit.web import provided
from store import open_backend
from tests.conftest import ServicesWith

PASSWORD = "correct horse battery"


def _app(services_with: ServicesWith, base: Settings) -> Flask:
    app = create_app(services_with(base=base, admin_cookie_secure=False, admin_max_failures=3))
    provided(app, Admin).users.create("alice", PASSWORD)
    return app


def _login(client: FlaskClient, username: str, password: str) -> TestResponse:
    page = client.get("/admin/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    return client.post("/admin/login", data={"csrf_token": token.group(1),
                                             "username": username, "password": password})


def test_a_lockout_is_audited_once_not_at_every_refused_attempt(
        services_with: ServicesWith, any_backend: Settings) -> None:
    app = _app(services_with, any_backend)
    pair, address = app.test_client(), app.test_client()
    address.environ_base["REMOTE_ADDR"] = "10.0.0.9"
    for _ in range(3):  # alice from here
        assert _login(pair, "alice", "wrong password!").status_code == 401
    for n in range(30):  # any names from there: the address's limit, ten times as many
        assert _login(address, f"guess{n}", "wrong password!").status_code == 401
    for n in range(20):  # both locked: every further login is refused, whatever the name
        for client, name in ((pair, "alice"), (address, f"{'x' * 58}{n}")):
            refused = _login(client, name, "wrong again!")
            assert refused.status_code == 429, name
            assert "Too many failed logins." in refused.get_data(True)
    assert _login(pair, "alice", PASSWORD).status_code == 429, "the right password waits too"
    audit = provided(app, Admin).audit
    rows = audit.day(audit.today(), limit=1000).items
    assert Counter(row["action"] for row in rows) == {"login failed": 33,
                                                      "login refused (locked)": 2}
    assert sorted((row["actor"], row["address"], row["detail"]) for row in rows
                  if row["action"] == "login refused (locked)") == [
        ("alice", "127.0.0.1", "this username from this address"),
        (f"{'x' * 58}0", "10.0.0.9", "this address")]


def test_each_lockout_window_is_audited_once(settings: Settings) -> None:
    """A lockout that ended (here: cleared by a right password) and came back is a
    new one, reported again."""
    backend = open_backend(settings)
    try:
        limiter = LoginLimiter(backend.table(ADMIN_LOGIN_FAILURES), max_failures=1, lockout=600)
        keys = limiter.keys("alice", "10.0.0.1")
        assert limiter.first_refusal(keys) is None, "nothing locked yet"
        assert limiter.attempt(keys) == 0 and limiter.attempt(keys) > 0
        assert limiter.first_refusal(keys) == "pair:alice|10.0.0.1"
        assert limiter.first_refusal(keys) is None
        assert limiter.attempt(keys) > 0 and limiter.first_refusal(keys) is None
        limiter.succeeded("alice", "10.0.0.1")  # a right password: the pair starts again
        assert limiter.attempt(keys) == 0 and limiter.attempt(keys) > 0
        assert limiter.first_refusal(keys) == "pair:alice|10.0.0.1"
        assert limiter.first_refusal(keys) is None
    finally:
        backend.close()


def test_guesses_from_many_addresses_do_not_lock_an_admin_out_of_their_own_browser(
        services_with: ServicesWith, settings: Settings) -> None:
    """Wrong passwords for alice from 10 addresses lock her username from anywhere (30 with a
    limit of 3). Her own browser, which signed her in before, still signs in with the right
    password; a new browser waits, and so do a forged cookie and one from before she ended her
    sessions (a lost laptop)."""
    app = _app(services_with, settings)
    lost, own, stranger = app.test_client(), app.test_client(), app.test_client()
    assert _login(lost, "alice", PASSWORD).status_code == 303
    provided(app, Admin).users.end_sessions("alice")
    assert _login(own, "alice", PASSWORD).status_code == 303
    device = own.get_cookie("edge_admin_device", path="/admin")
    assert device is not None and device.value.startswith("alice:")
    for n in range(10):
        guesser = app.test_client()
        guesser.environ_base["REMOTE_ADDR"] = f"198.51.100.{n + 1}"
        for _ in range(3):
            assert _login(guesser, "alice", "wrong password!").status_code == 401
    assert _login(stranger, "alice", PASSWORD).status_code == 429, "the username is locked"
    stranger.set_cookie("edge_admin_device", "alice:" + "0" * 64, path="/admin")
    assert _login(stranger, "alice", PASSWORD).status_code == 429, "a forged cookie is not"
    assert _login(lost, "alice", PASSWORD).status_code == 429, "nor a stale one"
    assert _login(own, "alice", PASSWORD).status_code == 303, "her browser is not"
