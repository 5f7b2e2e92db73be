"""Every plain short link in the edge's map: 1,000,000 of them, measured as ratios.

Usage: python bench/shortlinks_map.py [--links 1000000] [--seconds 5] [--rounds 3] [--changes 30]
One run, on loopback:
- seeds the control service's edge state (SQLite) with ``--links`` plain links (untimed);
- starts `edgectl agent` (its own process) against the control service served from this one:
  the node's cold start with the whole map, until the last link is answered from it;
- wrk, HTTPS, its requests spread over ``--keys`` of the links (bench/wrk/spread.lua), uniform
  and Zipf, so the map and the visit path are not held in the CPU cache by one hot slug:
  HAProxy's own fixed redirect (the ceiling, sent the same requests), the links answered from
  the map, and a link with device targets (a target picked by User-Agent), rounds
  alternating; the map's ratios to the ceiling (goal >= 0.85);
- the Python path in the same run: one `edgectl shortlinks` process, cached plain links (as
  many as ``--keys``, capped at 10,000, written in bulk) over HTTP, requests per CPU-second of
  that process (goal >= 3,000 per core), beside HTTP ceiling rounds (a plain link reaches
  Python only when the map does not hold it; bench/shortlinks_python_path.py measures what
  does reach it);
- one change to be served: a link made through the short-link service until HAProxy answers
  it from the map (the agent's long poll), p50/p99 over ``--changes`` links. Until then the
  edge sends the link to the short-link app, which answers it from the store, as in
  production: a probe never waits on the edge's retries of an app that is not there;
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
from bench.conditions import print_conditions, record  # noqa: E402
from bench.shortlinks_throughput import (HOST, ceiling, cpu_seconds, links_server,  # noqa: E402
                                         short_link_env)
from bench.wrk.load import wrk, write_keys  # noqa: E402
from control.wiring import Services  # noqa: E402
from devtools.probe import https_get  # noqa: E402
from edge.node import EdgeNode  # noqa: E402
from edge.state import DesiredState, Redirect, Route  # noqa: E402
from kit.procs import ManagedProcess, free_port  # noqa: E402
from kit.settings import load_settings  # noqa: E402
from kit.x509 import self_signed  # noqa: E402
from shortlinks.links import link_id  # noqa: E402


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


def seed(services: Services, links: int, app: str) -> None:
    """``links`` plain links in the edge state; ``app`` the short-link app's address."""
    started = time.perf_counter()
    services.edge_state.save(DesiredState(
        (Route(HOST, "pub_1", self_signed(HOST)[1]),), ("127.0.0.1:9",), ("127.0.0.1:9",),
        short_domains=(HOST,), shortlink_servers=(app,)))
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
    parser.add_argument("--keys", type=int, default=100_000,
                        help="links the requests are spread over")
    args = parser.parse_args()
    conditions = print_conditions()
    directory = Path(tempfile.mkdtemp(prefix="bench-map-"))
    links_port = free_port()
    env = short_link_env(directory, EDGE_SHORTLINK_SERVERS=f"127.0.0.1:{links_port}")
    services = Services.from_settings(load_settings(env=env))
    https_port = free_port()
    seed(services, args.links, f"127.0.0.1:{links_port}")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, create_app(services), threaded=True)
    server.daemon_threads = False  # joined by server_close
    threading.Thread(target=server.serve_forever, daemon=True).start()
    agent_env = {**os.environ, **env, "EDGE_CONTROL_URL": f"http://127.0.0.1:{server.server_port}",
                 "EDGE_EDGE_DIR": str(directory / "edge"), "EDGE_EDGE_HTTPS_PORT": str(https_port),
                 "EDGE_EDGE_HTTP_PORT": str(free_port()), "EDGE_EDGE_STATS_PORT": "0",
                 "EDGE_WORKER_INTERVAL": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    processes: list[ManagedProcess] = []
    last = (f"s{args.links - 1:07d}", f"https://example.com/landing/{args.links - 1}")
    try:
        # The short-link app behind the edge, up before the node as in production: what the
        # map does not answer yet (the last link while the node starts, a new link until its
        # change is applied) it answers from the store, at once.
        python = links_server(directory, env, "waitress", [
            sys.executable, "-m", "edgectl", "--log-level", "WARNING", "shortlinks",
            "--workers", "1"], links_port)
        processes.append(python)
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
        rounds: dict[str, list[float]] = {}
        bad = 0
        step = max(1, args.links // args.keys)
        spread, device, python_keys = (directory / name for name in ("spread", "device", "py"))
        write_keys(spread, ((HOST, f"/s{n:07d}") for n in range(0, args.links, step)))
        write_keys(device, [(HOST, "/device")])
        python_links = min(args.keys, 10_000)
        write_keys(python_keys, ((HOST, f"/p{n}") for n in range(python_links)))

        def measure(name: str, url: str, keys: Path, distribution: str,
                    server: ManagedProcess | None = None) -> None:
            nonlocal bad
            wrk(url, keys, distribution, 1, args.connections)  # warm-up
            cpu = cpu_seconds(server.pid) if server else 0.0
            run = wrk(url, keys, distribution, args.seconds, args.connections)
            bad += run.bad + run.errors
            rounds.setdefault(name, []).append(run.rate)
            if server:
                rounds.setdefault("per-cpu", []).append(
                    run.requests / (cpu_seconds(server.pid) - cpu))
            print(f"  {name:<16} {run.rate:>9,.0f} req/s  non-3xx {run.bad}", flush=True)

        for n in range(1, args.rounds + 1):
            print(f" round {n}", flush=True)
            for distribution in ("uniform", "zipf"):
                measure(f"ceiling-{distribution}", f"https://127.0.0.1:{ceiling_https}",
                        spread, distribution)
                measure(f"map-{distribution}", f"https://127.0.0.1:{https_port}", spread,
                        distribution)
            measure("device", f"https://127.0.0.1:{https_port}", device, "uniform")
        # The Python path in the same run: one `edgectl shortlinks` process (one core), cached
        # plain links straight over HTTP, each round beside an HTTP ceiling round.
        now = time.time()
        for n in range(python_links):  # the background, in bulk
            services.links.table.put({
                "id": link_id(HOST, f"p{n}"), "domain": HOST, "slug": f"p{n}",
                "target": f"https://example.com/p/{n}", "owner": "pub_1", "code": 302,
                "disabled": False, "valid_until": None, "max_visits": None,
                "created_at": now, "updated_at": now})
        wrk(f"http://127.0.0.1:{links_port}", python_keys, "sequential",
            max(2, python_links // 1000), args.connections)  # every link cached once
        for n in range(1, args.rounds + 1):
            measure("http", f"http://127.0.0.1:{ceiling_http}", python_keys, "uniform")
            measure("python", f"http://127.0.0.1:{links_port}", python_keys, "uniform", python)
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
        figures: dict[str, object] = {"links": args.links, "keys": args.keys}
        print(f"\n{args.links:,} plain links in the map (wrk -t1 -c{args.connections} "
              f"-d{args.seconds}s, HTTPS, requests over {len(range(0, args.links, step)):,} "
              f"of them, {os.cpu_count()} cores shared):")
        for distribution in ("uniform", "zipf"):
            ratios = [m / c for m, c in zip(rounds[f"map-{distribution}"],
                                            rounds[f"ceiling-{distribution}"])]
            figures[f"map_{distribution}_ratio"] = round(statistics.median(ratios), 3)
            figures[f"map_{distribution}_req_per_s"] = round(
                statistics.median(rounds[f"map-{distribution}"]))
            print(f"  map / ceiling, {distribution}, each round: "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}; median "
                  f"{statistics.median(ratios):.2f} (goal >= 0.85); ceiling median "
                  f"{statistics.median(rounds[f'ceiling-{distribution}']):,.0f} req/s")
        devices = [d / c for d, c in zip(rounds["device"], rounds["ceiling-uniform"])]
        figures["device_ratio"] = round(statistics.median(devices), 3)
        print(f"  a link with device targets (no User-Agent: every device rule evaluated) / "
              f"uniform ceiling, each round: {', '.join(f'{r:.2f}' for r in devices)}; median "
              f"{statistics.median(devices):.2f}")
        python_ratios = [p / c for p, c in zip(rounds["python"], rounds["http"])]
        figures["python_req_per_s"] = round(statistics.median(rounds["python"]))
        figures["python_req_per_cpu_s"] = round(statistics.median(rounds["per-cpu"]))
        figures["python_ratio_http_ceiling"] = round(statistics.median(python_ratios), 3)
        print(f"  Python path (one waitress process, {python_links:,} cached plain links, "
              f"HTTP): median {statistics.median(rounds['python']):,.0f} req/s, "
              f"{statistics.median(rounds['per-cpu']):,.0f} requests per CPU-second of the "
              f"process (goal >= 3,000 per core); of the HTTP ceiling, each round: "
              f"{', '.join(f'{r:.3f}' for r in python_ratios)}")
        print(f"  a new link, made -> answered from the map: {percentiles(changes)}; in order "
              f"(ms): {', '.join(f'{c * 1000:.0f}' for c in changes)}")
        print(f"  RSS: HAProxy {haproxy_rss:.0f} MB (master + worker), agent {agent_rss:.0f} MB")
        print(f"  load average {os.getloadavg()[0]:.2f}")
        figures.update(change_p50_ms=round(statistics.median(changes) * 1000),
                       haproxy_rss_mb=round(haproxy_rss), agent_rss_mb=round(agent_rss))
        record("shortlinks_map", {**figures, "conditions_at_start": conditions})
        return 1 if bad else 0
    finally:
        for process in reversed(processes):
            process.stop()
        EdgeNode(directory / "edge").stop()  # the agent leaves HAProxy serving
        services.edge_state.watch.drain()  # the long poll of the agent just stopped ends now
        server.shutdown()
        server.server_close()  # after its requests' threads end: none reads a closed store
        services.close()
        shutil.rmtree(directory, ignore_errors=True)  # 300 MB of store and map


if __name__ == "__main__":
    sys.exit(main())
