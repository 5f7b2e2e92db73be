"""Every plain short link in the edge's map: 1,000,000 of them, measured as ratios.

Usage: python bench/shortlinks_map.py [--links 1000000] [--seconds 5] [--rounds 3] [--changes 30]
One run, on loopback:
- seeds the control service's edge state (SQLite) with ``--links`` plain links (untimed);
- starts `edgectl agent` (its own process) against the control service served from this one:
  the node's cold start with the whole map, until the last link is answered from it;
- wrk, HTTPS: HAProxy's own fixed redirect (the ceiling), a link answered from the map and
  a link with device targets answered from it (a target picked by User-Agent), rounds
  alternating; the map's ratios to the ceiling (goal >= 0.85);
- the Python path in the same run: one `edgectl shortlinks` process, a cached plain link over
  HTTP, requests per CPU-second of that process (goal >= 3,000 per core), beside HTTP ceiling
  rounds;
- one change to be served: a link made through the short-link service until HAProxy answers
  it from the map (the agent's long poll), p50/p99 over ``--changes`` links;
- RSS of HAProxy (master + worker) and of the agent with the whole map.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import edge.state_changes  # noqa: E402
from admin_app import create_app  # noqa: E402
from bench.shortlinks_throughput import (HOST, ceiling, cpu_seconds, links_server,  # noqa: E402
                                         short_link_env, wrk)
from control.wiring import Services  # noqa: E402
from devtools.probe import https_get  # noqa: E402
from edge.node import EdgeNode  # noqa: E402
from edge.state import DesiredState, Redirect, Route  # noqa: E402
from kit.procs import ManagedProcess, free_port  # noqa: E402
from kit.settings import load_settings  # noqa: E402
from kit.x509 import self_signed  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def haproxy_pids(node: EdgeNode) -> list[int]:
    """The master and workers running the node's config (their command lines name it)."""
    config = str(node.current / "haproxy.cfg").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and config in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"p50 {statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms (n={len(ordered)})")


def from_map(port: int, slug: str, target: str) -> bool:
    try:
        probe = https_get(port, HOST, f"/{slug}")
    except OSError:
        return False
    return probe.status == 302 and probe.headers.get("location") == target \
        and "x-request-id" not in probe.headers


def seed(services: Services, links: int, https_port: int) -> None:
    started = time.perf_counter()
    services.edge_state.save(DesiredState(
        (Route(HOST, "pub_1", self_signed(HOST)[1]),), ("127.0.0.1:9",), ("127.0.0.1:9",),
        short_domains=(HOST,), shortlink_servers=("127.0.0.1:9",)))
    edge.state_changes.CHUNK = 5000  # seeding only: bigger commits (the outbox item grows)
    batch: dict[str, Redirect | None] = {}
    for n in range(links):
        redirect = Redirect(HOST, f"s{n:07d}", 302, f"https://example.com/landing/{n}")
        batch[redirect.key] = redirect
        if len(batch) == 50_000:
            services.edge_state.change({}, redirects=batch)
            batch = {}
    device = Redirect(HOST, "device", 302, "https://example.com/web", 0, tuple(
        f"https://example.com/{name}" for name in ("ios", "android", "desktop")))
    batch[device.key] = device
    services.edge_state.change({}, redirects=batch)
    edge.state_changes.CHUNK = 200
    print(f"{links:,} links seeded into the edge state in {time.perf_counter() - started:.0f} s "
          "(untimed)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--links", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--changes", type=int, default=30)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bench-map-"))
    env = short_link_env(directory, EDGE_SHORTLINK_SERVERS="127.0.0.1:9")
    services = Services.from_settings(load_settings(env=env))
    https_port = free_port()
    seed(services, args.links, https_port)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, create_app(services), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    agent_env = {**os.environ, **env, "EDGE_CONTROL_URL": f"http://127.0.0.1:{server.server_port}",
                 "EDGE_EDGE_DIR": str(directory / "edge"), "EDGE_EDGE_HTTPS_PORT": str(https_port),
                 "EDGE_EDGE_HTTP_PORT": str(free_port()), "EDGE_EDGE_STATS_PORT": "0",
                 "EDGE_WORKER_INTERVAL": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    processes: list[ManagedProcess] = []
    last = (f"s{args.links - 1:07d}", f"https://example.com/landing/{args.links - 1}")
    try:
        started = time.perf_counter()
        agent = ManagedProcess("agent", [sys.executable, "-m", "edgectl", "--log-level",
                                         "WARNING", "agent", "--node-id", "bench"],
                               directory / "agent.log", env=agent_env)
        processes.append(agent)
        while not from_map(https_port, *last):
            if agent.poll() is not None or time.perf_counter() - started > 1800:
                raise RuntimeError(f"the agent did not serve the map: {agent.tail()}")
            time.sleep(0.1)
        print(f"node cold start (agent started -> the last of {args.links:,} links answered "
              f"from the map): {time.perf_counter() - started:.1f} s", flush=True)
        node = EdgeNode(directory / "edge")  # the agent's node: for its HAProxy's PIDs
        haproxy_rss = sum(rss_mb(pid) for pid in haproxy_pids(node))

        fixed, ceiling_http, ceiling_https = ceiling(directory, node.layout.default_cert)
        processes.append(fixed)
        rounds: dict[str, list[float]] = {"ceiling": [], "map": [], "device": []}
        bad = 0
        for n in range(1, args.rounds + 1):
            for name, url in (("ceiling", f"https://127.0.0.1:{ceiling_https}/x"),
                              ("map", f"https://127.0.0.1:{https_port}/{last[0]}"),
                              ("device", f"https://127.0.0.1:{https_port}/device")):
                wrk(url, 1, args.connections)
                rate, errors = wrk(url, args.seconds, args.connections)
                bad += errors
                rounds[name].append(rate)
                print(f"  {name:<8} round {n}: {rate:>9,.0f} req/s  non-3xx {errors}", flush=True)
        # The Python path in the same run: one `edgectl shortlinks` process (one core), a
        # cached plain link straight over HTTP, each round beside an HTTP ceiling round.
        services.links.create(HOST, "https://example.com/warm", "pub_1", slug="warm")
        links_port = free_port()
        python = links_server(directory, env, "waitress", [
            sys.executable, "-m", "edgectl", "--log-level", "WARNING", "shortlinks",
            "--workers", "1"], links_port)
        processes.append(python)
        for n in range(1, args.rounds + 1):
            for name, url in (("http", f"http://127.0.0.1:{ceiling_http}/x"),
                              ("python", f"http://127.0.0.1:{links_port}/warm")):
                wrk(url, 1, args.connections)
                cpu = cpu_seconds(python.pid)
                rate, errors = wrk(url, args.seconds, args.connections)
                bad += errors
                rounds.setdefault(name, []).append(rate)
                if name == "python":
                    rounds.setdefault("per-cpu", []).append(
                        rate * args.seconds / (cpu_seconds(python.pid) - cpu))
                print(f"  {name:<8} round {n}: {rate:>9,.0f} req/s  non-3xx {errors}", flush=True)
        python.stop()
        fixed.stop()

        changes = []
        for n in range(args.changes):
            slug, target = f"new{n}", f"https://example.com/new/{n}"
            made = time.perf_counter()
            services.links.create(HOST, target, "pub_1", slug=slug)
            while not from_map(https_port, slug, target):
                if time.perf_counter() - made > 30:
                    raise RuntimeError(f"{slug} never reached the map")
                time.sleep(0.002)
            changes.append(time.perf_counter() - made)
        agent_rss = rss_mb(agent.pid)
        ratios = [m / c for m, c in zip(rounds["map"], rounds["ceiling"])]
        print(f"\n{args.links:,} plain links in the map (wrk -t1 -c{args.connections} "
              f"-d{args.seconds}s, HTTPS, {os.cpu_count()} cores shared):")
        print(f"  map / ceiling, each round: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f} (goal >= 0.85); ceiling median "
              f"{statistics.median(rounds['ceiling']):,.0f} req/s")
        devices = [d / c for d, c in zip(rounds["device"], rounds["ceiling"])]
        print(f"  a link with device targets (no User-Agent: every device rule evaluated) / "
              f"ceiling, each round: {', '.join(f'{r:.2f}' for r in devices)}; median "
              f"{statistics.median(devices):.2f}")
        python_ratios = [p / c for p, c in zip(rounds["python"], rounds["http"])]
        print(f"  Python path (one waitress process, a cached plain link, HTTP): median "
              f"{statistics.median(rounds['python']):,.0f} req/s, "
              f"{statistics.median(rounds['per-cpu']):,.0f} requests per CPU-second of the "
              f"process (goal >= 3,000 per core); of the HTTP ceiling, each round: "
              f"{', '.join(f'{r:.3f}' for r in python_ratios)}")
        print(f"  a new link, made -> answered from the map: {percentiles(changes)}; in order "
              f"(ms): {', '.join(f'{c * 1000:.0f}' for c in changes)}")
        print(f"  RSS: HAProxy {haproxy_rss:.0f} MB (master + worker), agent {agent_rss:.0f} MB")
        print(f"  load average {os.getloadavg()[0]:.2f}")
        return 1 if bad else 0
    finally:
        for process in reversed(processes):
            process.stop()
        EdgeNode(directory / "edge").stop()  # the agent leaves HAProxy serving
        server.shutdown()
        services.close()
        shutil.rmtree(directory, ignore_errors=True)  # 300 MB of store and map


if __name__ == "__main__":
    sys.exit(main())
