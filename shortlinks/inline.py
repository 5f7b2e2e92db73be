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
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from waitress.channel import HTTPChannel
from waitress.task import ThreadedTaskDispatcher

from kit.hosts import host_without_port

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


class InlineChannel(HTTPChannel):  # type: ignore[misc]
    """A connection whose requests the dispatcher may leave to the loop thread: after reading,
    the loop serves them here (outside waitress's locks), one after the other as they are
    pipelined, until one must go to the pool."""

    reader: int | None = None  # the loop thread while it reads this channel
    inline_pending = False

    def handle_read(self) -> None:
        self.reader = threading.get_ident()
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
    return server
