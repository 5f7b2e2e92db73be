"""One route's change until its shard's node serves it, through the real long poll: shards
behind a router against the same change with no shard, in one run (issue 29: "a one-route
change still reaches the right nodes through the long poll in about 0.1 s").

Usage: python bench/shard_change_latency.py [--domains 1000] [--shards 3] [--samples 30]
           [--new 30]

Two fleets of ``--domains`` active domains on loopback (SQLite), one after the other, each with
a real `edgectl serve` (bench/control_stack.py):

- **baseline**: no shard, one `edgectl agent` and its HAProxy;
- **sharded**: ``--shards`` shards registered before the domains are seeded (nothing moves),
  one node each (`edgectl agent --shard NAME`, PROXY binds on), and a router
  (`edgectl agent --role router`) with its HAProxy.

Each fleet is timed for two changes:

- **change**: ``PATCH /api/v1/domains/<source>`` setting, then clearing, a redirect, until the
  HAProxy of the source's shard node answers with it (``--samples`` per shard, the sources one
  per shard; the baseline's single node gets as many in all);
- **new**: a domain made active (the issue step, whose outbox publishes its route) until its
  shard's node serves its own certificate and, when sharded, until the router does too (its
  map entry in). It is written from this process, as another control replica would write it:
  serve's long polls see such a change by reading the version item every 0.5 s
  (edge/watch.py), which a change made through serve's own API does not wait for. New
  hostnames are picked off the router's default shard, so only their entry reaches them.
"""
from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from bench import control_seed  # noqa: E402
from bench.conditions import print_conditions, record  # noqa: E402
from bench.control_stack import ControlStack, percentile, served_location  # noqa: E402
from control.wiring import Services  # noqa: E402
from edge.shards import ShardNode, assign  # noqa: E402
from kit.procs import ManagedProcess, free_port  # noqa: E402
from kit.x509 import key_to_pem, self_signed  # noqa: E402

PAUSE = 0.3
"""Seconds between changes: the agents back in their long polls, as between real changes."""


def served_subject(port: int, hostname: str) -> str:
    """The subject of the certificate HAProxy on ``port`` answers SNI ``hostname`` with."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def until(served: Callable[[], bool], started: float, what: str, timeout: float = 30) -> float:
    """ms from ``started`` until ``served()``."""
    while True:
        try:
            if served():
                return (time.perf_counter() - started) * 1000
        except OSError:
            pass
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{what} not served after {timeout:.0f} s")
        time.sleep(0.002)


def summary(timings: list[float]) -> dict[str, Any]:
    return {"samples": len(timings), "p50": round(statistics.median(timings), 1),
            "p99": round(percentile(timings, 0.99), 1), "max": round(max(timings), 1)}


class Fleet(ControlStack):
    """serve, and either one node or ``shards`` shard nodes and a router."""

    def __init__(self, directory: Path, shards: int) -> None:
        super().__init__(directory, "sqlite")
        self.env["EDGE_EDGE_STATS_PORT"] = "0"
        self.shards = [f"s{n}" for n in range(1, shards + 1)]
        self.ports = {name: {key: free_port() for key in ("https", "http", "phttps", "phttp")}
                      for name in self.shards}
        self.router_ports = {"https": free_port(), "http": free_port()}
        self.agents: dict[str, dict[str, str]] = {}
        """Each agent's environment: `edgectl agent stop-node` stops its HAProxy."""

    def shard_of(self, hostname: str) -> str:
        return assign(hostname, self.shards) if self.shards else "default"

    def node_port(self, hostname: str) -> int:
        return self.ports[self.shard_of(hostname)]["https"] if self.shards else self.https_port

    def register(self) -> None:
        """The shards, before any domain: the fleet is seeded straight onto them."""
        services = Services.from_settings(self.settings())
        assert services.shards is not None
        try:
            for name in self.shards:
                services.shards.put_shard(name, [ShardNode(
                    "127.0.0.1", self.ports[name]["phttps"], self.ports[name]["phttp"])])
        finally:
            services.close()

    def seed_sources(self) -> tuple[list[str], str]:
        """One source per shard (the baseline: one) and their redirect target, published
        through the outbox, in the latency publication."""
        cert, key_pem = control_seed._certificate()
        services = Services.from_settings(self.settings())
        sources: dict[str, str] = {}
        try:
            target = control_seed.seed_one(services, f"latency-target.{control_seed.ZONE}",
                                           control_seed.LATENCY_PUBLICATION, cert, key_pem,
                                           publish=True)["hostname"]
            for n in range(200):
                host = f"latency-{n}.{control_seed.ZONE}"
                if self.shard_of(host) not in sources:
                    sources[self.shard_of(host)] = control_seed.seed_one(
                        services, host, control_seed.LATENCY_PUBLICATION, cert, key_pem,
                        publish=True)["hostname"]
                if len(sources) == max(1, len(self.shards)):
                    break
        finally:
            services.close()
        return list(sources.values()), target

    def start_agent_as(self, name: str, args: list[str], env: dict[str, str]) -> None:
        env = {**self.env, "EDGE_DATA_DIR": str(self.directory / name),
               "EDGE_EDGE_DIR": str(self.directory / name / "edge"), **env}
        self.agents[name] = env
        self.processes.append(ManagedProcess(
            name, [sys.executable, "-m", "edgectl", "agent", *args],
            self.directory / f"{name}.log", env={**env, "PYTHONPATH": str(Path(
                __file__).resolve().parent.parent)}))

    def start_shards(self, sources: list[str]) -> float:
        """Every shard node and the router, until each source is served through the router."""
        started = time.monotonic()
        for name in self.shards:
            ports = self.ports[name]
            self.start_agent_as(name, ["--shard", name, "--node-id", f"node-{name}"], {
                "EDGE_EDGE_HTTPS_PORT": str(ports["https"]),
                "EDGE_EDGE_HTTP_PORT": str(ports["http"]),
                "EDGE_EDGE_PROXY_HTTPS_PORT": str(ports["phttps"]),
                "EDGE_EDGE_PROXY_HTTP_PORT": str(ports["phttp"])})
        self.start_agent_as("router", ["--role", "router", "--node-id", "router"], {
            "EDGE_EDGE_HTTPS_PORT": str(self.router_ports["https"]),
            "EDGE_EDGE_HTTP_PORT": str(self.router_ports["http"])})
        for source in sources:  # served by its node, through the router, once both are in
            until(lambda: served_subject(self.router_ports["https"], source)
                  == f"CN={control_seed.ZONE}" and served_subject(
                      self.node_port(source), source) == f"CN={control_seed.ZONE}",
                  time.perf_counter(), f"{source} through the router", 1800)
        return time.monotonic() - started

    def change(self, sources: list[str], target: str, samples: int) -> dict[str, Any]:
        """Each source's redirect set and cleared ``samples`` times, each change until its
        shard's node answers with it."""
        self._timed(sources[0], target, target)  # serve's first API write warms it
        self._timed(sources[0], None, target)
        by_shard: dict[str, list[float]] = {self.shard_of(s): [] for s in sources}
        for n in range(samples):
            for source in sources:
                time.sleep(PAUSE)
                by_shard[self.shard_of(source)].append(
                    self._timed(source, target if n % 2 == 0 else None, target))
        every = [ms for timings in by_shard.values() for ms in timings]
        return {**summary(every), "by_shard": {shard: summary(timings)
                                               for shard, timings in by_shard.items()}}

    def _timed(self, source: str, redirect: str | None, target: str) -> float:
        started = time.perf_counter()
        answer = self.api("PATCH", f"/api/v1/domains/{source}", json={"redirect_to": redirect})
        assert answer.status_code == 200, answer.text
        port = self.node_port(source)
        return until(lambda: (target in served_location(port, source)) == bool(redirect),
                     started, f"a change to {source}")

    def new_domains(self, count: int) -> dict[str, Any]:
        """``count`` domains made active, each until its shard's node serves its own
        certificate and, when sharded, until the router does too (its map entry in)."""
        avoid = self.shards[0] if self.shards else None  # the router's default shard
        services = Services.from_settings(self.settings())
        node_ms, router_ms = [], []
        try:
            hosts = (f"new-{n}.{control_seed.ZONE}" for n in range(100 * count))
            for host in [h for h in hosts if self.shard_of(h) != avoid][:count]:
                key = ec.generate_private_key(ec.SECP256R1())
                cert, pem = self_signed(host, key, days=90)[0], key_to_pem(key).encode()
                time.sleep(PAUSE)
                started = time.perf_counter()
                control_seed.seed_one(services, host, control_seed.LATENCY_PUBLICATION, cert,
                                      pem, publish=True)
                ports = {"node": self.node_port(host)}
                if self.shards:
                    ports["router"] = self.router_ports["https"]
                seen = self._first_served(ports, host, started)
                node_ms.append(seen["node"])
                if self.shards:
                    router_ms.append(seen["router"])
        finally:
            services.close()
        return {"node": summary(node_ms), **({"router": summary(router_ms)} if router_ms else {})}

    @staticmethod
    def _first_served(ports: dict[str, int], host: str, started: float) -> dict[str, float]:
        """ms from ``started`` until each of ``ports`` answers ``host`` with its certificate."""
        seen: dict[str, float] = {}

        def each() -> bool:
            for name, port in ports.items():
                if name not in seen and served_subject(port, host) == f"CN={host}":
                    seen[name] = (time.perf_counter() - started) * 1000
            return len(seen) == len(ports)
        until(each, started, host)
        return seen

    def stop(self) -> None:
        super().stop()
        for name, env in self.agents.items():
            stopper = ManagedProcess(f"stop-{name}", [
                sys.executable, "-m", "edgectl", "agent", *(
                    ["--role", "router"] if name == "router" else []), "stop-node"],
                self.directory / f"stop-{name}.log", env={**env, "PYTHONPATH": str(
                    Path(__file__).resolve().parent.parent)})
            stopper.popen.wait(60)
            stopper.stop()


def run_fleet(shards: int, args: argparse.Namespace) -> dict[str, Any]:
    label = f"{shards} shards behind a router" if shards else "no shard"
    print(f"{args.domains:,} domains, {label}:", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"shard-latency-{shards}-") as folder:
        fleet = Fleet(Path(folder), shards)
        try:
            fleet.register()
            started = time.monotonic()
            control_seed.seed(fleet.settings(), args.domains, 1)
            sources, target = fleet.seed_sources()
            print(f"  seeded in {time.monotonic() - started:.0f} s", flush=True)
            fleet.start_serve()
            ready = (fleet.start_shards(sources) if shards
                     else fleet.start_agent(sources[0]))
            print(f"  every node serves after {ready:.1f} s", flush=True)
            fleet.settle(3.0)
            figures: dict[str, Any] = {"shards": shards, "domains": args.domains,
                                       "change_ms": fleet.change(sources, target, args.samples)}
            print(f"  change -> its node: {figures['change_ms']}", flush=True)
            figures["new_ms"] = fleet.new_domains(args.new)
            print(f"  new domain -> served{' through the router' if shards else ''}: "
                  f"{figures['new_ms']}", flush=True)
            return figures
        finally:
            fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--samples", type=int, default=30,
                        help="changes timed per shard (the baseline: as many in all)")
    parser.add_argument("--new", type=int, default=30, help="new domains timed")
    args = parser.parse_args()
    found = print_conditions()
    baseline = run_fleet(0, args)
    sharded = run_fleet(args.shards, args)
    ratios = {"change_p50_ratio": round(sharded["change_ms"]["p50"]
                                        / max(baseline["change_ms"]["p50"], 0.1), 2),
              "new_node_p50_ratio": round(sharded["new_ms"]["node"]["p50"]
                                          / max(baseline["new_ms"]["node"]["p50"], 0.1), 2)}
    print(f"sharded against no shard: {ratios}; load average now "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    record("shard_change_latency", {"baseline": baseline, "sharded": sharded, **ratios,
                                    "load_average_end": round(os.getloadavg()[0], 2)},
           measured=found)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
