"""One HAProxy process in master-worker mode: check a config, start, reload seamlessly, stop."""
from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from edge.errors import EdgeError
from kit.procs import ManagedProcess


class ConfigRejected(EdgeError):
    """``haproxy -c`` refused a rendered config; ``output`` says why."""

    def __init__(self, path: Path, output: str) -> None:
        super().__init__(f"HAProxy refused {path}: {output.strip()[-2000:]}")
        self.path = path
        self.output = output


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


class HAProxy:
    def __init__(self, binary: str, config_path: Path, master_socket: Path, log_path: Path) -> None:
        self.binary = binary
        self.config_path = config_path
        self.master_socket = master_socket
        self.log_path = log_path
        self.process: ManagedProcess | None = None

    def check(self, config: Path) -> None:
        result = subprocess.run([self.binary, "-c", "-f", str(config)],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise ConfigRejected(config, result.stdout + result.stderr)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        self.master_socket.unlink(missing_ok=True)
        self.process = ManagedProcess("haproxy", [
            self.binary, "-W", "-db", "-f", str(self.config_path), "-S", str(self.master_socket)],
            self.log_path)
        deadline = time.monotonic() + timeout
        while not self.workers():
            if self.process.poll() is not None:
                raise EdgeError(f"HAProxy exited at start: {self.process.tail()}")
            if time.monotonic() > deadline:
                raise EdgeError("HAProxy did not start a worker in time")
            time.sleep(0.05)

    def reload(self, timeout: float = 60.0) -> None:
        """Seamless reload (the master re-reads the config path; listeners pass by fd)."""
        assert self.process is not None
        before = set(self.workers())
        self.process.popen.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if set(self.workers()) - before:
                return
            if self.process.poll() is not None:
                raise EdgeError(f"HAProxy master exited on reload: {self.process.tail()}")
            time.sleep(0.05)
        raise EdgeError("HAProxy did not start a new worker after reload")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def master_command(self, command: str) -> str:
        return unix_command(self.master_socket, command + "\n", timeout=5)

    def workers(self) -> list[int]:
        """PIDs of the current workers, from the master CLI's ``show proc``."""
        try:
            output = self.master_command("show proc")
        except OSError:
            return []
        workers, section = [], "master"
        for line in output.splitlines():
            if line.startswith("#"):
                section = line.lstrip("# ").split(" ")[0]
                continue
            fields = line.split()
            if section == "workers" and len(fields) > 1 and fields[1] == "worker":
                workers.append(int(fields[0]))
        return workers
