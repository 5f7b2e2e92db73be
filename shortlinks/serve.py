"""`edgectl shortlinks`: the redirect app under a production WSGI server.

waitress (pure Python, keep-alive, an asyncore loop in front of a few threads), one process per
core sharing one listening socket: bench/shortlinks_throughput.py measured it against gunicorn,
werkzeug's development server and bjoern (docs/benchmarks.md). Each process builds its own store
connection and resolver after the fork, flushes buffered visit counts every two seconds and
once more when it stops. On SIGTERM each process stops accepting, answers every request it has
begun to receive (``DRAIN_SECONDS`` at most, shortlinks/inline.py ``serve_until``), then writes
its last visit counts (``FLUSH_SECONDS`` at most). A cached plain link is answered on
waitress's I/O thread, without the hand-off to a pool thread (shortlinks/inline.py).

Any other WSGI server can run ``shortlinks.serve:wsgi_app()`` (settings from the environment).
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any, Callable, Iterable

from kit.backoff import until_it_answers
from kit.procs import wait_for_stop
from kit.settings import Settings, load_settings
from shortlinks.app import make_app
from shortlinks.leases import LINK_LEASES, VisitLeases
from shortlinks.links import LINK_CHANGES, LINKS
from shortlinks.resolver import Resolver
from shortlinks.stats import LINK_DAYS, VisitStats
from store import StoreError, open_backend

log = logging.getLogger(__name__)
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
SERVERS = ("waitress", "werkzeug")
DRAIN_SECONDS = 2.0
"""How long a stopping process answers the requests it has begun to receive: a visit-limited
link waits for its store request; a stalled client does not hold the stop up longer."""
FLUSH_SECONDS = 1.0
"""How long the last round of visit counts may wait for the store."""
STOP_SECONDS = DRAIN_SECONDS + FLUSH_SECONDS + 1.0
"""A worker still running this long after the stop is killed (edgectl's ``SHORTLINKS_GRACE``
is longer)."""


class _Worker:
    """What one server process holds: its store connection (opened after the fork), its
    resolver and app, and the flusher's stop switch. It opens only the link tables
    (the links, their change counter, their days, the visit leases)."""

    def __init__(self, settings: Settings) -> None:
        self.backend = open_backend(settings)
        try:
            self.resolver = self._resolver()
        except BaseException:  # the store does not answer: nothing left open
            self.backend.close()
            raise
        self.app: WSGIApp = make_app(self.resolver)
        self.stop = threading.Event()
        self.flusher = self.resolver.start_flusher(self.stop)

    def _resolver(self) -> Resolver:
        links = self.backend.table(LINKS)
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return Resolver(links, changes=self.backend.table(LINK_CHANGES),
                        stats=VisitStats(self.backend.table(LINK_DAYS)),
                        leases=VisitLeases(links, self.backend.table(LINK_LEASES), owner))

    def close(self, timeout: float = FLUSH_SECONDS) -> None:
        """The flusher's last round writes what is left, if the store answers within
        ``timeout`` seconds: a stop is not held up by a store that is away. A round still
        writing then is left to the process's exit with the store open under it: closing the
        store would cut it with an error in its thread (SQLite: "Cannot operate on a closed
        database")."""
        self.stop.set()
        self.flusher.join(timeout)
        if self.flusher.is_alive():
            log.warning("the last visit counts were not written within %.1f s", timeout)
            return
        self.backend.close()


def wsgi_app() -> WSGIApp:
    """The redirect app for any WSGI server (e.g. ``gunicorn 'shortlinks.serve:wsgi_app()'``)."""
    worker = _Worker(load_settings())
    atexit.register(worker.close)
    return worker.app


def serve(settings: Settings, stop: threading.Event, server: str = "waitress",
          workers: int = 0, threads: int = 4) -> None:
    """Serve until ``stop`` is set (by the SIGTERM/SIGINT handler of the caller)."""
    if server == "werkzeug":
        _werkzeug(settings, stop)
        return
    if server != "waitress":
        raise ValueError(f"server must be one of {', '.join(SERVERS)}")
    listener = _bound(settings.listen_host, settings.shortlinks_port)
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        _waitress(settings, listener, threads, stop)
        return
    children = {_fork(settings, listener, threads, stop) for _ in range(workers)}
    log.info("short links on http://%s:%d, %d waitress processes", settings.listen_host,
             settings.shortlinks_port, workers)
    while not stop.wait(1.0):  # a worker that dies is replaced (the listener stays open here)
        for pid in _reap():
            log.warning("short-link worker %d exited; starting another", pid)
            children.discard(pid)
            children.add(_fork(settings, listener, threads, stop))
    listener.close()  # the port closes with the workers' copies: refused, not queued
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    _wait_for(children, timeout=STOP_SECONDS)


def _bound(host: str, port: int) -> socket.socket:
    """The app's port, bound here (a port in use fails at once) and not listening: a worker
    listens once it serves, after its store answered. Until then a connection is refused, so
    HAProxy asks another server or answers 503, rather than leaving the visitor queued in the
    backlog of a process waiting out a store outage."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except BaseException:
        listener.close()
        raise
    return listener


def _wait_for(children: set[int], timeout: float) -> None:
    """Reap the workers; one still running after ``timeout`` seconds is killed."""
    deadline = time.monotonic() + timeout
    while children and time.monotonic() < deadline:
        children.difference_update(_reap())
        time.sleep(0.02)
    for pid in children:
        log.warning("short-link worker %d did not stop in time; killing it", pid)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _fork(settings: Settings, listener: socket.socket, threads: int,
          stop: threading.Event) -> int:
    pid = os.fork()
    if pid == 0:  # the child inherits the signal handler, which sets its copy of ``stop``
        code = 0
        try:
            _waitress(settings, listener, threads, stop)
        except BaseException:
            log.exception("short-link worker failed")
            code = 1
        finally:
            os._exit(code)
    return pid


def _reap() -> list[int]:
    """The children that have exited, collected without waiting."""
    ended: list[int] = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append(pid)


def _waitress(settings: Settings, listener: socket.socket, threads: int,
              stop: threading.Event) -> None:
    from shortlinks.inline import create_server, serve_until

    # waitress warns "Task queue depth is N" on every request queued while its threads are
    # busy, which under load is every request: a log record per redirect (10% of the time in
    # issue 18's profile). The depth is normal here: HAProxy keeps many connections open.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    worker = until_it_answers(lambda: _Worker(settings), stop, StoreError, log)
    if worker is None:
        return
    # Cached plain links are answered on waitress's I/O thread, the rest by its threads.
    server = create_server(worker.app, worker.resolver.answers_from_memory, threads=threads,
                           sockets=[listener], ident="", backlog=1024, connection_limit=1000)
    thread = threading.Thread(target=serve_until, args=(server, stop, DRAIN_SECONDS),
                              daemon=True)
    thread.start()
    try:
        wait_for_stop(stop)
        server.pull_trigger()  # the loop sees ``stop`` now, not after its poll's timeout
        thread.join(DRAIN_SECONDS + 0.5)
    finally:
        worker.close()  # after the drain: the visits it counted are written too
    if not thread.is_alive():
        server.trigger.close()


def _werkzeug(settings: Settings, stop: threading.Event) -> None:
    """werkzeug's development server: for debugging only (about 1,700 redirects/s)."""
    from werkzeug.serving import make_server

    worker = until_it_answers(lambda: _Worker(settings), stop, StoreError, log)
    if worker is None:
        return
    server = make_server(settings.listen_host, settings.shortlinks_port, worker.app,
                         threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wait_for_stop(stop)
    server.shutdown()
    worker.close()
