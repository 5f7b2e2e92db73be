"""Session-scoped real servers on loopback: dynalite, Pebble + challtestsrv. Each is stopped by PID."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from cryptography.fernet import Fernet
from werkzeug.serving import make_server

from admin_app import create_app
from control.wiring import Services
from devtools.pebble import PebbleStack
from kit.procs import ManagedProcess, free_port, start_listening
from kit.settings import Settings, load_settings
from store import Backend
from store.dynamo import DynamoBackend
from store.sqlite import SqliteBackend
from tests.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent


def _dynalite_bin() -> str:
    local = ROOT / "node_modules" / ".bin" / "dynalite"
    found = os.environ.get("EDGE_DYNALITE") or (str(local) if local.exists() else shutil.which("dynalite"))
    if not found:
        raise RuntimeError("dynalite is not installed: run `npm install` in the repository root")
    return found


@pytest.fixture(scope="session")
def dynalite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a dynalite server (DynamoDB wire protocol on LevelDB)."""
    directory = tmp_path_factory.mktemp("dynalite")
    process, port = start_listening(lambda port: ManagedProcess(
        "dynalite", [_dynalite_bin(), "--host", "127.0.0.1", "--port", str(port),
                     "--path", str(directory / "db")], directory / "dynalite.log"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of moto_server (Route53; DynamoDB with the table updates dynalite lacks)."""
    directory = tmp_path_factory.mktemp("moto")
    process, port = start_listening(lambda port: ManagedProcess(
        "moto_server", ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        directory / "moto.log"), timeout=60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


@pytest.fixture(scope="session", autouse=True)
def _aws_credentials() -> None:
    # dynalite ignores credentials but botocore insists on having some; never real ones in tests.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(env={}, api_token="test-token-0123456789",
                         edge_token="edge-token-0123456789",
                         encryption_keys=Fernet.generate_key().decode(),
                         data_dir=str(tmp_path / "data"), platform_domains=["platform.test"],
                         edge_cname_target="edge.platform.test", edge_addresses=["127.0.0.1"])


SSO_PLATFORM = "platform.example.test"
SSO_COOKIE_KEY = "platform-cookie-key-0123456789-abcdef"


@pytest.fixture(params=["sqlite", "dynamodb"])
def any_backend(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The settings on SQLite, or on dynalite with a table prefix of its own."""
    if request.param == "sqlite":
        return settings
    return dataclasses.replace(settings, storage_backend="dynamodb",
                               dynamodb_endpoint_url=request.getfixturevalue("dynalite"),
                               dynamodb_table_prefix=f"s{uuid.uuid4().hex[:8]}_")


@pytest.fixture
def services_both(any_backend: Settings) -> Iterator[Services]:
    """The control service's objects on each backend, with no cap on pending domains, closed
    after the test."""
    opened = Services.from_settings(dataclasses.replace(any_backend, max_pending_domains=0))
    yield opened
    opened.close()


@pytest.fixture
def sso_settings(settings: Settings) -> Settings:
    """SSO on; the platform's user comes from its signed cookie, so no platform server runs."""
    return dataclasses.replace(
        settings, sso_platform_url=f"https://{SSO_PLATFORM}",
        sso_platform_login_url=f"https://{SSO_PLATFORM}/login",
        sso_platform_cookie="platform_session", sso_platform_cookie_key=SSO_COOKIE_KEY)


@pytest.fixture(scope="session")
def edge_http_port() -> int:
    """The edge's port 80 stand-in; Pebble probes HTTP-01 there, so it is chosen before Pebble."""
    return free_port()


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory, edge_http_port: int) -> Iterator[PebbleStack]:
    stack = PebbleStack(tmp_path_factory.mktemp("pebble"), http_port=edge_http_port)
    try:
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """A WSGI app served on a free loopback port from a thread, for the length of the block."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def dynamo_client(endpoint: str) -> object:
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")


CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # Every test hostname resolves to loopback; nothing leaves the machine.
                 "--host-resolver-rules=MAP *.test 127.0.0.1, MAP *.example 127.0.0.1"]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's Chromium driven by playwright (no browser download); one per test worker."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                              args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def control(settings: Settings) -> Iterator[tuple[Services, str]]:
    """The control service's app over real HTTP on a free port: (its services, its URL)."""
    services = Services.from_settings(settings)
    with serving(create_app(services)) as url:
        yield services, url
    services.close()


def opened_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """For a fixture parametrized "sqlite", "dynalite" or "moto_server": that backend, fresh
    (its own file, or its own table prefix on the shared server), closed afterwards."""
    if request.param == "sqlite":
        opened: Backend = SqliteBackend(str(tmp_path / "store.db"))
    else:
        opened = DynamoBackend(dynamo_client(request.getfixturevalue(request.param)),
                               prefix=f"t{uuid.uuid4().hex[:8]}_")
    yield opened
    opened.close()


@pytest.fixture(params=["sqlite", "dynalite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from opened_backend(request, tmp_path)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local webhook receiver (tests/webhook_receiver.py), for the length of a test."""
    server = Receiver()
    try:
        yield server
    finally:
        server.stop()


class FakeClock:
    """The one clock a test hands to ``Services.from_settings(settings, clock=...)``: it stands
    at ``now`` (the real time when made) and moves only when the test moves it."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
