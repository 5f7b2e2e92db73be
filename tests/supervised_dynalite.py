"""dynalite as the chaos tests run it: behind a TCP gate that ``outage()`` closes, and
restarted whenever it dies anyway.

DynamoDB never half-applies a write, but dynalite does when its process stops in the middle
of one: it writes a global secondary index's entries and then the item, as separate LevelDB
writes, so a SIGTERM (or a crash) between them leaves an index entry for an item that is not
there, or an item its index does not list (a pending webhook no ``state`` query ever finds
again). So an outage never stops dynalite: the gate resets every connection, new or open, the
way a network cut makes DynamoDB unreachable, while dynalite finishes what it had been asked.
A request cut off that way may have been applied or not, as on DynamoDB.

The gate also keeps reading what dynalite answers to a client that went away (a replica killed
with -9), so dynalite never sees an aborted request, which it rethrows and dies of.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

from kit.procs import ManagedProcess, free_port, wait_for_port
from tests.conftest import dynalite_command


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a RST (the peer sees "connection reset", not a clean end)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Gate:
    """A TCP relay on its own port to dynalite's; closed, it resets every connection."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.closed = False
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="dynalite-gate", daemon=True).start()

    def close(self) -> None:
        """Refuse new connections and reset the open ones (what dynalite was asked, it
        finishes)."""
        with self._lock:
            self.closed = True
            clients, self._clients = self._clients, set()
        for client in clients:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def open(self) -> None:
        with self._lock:
            self.closed = False

    def stop(self) -> None:
        self.close()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self._upstream_port), 5)
                upstream.settimeout(None)
            except OSError:  # dynalite restarting: as unreachable as behind a closed gate
                _reset(client)
                continue
            with self._lock:
                if self.closed:
                    _reset(client)
                    upstream.close()
                    continue
                self._clients.add(client)
            threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._back, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _forward(client: socket.socket, upstream: socket.socket) -> None:
        """The client's requests to dynalite. A client gone (or cut off) is not passed on:
        dynalite answers, and closes the idle connection itself after its keep-alive time."""
        try:
            while data := client.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass

    def _back(self, upstream: socket.socket, client: socket.socket) -> None:
        """dynalite's answers to the client, read to their end even once the client is gone."""
        try:
            while data := upstream.recv(65536):
                try:
                    client.sendall(data)
                except OSError:
                    pass
        except OSError:
            pass
        finally:
            upstream.close()
            with self._lock:
                self._clients.discard(client)
            try:
                client.shutdown(socket.SHUT_RDWR)  # wakes the recv of its _forward
            except OSError:
                pass
            client.close()


class SupervisedDynalite:
    """dynalite behind a gate on one port (``url``); started again (same data) if it dies;
    ``outage()`` closes the gate for a while."""

    def __init__(self, directory: Path) -> None:
        self._upstream_port = free_port()
        self.restarts = 0  # crashes of its own, restarted by the watcher
        self._directory = directory
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self.down = threading.Event()
        """Set while ``outage()`` keeps the gate closed."""
        self._process = self._start()
        wait_for_port(self._upstream_port, process=self._process)
        self._gate = _Gate(self._upstream_port)
        self.port = self._gate.port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _start(self) -> ManagedProcess:
        return ManagedProcess("dynalite", dynalite_command(self._upstream_port,
                                                           self._directory / "db"),
                              self._directory / "dynalite.log")

    def _watch(self) -> None:
        while not self._stopped.wait(0.1):
            with self._lock:
                if self._process.poll() is None:
                    continue
                self.restarts += 1
                self._process.stop()
                self._process = self._start()

    def outage(self, seconds: float) -> None:
        """DynamoDB unreachable for ``seconds``: every connection reset, new or open."""
        self._gate.close()
        self.down.set()
        time.sleep(seconds)
        self._gate.open()
        self.down.clear()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(10)
        self._gate.stop()
        with self._lock:
            self._process.stop()
