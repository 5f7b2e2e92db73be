"""Session-scoped real servers on loopback: dynalite, Pebble + challtestsrv. Each is stopped by PID.

And the factories every test file builds from: the control service's objects on the test's
store (``services_with``), an edge node with a real HAProxy (``edge_node``), an authoritative
DNS server (``knot``), a domain taken to active through the real transitions (``activate``)."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import signal
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import boto3
import pytest
from botocore.config import Config
from botocore.retries.standard import ExponentialBackoff
from cryptography.fernet import Fernet
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from admin_app import create_app
from control.wiring import Services
from devtools.dns_server import KnotServer
from devtools.dynalite import dynalite_command, start_dynalite
from devtools.pebble import PebbleStack
from edge.node import EdgeNode
from kit import logs
from kit.procs import PORTS_ENV, ManagedProcess, free_port, port_slice, start_listening
from kit.settings import Settings, load_settings
from store import Backend, Item, dynamo_wire
from store.dynamo import USER_AGENT, DynamoBackend
from store.sqlite import SqliteBackend
from tests.dynamo_nemesis import Nemesis
from tests.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent

if "PYTEST_XDIST_WORKER" in os.environ:
    # Each worker (and what its tests start) draws its servers' ports from a slice of its own:
    # two workers that drew one port would fail a test with "address in use" (CI, stop 43).
    os.environ[PORTS_ENV] = port_slice(int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")),
                                       int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, each kind in the order collected (a module wholly slow or quick
    stays together): xdist hands out the tests in this order as workers free up, so the long
    end-to-end runs start early and the quick ones fill the cores at the end, not one long
    test running alone (the tail of a run sat on test_topology and test_tls_scan, about 20 s
    with a core idle)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


class _Speed:
    """How fast the machine runs a fixed pure-Python loop (its own thread's CPU time, so load
    does not count), timed every few seconds through the run. Timed once instead, at the
    start of each of five runs on one VM in one day, a million rounds of it took 68 to 113
    ms; and one tree's run took a fifth longer, with as much more CPU, from one day to the
    next."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.stop = threading.Event()
        threading.Thread(target=self._run, name="speed", daemon=True).start()

    def _run(self) -> None:
        while True:
            started, total = time.thread_time(), 0
            for n in range(200_000):
                total += n * n % 7
            self.samples.append(time.thread_time() - started)
            if self.stop.wait(5.0):
                return


_SPEED: list[_Speed] = []


def pytest_configure(config: pytest.Config) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the run's own process: one for the run
        _SPEED.append(_Speed())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The run's CPU (pytest, its workers and every process they waited for) beside the
    machine's speed, so a run's time is read against its machine's."""
    if not _SPEED or not _SPEED[0].samples:
        return
    _SPEED[0].stop.set()
    loop = statistics.median(_SPEED[0].samples)
    used = os.times()
    cpu = used.user + used.system + used.children_user + used.children_system
    terminalreporter.write_line(
        f"run cost: {cpu:,.0f} CPU-s on {os.cpu_count()} cores; the speed loop took "
        f"{loop * 1000:.1f} ms (median of {len(_SPEED[0].samples)}): {cpu / loop:,.0f} loops")


def pytest_collection_finish() -> None:
    """What collection built (every test module, item and fixture definition) lives as long as
    the worker: frozen, the collector stops walking it at each full collection (7.5% of the
    workers' CPU went to the collector, most of it in full collections)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def dynalite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of this worker's dynalite server (DynamoDB's wire protocol), in its
    memory: on LevelDB files the same tests took 1.1x the CPU. Its new tables are ACTIVE at
    once: each test opens a store of some 25 tables on it (0.4 s, not 1.9); the store's wait
    while a table is CREATING is tested on the dynalites of test_replicas.py,
    test_replicas_chaos.py and test_chaos.py."""
    process, url = start_dynalite(tmp_path_factory.mktemp("dynalite"))
    try:
        yield url
    finally:
        process.stop()


_NEMESES: dict[str, Nemesis] = {}
"""This worker's nemesis by its endpoint URL, for ``fair_weather``."""


@pytest.fixture(scope="session")
def dynamo_nemesis(dynalite: str) -> Iterator[Nemesis]:
    """The DynamoDB nemesis (tests/dynamo_nemesis.py) in front of this worker's dynalite."""
    proxy = Nemesis(dynalite)
    _NEMESES[proxy.url] = proxy
    try:
        yield proxy
    finally:
        del _NEMESES[proxy.url]
        proxy.stop()


@contextlib.contextmanager
def fair_weather(settings: Settings) -> Iterator[None]:
    """No injected faults or slowness (index lag stays) while a store through the nemesis
    opens: some 300 requests (its tables, their schema), whose faults cost each test seconds
    of the SDK's backoff and are not what the test is about; what it does next meets the
    weather. A store opening in the weather is tested where it is the point: replicas
    opening tables at once (test_replicas.py), the chaos tests' replicas."""
    nemesis = _NEMESES.get(settings.dynamodb_endpoint_url or "")
    if settings.storage_backend != "dynamodb" or nemesis is None:
        yield
        return
    weather = nemesis.fail_rate, nemesis.slow_rate
    nemesis.fail_rate = nemesis.slow_rate = 0.0
    try:
        yield
    finally:
        nemesis.fail_rate, nemesis.slow_rate = weather


SDK_BACKOFF_SCALE = 0.05
"""What the tests' in-process clients wait between retries (botocore's for the tables, the
store's item client for the items: the same ``rand * 2 ** (attempt - 1)`` seconds, a mean of
half a second per injected fault), as a fraction of that: 25 ms at the first retry, the base
botocore's newer retry scheme uses for DynamoDB's 5xx. Each fault is still retried, counted,
charged to the retry quota and surfaced as ``Throttled`` after the fifth attempt; only the
wall time between attempts shrinks, which the tests' code on a ``FakeClock`` never sees and
which was most of a nemesis run (44 of 50 s in one shard-move test). Replicas and agents
started as processes (the chaos tests) keep the SDK's own waits."""


@pytest.fixture
def nemesis(dynamo_nemesis: Nemesis, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The nemesis' endpoint URL, in DynamoDB's usual weather for the length of the test: a
    few requests throttled or failed (the SDK retries them, after ``SDK_BACKOFF_SCALE`` of
    its usual wait) and a few slow; ``services_with`` opens its stores in ``fair_weather``.
    A test that wants index lag or more sets it on ``dynamo_nemesis``; each test starts
    afresh."""
    usual, usual_items = ExponentialBackoff.delay_amount, dynamo_wire.backoff
    monkeypatch.setattr(ExponentialBackoff, "delay_amount",
                        lambda backoff, context: SDK_BACKOFF_SCALE * usual(backoff, context))
    monkeypatch.setattr(dynamo_wire, "backoff",
                        lambda attempt: SDK_BACKOFF_SCALE * usual_items(attempt))
    dynamo_nemesis.reset()
    dynamo_nemesis.fail_rate, dynamo_nemesis.slow_rate, dynamo_nemesis.slow = 0.03, 0.02, 0.05
    # At most two faults in a row: every client here makes three attempts or more (botocore's
    # standard mode three, the store's own five), so none gives up by chance.
    dynamo_nemesis.max_streak = 2
    yield dynamo_nemesis.url
    dynamo_nemesis.reset()


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


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """A test that runs ``edgectl``'s main in this process (``cli.main([...])``) leaves the
    root logger on a handler of the product's (kit/logs.py) writing to the stderr pytest
    captured for that test, closed once it ends: every later record of the worker then
    printed "--- Logging error ---". That handler goes after the test, and the level with it."""
    root = logging.getLogger()
    level = root.level
    yield
    ours = [handler for handler in root.handlers
            if any(isinstance(found, logs.ContextFilter) for found in handler.filters)]
    for handler in ours:
        root.removeHandler(handler)
    if ours:
        root.setLevel(level)
        logging.captureWarnings(False)


TEST_PASSWORD_HASH = "scrypt:1024:8:1"
"""A 32nd of the default's cost: the suite's logins and users spent a minute of CPU on it.
test_admin_accounts checks the default."""


def fresh_settings(data_dir: Path) -> Settings:
    """The tests' settings on SQLite in ``data_dir``, with a fresh encryption key."""
    return load_settings(env={}, api_token="test-token-0123456789",
                         edge_token="edge-token-0123456789",
                         encryption_keys=Fernet.generate_key().decode(),
                         data_dir=str(data_dir), platform_domains=["platform.test"],
                         edge_cname_target="edge.platform.test", edge_addresses=["127.0.0.1"],
                         admin_password_hash=TEST_PASSWORD_HASH)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return fresh_settings(tmp_path / "data")


ServicesWith = Callable[..., Services]


@pytest.fixture
def services_with(settings: Settings) -> Iterator[ServicesWith]:
    """Builds the control service's objects on this test's store: ``services_with(**overrides)``
    replaces settings fields (``base=`` starts from other settings, e.g. ``sso_settings``;
    ``clock=`` a ``FakeClock`` for the time); every one built is closed after the test."""
    built: list[Services] = []

    def build(base: Settings | None = None, clock: Callable[[], float] = time.time,
              **overrides: Any) -> Services:
        chosen = dataclasses.replace(base or settings, **overrides)
        with fair_weather(chosen):
            opened = Services.from_settings(chosen, clock=clock)
        built.append(opened)
        return opened

    yield build
    for opened in reversed(built):
        opened.close()


@pytest.fixture
def services(services_with: ServicesWith) -> Services:
    """The control service's objects on this test's settings; a file that needs other settings
    overrides this fixture with ``services_with(...)``."""
    return services_with()


@pytest.fixture
def client(services: Services) -> FlaskClient:
    """Flask's test client of the control app on ``services``."""
    return create_app(services).test_client()


SSO_PLATFORM = "platform.example.test"
SSO_COOKIE_KEY = "platform-cookie-key-0123456789-abcdef"


@pytest.fixture(params=["sqlite", "dynamodb", pytest.param("nemesis", marks=pytest.mark.slow)])
def any_backend(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The settings on SQLite, or on dynalite (straight or through the nemesis) with a table
    prefix of its own."""
    if request.param == "sqlite":
        return settings
    endpoint = request.getfixturevalue("dynalite" if request.param == "dynamodb" else "nemesis")
    return dataclasses.replace(settings, storage_backend="dynamodb",
                               dynamodb_endpoint_url=endpoint,
                               dynamodb_table_prefix=f"s{uuid.uuid4().hex[:8]}_")


dynamodb_is_slow = pytest.mark.parametrize(
    "any_backend", ["sqlite", pytest.param("dynamodb", marks=pytest.mark.slow),
                    pytest.param("nemesis", marks=pytest.mark.slow)], indirect=True)
"""For a test on ``any_backend`` whose DynamoDB runs take seconds: they are in the full suite
only. (The nemesis runs of every test are: its weather is fault injection, like chaos.)"""


@pytest.fixture
def lag(any_backend: Settings, request: pytest.FixtureRequest) -> Callable[[float], None]:
    """Sets how long the store's indexes lag a write (through the nemesis; SQLite and dynalite
    never lag, and there a test runs the same steps without it)."""
    if request.node.callspec.params.get("any_backend") != "nemesis":
        return lambda seconds: None
    nemesis = request.getfixturevalue("dynamo_nemesis")

    def set_lag(seconds: float) -> None:
        nemesis.lag = seconds
    return set_lag


@pytest.fixture
def services_both(any_backend: Settings, services_with: ServicesWith) -> Services:
    """The control service's objects on each backend, with no cap on pending domains, closed
    after the test."""
    return services_with(base=any_backend, max_pending_domains=0)


def with_sso(settings: Settings) -> Settings:
    """SSO on; the platform's user comes from its signed cookie, so no platform server runs."""
    return dataclasses.replace(
        settings, sso_platform_url=f"https://{SSO_PLATFORM}",
        sso_platform_login_url=f"https://{SSO_PLATFORM}/login",
        sso_platform_cookie="platform_session", sso_platform_cookie_key=SSO_COOKIE_KEY)


@pytest.fixture
def sso_settings(settings: Settings) -> Settings:
    return with_sso(settings)


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
def serving(app: Any, port: int = 0) -> Iterator[str]:
    """A WSGI app served on loopback (on a free port by default) from a thread, for the length
    of the block."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def on_pebble(pebble: PebbleStack) -> dict[str, Any]:
    """Settings overrides for DNS answered by Pebble's challtestsrv and certificates from Pebble."""
    return {"dns_servers": ["127.0.0.1"], "dns_port": pebble.dns_port,
            "acme_directory_url": pebble.directory_url, "acme_ca_bundle": str(pebble.listener_ca)}


@pytest.fixture
def edge_node(tmp_path: Path) -> Iterator[Callable[..., EdgeNode]]:
    """Builds an EdgeNode running a real HAProxy, on free ports unless given; ``name`` keeps
    several apart. Each HAProxy is stopped by its PID after the test."""
    started: list[EdgeNode] = []

    def start(name: str = "edge", **options: Any) -> EdgeNode:
        options.setdefault("http_port", free_port())
        options.setdefault("https_port", free_port())
        node = EdgeNode(tmp_path / name, **options)
        started.append(node)
        return node

    yield start
    for node in reversed(started):
        node.stop()


@pytest.fixture
def node(edge_node: Callable[..., EdgeNode]) -> EdgeNode:
    """One edge node with HAProxy on free ports, stopped after the test."""
    return edge_node()


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[Callable[..., KnotServer]]:
    """Builds a knotd serving ``zones`` (zone name -> zone file text), optionally with a TSIG key
    for updates; stopped after the test."""
    started: list[KnotServer] = []

    def start(zones: dict[str, str], tsig: tuple[str, str] | None = None,
              name: str = "knot") -> KnotServer:
        server = KnotServer(tmp_path / name, zones, tsig=tsig)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


def stop_together(processes: Sequence[ManagedProcess | None]) -> None:
    """Stops these processes (by PID, SIGTERM then SIGKILL after 10 s) at the same time: a
    graceful stop takes seconds each (an agent stops its HAProxy, a replica drains)."""
    running = [process for process in processes if process is not None]
    threads = [threading.Thread(target=process.stop) for process in running]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def stop_haproxy(edge_dirs: list[Path]) -> None:
    """The nodes' HAProxy masters, by the PIDs their agents wrote, if they still run there:
    all signalled, then waited for together."""
    pids: list[int] = []
    for edge_dir in edge_dirs:
        try:
            pid = int((edge_dir / "master.pid").read_text())
            if str(edge_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
        except (OSError, ValueError):
            pass
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 15,
               f"HAProxy {pids} gone", interval=0.1)


LOAD_PAUSE = 0.04
"""Between two probes of an end-to-end test's load thread (chaos, topology, shards): four
threads make at most 100 requests a second. Without it they probed as fast as the machine let
them (test_chaos: 16,000 requests a run against 6,000), sampling the same fault windows more
densely at the cost of the whole suite's CPU, which runs beside."""


def wait_until(condition: Callable[[], object], timeout: float, what: str = "the condition",
               why: Callable[[], object] = lambda: "", interval: float = 0.5) -> None:
    """Polls ``condition`` until it holds; fails naming ``what`` (and ``why()``) after ``timeout``
    seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what} {why()}".rstrip()
        time.sleep(interval)


Activate = Callable[..., Item]


@pytest.fixture
def activate(request: pytest.FixtureRequest) -> Activate:
    """Takes a connected domain to active the way production does (``take_active``), with the
    session's Pebble when it needs one; ``others`` are taken there in the same worker rounds."""
    return lambda services, hostname, *others: take_active(
        services, [hostname, *others], lambda: request.getfixturevalue("pebble"))


def take_active(services: Services, hostnames: list[str],
                session_pebble: Callable[[], PebbleStack]) -> Item:
    """Takes connected domains to active the way production does: their DNS points at us (set
    in the session's challtestsrv, unless a registrar of the services wrote it at connect), the
    publisher asks for a check, then worker rounds issue their certificates from the CA of the
    services while an edge node reports serving (the session's Pebble probes HTTP-01 on the
    control app, served on its port meanwhile; another CA is asked over DNS-01).
    Returns the first domain, active, which has a certificate and a route."""
    answers: contextlib.AbstractContextManager[str] = contextlib.nullcontext("")
    for name in hostnames:
        domain = services.domains.get(name)
        assert domain is not None, f"connect {name} first"
        if not domain.get("automation"):
            pebble = session_pebble()
            assert services.settings.dns_port == pebble.dns_port, \
                "no registrar wrote its records: the services must ask challtestsrv"
            _create_records(pebble, domain["dns_records"])
            if services.settings.acme_directory_url == pebble.directory_url:
                answers = serving(create_app(services), pebble.http_port)
    with answers:
        for name in hostnames:
            services.lifecycle.check_now(name, actor="publisher")  # "check my DNS"
        wait_until(lambda: _worker_round(services, hostnames), 30,
                   f"{', '.join(hostnames)} active",
                   lambda: [services.domains.get(name) for name in hostnames], interval=0.05)
    for name in hostnames:
        assert services.certificates.get(name) is not None
        assert services.edge_state.routes.get(name) is not None
    return services.domains.get(hostnames[0])


def _create_records(pebble: PebbleStack, records: list[dict[str, str]]) -> None:
    """What the publisher does with the records the API asked for, in challtestsrv."""
    for record in records:
        if record["type"] == "CNAME":
            pebble.set_cname(record["name"], record["value"])
        elif record["type"] == "TXT":
            pebble.set_txt(record["name"], record["value"])
        else:
            assert record["type"] in ("A", "AAAA"), record
            pebble.dns(f"/add-{record['type'].lower()}",
                       {"host": record["name"].rstrip(".") + ".", "addresses": [record["value"]]})


def _worker_round(services: Services, hostnames: list[str]) -> bool:
    services.lifecycle.tick()
    # An edge node applied what the round published: port 80 answers, orders may go out.
    services.edge_state.report("activating-edge", services.edge_state.current_version(),
                               None, True)
    return all(services.domains.get(name)["status"] == "active" for name in hostnames)


def dynamo_client(endpoint: str) -> object:
    """botocore's default retries and timeouts, with the product's User-Agent (its cost)."""
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(user_agent=USER_AGENT))


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
def control(services_with: ServicesWith) -> Iterator[tuple[Services, str]]:
    """The control service's app over real HTTP on a free port: (its services, its URL)."""
    services = services_with()
    with serving(create_app(services)) as url:
        yield services, url


def opened_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """For a fixture parametrized "sqlite", "dynalite", "nemesis" or "moto_server": that backend, fresh
    (its own file, or its own table prefix on the shared server), closed afterwards."""
    if request.param == "sqlite":
        opened: Backend = SqliteBackend(str(tmp_path / "store.db"))
    else:
        opened = DynamoBackend(dynamo_client(request.getfixturevalue(request.param)),
                               prefix=f"t{uuid.uuid4().hex[:8]}_")
    yield opened
    opened.close()


@pytest.fixture(params=["sqlite", "dynalite", pytest.param("nemesis", marks=pytest.mark.slow)])
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
