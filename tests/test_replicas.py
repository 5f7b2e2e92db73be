"""What several control replicas need from each part: exact budgets under concurrency, tables
ready before use, one edge state whichever replica wrote it, agents that fail over and back
off, and a store outage that is waited out and logged once. The tests that start processes
(``edgectl serve``, an agent, a dynalite to stop) or sit out the store client's retries are
slow; the rest are the quick tier's."""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from werkzeug.wrappers import Request, Response

from admin_app import create_app
from certs.limits import BUDGETS, HOUR, BudgetExceeded, Limits, RateBudget
from control.replicas import LoneReplica
from control.wiring import Services
from control.worker import run_worker
from edge.agent import EdgeAgent
from edge.node import EdgeNode
from edgectl.migrate import check_schema
from kit.procs import ManagedProcess, free_port, start_listening, stop_all, wait_for_port
from kit.settings import Settings, load_settings
from store import Backend, StoreError, TableSpec
from store.dynamo import DynamoBackend
from tests.conftest import dynalite_command, dynamo_client, serving, wait_until
from tests.dynamo_nemesis import Nemesis

def test_the_budget_holds_exactly_under_concurrency_at_a_constant_cost(
        backend: Backend) -> None:
    now = [1_000_000 * HOUR + 10.0]
    budget = RateBudget(backend.table(BUDGETS), "acct", Limits(certs_per_domain_7d=5),
                        clock=lambda: now[0])
    won: list[int] = []

    def attempt(n: int) -> None:
        try:
            budget.reserve([f"h{n}.example.com"])
            won.append(n)
        except BudgetExceeded:
            pass

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 5, won
    with pytest.raises(BudgetExceeded, match="5 certificates in 7 days for example.com") as e:
        budget.reserve(["late.example.com"])
    assert e.value.retry_after > now[0]
    budget.not_issued(["h0.example.com"])  # a failed order frees its certificate slot
    before = backend.requests
    budget.reserve(["again.example.com"])
    assert backend.requests - before <= 8, "two windows read, one written: not 170 buckets"
    now[0] += 7 * 24 * HOUR  # the next window: the previous one still counts
    with pytest.raises(BudgetExceeded):
        budget.reserve(["next.example.com"])
    now[0] += 7 * 24 * HOUR  # two windows on: free again
    budget.reserve(["later.example.com"])


@pytest.fixture(params=["dynalite", pytest.param("nemesis", marks=pytest.mark.slow)])
def store_url(request: pytest.FixtureRequest) -> str:
    """dynalite, straight or behind the nemesis in DynamoDB's weather (throttling, errors,
    slowness, and index queries lagging up to 200 ms)."""
    url: str = request.getfixturevalue(request.param)
    if request.param == "nemesis":
        lagging(request.getfixturevalue("dynamo_nemesis"))
    return url


def lagging(nemesis: Nemesis) -> None:
    nemesis.lag, nemesis.lag_random = 0.2, True  # the nemesis fixture resets it after


@pytest.fixture
def replicas_backend(any_backend: Settings, request: pytest.FixtureRequest) -> Settings:
    """``any_backend``; through the nemesis, with index queries lagging too."""
    if any_backend.storage_backend == "dynamodb" \
            and any_backend.dynamodb_endpoint_url != request.getfixturevalue("dynalite"):
        lagging(request.getfixturevalue("dynamo_nemesis"))
    return any_backend


def test_tables_opened_by_replicas_starting_at_once_are_ready(store_url: str) -> None:
    dynalite = store_url
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    spec = TableSpec("things", key="id", indexes=("owner",))
    errors: list[BaseException] = []

    def replica(n: int) -> None:
        try:
            table = DynamoBackend(dynamo_client(dynalite), prefix=prefix).table(spec)
            table.put({"id": f"r{n}", "owner": "o"})
            assert table.get(f"r{n}") is not None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_the_edge_state_does_not_depend_on_which_replica_wrote_it(
        replicas_backend: Settings) -> None:
    shared = dataclasses.replace(replicas_backend,
                                 control_servers=["10.0.0.1:8000", "10.0.0.2:8000"])
    first = Services.from_settings(dataclasses.replace(shared, listen_port=8001))
    second = Services.from_settings(dataclasses.replace(shared, listen_port=8002))
    try:
        first.publisher.refresh()
        version = first.edge_state.current_version()
        second.publisher.refresh()
        assert second.edge_state.current_version() == version, "no flip-flop"
        assert first.edge_state.meta()["config"]["control_servers"] == [  # type: ignore[index]
            "10.0.0.1:8000", "10.0.0.2:8000"]
    finally:
        first.close()
        second.close()


def test_a_replica_without_control_servers_says_so_when_another_publishes(
        replicas_backend: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Two replicas without ``control_servers`` each publish their own address, and the edge
    state flips between them every round: the one that sees the other's list warns, once,
    naming the setting."""
    first = Services.from_settings(dataclasses.replace(replicas_backend, listen_port=8001))
    second = Services.from_settings(dataclasses.replace(replicas_backend, listen_port=8002))
    try:
        alone = LoneReplica(second.edge_state, second.settings.edge_control_servers, every=0)
        second.publisher.refresh()
        with caplog.at_level(logging.WARNING, logger="control.replicas"):
            alone.tick()  # its own list: nothing to say
            first.publisher.refresh()
            alone.tick()
            alone.tick()  # said once
        warnings = [r.getMessage() for r in caplog.records if r.name == "control.replicas"]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("control_servers (EDGE_CONTROL_SERVERS) is not set")
        assert "127.0.0.1:8001" in warnings[0] and "127.0.0.1:8002" in warnings[0]
    finally:
        first.close()
        second.close()


def test_an_agent_moves_to_a_replica_that_answers(control: tuple[Services, str],
                                                  tmp_path: Path) -> None:
    services, url = control
    services.publisher.refresh()
    node = EdgeNode(tmp_path / "edge", http_port=free_port(), https_port=free_port())
    agent = EdgeAgent(node, [f"http://127.0.0.1:{free_port()}", url], "edge-token-0123456789")
    try:
        assert agent.sync()
        assert node.applied_version == services.edge_state.current_version()
    finally:
        node.stop()


def test_an_agent_backs_off_while_the_control_service_is_away(tmp_path: Path) -> None:
    calls: list[float] = []

    @Request.application
    def away(request: Request) -> Response:
        calls.append(time.monotonic())
        return Response("down for maintenance", status=503)

    node = EdgeNode(tmp_path / "edge", http_port=free_port(), https_port=free_port())
    stop = threading.Event()
    with serving(away) as url:
        agent = EdgeAgent(node, url, "edge-token-0123456789")
        runner = threading.Thread(target=agent.run, args=(0.05, stop))
        runner.start()
        time.sleep(3.0)
        stop.set()
        runner.join(35)
    node.stop()
    rounds = len(calls)  # each round asks for the state, then reports
    # Without backoff: about 3 / 0.05 = 60 rounds. With it, the waits double from 0.05 s.
    assert 2 <= rounds <= 2 * 8, rounds


def test_worker_logs_a_store_outage_once_when_it_starts_and_once_when_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = [0]
    stop = threading.Event()

    def step() -> None:
        calls[0] += 1
        if calls[0] <= 6:
            raise StoreError("down")
        if calls[0] >= 9:
            stop.set()

    with caplog.at_level(logging.WARNING, logger="control.worker"):
        run_worker([step], 0.01, stop)
    messages = [r.getMessage() for r in caplog.records if r.name == "control.worker"]
    assert len(messages) == 2, messages
    assert "does not answer" in messages[0] and "answers again" in messages[1]


@pytest.mark.slow
def test_serve_started_during_a_store_outage_waits_for_the_store(
        tmp_path: Path, settings: Settings) -> None:
    port, control_port = free_port(), free_port()
    env = {"EDGE_API_TOKEN": settings.api_token, "EDGE_EDGE_TOKEN": settings.edge_token,
           "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "EDGE_DATA_DIR": str(tmp_path / "data"), "EDGE_STORAGE_BACKEND": "dynamodb",
           "EDGE_DYNAMODB_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "EDGE_LISTEN_PORT": str(control_port), "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test"}
    serve = ManagedProcess("serve", [sys.executable, "-m", "edgectl", "serve"],
                           tmp_path / "serve.log", env=env)
    store = None
    try:
        deadline = time.monotonic() + 90
        while "the store does not answer" not in serve.tail(50):  # after botocore's retries
            assert serve.poll() is None, serve.tail()
            assert time.monotonic() < deadline, serve.tail()
            time.sleep(0.5)
        time.sleep(2.0)
        assert serve.poll() is None, "it waits for the store instead of exiting"
        store = ManagedProcess("dynalite", dynalite_command(port, tmp_path / "db"),
                               tmp_path / "dynalite.log")
        wait_for_port(control_port, process=serve, timeout=90)
        assert requests.get(f"http://127.0.0.1:{control_port}/healthz", timeout=10).ok
        log = (tmp_path / "serve.log").read_text()
        assert log.count("the store does not answer") == 1, log
    finally:
        serve.stop()
        if store is not None:
            store.stop()


@pytest.mark.slow
def test_serve_meeting_a_store_outage_while_it_builds_its_app_waits_for_the_store(
        tmp_path: Path, settings: Settings, dynamo_nemesis: Nemesis) -> None:
    """The admin pages open their tables after the services have: a store that stops
    answering between the two (the chaos test met it) is waited for, not a crash."""
    env = {"EDGE_API_TOKEN": settings.api_token, "EDGE_EDGE_TOKEN": settings.edge_token,
           "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "EDGE_DATA_DIR": str(tmp_path / "data"), "EDGE_STORAGE_BACKEND": "dynamodb",
           "EDGE_DYNAMODB_ENDPOINT_URL": dynamo_nemesis.url,
           "EDGE_DYNAMODB_TABLE_PREFIX": f"t{uuid.uuid4().hex[:8]}_",
           "EDGE_LISTEN_PORT": str(free_port()), "EDGE_DRAIN_SECONDS": "0",
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    dynamo_nemesis.reset()
    check_schema(load_settings(env=env))  # a store in use: serve's first look opens few tables
    dynamo_nemesis.tables, dynamo_nemesis.fail_rate = ("admin_sessions",), 1.0
    dynamo_nemesis.failures = ("internal",)
    serve = ManagedProcess("serve", [sys.executable, "-m", "edgectl", "serve"],
                           tmp_path / "serve.log", env=env)
    try:
        wait_until(lambda: "the store does not answer" in serve.tail(50)
                   or serve.poll() is not None, timeout=90)
        assert serve.poll() is None, serve.tail()
        assert "admin_sessions" in serve.tail(50)
        dynamo_nemesis.reset()
        wait_for_port(int(env["EDGE_LISTEN_PORT"]), process=serve, timeout=90)
        port = env["EDGE_LISTEN_PORT"]
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).ok
        assert requests.get(f"http://127.0.0.1:{port}/admin/login", timeout=10).ok
    finally:
        dynamo_nemesis.reset()
        serve.stop()


@pytest.mark.slow
def test_the_api_answers_503_while_the_store_is_away(tmp_path: Path, settings: Settings) -> None:
    store, port = start_listening(lambda port: ManagedProcess(
        "dynalite", dynalite_command(port, tmp_path / "db"), tmp_path / "dynalite.log"))
    services = Services.from_settings(dataclasses.replace(
        settings, storage_backend="dynamodb", dynamodb_endpoint_url=f"http://127.0.0.1:{port}",
        dynamodb_table_prefix="away_"))
    try:
        with serving(create_app(services)) as url:
            assert requests.get(f"{url}/healthz", timeout=30).ok
            store.stop()
            # Both at once: each sits out the store client's retries (seconds) before its 503.
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(lambda path: requests.get(
                    f"{url}{path}", timeout=60,
                    headers={"Authorization": f"Bearer {settings.api_token}"}),
                    ("/healthz", "/api/v1/domains/blog.example.com")))
            for response in answers:
                assert response.status_code == 503, response.text
                assert response.json()["error"].startswith("the store is unavailable")
                assert response.headers["Retry-After"] == "2"
    finally:
        services.close()
        store.stop()


def haproxy_master(edge_dir: Path) -> tuple[int, int]:
    """The node's HAProxy master: (its PID, how many reloads it has done), from ``show proc``."""
    line = EdgeNode(edge_dir).haproxy.master_command("show proc").splitlines()[1].split()
    assert line[1] == "master", line
    return int(line[0]), int(line[2])


@pytest.mark.slow
def test_a_stopped_agent_leaves_haproxy_serving_and_only_stop_node_stops_it(
        control: tuple[Services, str], tmp_path: Path) -> None:
    """The agent does not own HAProxy's life: a SIGTERM, even in a long poll, stops the
    agent at once and HAProxy serves on; the next agent adopts the master without a reload;
    `edgectl agent stop-node` stops both, leaving no HAProxy behind."""
    services, url = control
    services.publisher.refresh()
    https_port = free_port()
    env = {"EDGE_EDGE_TOKEN": services.settings.edge_token, "EDGE_CONTROL_URL": url,
           "EDGE_EDGE_WATCH_SECONDS": "25", "EDGE_EDGE_DIR": str(tmp_path / "edge"),
           "EDGE_EDGE_HTTP_PORT": str(free_port()), "EDGE_EDGE_HTTPS_PORT": str(https_port),
           "EDGE_EDGE_STATS_PORT": str(free_port())}

    def start_agent() -> ManagedProcess:
        return ManagedProcess("agent", [sys.executable, "-m", "edgectl", "agent"],
                              tmp_path / "agent.log", env=env)

    agent, stop_node = start_agent(), None
    try:
        wait_for_port(https_port, process=agent, timeout=60)  # HAProxy serves
        wait_until(lambda: services.edge_state.watch.waiting == 1, 60,
                   "the agent's long poll (25 s, no change)", interval=0.1)
        master = haproxy_master(tmp_path / "edge")
        second = subprocess.run([sys.executable, "-m", "edgectl", "agent"], timeout=60,
                                capture_output=True, text=True, env={**os.environ, **env})
        assert second.returncode == 1 and second.stderr.strip() == (
            f"edgectl: another agent (pid {agent.pid}) runs for the node in "
            f"{tmp_path / 'edge'}"), second.stderr
        stopped = time.monotonic()
        agent.popen.send_signal(signal.SIGTERM)
        assert agent.popen.wait(10) == 0, agent.tail()
        # Loose on purpose: it must not sit out its 25 s long poll.
        assert time.monotonic() - stopped < 12, "out of its long poll at once"
        socket.create_connection(("127.0.0.1", https_port), timeout=2).close()  # serving
        assert haproxy_master(tmp_path / "edge") == master
        restarted = time.time()
        agent = start_agent()
        # It reports when it starts, not after its first long poll (25 s here) returns.
        wait_until(lambda: any(node["in_sync"] and node["reported_at"] > restarted
                               for node in services.edge_state.list_nodes()), 20,
                   "the new agent to adopt the master and report", interval=0.2)
        assert agent.poll() is None, agent.tail()
        assert haproxy_master(tmp_path / "edge") == master, "adopted, and not reloaded"
        stop_node = subprocess.run([sys.executable, "-m", "edgectl", "agent", "stop-node"],
                                   timeout=60, capture_output=True, text=True,
                                   env={**os.environ, **env})
        assert stop_node.returncode == 0, stop_node.stderr
        assert stop_node.stdout.strip() == (f"stopped the agent (pid {agent.pid}) and HAProxy "
                                            f"(pid {master[0]}) of the node in {tmp_path / 'edge'}")
        assert agent.popen.wait(5) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", https_port), timeout=2).close()
        again = subprocess.run([sys.executable, "-m", "edgectl", "agent", "stop-node"],
                               timeout=60, capture_output=True, text=True,
                               env={**os.environ, **env})
        assert again.stdout.strip() == (f"no agent or HAProxy runs for the node in "
                                        f"{tmp_path / 'edge'}")
    finally:
        agent.stop()
        if stop_node is None:
            EdgeNode(tmp_path / "edge").stop()


@pytest.mark.slow
def test_serve_and_shortlinks_stop_on_time_while_the_store_is_down(
        tmp_path: Path, settings: Settings) -> None:
    """A store that does not answer holds requests, the worker's round and the last visit
    flush: none of them holds the stop. Both are gone within their drain time + 2 s of a
    SIGTERM (the operator's promise; the product's own deadlines are drain + shutdown and
    4.5 s for the short-link app), with requests in flight on both."""
    store, port = start_listening(lambda port: ManagedProcess(
        "dynalite", dynalite_command(port, tmp_path / "db"), tmp_path / "dynalite.log"))
    control_port, links_port = free_port(), free_port()
    env = {"EDGE_API_TOKEN": settings.api_token, "EDGE_EDGE_TOKEN": settings.edge_token,
           "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "EDGE_DATA_DIR": str(tmp_path / "data"), "EDGE_STORAGE_BACKEND": "dynamodb",
           "EDGE_DYNAMODB_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "EDGE_LISTEN_PORT": str(control_port), "EDGE_SHORTLINKS_PORT": str(links_port),
           "EDGE_SHORT_DOMAINS": "go.example.test", "EDGE_DRAIN_SECONDS": "1",
           "EDGE_SHUTDOWN_SECONDS": "1", "EDGE_WORKER_INTERVAL": "0.2",
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    serve = ManagedProcess("serve", [sys.executable, "-m", "edgectl", "serve"],
                           tmp_path / "serve.log", env=env)
    links = ManagedProcess("shortlinks", [sys.executable, "-m", "edgectl", "shortlinks",
                                          "--workers", "2"], tmp_path / "links.log", env=env)
    try:
        wait_for_port(control_port, process=serve, timeout=90)
        wait_for_port(links_port, process=links, timeout=90)
        assert requests.get(f"http://127.0.0.1:{links_port}/nope", timeout=30,
                            headers={"Host": "go.example.test"}).status_code == 404
        store.stop()
        api = {"Authorization": f"Bearer {settings.api_token}", "Host": "go.example.test"}

        def ask(url: str) -> None:
            with contextlib.suppress(requests.RequestException):  # cut at the deadline
                requests.get(url, timeout=30, headers=api)

        held = [threading.Thread(target=ask, args=(url,), daemon=True)
                for url in (f"http://127.0.0.1:{control_port}/api/v1/domains/a.example.com",
                            f"http://127.0.0.1:{links_port}/other")]
        for request in held:
            request.start()
        time.sleep(0.5)  # both wait on the store now
        signalled = time.monotonic()
        for process in (serve, links):
            process.popen.send_signal(signal.SIGTERM)
        assert links.popen.wait(10) == 0, links.tail()
        # Loose bounds on purpose: neither sits out the requests held on the stopped store.
        assert time.monotonic() - signalled < 10, links.tail()  # no drain of its own
        assert serve.popen.wait(10) == 0, serve.tail()
        assert time.monotonic() - signalled < 12, serve.tail()  # EDGE_DRAIN_SECONDS 1
    finally:
        stop_all([serve, links, store])
