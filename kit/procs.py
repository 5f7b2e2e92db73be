"""Processes: the children the demo and the tests start on loopback, always stopped by PID,
and the stop of an ``edgectl`` process itself, on time whatever holds it."""
from __future__ import annotations

import logging
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Callable, Sequence, TypeVar

log = logging.getLogger(__name__)
_LOWEST_PORT = 10000
PORTS_ENV = "EDGE_FREE_PORTS"
_given: set[int] = set()
_given_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def port_slice(index: int, count: int) -> str:
    """Slice ``index`` of ``count`` of the ports :func:`free_port` draws from, for ``PORTS_ENV``."""
    low, high = _LOWEST_PORT, _ephemeral_range()[0]
    size = (high - low) // count
    return f"{low + index * size}-{low + (index + 1) * size}"


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to now, for a server about to start.

    The kernel's ``bind(0)`` answer is its next ephemeral port: any outgoing connection, of
    this process or another (a parallel test worker), may take it before the server binds it.
    So the port is drawn at random below the ephemeral range, where no outgoing connection
    goes, and never twice by one process. Another process may still take it first (the same
    draw): start servers with :func:`start_listening`, which retries on a new port. Processes
    that draw side by side (parallel test workers) give each one its own slice of that range in
    ``PORTS_ENV`` ("low-high"), which the processes they start inherit."""
    low, high = _LOWEST_PORT, _ephemeral_range()[0]
    if PORTS_ENV in os.environ:
        low, high = (int(bound) for bound in os.environ[PORTS_ENV].split("-"))
    if high - low >= 1000:
        for _ in range(200):
            port = random.randrange(low, high)
            with _given_lock:
                if port in _given or not _bindable(host, port):
                    continue
                _given.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_IN_USE = re.compile(r"address (already )?in use|EADDRINUSE", re.IGNORECASE)
T = TypeVar("T")


class ExitedEarly(RuntimeError):
    """A server process exited before it listened on its port."""

    def __init__(self, process: "ManagedProcess", port: int) -> None:
        super().__init__(f"{process.name} exited before listening on {port}: {process.tail()}")
        self.address_in_use = bool(_IN_USE.search(process.output()))
        """It said its address was in use: another process took a port it was given."""


def retry_taken_ports(start: Callable[[], T], attempts: int = 5) -> T:
    """``start()``, again (it picks new ports) while it fails because a server found its port
    taken by another process between :func:`free_port` and its bind."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except ExitedEarly as exc:
            if not exc.address_in_use or attempt == attempts:
                raise
    raise AssertionError("unreachable")


def start_listening(start: Callable[[int], "ManagedProcess"], host: str = "127.0.0.1",
                    timeout: float = 20.0, attempts: int = 5) -> tuple["ManagedProcess", int]:
    """``start(port)`` on a free port and wait until it listens; started again on another
    port if the port was taken meanwhile. Returns the listening process and its port."""
    def once() -> tuple[ManagedProcess, int]:
        port = free_port(host)
        process = start(port)
        try:
            wait_for_port(port, host, timeout, process)
        except BaseException:
            process.stop()
            raise
        return process, port
    return retry_taken_ports(once, attempts)


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0,
                  process: "ManagedProcess | None" = None) -> None:
    """Wait until something listens on ``host:port``; with ``process``, until that process (or
    one it started) does: another process that took the port meanwhile does not count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ExitedEarly(process, port)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.05)
            continue
        if process is None or _listens(process.pid, port):
            return
        time.sleep(0.05)  # someone else's listener: ours fails to bind, or binds beside it
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` or one of its descendants holds a socket listening on ``port``
    (Linux /proc; elsewhere, assumed true)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            return True
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    for candidate in parents:
        ancestor, hops = candidate, 0
        while ancestor not in (pid, 0, 1) and hops < 64:
            ancestor, hops = parents.get(ancestor, 0), hops + 1
        if ancestor != pid:
            continue
        try:
            fds = os.listdir(f"/proc/{candidate}/fd")
            if any(os.readlink(f"/proc/{candidate}/fd/{fd}") in inodes for fd in fds):
                return True
        except OSError:
            continue
    return False


class ManagedProcess:
    """A child process with its output in a log file, stopped by its own PID (never by name)."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "ab")
        self._log_start = self._log.tell()
        self.popen = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def output(self) -> str:
        """What this process wrote to its log (not the earlier runs' lines before it)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        stop_all([self], timeout)


def stop_all(processes: Sequence[ManagedProcess], timeout: float = 10.0) -> None:
    """SIGTERM to every process at once, so each stops on its own clock rather than after the
    one before; one still running after ``timeout`` seconds is killed."""
    for process in processes:
        if process.popen.poll() is None:
            process.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()
        process._log.close()


def exit_within(seconds: float, busy: Callable[[], bool] = lambda: False,
                longest: float = 0.0) -> threading.Timer:
    """Make sure this process is gone ``seconds`` from now: a stop is promised on time (a
    supervisor's stop timeout, a deploy's next step), and what holds a process up (a store
    that does not answer, a request that hangs) is work its restart takes up again anyway.
    It exits with status 0, as the stop was asked for, after saying so in its log. While
    ``busy()`` (work a kill would leave half done: an edge node's change), it waits on, up to
    ``longest`` seconds after the signal."""
    started = time.monotonic()

    def overdue() -> None:
        while busy() and time.monotonic() - started < longest:
            time.sleep(0.05)
        log.warning("still stopping %.1f s after the signal: exiting now",
                    time.monotonic() - started)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)
    timer = threading.Timer(max(0.0, seconds), overdue)
    timer.daemon = True
    timer.start()
    return timer


def on_signals(act: Callable[[], None], interrupt: Callable[[], bool] = lambda: False) -> None:
    """Run ``act()`` once, in a thread of its own, at the first SIGTERM or SIGINT.
    ``interrupt()``, called in the handler, may say the main thread should be interrupted at
    once (SystemExit: out of a long poll) rather than wind down.

    The handler itself takes no lock: CPython runs it in the main thread between two of its
    steps, maybe while that thread holds the very lock ``act`` needs (inside ``stop.wait()``,
    an Event's lock), and a handler that set the event there waited on its own thread for
    good. So it only writes a byte to a pipe, which the thread reads."""
    wake: list[int] = []

    def listen() -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        wake[:] = [write_end]
        threading.Thread(target=watch, args=(read_end,), name="signals", daemon=True).start()

    def watch(read_end: int) -> None:
        os.read(read_end, 1)
        act()

    listen()
    # A forked child (short-link workers) inherits the handler and the pipe, not the thread:
    # its signals would wake its parent's. It listens on a pipe of its own.
    os.register_at_fork(after_in_child=listen)

    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            os.write(wake[0], b"\0")
        except BlockingIOError:
            pass  # the pipe is full of earlier signals: one is enough
        if interrupt():
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def stop_on_signals(grace: float, interrupt: Callable[[], bool] = lambda: False,
                    busy: Callable[[], bool] = lambda: False,
                    longest: float = 0.0) -> threading.Event:
    """An event SIGTERM and SIGINT set (:func:`on_signals`); the process is then gone within
    ``grace`` seconds, or once ``busy()`` is over, within ``longest`` (:func:`exit_within`)."""
    stop = threading.Event()

    def act() -> None:
        stop.set()
        exit_within(grace, busy, longest)

    on_signals(act, interrupt)
    return stop


def wait_for_stop(stop: threading.Event, check: float = 0.5) -> None:
    """Block the main thread until ``stop`` (set by :func:`stop_on_signals`' handler), waking
    every ``check`` seconds. The kernel may hand SIGTERM to any thread; CPython runs the handler
    in the main thread, and only once that thread runs Python code again, which a wait with no
    timeout never does: the process sat out the signal until a second one came."""
    while not stop.wait(check):
        pass


MALLOC_ARENAS = 2
"""glibc's malloc arenas a process may use. Its default is 8 a core, one for each thread that
meets contention: a replica's request threads each keep the large buffers they freed (a state
snapshot, a batch of certificates) in their own arena, and RSS grows with the threads that
ever served one, never back (bench/control_scale.py at 30,000 domains: serve's RSS 165 MB
after an agent's cold start, 105 MB with two arenas, for the same work)."""


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``), as ``MALLOC_ARENA_MAX`` does,
    for the threads started after it: call it before any. False where the C library is not
    glibc (musl has no per-thread arenas) or refuses."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return bool(libc.mallopt(-8, arenas))  # M_ARENA_MAX in malloc.h
    except (OSError, AttributeError):
        return False
