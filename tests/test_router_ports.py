"""Routers in tests start on ports drawn by ``free_port``, which another process (a parallel
test worker) may bind first: HAProxy then exits at its first start. :func:`router_synced` starts
it again on new ports, as ``kit.procs.start_listening`` does for servers. A product router
listens where it is told (443 and 80): it never moves, so the retry is the tests' own."""
from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Callable, Iterator

import pytest

from edge.errors import EdgeError
from edge.router import Router, RouterUpdate
from edge.router_agent import RouterAgent
from edge.shards import ShardNode
from kit.procs import free_port

ADDRESS_IN_USE = re.compile(r"address (already )?in use|EADDRINUSE", re.IGNORECASE)
ATTEMPTS = 5


def router_synced(directory: Path, agent_of: Callable[[Router], RouterAgent],
                  ports: Callable[[], int] = free_port,
                  **settings: object) -> tuple[Router, RouterAgent]:
    """A Router on two ``ports()`` whose agent (``agent_of``) took its first update: its
    HAProxy started. Started again (a new directory beside, new ports) while it found a port
    taken; ``settings``: the Router's others."""
    for attempt in range(1, ATTEMPTS + 1):
        folder = directory if attempt == 1 else directory.with_name(f"{directory.name}-{attempt}")
        router = Router(folder, https_port=ports(), http_port=ports(),
                        **settings)  # type: ignore[arg-type]
        agent = agent_of(router)
        try:
            agent.sync()
        except EdgeError as exc:
            router.stop()
            if attempt == ATTEMPTS or not ADDRESS_IN_USE.search(str(exc)):
                raise
            continue
        return router, agent
    raise AssertionError("unreachable")


class OneUpdate:
    """An agent stand-in that applies one update: the router's first start, no control
    service needed."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def sync(self) -> bool:
        return self.router.apply(RouterUpdate(
            "v1", 1, False, {"a.ports.test": "one"},
            {"one": (ShardNode("127.0.0.1", 9, 9),)}, "one"))


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process might hold: bound and listening here."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_router_whose_port_was_taken_starts_on_new_ones(taken: int, tmp_path: Path) -> None:
    drawn = iter([taken, free_port()])
    router, _ = router_synced(tmp_path / "router", OneUpdate,  # type: ignore[arg-type]
                              lambda: next(drawn, None) or free_port())
    try:
        assert router.haproxy.running and router.last_error is None
        assert taken not in (router.listen["https_port"], router.listen["http_port"])
        assert router.directory == (tmp_path / "router-2").absolute()
        assert router.hosts() == {"a.ports.test": "one"}
        with socket.create_connection(("127.0.0.1", int(str(router.listen["https_port"]))),
                                      timeout=5):
            pass
    finally:
        router.stop()


def test_another_start_failure_is_not_retried(tmp_path: Path) -> None:
    calls = []

    def broken(router: Router) -> RouterAgent:
        calls.append(router)
        return BrokenAgent()  # type: ignore[return-value]

    with pytest.raises(EdgeError, match="no such thing"):
        router_synced(tmp_path / "router", broken)
    assert len(calls) == 1


class BrokenAgent:
    def sync(self) -> bool:
        raise EdgeError("no such thing")
