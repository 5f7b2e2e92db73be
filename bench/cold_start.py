"""A real cold start: an edge node joins with nothing and serves every host.

Usage: python bench/cold_start.py [--routes 10000] [--singles 10000]

What runs, all in this one run, on loopback:
- a real control service (``edgectl serve``, SQLite), whose edge state holds ``--routes``
  routes, each with its own certificate and key (encrypted at rest). The routes are written
  with ``EdgeStateStore.change`` (the commit every route change takes) once serve has started
  and published its first state; the domains' lifecycle is not part of a cold start.
- a real agent (``edgectl agent``) beside its own HAProxy, with an empty node directory. The
  clock starts when the agent's process is spawned and stops when its HAProxy answers a TLS
  handshake for the last hostname with that host's certificate and the agent has reported the
  control's version (every host applied); 300 random hosts are then checked (not timed).
  * batch: downloads in batches (POST /api/v1/edge/certs, gzip'd, 1,000 each), the default;
  * singles: the same agent with batches off, one GET per certificate (what a new agent does
    against a control service that offers no batch, and every agent did before), on
    ``--singles`` routes (0: not run), a separate control state of that size;
  * restart: the batch node's agent and HAProxy stopped, then the agent started again: HAProxy
    starts from the node's files and the agent catches up with a delta (see docs/cold-start.md).
- HAProxy's two floors, each on the same certificates: a bare HAProxy with the edge's TLS
  settings taking them over its runtime API (new/set/commit ssl cert, add ssl crt-list, 1,000
  per connection), and a bare HAProxy starting with all of them in a crt-list (spawn until
  the last host is served).
The figures are the cold start's times against those floors, measured here.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import requests
from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import conditions  # noqa: E402
from bench.node_scale import haproxy_floor, route, served_name  # noqa: E402
from edge.haproxy import stop_node  # noqa: E402
from edge.node import EdgeNode  # noqa: E402
from edge.protocol import CERT_BATCH, CERT_BATCH_MAX, HEADER, PROTOCOL  # noqa: E402
from edge.releases import ensure_default_cert  # noqa: E402
from edge.state import Route  # noqa: E402
from edge.state_store import (EDGE_CERTS, EDGE_NODES, EDGE_REDIRECTS, EDGE_ROUTES,  # noqa: E402
                              EDGE_STATE, EDGE_VISIT_REPORTS, EdgeStateStore)
from kit.procs import ManagedProcess, free_port, wait_for_port  # noqa: E402
from kit.vault import KeyVault  # noqa: E402
from store.sqlite import SqliteBackend  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EDGE_TOKEN = "bench-edge-token-0123456789"
API_TOKEN = "bench-api-token-0123456789"
NO_BATCH = ("import sys, edge.agent; edge.agent.batch_size = lambda offer: 0; "
            "from edgectl.cli import main; sys.exit(main(sys.argv[1:]))")
"""The agent with batches off: what it does against a control service that offers none."""


def wait(condition: Callable[[], object], timeout: float, what: str,
         process: ManagedProcess | None = None, pause: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{process.name} exited: {process.tail()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}"
                             + (f": {process.tail()}" if process else ""))
        time.sleep(pause)


class Control:
    """``edgectl serve`` on its own SQLite store, with ``routes`` in its edge state."""

    def __init__(self, directory: Path, routes: list[Route]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        key = Fernet.generate_key().decode()
        self.env = {"EDGE_API_TOKEN": API_TOKEN, "EDGE_EDGE_TOKEN": EDGE_TOKEN,
                    "EDGE_ENCRYPTION_KEYS": key, "EDGE_DATA_DIR": str(directory),
                    "EDGE_LISTEN_PORT": str(self.port), "EDGE_CONTROL_URL": self.url,
                    "EDGE_CONTROL_SERVERS": f"127.0.0.1:{self.port}",
                    "EDGE_APP_SERVERS": "127.0.0.1:9", "EDGE_DNS_SERVERS": "127.0.0.1",
                    "EDGE_LOG_LEVEL": "WARNING", "EDGE_WORKER_INTERVAL": "1",
                    "EDGE_EDGE_WATCH_SECONDS": "5", "PYTHONPATH": str(ROOT)}
        self.process = ManagedProcess("serve", [sys.executable, "-m", "edgectl", "serve"],
                                      directory / "serve.log", env=self.env, cwd=str(ROOT))
        wait_for_port(self.port, process=self.process, timeout=120)
        wait(lambda: self._get("/api/v1/edge/state", EDGE_TOKEN).status_code == 200, 60,
             "serve's first state", self.process)
        started = time.perf_counter()
        backend = SqliteBackend(str(directory / "edge.db"))
        try:
            self.version = self.seed(backend, KeyVault([key]), routes)
        finally:
            backend.close()
        self.seeded = time.perf_counter() - started

    def seed(self, backend: SqliteBackend, vault: KeyVault, routes: list[Route]) -> str | None:
        """Commit ``routes`` into serve's edge state, 1,000 per change; the version an agent
        that applied them all reports (bench/cold_shards.py seeds shards instead)."""
        store = EdgeStateStore(backend.table(EDGE_STATE), backend.table(EDGE_ROUTES),
                               backend.table(EDGE_CERTS), backend.table(EDGE_NODES),
                               vault, backend.table(EDGE_VISIT_REPORTS),
                               redirects=backend.table(EDGE_REDIRECTS))
        for start in range(0, len(routes), 1000):
            store.change({r.hostname: (r.publication_id, r.pem)
                          for r in routes[start:start + 1000]})
        return store.current_version()

    def _get(self, path: str, token: str) -> requests.Response:
        return requests.get(self.url + path, headers={"Authorization": f"Bearer {token}"},
                            timeout=60)

    def in_sync(self, node_id: str) -> bool:
        nodes = self._get("/api/v1/edge/nodes", API_TOKEN).json()["nodes"]
        return any(node["node_id"] == node_id and node.get("applied_version") == self.version
                   for node in nodes)

    def stop(self) -> None:
        self.process.stop()


class Agent:
    """``edgectl agent`` beside its own HAProxy, in ``directory``."""

    def __init__(self, control: Control, directory: Path, node_id: str, batch: bool) -> None:
        self.control, self.directory, self.node_id, self.batch = control, directory, node_id, batch
        self.https_port = free_port()
        self.env = {**control.env, "EDGE_EDGE_DIR": str(directory / "edge"),
                    "EDGE_DATA_DIR": str(directory / "agent"),
                    "EDGE_EDGE_HTTP_PORT": str(free_port()),
                    "EDGE_EDGE_HTTPS_PORT": str(self.https_port),
                    "EDGE_EDGE_STATS_PORT": str(free_port()), "EDGE_WORKER_INTERVAL": "0.2"}
        self.process: ManagedProcess | None = None

    def cold_start(self, routes: list[Route], label: str) -> float:
        """Seconds from the agent's spawn until every host is served (see the docstring)."""
        argv = [sys.executable, "-m", "edgectl", "agent", "--node-id", self.node_id] \
            if self.batch else [sys.executable, "-c", NO_BATCH, "agent", "--node-id",
                                self.node_id]
        started = time.perf_counter()
        self.process = ManagedProcess(f"agent-{label}", argv, self.directory / f"{label}.log",
                                      env=self.env, cwd=str(ROOT))
        last = routes[-1].hostname
        wait(lambda: served_name(self.https_port, last) == last, 3600, f"{last} served",
             self.process, pause=0.1)
        wait(lambda: self.control.in_sync(self.node_id), 3600, "the agent's report",
             self.process, pause=0.1)
        took = time.perf_counter() - started
        for checked in random.sample(routes, min(300, len(routes))):
            if served_name(self.https_port, checked.hostname) != checked.hostname:
                raise SystemExit(f"{checked.hostname} is not served after the cold start")
        return took

    def stop(self, node_too: bool = True) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        if node_too:
            node = EdgeNode(self.directory / "edge")
            stop_node(node.directory, node.haproxy)


def wire_only(control: Control, routes: list[Route], singles: int) -> dict[str, float]:
    """The download alone, from this process, as the agent asks: the snapshot, every
    certificate in batches, and ``singles`` of them one GET each (seconds per certificate)."""
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {EDGE_TOKEN}", HEADER: str(PROTOCOL)})
    started = time.perf_counter()
    snapshot = session.get(control.url + "/api/v1/edge/state", timeout=300).json()
    took = {"snapshot_s": time.perf_counter() - started}
    wanted = [{"hostname": ref["hostname"], "sha256": ref["cert_sha256"]}
              for ref in snapshot["routes"]]
    started = time.perf_counter()
    for start in range(0, len(wanted), CERT_BATCH_MAX):
        answer = session.post(control.url + "/api/v1/edge/certs", timeout=300, json={
            "format": CERT_BATCH, "certs": wanted[start:start + CERT_BATCH_MAX]})
        assert len(answer.json()["certs"]) == len(wanted[start:start + CERT_BATCH_MAX])
    took["batch_ms_per_cert"] = (time.perf_counter() - started) / len(wanted) * 1000
    started = time.perf_counter()
    for cert in wanted[:singles]:
        answer = session.get(f"{control.url}/api/v1/edge/certs/{cert['hostname']}",
                             params={"sha256": cert["sha256"]}, timeout=30)
        assert answer.ok
    took["single_ms_per_cert"] = (time.perf_counter() - started) / max(singles, 1) * 1000
    print(f"download alone, {len(routes):,} routes: snapshot {took['snapshot_s']:.1f} s; "
          f"batches {took['batch_ms_per_cert']:.3f} ms per certificate; one GET each "
          f"{took['single_ms_per_cert']:.3f} ms per certificate ({singles:,} of them): "
          f"{took['single_ms_per_cert'] / took['batch_ms_per_cert']:.1f}x")
    return {key: round(value, 3) for key, value in took.items()}


def files_floor(directory: Path, routes: list[Route]) -> float:
    """Seconds from spawning a bare HAProxy with every certificate in its crt-list until it
    serves the last host."""
    certs = directory / "files-floor"
    certs.mkdir()
    default = certs / "default.pem"
    ensure_default_cert(default)
    lines = []
    for r in routes:
        (certs / f"{r.hostname}.pem").write_text(r.pem)
        lines.append(f"{certs / r.hostname}.pem {r.hostname}\n")
    crt_list = certs / "crt-list"
    crt_list.write_text("".join(lines))
    os.sync()
    port = free_port()
    template = (ROOT / "haproxy_templates" / "haproxy.cfg.j2").read_text().splitlines()
    tls = "\n".join(line for line in template if line.strip().startswith("ssl-default-bind"))
    config = directory / "files.cfg"  # bench/shortlinks_throughput.py's bare HAProxy, whose
    config.write_text(f"""global\n{tls}
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend files
    bind 127.0.0.1:{port} ssl crt {default} crt-list {crt_list} alpn h2,http/1.1
    http-request return status 200
""")  # start waits 20 s at most for its port: HAProxy loads every file before it binds
    started = time.perf_counter()
    process = ManagedProcess("files", ["haproxy", "-db", "-f", str(config)],
                             directory / "files.log")
    try:
        wait(lambda: served_name(port, routes[-1].hostname) == routes[-1].hostname, 3600,
             "the files floor", process)
        return time.perf_counter() - started
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=None,
                        help="routes for the one-GET-each baseline (default: --routes up to "
                             "10,000; 0: not run)")
    args = parser.parse_args()
    conditions.print_conditions()
    singles = min(args.routes, 10_000) if args.singles is None else args.singles
    started = time.perf_counter()
    routes = [route(n) for n in range(args.routes)]
    print(f"{args.routes:,} certificates made in {time.perf_counter() - started:.1f} s "
          "(not part of any figure)")
    figures: dict[str, object] = {"routes": args.routes}
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        root = Path(tmp)
        (root / "floor").mkdir()
        default = root / "floor" / "default.pem"
        ensure_default_cert(default)
        runtime = haproxy_floor(root / "floor", routes, default) * len(routes)
        from_files = files_floor(root, routes)
        print(f"floor, bare HAProxy, runtime API: {runtime:.1f} s for {len(routes):,}")
        print(f"floor, bare HAProxy, start from files: {from_files:.1f} s for {len(routes):,}")
        figures.update(floor_runtime_api_s=round(runtime, 2),
                       floor_start_from_files_s=round(from_files, 2))
        control = Control(root / "control", routes)
        agent = Agent(control, root / "batch", "batch", batch=True)
        try:
            print(f"control seeded with {len(routes):,} routes in {control.seeded:.1f} s "
                  "(not part of any figure)")
            batch = agent.cold_start(routes, "cold")
            print(f"cold start, real agent + control + HAProxy, batches: {batch:.1f} s "
                  f"({batch / runtime:.2f}x the runtime-API floor, "
                  f"{batch / from_files:.2f}x the files floor)")
            agent.stop(node_too=True)
            restart = agent.cold_start(routes, "restart")
            print(f"restart from the node's files (agent catches up): {restart:.1f} s "
                  f"({restart / from_files:.2f}x the files floor)")
            figures.update(wire_only(control, routes, min(len(routes), 2000)))
            figures.update(cold_start_batch_s=round(batch, 2),
                           batch_over_runtime_floor=round(batch / runtime, 2),
                           batch_over_files_floor=round(batch / from_files, 2),
                           restart_from_files_s=round(restart, 2))
        finally:
            agent.stop()
            control.stop()
        if singles:
            figures.update(single_gets(root, routes[:singles], batch, len(routes)))
        conditions.record("cold_start", figures)  # before 300,000 files are removed


def single_gets(root: Path, routes: list[Route], batch: float, batch_routes: int
                ) -> dict[str, object]:
    """The baseline: one GET per certificate, on its own control state of ``routes``."""
    control = Control(root / "control-singles", routes)
    agent = Agent(control, root / "singles", "singles", batch=False)
    try:
        took = agent.cold_start(routes, "singles")
    finally:
        agent.stop()
        control.stop()
    per_batch = batch / batch_routes
    print(f"cold start, one GET per certificate ({len(routes):,} routes): {took:.1f} s; "
          f"per certificate {took / len(routes) * 1000:.2f} ms vs batches "
          f"{per_batch * 1000:.2f} ms ({took / len(routes) / per_batch:.1f}x)")
    return {"singles_routes": len(routes), "cold_start_singles_s": round(took, 2),
            "singles_over_batch_per_cert": round(took / len(routes) / per_batch, 2)}


if __name__ == "__main__":
    main()
