"""waitress, with the requests the resolver can answer from memory served on its I/O thread.

waitress parses requests on one thread (its asyncore loop) and hands each to a pool thread. For
a redirect that costs microseconds that hand-off is most of the work: a condition variable
signalled, the GIL passed between five threads, a pipe written to wake the loop again (the
profile in issue 18's note). A request for a link the resolver holds in memory (cached, fresh,
no visit limit: no store request, see ``Resolver.answers_from_memory``) now runs on the loop
thread, through the same WSGI app and waitress code (``HTTPChannel.service``), so its answer is
byte for byte what a pool thread gives. Everything else (a cache miss, the change counter due,
a limited link, a request with an error or a body still arriving) goes to the pool as before,
so a slow store never stalls the loop.

A stop is graceful (``serve_until``): the listener closes at once (HAProxy retries a refused
connection), and every request the process has begun to receive, or queued, is answered, with
``Connection: close``, before its connections close.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Callable

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.task import ThreadedTaskDispatcher, WSGITask

from kit.hosts import host_without_port

log = logging.getLogger(__name__)
FIRST_REQUEST_SECONDS = 0.5
"""How long a stopping server waits for the first request of a connection it has accepted."""

InMemory = Callable[[str, str], bool]
"""``(host, slug) -> True`` when the app answers that request without a store request."""


class InlineDispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    def __init__(self, in_memory: InMemory) -> None:
        super().__init__()
        self.in_memory = in_memory
        self.served_inline = 0  # requests left to the loop thread (read by tests)

    def add_task(self, task: Any) -> None:
        if isinstance(task, InlineChannel) and task.reader == threading.get_ident() \
                and self._answerable(task):
            task.inline_pending = True  # served by InlineChannel.handle_read, below
            self.served_inline += 1
            return
        super().add_task(task)

    def _answerable(self, channel: InlineChannel) -> bool:
        if channel.total_outbufs_len > channel.adj.outbuf_high_watermark // 2:
            return False  # a client that does not read: the loop must never wait for it
        request = channel.requests[0]
        if request.error is not None or request.command not in ("GET", "HEAD"):
            return False
        slug = str(request.path or "").lstrip("/")
        return bool(slug) and self.in_memory(host_without_port(
            str(request.headers.get("HOST", ""))), slug)


class DrainingTask(WSGITask):  # type: ignore[misc]
    """A request's answer; while the server drains it says ``Connection: close``, so the client
    (HAProxy) sends nothing more on a connection about to close.

    Its head goes out with the first body bytes, in one send: waitress sends them in two,
    and a process killed between the two would leave HAProxy with a head it has passed on to
    the visitor and cannot retry (in one send, a kill leaves the whole answer or none, which
    HAProxy retries: ``retry-on empty-response``). The control replicas do the same
    (control/server.py)."""

    def build_response_header(self) -> bytes:
        if self.channel.server.draining:
            self.set_close_on_finish()
        return super().build_response_header()  # type: ignore[no-any-return]

    def write(self, data: bytes) -> None:
        if self.wrote_header:
            super().write(data)
            return
        channel, pieces = self.channel, list[bytes]()
        channel.write_soon = pieces.append  # this call's writes: the head, then the body's
        try:
            super().write(data)
        finally:
            del channel.write_soon  # the class's own again
        channel.write_soon(b"".join(pieces))


class InlineChannel(HTTPChannel):  # type: ignore[misc]
    """A connection whose requests the dispatcher may leave to the loop thread: after reading,
    the loop serves them here (outside waitress's locks), one after the other as they are
    pipelined, until one must go to the pool."""

    task_class = DrainingTask
    reader: int | None = None  # the loop thread while it reads this channel
    inline_pending = False
    fresh = True  # nothing read yet: the client's first request is on its way

    def handle_read(self) -> None:
        self.reader = threading.get_ident()
        self.fresh = False
        try:
            super().handle_read()
            while self.inline_pending:
                self.inline_pending = False
                self.service()  # its end hands the next pipelined request to add_task
        finally:
            self.reader = None


def create_server(app: Callable[..., Any], in_memory: InMemory, threads: int = 4,
                  **adjustments: Any) -> Any:
    """waitress's ``create_server`` with the inline path (``adjustments`` as waitress takes)."""
    from waitress.server import create_server as waitress_server

    dispatcher = InlineDispatcher(in_memory)
    dispatcher.set_thread_count(threads)
    # No X-Forwarded-* scrubbing middleware in front of the app: it reads none of them (7% of
    # the time per redirect in the profile).
    server = waitress_server(app, threads=threads, _dispatcher=dispatcher,
                             clear_untrusted_proxy_headers=False, **adjustments)
    server.channel_class = InlineChannel
    server.draining = False
    return server


def serve_until(server: Any, stop: threading.Event, drain: float) -> None:
    """Run the server's loop on this thread until ``stop`` is set (the setter pulls
    ``server.pull_trigger()`` to wake it), then stop gracefully: no new connection, every
    request begun or queued answered within ``drain`` seconds, then every connection closed
    and the threads ended. The trigger stays open: the setter may pull it after this loop
    saw ``stop`` by its poll's timeout and ended (a closed trigger's descriptor may be a
    file's by then); it closes it once this thread has ended."""
    adj = server.adj
    while not stop.is_set():
        wasyncore.loop(adj.asyncore_loop_timeout, adj.asyncore_use_poll, server._map, count=1)
    _stop_accepting(server)
    server.draining = True
    deadline = time.monotonic() + drain
    while (busy := [c for c in list(server.active_channels.values()) if _busy(c)]) \
            and time.monotonic() < deadline:
        wasyncore.loop(0.05, adj.asyncore_use_poll, server._map, count=1)
    if busy:
        log.warning("%d request(s) not answered within the %.1f s drain", len(busy), drain)
    for channel in list(server._map.values()):  # the connections left are idle (or out of time)
        if channel is not server.trigger:
            channel.close()
    server.task_dispatcher.shutdown(timeout=0.5)


def _stop_accepting(server: Any) -> None:
    """Take the connections the kernel has already queued (they are answered), then close this
    process's copy of the listening socket. Once every process has closed its copy, a new
    connection is refused, which HAProxy retries (``retry-on conn-failure``). One the kernel
    queued between the last process's last ``accept`` and its ``close`` is reset after HAProxy
    sent its request, never seen here: HAProxy retries that too (``empty-response``)."""
    while True:
        try:
            accepted = server.accept()  # None: nothing queued
        except OSError:
            break
        if accepted is None:
            break
        conn, addr = accepted
        try:
            server.set_socket_options(conn)
        except OSError:  # the client has gone already
            conn.close()
            continue
        server.channel_class(server, conn, server.fix_addr(addr), server.adj, map=server._map)
    wasyncore.dispatcher.close(server)  # the listener only: the trigger stays for the threads


def _busy(channel: Any) -> bool:
    """Whether a connection holds a request not yet answered: queued or being served, half
    received, still in the kernel's buffer, or an answer not yet sent."""
    if channel.requests or channel.total_outbufs_len:
        return True
    if channel.will_close or channel.close_when_flushed or not channel.connected:
        return False  # answered with "Connection: close": whatever else came is not read
    if channel.request is not None:
        return True
    if channel.fresh and time.time() - channel.creation_time < FIRST_REQUEST_SECONDS:
        return True  # HAProxy writes its request just after its connect is accepted
    try:
        return bool(channel.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing to read (BlockingIOError) or the connection is gone
        return False
