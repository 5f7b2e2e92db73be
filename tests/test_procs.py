"""Ports for the servers the tests and the demo start: chosen where no outgoing connection
goes, and a server that finds its port taken meanwhile is started again on another."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kit.procs
from kit.procs import ExitedEarly, ManagedProcess, free_port, start_listening, wait_for_port
from tests.conftest import ROOT

LISTEN = ("import socket, sys, time; s = socket.socket(); "
          "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(60)")


def listener(port: int, log: Path) -> ManagedProcess:
    return ManagedProcess("listener", [sys.executable, "-c", LISTEN, str(port)], log)


def test_free_ports_are_below_the_ephemeral_range_and_never_given_twice() -> None:
    low, _ = kit.procs._ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < port < low for port in ports)


def test_processes_given_slices_of_the_ports_never_draw_the_same_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Parallel workers each get a slice; what a worker's tests start draws from its slice."""
    slices = [kit.procs.port_slice(index, 4) for index in range(4)]
    bounds = [tuple(int(bound) for bound in part.split("-")) for part in slices]
    assert all(high - low >= 1000 for low, high in bounds)
    assert all(bounds[n][1] <= bounds[n + 1][0] for n in range(3))
    for part, (low, high) in zip(slices, bounds):
        monkeypatch.setenv(kit.procs.PORTS_ENV, part)
        child = subprocess.run([sys.executable, "-c", "from kit.procs import free_port; "
                                "print(*(free_port() for _ in range(300)))"],
                               capture_output=True, text=True, check=True, cwd=ROOT)
        ports = {int(port) for port in child.stdout.split()}
        assert len(ports) == 300 and all(low <= port < high for port in ports)


def test_a_server_whose_port_was_taken_starts_again_on_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        drawn = [taken.getsockname()[1]]  # the first draw is a port another process holds
        real = kit.procs.free_port
        monkeypatch.setattr(kit.procs, "free_port",
                            lambda host="127.0.0.1": drawn.pop() if drawn else real(host))
        process, port = start_listening(lambda port: listener(port, tmp_path / "l.log"))
        try:
            assert port != taken.getsockname()[1] and process.poll() is None
            assert "Address already in use" in (tmp_path / "l.log").read_text()
        finally:
            process.stop()


def test_another_process_listening_on_the_port_is_not_taken_for_ours(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        sleeper = ManagedProcess("sleeper", [sys.executable, "-c", "import time; "
                                             "time.sleep(60)"], tmp_path / "s.log")
        try:
            with pytest.raises(TimeoutError):
                wait_for_port(port, timeout=1, process=sleeper)
        finally:
            sleeper.stop()


def test_a_server_failing_for_another_reason_is_not_retried(tmp_path: Path) -> None:
    starts = []

    def broken(port: int) -> ManagedProcess:
        starts.append(port)
        return ManagedProcess("broken", [sys.executable, "-c", "raise SystemExit('bad config')"],
                              tmp_path / "b.log")

    with pytest.raises(ExitedEarly, match="bad config"):
        start_listening(broken)
    assert len(starts) == 1


def test_a_process_caps_glibcs_malloc_arenas_before_its_threads_start() -> None:
    """On glibc (this machine's C library), ``mallopt(M_ARENA_MAX)`` is accepted: what keeps a
    replica's RSS from growing with each thread that ever held a big answer (the effect is
    measured in bench/control_scale.py, not here)."""
    assert kit.procs.limit_malloc_arenas()


STOPPED_BY_A_SIGNAL_TO_ANOTHER_THREAD = """
import signal, threading, time
from kit.procs import stop_on_signals, wait_for_stop
stop = stop_on_signals(20.0)
sleeper = threading.Thread(target=time.sleep, args=(60,), daemon=True)
sleeper.start()
threading.Timer(0.2, signal.pthread_kill, (sleeper.ident, signal.SIGTERM)).start()
wait_for_stop(stop)
print("stopped", flush=True)
"""


def test_a_sigterm_the_kernel_hands_to_another_thread_stops_the_main_thread_too() -> None:
    """serve, shortlinks and the demo wait in their main thread for the stop: a wait with no
    timeout sat out a SIGTERM taken by another thread (CPython runs the handler only when the
    main thread runs Python again) until a second signal came, and CI's stop test timed out."""
    child = subprocess.run([sys.executable, "-c", STOPPED_BY_A_SIGNAL_TO_ANOTHER_THREAD],
                           capture_output=True, text=True, timeout=15, cwd=ROOT)
    assert (child.returncode, child.stdout) == (0, "stopped\n"), child.stderr


STOPPED_WHILE_HOLDING_THE_EVENTS_LOCK = """
import os, signal
from kit.procs import stop_on_signals, wait_for_stop
stop = stop_on_signals(20.0)
with stop._cond:  # where stop.wait() holds it, between its checks
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # the handler runs in the main thread, here
        pass
wait_for_stop(stop)
print("stopped", flush=True)
"""


def test_a_sigterm_while_the_main_thread_holds_the_stop_events_lock_still_stops_it() -> None:
    """A handler that set the stop event itself waited for the event's lock, which its own
    thread held when the signal came inside ``stop.wait()``: the process hung for good (CI: a
    stop test timed out at 30 s with nothing printed)."""
    child = subprocess.run([sys.executable, "-c", STOPPED_WHILE_HOLDING_THE_EVENTS_LOCK],
                           capture_output=True, text=True, timeout=15, cwd=ROOT)
    assert (child.returncode, child.stdout) == (0, "stopped\n"), child.stderr


STOPPED_AFTER_A_FORK = """
import os, signal
from kit.procs import stop_on_signals, wait_for_stop
stop = stop_on_signals(20.0)
ready, said = os.pipe()
pid = os.fork()
if pid == 0:  # a short-link worker
    os.write(said, b"r")
    wait_for_stop(stop, 0.05)
    os._exit(3)
os.read(ready, 1)
os.kill(pid, signal.SIGTERM)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), stop.is_set(), flush=True)
"""


def test_a_forked_worker_is_stopped_by_its_own_signal_and_its_parent_is_not() -> None:
    """A forked child inherits the signal handler and its pipe, not the thread reading it:
    its SIGTERM woke its parent's thread, so short-link workers were killed at the grace's
    end instead of finishing their requests and flushing their visits."""
    child = subprocess.run([sys.executable, "-c", STOPPED_AFTER_A_FORK],
                           capture_output=True, text=True, timeout=15, cwd=ROOT)
    assert (child.returncode, child.stdout) == (0, "3 False\n"), child.stderr


STOPPED_WHILE_BUSY = """
import sys, threading, time
from kit.procs import stop_on_signals, wait_for_stop
busy = threading.Event()
stop = stop_on_signals(0.3, busy=busy.is_set, longest=float(sys.argv[1]))
busy.set()
print("busy", flush=True)
wait_for_stop(stop, 0.05)
time.sleep(1.5)  # the change under way, past the grace
print("finished", flush=True)
busy.clear()
time.sleep(60)
"""


@pytest.mark.parametrize("longest, finished", [(20.0, True), (0.5, False)])
def test_a_stop_waits_for_the_change_under_way_up_to_the_longest(longest: float,
                                                                 finished: bool) -> None:
    """An edge agent stopped mid-change would leave files ahead of what HAProxy serves: its
    stop waits for the change (within ``longest``), then goes without waiting the rest."""
    child = subprocess.Popen([sys.executable, "-c", STOPPED_WHILE_BUSY, str(longest)],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout is not None and child.stdout.readline() == "busy\n"
        started = time.monotonic()
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0 and ("finished" in out) is finished, out
    assert time.monotonic() - started < 10, "gone once the change is over, not at its sleep"

