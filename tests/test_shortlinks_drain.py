"""Stopping `edgectl shortlinks` drops no request: a request the app has begun to receive when
SIGTERM comes is answered whole (with ``Connection: close``) before the app closes the
connection, and the app still exits 0. Through a real HAProxy edge, the app restarted under
load costs no visitor a 502."""
from __future__ import annotations

import contextlib
import dataclasses
import select
import http.client
import signal
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cryptography.fernet import Fernet

from control.wiring import Services
from edge.node import EdgeNode
from edge.state import DesiredState, Route
from devtools.dynalite import dynalite_command
from kit.procs import ManagedProcess, free_port, wait_for_port
from kit.settings import load_settings
from kit.x509 import self_signed
from tests.conftest import fresh_settings, wait_until

HOST = "go.drain.test"
TARGETS = {"limited": "https://example.com/limited", "plain": "https://example.com/plain"}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The app's environment, with a store holding a visit-limited link (a store request per
    visit, on a pool thread) and a plain one (answered from memory once cached)."""
    env = {"EDGE_API_TOKEN": "drain-token-0123456789", "EDGE_EDGE_TOKEN": "drain-edge-0123456789",
           "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "EDGE_DATA_DIR": str(tmp_path / "data"), "EDGE_SHORT_DOMAINS": HOST,
           "EDGE_SHORTLINKS_PORT": str(free_port())}
    services = Services.from_settings(load_settings(env=env))
    try:
        services.links.create(HOST, TARGETS["limited"], "pub_1", slug="limited",
                              max_visits=10**6)
        services.links.create(HOST, TARGETS["plain"], "pub_1", slug="plain")
    finally:
        services.close()
    return env


def start_app(env: dict[str, str], log: Path, workers: int) -> ManagedProcess:
    app = ManagedProcess("shortlinks", [sys.executable, "-m", "edgectl", "shortlinks",
                                        "--workers", str(workers), "--threads", "2"],
                         log, env=env)
    wait_for_port(int(env["EDGE_SHORTLINKS_PORT"]), process=app, timeout=60)
    return app


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def visit(port: int, slug: str, timeout: float = 10) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", f"/{slug}", headers={"Host": HOST})
        response = conn.getresponse()
        response.read()
        return response
    finally:
        conn.close()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("slug", ["limited", "plain"])
def test_a_request_begun_before_sigterm_is_answered_whole_and_the_app_exits_0(
        env: dict[str, str], tmp_path: Path, workers: int, slug: str) -> None:
    port = int(env["EDGE_SHORTLINKS_PORT"])
    app = start_app(env, tmp_path / "app.log", workers)
    try:
        for _ in range(workers * 2):  # cached in some worker: answered on its I/O thread there
            assert visit(port, slug).status == 302
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET /{slug} HTTP/1.1\r\nHost: {HOST}\r\n".encode())  # no blank line yet
        app.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(port), 10, "the listener closed", interval=0.02)
        # The request's end arrives while the app stops: a moment after, well inside its 2 s
        # drain however slow a loaded machine makes this test.
        time.sleep(0.2)
        sock.sendall(b"\r\n")
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except (ConnectionError, http.client.RemoteDisconnected) as exc:  # the old app's way
            app.popen.wait(30)
            raise AssertionError(f"no answer: {exc!r}\n{app.tail()}") from exc
        assert response.status == 302
        assert response.getheader("Location") == TARGETS[slug]
        assert response.getheader("Connection") == "close"  # the client sends no more on it
        response.read()
        assert sock.recv(1) == b"", "the app closes the connection after the answer"
        sock.close()
        assert app.popen.wait(30) == 0, app.tail()
    finally:
        app.stop()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_the_app_started_during_a_store_outage_waits_for_the_store(
        env: dict[str, str], tmp_path: Path, workers: int) -> None:
    """As `edgectl serve` does: it says so once and serves when the store answers (it
    exited 1 with one process; with more, each process died and was forked again every
    second, a traceback each time). Meanwhile its port refuses connections, so HAProxy
    tries another server: it used to queue them, unanswered, until the store came back."""
    store_port = free_port()
    env = {**env, "EDGE_STORAGE_BACKEND": "dynamodb", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test",
           "EDGE_DYNAMODB_ENDPOINT_URL": f"http://127.0.0.1:{store_port}"}
    app = ManagedProcess("shortlinks", [sys.executable, "-m", "edgectl", "shortlinks",
                                        "--workers", str(workers)], tmp_path / "app.log",
                         env=env)
    store = None
    try:
        wait_until(lambda: "the store does not answer" in app.output(), 90,
                   "the app saying the store does not answer", app.tail)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(env["EDGE_SHORTLINKS_PORT"])), 5)
        store = ManagedProcess("dynalite", dynalite_command(store_port, None),
                               tmp_path / "dynalite.log")
        wait_for_port(store_port, process=store)
        services = Services.from_settings(load_settings(env=env))
        try:
            services.links.create(HOST, TARGETS["plain"], "pub_1", slug="plain")
        finally:
            services.close()
        wait_until(lambda: "the store answers" in app.output(), 90, "the app starting",
                   app.tail)
        wait_for_port(int(env["EDGE_SHORTLINKS_PORT"]), process=app)
        response = visit(int(env["EDGE_SHORTLINKS_PORT"]), "plain")
        assert (response.status, response.getheader("Location")) == (302, TARGETS["plain"])
        assert app.poll() is None
        assert 1 <= app.output().count("the store does not answer") <= workers, app.tail()
        assert "Traceback" not in app.output(), app.tail()
    finally:
        app.stop()
        if store is not None:
            store.stop()


def test_a_stop_that_wakes_the_loop_after_it_ended_fails_nothing() -> None:
    """On a loaded machine the loop may see ``stop`` by its poll's timeout and end before the
    stopping thread pulls the trigger to wake it. Pulling it then must not fail: it did
    (EBADF, the loop had closed it), and the worker died without writing its last visits
    (the app exited 1; a short-link test lost its three visits)."""
    from shortlinks.inline import create_server, serve_until

    server = create_server(lambda environ, start_response: [], lambda host, slug: False,
                           threads=1, host="127.0.0.1", port=0)
    stop = threading.Event()
    stop.set()
    serve_until(server, stop, drain=0.1)  # sees ``stop`` at once and ends
    server.pull_trigger()
    server.trigger.close()


def test_an_answer_goes_out_in_one_send_so_a_killed_app_leaves_all_or_nothing() -> None:
    """A worker killed between an answer's head and its body left HAProxy with a head it had
    passed on and could not retry. Each answer, from the loop thread (a link in memory) or a
    pool thread (the rest), now goes out in one send; the server's sends are watched."""
    from shortlinks.inline import create_server, serve_until

    sends: list[int] = []

    def watch(frame: object, event: str, arg: Any) -> None:
        if event == "c_call" and getattr(arg, "__name__", "") == "send" and \
                isinstance(getattr(arg, "__self__", None), socket.socket):
            sends.append(1)

    def app(environ: dict[str, Any], start_response: Callable[..., object]) -> list[bytes]:
        body = b"moved" if environ["PATH_INFO"] != "/empty" else b""
        start_response("302 Found", [("Location", "https://example.com/"),
                                     ("Content-Length", str(len(body)))])
        return [body]

    stop = threading.Event()
    threading.setprofile(watch)  # the server's threads start with it
    try:
        server = create_server(app, lambda host, slug: slug == "inline", threads=1,
                               host="127.0.0.1", port=0)
        thread = threading.Thread(target=serve_until, args=(server, stop, 1.0))
        thread.start()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    try:
        for slug in ("inline", "pooled", "empty"):
            sends.clear()
            answer = visit(server.effective_port, slug)
            assert answer.status == 302 and answer.getheader("Location") == \
                "https://example.com/"
            assert len(sends) == 1, (slug, sends)  # counted as called: before it arrived
        assert server.task_dispatcher.served_inline == 1
    finally:
        stop.set()
        server.pull_trigger()
        thread.join(10)
        server.trigger.close()


def test_a_last_flush_that_outlasts_the_stop_is_not_cut_with_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process's stop gives its last visit counts ``FLUSH_SECONDS``; a flush still writing
    then (many links, a slow store) is left to finish or to die with the process. The store
    was closed under it: the flusher failed with a traceback and wrote nothing more."""
    from shortlinks.serve import _Worker

    failed: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", failed.append)
    settings = dataclasses.replace(fresh_settings(tmp_path / "data"), short_domains=[HOST])
    services = Services.from_settings(settings)
    try:
        slugs = [f"s{n}" for n in range(1000)]
        for slug in slugs:
            services.links.create(HOST, TARGETS["plain"], "pub_1", slug=slug)
        worker = _Worker(settings)
        for slug in slugs:
            assert worker.resolver.resolve(HOST, slug).status == 302
        worker.close(timeout=0.0)  # the last round has not even begun
        worker.flusher.join(60)
        assert not worker.flusher.is_alive()
        assert failed == [], [str(args.exc_value) for args in failed]
        assert all(services.links.get(HOST, slug).get("visits") == 1 for slug in slugs)
        worker.backend.close()
    finally:
        services.close()


def test_a_client_that_never_finishes_its_request_holds_the_stop_no_longer_than_the_drain(
        env: dict[str, str], tmp_path: Path) -> None:
    """The worker gives up on it at its deadline (and says so), the parent waits for that
    worker rather than killing it, and the app exits 0."""
    port = int(env["EDGE_SHORTLINKS_PORT"])
    app = start_app(env, tmp_path / "app.log", 2)
    try:
        # A worker serves: a request the kernel queued before a worker's first accept is
        # never begun, and the stop resets it unanswered.
        assert visit(port, "none-yet", timeout=60).status == 404
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET /limited HTTP/1.1\r\nHost: {HOST}\r\n".encode())
        app.popen.send_signal(signal.SIGTERM)
        assert app.popen.wait(30) == 0, app.tail()
        assert "1 request(s) not answered within the 2.0 s drain" in app.output()
        assert "did not stop in time" not in app.output()
        sock.close()
    finally:
        app.stop()


def test_a_visit_left_in_the_listen_queue_when_the_app_stops_is_answered_by_the_next_app(
        env: dict[str, str], tmp_path: Path) -> None:
    """The last process to close the listening socket resets a connection the kernel queued
    after that process's last ``accept``: HAProxy has connected and sent the request, and
    gets a reset. That is an empty response, which HAProxy retries (``retry-on``) until the
    next app answers; it was a 502 (the restart test under load met it)."""
    port = int(env["EDGE_SHORTLINKS_PORT"])
    node = EdgeNode(tmp_path / "edge", http_port=free_port(), https_port=free_port())
    listener = socket.create_server(("127.0.0.1", port))  # the app's, never accepting
    app = None
    try:
        node.apply(DesiredState((Route(HOST, "pub_1", self_signed(HOST)[1]),),
                                ("127.0.0.1:9",), ("127.0.0.1:9",), short_domains=(HOST,),
                                shortlink_servers=(f"127.0.0.1:{port}",)))
        answers: list[str | None] = []
        visitor = threading.Thread(target=lambda: answers.append(Load(
            node.layout.https_port).visit()))
        visitor.start()
        assert select.select([listener], [], [], 30)[0], "HAProxy's connection was queued"
        listener.close()  # the queued connection is reset
        app = start_app(env, tmp_path / "app.log", 1)
        visitor.join(30)
        assert answers == [None], answers
    finally:
        listener.close()
        if app is not None:
            app.stop()
        node.stop()


@pytest.mark.slow
def test_restarting_the_app_behind_haproxy_under_load_fails_no_visit(
        env: dict[str, str], tmp_path: Path) -> None:
    port = int(env["EDGE_SHORTLINKS_PORT"])
    node = EdgeNode(tmp_path / "edge", http_port=free_port(), https_port=free_port())
    app = start_app(env, tmp_path / "app.log", 2)
    load = Load(node.layout.https_port)
    try:
        node.apply(DesiredState((Route(HOST, "pub_1", self_signed(HOST)[1]),),
                                ("127.0.0.1:9",), ("127.0.0.1:9",), short_domains=(HOST,),
                                shortlink_servers=(f"127.0.0.1:{port}",)))
        wait_until(lambda: load.visit() is None, 30, "the link answered through the edge")
        with load.running(threads=4):
            for n in range(3):
                load.wait_for_more(50)
                app.popen.send_signal(signal.SIGTERM)
                assert app.popen.wait(30) == 0, app.tail()
                app.stop()
                app = start_app(env, tmp_path / f"app{n}.log", 2)
            load.wait_for_more(50)
    finally:
        app.stop()
        node.stop()
    assert not load.failures, load.failures[:10]


class Load:
    """Visits of the limited link through the edge (a new client connection each), each
    answer checked."""

    def __init__(self, https_port: int) -> None:
        self.port = https_port
        self.context = ssl._create_unverified_context()
        self.done = threading.Event()
        self.count = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def visit(self) -> str | None:
        """None if the visit was redirected to the link's target, else what came instead."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=15,
                                           context=self.context)
        conn.sock = self.context.wrap_socket(
            socket.create_connection(("127.0.0.1", self.port), 15), server_hostname=HOST)
        try:
            conn.request("GET", "/limited", headers={"Host": HOST})
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            return repr(exc)
        finally:
            conn.close()
        location = response.getheader("Location")
        return None if (response.status, location) == (302, TARGETS["limited"]) else \
            f"{response.status} {location}"

    def run(self) -> None:
        while not self.done.is_set():
            wrong = self.visit()
            with self.lock:
                self.count += 1
                if wrong is not None:
                    self.failures.append(wrong)

    def wait_for_more(self, visits: int) -> None:
        until = self.count + visits
        wait_until(lambda: self.count >= until, 60, f"{visits} more visits", interval=0.05)

    @contextlib.contextmanager
    def running(self, threads: int) -> Iterator[None]:
        started = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for thread in started:
            thread.start()
        try:
            yield
        finally:
            self.done.set()
            for thread in started:
                thread.join(30)
