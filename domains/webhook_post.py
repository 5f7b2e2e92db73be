"""One webhook POST with a hard deadline on the whole attempt.

``requests``' timeout bounds each socket operation, not the request: a receiver that trickles
its answer a byte at a time keeps a POST open for as long as it likes. The sender's lease on
the event (domains/webhooks.py) must outlive the attempt, or another replica takes the event
over and sends it again while the first POST still runs. So every socket an attempt opens is
registered with the attempt's :class:`Deadline`, which shuts it down when time is up: the
blocked read returns at once and the attempt fails as ``DeadlineExceeded``.

Each attempt uses a fresh connection (the answer's body is never read, so the connection is
closed with the response, never reused), so registering sockets as they are opened covers
every byte the attempt sends or reads. Proxies from the environment bypass the watched pools:
the deadline then falls back to the per-operation timeout.
"""
from __future__ import annotations

import socket
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

DEADLINE_EXCEEDED = "DeadlineExceeded"
_current = threading.local()


class Deadline:
    """``with Deadline(seconds):`` shuts down every socket the thread opens meanwhile once
    ``seconds`` have passed."""

    def __init__(self, seconds: float) -> None:
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.expired = False

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> "Deadline":
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _current.deadline = None


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


class _Watched:
    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.watch(sock)
        return sock


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def watched_session() -> requests.Session:
    """A session whose connections a :class:`Deadline` can cut."""
    session = requests.Session()
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def post(session: Any, url: str, body: bytes, headers: dict[str, str], timeout: float,
         deadline: float) -> str | None:
    """POST ``body``; None if the receiver answered 2xx, else why not (an exception's class
    name only: its message may hold the URL, which may hold a token). Never raises: a URL
    that cannot even be parsed is a failed attempt like any other."""
    with Deadline(deadline) as watch:
        try:
            with session.post(url, data=body, headers=headers, timeout=timeout,
                              allow_redirects=False, stream=True) as response:
                status = int(response.status_code)
        except Exception as exc:
            return DEADLINE_EXCEEDED if watch.expired else type(exc).__name__
    if watch.expired:  # the answer was cut (an end of the headers read as the end of them)
        return DEADLINE_EXCEEDED
    return None if 200 <= status < 300 else f"HTTP {status}"
