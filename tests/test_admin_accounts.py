"""The dashboard's own tables on both backends, and `edgectl admin create-user`."""
from __future__ import annotations

import dataclasses
import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest

from admin.accounts import (ADMIN_LOGIN_FAILURES, ADMIN_SESSIONS, ADMIN_USERS, AccountError,
                            LoginLimiter, Sessions, Users)
from admin.audit import ADMIN_AUDIT, AuditLog
from kit.charts import Series, bar_chart
from certs.stats import ISSUANCE_STATS, IssuanceStats
from edgectl import cli
from kit.settings import Settings, SettingsError, load_settings
from store import Backend, open_backend
from tests.conftest import wait_until


@pytest.fixture(params=["sqlite", "dynamodb"])
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Backend]:
    if request.param == "dynamodb":
        settings = dataclasses.replace(
            settings, storage_backend="dynamodb",
            dynamodb_endpoint_url=request.getfixturevalue("dynalite"),
            dynamodb_table_prefix=f"t{uuid.uuid4().hex[:8]}_")
    opened = open_backend(settings)
    yield opened
    opened.close()


def test_users_hash_passwords_and_refuse_bad_input(backend: Backend) -> None:
    users = Users(backend.table(ADMIN_USERS))
    users.create("Alice", "a long enough password")
    stored = users.table.get("alice")
    assert stored is not None and "a long enough" not in str(stored)
    assert stored["password_hash"].startswith("scrypt:32768:8:1$"), "werkzeug's default cost"
    assert users.verify("ALICE ", "a long enough password") == "alice"
    assert users.verify("alice", "a long enough passwor") is None
    assert users.verify("nobody", "a long enough password") is None
    for name, password in (("alice", "another long password"), ("bad name", "x" * 20),
                           ("bob", "short")):
        with pytest.raises(AccountError):
            users.create(name, password)


def test_sessions_are_stored_by_digest_and_end(backend: Backend) -> None:
    sessions = Sessions(backend.table(ADMIN_SESSIONS), lifetime=60)
    session_id = sessions.start("alice")
    found = sessions.get(session_id)
    assert found is not None and found["username"] == "alice" and len(found["csrf"]) > 30
    assert session_id not in str(found), "the table never holds the cookie's value"
    assert sessions.get("guessed") is None and sessions.get("") is None
    sessions.end(session_id)
    assert sessions.get(session_id) is None
    expired = Sessions(backend.table(ADMIN_SESSIONS), lifetime=-1)
    assert expired.get(expired.start("alice")) is None


def test_lockout_counts_failures_and_lifts_after_the_window(backend: Backend) -> None:
    limiter = LoginLimiter(backend.table(ADMIN_LOGIN_FAILURES), max_failures=2, lockout=60)
    keys = limiter.keys("Alice", "10.0.0.1")
    limiter.attempt(keys)
    assert limiter.locked_for(keys) == 0
    limiter.attempt(keys)
    assert 59 < limiter.locked_for(keys) <= 60
    # Two wrong passwords here lock alice out from here only: not from elsewhere, nor carol.
    assert limiter.locked_for(limiter.keys("alice", "10.0.0.2")) == 0
    assert limiter.locked_for(limiter.keys("carol", "10.0.0.1")) == 0
    # Guessing alice's password from many addresses, or many names from one, still stops.
    for n in range(18):
        limiter.attempt(limiter.keys("alice", f"10.1.0.{n}"))
    assert limiter.locked_for(limiter.keys("alice", "10.0.0.9")) > 0
    for n in range(18):
        limiter.attempt(limiter.keys(f"user{n}", "10.0.0.1"))
    assert limiter.locked_for(limiter.keys("dave", "10.0.0.1")) > 0
    limiter.succeeded("alice", "10.0.0.2")
    assert limiter.locked_for(limiter.keys("alice", "10.0.0.2")) == 0
    # The store ends the window (expires_at, real time). A window is read back some requests
    # after it began: 5 s, as a loaded machine's dynalite took over 2 s for four of them (and
    # 0.2 s was too short once).
    brief = LoginLimiter(backend.table(ADMIN_LOGIN_FAILURES), max_failures=1, lockout=5)
    erin = brief.keys("erin", "10.0.0.3")
    brief.attempt(erin)
    assert 0 < brief.locked_for(erin) <= 5
    wait_until(lambda: brief.locked_for(erin) == 0, 20, "the window ended", interval=0.05)
    # Only the pair's count locked erin out; each key's window began with its own write, so the
    # username's and the address's may end a moment later (a loaded run met user:erin there).
    wait_until(lambda: all(brief.table.get(key) is None for key in erin), 20,
               "every key's window ended", interval=0.05)
    # The next attempt starts a new window from one; a long one, read back at any pace.
    long = LoginLimiter(backend.table(ADMIN_LOGIN_FAILURES), max_failures=1, lockout=60)
    long.attempt(erin)
    assert [long.table.get(key)["failures"] for key in erin] == [1, 1, 1], \
        "a new window starts from one"


def test_parallel_wrong_passwords_check_no_more_than_the_limit(backend: Backend) -> None:
    users = Users(backend.table(ADMIN_USERS))
    users.create("alice", "the right password")
    limiter = LoginLimiter(backend.table(ADMIN_LOGIN_FAILURES), max_failures=5, lockout=600)
    checked: list[str] = []
    verify = users.verify

    def counted_verify(username: str, password: str) -> str | None:
        checked.append(password)
        return verify(username, password)

    users.verify = counted_verify  # type: ignore[method-assign]

    def login(password: str) -> str:
        keys = limiter.keys("alice", "10.0.0.1")
        if limiter.attempt(keys) > 0:
            return "locked"
        if users.verify("alice", password) is None:
            return "wrong"
        limiter.succeeded("alice", "10.0.0.1")
        return "in"

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(login, [f"wrong password {n}" for n in range(50)]))
    assert answers.count("wrong") == len(checked) == 5, "exactly the limit was checked"
    assert answers.count("locked") == 45
    assert limiter.table.get("pair:alice|10.0.0.1")["failures"] == 5
    assert login("the right password") == "locked" and len(checked) == 5
    assert login("the right password") == "locked", "and it stays locked"
    # From elsewhere the right password still works, and gives its address its attempt back.
    assert limiter.attempt(limiter.keys("alice", "10.0.0.2")) == 0
    assert users.verify("alice", "the right password") == "alice"
    limiter.succeeded("alice", "10.0.0.2")
    assert limiter.table.get("addr:10.0.0.2")["failures"] == 0


def test_a_refused_attempt_counts_against_no_key(backend: Backend) -> None:
    limiter = LoginLimiter(backend.table(ADMIN_LOGIN_FAILURES), max_failures=1, lockout=600)
    assert limiter.attempt(limiter.keys("alice", "10.0.0.1")) == 0
    assert limiter.attempt(limiter.keys("alice", "10.0.0.1")) > 0
    assert limiter.table.get("user:alice")["failures"] == 1
    assert limiter.table.get("addr:10.0.0.1")["failures"] == 1


def test_audit_log_pages_a_day_newest_first(backend: Backend) -> None:
    audit = AuditLog(backend.table(ADMIN_AUDIT))
    for n in range(5):
        audit.record("alice", f"action {n}", "x.example.test", address="10.0.0.1")
    first = audit.day(audit.today(), limit=3)
    assert [a["action"] for a in first.items] == ["action 4", "action 3", "action 2"]
    rest = audit.day(audit.today(), limit=3, cursor=first.next_cursor)
    assert [a["action"] for a in rest.items] == ["action 1", "action 0"]
    assert audit.day("1999-01-01").items == []


def test_cli_creates_a_user_from_stdin(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGE_API_TOKEN", settings.api_token)
    monkeypatch.setenv("EDGE_EDGE_TOKEN", settings.edge_token)
    monkeypatch.setenv("EDGE_ENCRYPTION_KEYS", ",".join(settings.encryption_keys))
    monkeypatch.setenv("EDGE_DATA_DIR", settings.data_dir)
    monkeypatch.setenv("EDGE_ADMIN_PASSWORD_HASH", "scrypt:2048:8:1")
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert cli.main(["admin", "create-user", "Dana", "--password-stdin"]) == 0
    assert "admin user dana created" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert cli.main(["admin", "create-user", "dana", "--password-stdin"]) == 2
    assert "already exists" in capsys.readouterr().err
    backend = open_backend(settings)
    try:
        assert Users(backend.table(ADMIN_USERS)).verify("dana", "a long enough password")
        stored = backend.table(ADMIN_USERS).get("dana")
        assert stored is not None and stored["password_hash"].startswith("scrypt:2048:8:1$"), \
            "the setting's cost"
    finally:
        backend.close()


@pytest.mark.parametrize("method", ["md5", "pbkdf2:sha256:1", "scrypt:1000:8:1", "scrypt:1:8:1",
                                    "scrypt:1024:0:1", "scrypt:1024"])
def test_a_password_hash_setting_that_is_not_scrypt_is_refused(settings: Settings,
                                                               method: str) -> None:
    with pytest.raises(SettingsError, match="EDGE_ADMIN_PASSWORD_HASH.*power of two"):
        load_settings(env={"EDGE_ADMIN_PASSWORD_HASH": method},
                      **{n: getattr(settings, n) for n in ("api_token", "edge_token",
                                                            "encryption_keys")})


def test_issuance_results_are_counted_per_day(backend: Backend) -> None:
    stats = IssuanceStats(backend.table(ISSUANCE_STATS))
    for result in ("issued", "issued", "failed"):
        stats.record(result)
    days = stats.last_days(3)
    assert [d for d, _, _ in days] == sorted(d for d, _, _ in days)
    assert days[-1][1:] == (2, 1) and days[0][1:] == (0, 0)


def test_charts_escape_labels_and_print_totals() -> None:
    svg = bar_chart("a <b> chart", ["<x>", "y"], [Series("ok", "#0f0", [2, 0]),
                                                   Series("bad", "#f00", [1, 0])])
    assert "<x>" not in svg and "&lt;x&gt;" in svg and "a &lt;b&gt; chart" in svg
    assert ">3</text>" in svg and svg.count("<rect") == 2 + 2  # two bars, two legend keys


def test_admin_settings_are_validated(settings: Settings) -> None:
    base = {"api_token": settings.api_token, "edge_token": settings.edge_token,
            "encryption_keys": settings.encryption_keys}
    assert load_settings(env={}, **base).admin_cookie_secure is True
    loaded = load_settings(env={"EDGE_ADMIN_COOKIE_SECURE": "false",
                                "EDGE_ADMIN_MAX_FAILURES": "3"}, **base)
    assert loaded.admin_cookie_secure is False and loaded.admin_max_failures == 3
    for name, value in (("admin_max_failures", 0), ("admin_lockout_seconds", -1),
                        ("admin_session_seconds", "soon"), ("admin_cookie_secure", "maybe")):
        with pytest.raises(SettingsError, match=name):
            load_settings(env={}, **base, **{name: value})
