"""One HAProxy process in master-worker mode: check a config, start, reload seamlessly, stop;
and the node's processes: one agent per node (:class:`NodeLock`), and :func:`stop_node`.

HAProxy outlives its agent: an agent that stops or dies leaves it serving the last state
applied, and the next one adopts the running master instead of starting another."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from edge.errors import EdgeError
from kit.files import PUBLIC, write_atomic
from kit.procs import ManagedProcess

log = logging.getLogger(__name__)


class ConfigRejected(EdgeError):
    """``haproxy -c`` refused a rendered config; ``output`` says why."""

    def __init__(self, path: Path, output: str) -> None:
        super().__init__(f"HAProxy refused {path}: {output.strip()[-2000:]}")
        self.path = path
        self.output = output


class ReloadFailed(EdgeError):
    """HAProxy checked a config but could not load it on reload; the old workers serve on."""


def unix_command(path: Path, text: str, timeout: float = 30) -> str:
    """Send one command to a HAProxy CLI socket and read the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(text.encode())
        sock.shutdown(socket.SHUT_WR)  # else the CLI waits for more commands
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def server_status(path: Path, backend: str) -> dict[str, str]:
    """Each server of ``backend`` and its health-check status (``UP``, ``DOWN``, ...), from
    ``show stat`` on the CLI socket at ``path``."""
    rows = unix_command(path, "show stat\n").splitlines()
    header = rows[0].lstrip("# ").split(",")
    states = [dict(zip(header, row.split(","))) for row in rows[1:] if row]
    return {s["svname"]: s["status"] for s in states
            if s.get("pxname") == backend and s.get("svname") not in ("FRONTEND", "BACKEND")}


SOCKET_PATH_MAX = 96
"""HAProxy refuses a UNIX socket path longer than 97 bytes (sun_path)."""


def socket_dir(directory: Path) -> Path:
    """Where a node's UNIX sockets live: its own directory, or, when that path is too long
    for a socket, a short private directory named after it (``/tmp/edge-<hash>``, mode 0700,
    refused if another user made it). Made here; :meth:`HAProxy.stop` removes a short one."""
    if len(str(directory / "master.sock")) <= SOCKET_PATH_MAX:
        return directory
    name = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"edge-{name}"
    short.mkdir(mode=0o700, exist_ok=True)
    info = short.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise EdgeError(f"{short} is not a private directory of this user; remove it")
    return short


class HAProxy:
    def __init__(self, binary: str, config_path: Path, directory: Path) -> None:
        """``directory``: the node's (or router's), where its log is written; its sockets
        (``master.sock``, ``admin.sock``, the runtime API) are in :func:`socket_dir`."""
        self.binary = binary
        self.config_path = config_path
        self.directory = directory
        sockets = socket_dir(directory)
        self.master_socket = sockets / "master.sock"
        self.runtime_socket = sockets / "admin.sock"
        self.log_path = directory / "haproxy.log"
        self.process: ManagedProcess | None = None
        self.pid_file = sockets / "master.pid"
        self.adopted: int | None = None
        """The master PID of a HAProxy this object did not start (its agent was killed and
        HAProxy kept serving): driven by signals and its master socket, never started twice."""

    def check(self, config: Path) -> None:
        result = subprocess.run([self.binary, "-c", "-f", str(config)],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise ConfigRejected(config, result.stdout + result.stderr)

    @property
    def running(self) -> bool:
        if self.adopted is not None:
            return _alive(self.adopted)
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.adopted if self.adopted is not None else (
            self.process.pid if self.process is not None else None)

    def _left_running(self) -> int | None:
        """The master a previous agent started for this config, if one still runs: by its PID
        file, else by the process table (an agent killed between starting HAProxy and writing
        the file leaves a master that only /proc knows). More than one (left before this
        look): the one the file or else the master socket names is kept, and the others are
        told to finish softly, or the kernel would go on splitting the visitors with a
        HAProxy nobody updates."""
        try:
            pid: int | None = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        found = masters_running(self.config_path)[0]
        if pid not in found:
            if not found:
                return None
            answering = self._show_proc()[0]  # the one its master socket leads to, if any
            pid = answering if answering in found else found[0]
            write_atomic(self.pid_file, f"{pid}\n", PUBLIC)
        for extra in found:
            if extra != pid:
                log.warning("a second HAProxy master (pid %d) runs %s: stopping it softly",
                            extra, self.config_path)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(extra, signal.SIGUSR1)
        return pid

    def adopt(self, timeout: float = 30.0) -> bool:
        """Take over the master the previous agent started, if it still runs this config,
        once it answers on its master socket (it may still be loading, for as long as a
        start may take); one that never answers is stopped and a new one started.

        Starting a second one beside it would bind the same ports (SO_REUSEPORT): the kernel
        would split the visitors between a HAProxy we drive and one nobody updates again."""
        pid = self._left_running()
        if pid is None:
            return False
        deadline = time.monotonic() + timeout
        while not self.workers():
            if not _alive(pid):
                return False
            if time.monotonic() > deadline:
                log.warning("the HAProxy master a previous agent left (pid %d) does not "
                            "answer: starting a new one", pid)
                self.adopted = pid
                self.stop()
                return False
            time.sleep(0.05)
        self.adopted = pid
        return True

    def start(self, timeout: float = 30.0) -> None:
        if self.adopt(timeout):
            return
        socket_dir(self.directory)  # again: a stop removed a short one
        self.master_socket.unlink(missing_ok=True)
        self.process = ManagedProcess("haproxy", [
            self.binary, "-W", "-db", "-f", str(self.config_path), "-S", str(self.master_socket)],
            self.log_path)
        # At once, not once it serves: an agent killed while HAProxy loads leaves a master
        # the next agent must find rather than start a second one beside.
        write_atomic(self.pid_file, f"{self.process.pid}\n", PUBLIC)
        deadline = time.monotonic() + timeout
        while not self.workers():
            if self.process.poll() is not None:
                raise EdgeError(f"HAProxy exited at start: {self.process.tail()}")
            if time.monotonic() > deadline:
                self.process.stop()  # not left loading behind a start called failed
                raise EdgeError(f"HAProxy did not start a worker within {timeout:.0f} s")
            time.sleep(0.05)

    def reload(self, timeout: float = 60.0) -> None:
        """Seamless reload (the master re-reads the config path; listeners pass by fd).
        Raises :class:`ReloadFailed` once the master says it could not load the config (a
        port taken, say, which ``haproxy -c`` does not see): its old workers keep serving."""
        pid = self.pid
        assert pid is not None
        _, before, reloads, _ = self._show_proc()
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, workers, now, failed = self._show_proc()
            if set(workers) - set(before):
                return
            if reloads is not None and now is not None and now > reloads and failed:
                raise ReloadFailed(f"HAProxy could not load {self.config_path} and keeps "
                                   f"serving the config before: {self._log_tail()}")
            if not self.running:
                raise EdgeError(f"HAProxy master exited on reload: {self._log_tail()}")
            time.sleep(0.05)
        raise EdgeError("HAProxy did not start a new worker after reload")

    def _log_tail(self, lines: int = 40) -> str:
        """The master's alerts among the last ``lines`` of HAProxy's log (all if none)."""
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        master = f"({self.pid}) :"
        alerts = [line for line in tail if line.startswith("[ALERT]") and master in line]
        return "\n".join(alerts or tail[-8:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the master this object drives, or the one a previous agent left running;
        returns the PID stopped (None: nothing ran)."""
        stopped = self.pid
        if stopped is None:
            self.adopted = stopped = self._left_running()
        if self.adopted is not None:
            pid, self.adopted = self.adopted, None
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while _alive(pid):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    deadline = float("inf")
                time.sleep(0.05)
        if self.process is not None:
            self.process.stop()
            self.process = None
        self._remove_sockets()
        return stopped

    def _remove_sockets(self) -> None:
        """No master runs: its sockets and PID file go, and a short socket directory too (a
        node's own directory stays), so that a stopped node leaves nothing in /tmp."""
        for path in (self.master_socket, self.runtime_socket, self.pid_file):
            path.unlink(missing_ok=True)
        if self.master_socket.parent != self.directory:
            with contextlib.suppress(OSError):  # not empty: something else put a file there
                self.master_socket.parent.rmdir()

    def master_command(self, command: str) -> str:
        return unix_command(self.master_socket, command + "\n", timeout=5)

    def workers(self) -> list[int]:
        """PIDs of the current workers, from the master CLI's ``show proc``."""
        return self._show_proc()[1]

    def _show_proc(self) -> tuple[int | None, list[int], int | None, int]:
        """(the PID of the master answering on the master socket, its current workers, its
        reloads so far, the failed ones since the last that loaded: ``[failed: N]``)."""
        try:
            output = self.master_command("show proc")
        except OSError:
            return None, [], None, 0
        master, workers, section, reloads, failed = None, [], "master", None, 0
        for line in output.splitlines():
            if line.startswith("#"):
                section = line.lstrip("# ").split(" ")[0]
                continue
            fields = line.split()
            if len(fields) > 1 and fields[1] == "master":
                master = int(fields[0])
                reloads = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else None
                if len(fields) > 4 and fields[3] == "[failed:" and fields[4][:-1].isdigit():
                    failed = int(fields[4][:-1])
            elif section == "workers" and len(fields) > 1 and fields[1] == "worker":
                workers.append(int(fields[0]))
        return master, workers, reloads, failed


class NodeLock:
    """One agent per node directory: two would apply states over each other, and a node
    stopped by :func:`stop_node` would be started again by an agent still running. An
    exclusive ``flock`` on ``agent.lock`` (it goes with the process, even after a kill -9),
    with the holder's PID in the file."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "agent.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Hold the lock, or raise :class:`EdgeError` naming the agent that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.path, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise EdgeError(f"another agent (pid {self.holder()}) runs for the node in "
                            f"{self.path.parent}") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._file = lock

    def holder(self) -> int | None:
        """The PID of the agent holding the lock, None if none does."""
        if self._file is not None:
            return os.getpid()
        try:
            with open(self.path) as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    return None
                except BlockingIOError:
                    return int(lock.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def stop_node(directory: Path, haproxy: HAProxy, timeout: float = 10.0) -> str:
    """Stop the node: its agent first if one runs (SIGTERM, as its supervisor would), so
    nothing starts HAProxy again, then HAProxy, also one a previous agent left serving.
    Returns what was done, in a sentence."""
    lock = NodeLock(directory)
    agent = lock.holder()
    if agent is not None:
        os.kill(agent, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while lock.holder() is not None:
            if time.monotonic() > deadline:
                raise EdgeError(f"the agent (pid {agent}) did not stop within {timeout:.0f} s")
            time.sleep(0.05)
    lock.acquire()  # no agent starts while HAProxy stops
    try:
        master = haproxy.stop()
    finally:
        lock.release()
    stopped = [f"agent (pid {agent})"] if agent else []
    stopped += [f"HAProxy (pid {master})"] if master else []
    return f"stopped the {' and '.join(stopped)} of the node in {directory}" if stopped \
        else f"no agent or HAProxy runs for the node in {directory}"


def masters_running(*configs: Path) -> list[list[int]]:
    """For each config, the PIDs of the HAProxy masters running it (a worker's parent is one):
    one pass over /proc for all of them, reading the state only of their processes."""
    wanted = [str(config).encode() for config in configs]
    found: list[dict[int, int]] = [{} for _ in configs]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if not argv[0].endswith(b"haproxy"):
                continue
            which = next((n for n, config in enumerate(wanted) if config in argv), None)
            if which is None:
                continue
            state, parent = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if state != "Z":
            found[which][int(entry)] = int(parent)
    return [sorted(pid for pid, parent in pids.items() if parent not in pids) for pids in found]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
