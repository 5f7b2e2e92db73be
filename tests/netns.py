"""Network namespaces for tests that give each process a host of its own: one namespace per
role, each with ``eth0`` on a bridge that sits in a namespace of its own. Only addresses inside
the namespaces the test creates are used, and ``down`` removes them all."""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess

from kit.procs import ManagedProcess
from tests.conftest import wait_until

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


class Network:
    """One namespace per role, each with eth0 on a bridge inside a namespace of its own; role
    number n gets ``{net}.{10 + n}``. ``prefix`` keeps two tests' namespaces apart."""

    def __init__(self, net: str, roles: list[str], prefix: str) -> None:
        self.net = net
        self.roles = list(roles)
        self.tag = f"{prefix}{os.getpid() % 100000}"
        self.made: list[str] = []

    def address(self, role: str) -> str:
        return f"{self.net}.{10 + self.roles.index(role)}"

    def ns(self, role: str) -> str:
        return f"{self.tag}-{role}"

    def up(self) -> None:
        switch = self.ns("switch")
        run("ip", "netns", "add", switch)
        self.made.append(switch)
        run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", switch, "link", "set", "br0", "up")
        for n, role in enumerate(self.roles):
            ns, inside, outside = self.ns(role), f"{self.tag}{n}a", f"{self.tag}{n}b"
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            run("ip", "link", "add", inside, "netns", ns, "type", "veth", "peer", "name", outside,
                "netns", switch)
            run("ip", "-n", ns, "link", "set", inside, "name", "eth0")
            run("ip", "-n", ns, "addr", "add", f"{self.address(role)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", switch, "link", "set", outside, "master", "br0", "up")

    def pids(self, ns: str) -> list[int]:
        found = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                               timeout=30).stdout.split()
        return [int(pid) for pid in found]

    def down(self) -> list[str]:
        """Remove every namespace (and with them the links); what still ran in one."""
        left = [f"{ns}: {pid}" for ns in self.made for pid in self.pids(ns)]
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        return left


def enter(ns: str) -> None:
    """Move the calling thread (only it) into network namespace ``ns``."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
    finally:
        os.close(fd)


def current() -> int:
    """The calling thread's network namespace, as a file descriptor for :func:`restore`."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY)


def restore(fd: int) -> None:
    """Move the calling thread back into the namespace :func:`current` returned."""
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(fd)


def wait_listening(host: str, port: int, process: ManagedProcess, timeout: float = 60) -> None:
    def listening() -> bool:
        assert process.poll() is None, f"{process.name} exited: {process.tail()}"
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            return False
    wait_until(listening, timeout, f"{process.name} on {host}:{port}")
