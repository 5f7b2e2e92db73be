"""Router overhead (issue 29): an edge node reached through the shard router against the same
node reached straight, and the router's memory and lookup cost with a large SNI map.

Usage: python bench/router_overhead.py [--hosts 1000] [--map-entries 1000000] [--seconds 5]
       [--rounds 2] [--clients 4]

One edge node serves ``--hosts`` hostnames, each with its own certificate (one shared key:
the key's generation is not what is measured), in front of a HAProxy answering 200 by itself.
The router (edge/router.py) forwards to the node's PROXY binds. Rounds alternate between
"direct" (the node's plain HTTPS bind) and "router" (the router's), uniform over the hosts:

- TLS handshakes/s: a new connection per request, each with its hostname as SNI (which the
  router routes by), from ``--clients`` Python processes (wrk sends the URL's host as SNI on
  every connection, so it cannot spread SNI). The client pays a handshake too, so this is
  the whole path's rate, as a visitor sees it; every answer must be 2xx/3xx.
- requests/s on kept-alive connections: wrk with bench/wrk/spread.lua, Host spread over the
  hosts (the SNI is 127.0.0.1, which the router sends to the default shard: the node).

Then the router's HAProxy (master + worker, /proc) with an empty map, with the ``--hosts``
map and with ``--map-entries`` more hostnames: RSS and PSS (RSS counts the pages the forked
worker shares with its master twice), and handshakes/s through the big map against the small
one. The big map file is written directly (``host shard`` lines, the router's format) before
the router starts; the hosts it serves come as one delta update, so Router.apply folds them
into that file (one rewrite) and starts HAProxy on it. Goal: router/direct >= 0.9. Needs wrk.

Everything runs on one machine: the router's CPU is taken from the node and the load
generator it shares the cores with, which a router on its own machine does not take, so the
router/direct ratios here are a floor; on a loaded machine, rounds vary by tens of percent
(run more ``--rounds``: the ratios are per round, then their median).
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, cast

from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.conditions import print_conditions, record  # noqa: E402
from bench.routing_overhead import fast_upstream  # noqa: E402
from bench.wrk.load import wrk, write_keys  # noqa: E402
from edge.haproxy import server_status  # noqa: E402
from edge.node import EdgeNode  # noqa: E402
from edge.router import Router, RouterUpdate  # noqa: E402
from edge.state import DesiredState, Route  # noqa: E402
from kit.procs import free_port, wait_for_port  # noqa: E402
from kit.x509 import self_signed  # noqa: E402

GOAL = 0.9
_KEY = ec.generate_private_key(ec.SECP256R1())


def _handshake_loop(args: tuple[int, list[str], float, int]) -> tuple[int, int]:
    """(good, bad) answers from sequential new TLS connections, until ``deadline``."""
    port, hosts, deadline, seed = args
    chooser = random.Random(seed)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    good = bad = 0
    while time.time() < deadline:
        host = chooser.choice(hosts)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                            .encode())
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
        except (OSError, ssl.SSLError):
            bad += 1
            continue
        status = answer[9:12]
        good, bad = (good + 1, bad) if status[:1] in (b"2", b"3") else (good, bad + 1)
    return good, bad


def handshakes_per_second(port: int, hosts: list[str], seconds: float, clients: int) -> float:
    """New connections (handshake + one request) per second over ``hosts``, uniform."""
    deadline = time.time() + 0.3 + seconds
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        started = time.time()
        counts = pool.map(_handshake_loop, [(port, hosts, deadline, n) for n in range(clients)])
        elapsed = time.time() - started
    good, bad = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if bad:
        raise RuntimeError(f"{bad} of {good + bad} new connections failed or were not 2xx/3xx")
    return good / elapsed


def keepalive_rate(port: int, keys: Path, seconds: int) -> float:
    run = wrk(f"https://127.0.0.1:{port}/", keys, "uniform", seconds, 50, threads=2)
    if run.bad or run.errors:
        raise RuntimeError(f"{run.bad} answers were not 2xx/3xx, {run.errors} socket errors")
    return run.rate


def memory_kib(router: Router) -> tuple[int, int]:
    """(RSS, PSS) in KiB of the router's HAProxy master and worker together."""
    rss = pss = 0
    for pid in (router.haproxy.pid, router.runtime.worker_pid()):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("Rss", "Pss"):
                kib = int(value.split()[0])
                rss, pss = (rss + kib, pss) if name == "Rss" else (rss, pss + kib)
    return rss, pss


def start_router(directory: Path, node: EdgeNode, hosts: list[str], filler: int) -> Router:
    """A router sending ``hosts`` to ``node``, its map file holding ``filler`` more."""
    router = Router(directory, https_port=free_port(), http_port=free_port(), check_ms=500)
    if filler:
        with router.map_path.open("w") as map_file:
            for start in range(0, filler, 100_000):
                map_file.write("".join(f"site{n}.example.net one\n"
                                       for n in range(start, min(filler, start + 100_000))))
    router.apply(RouterUpdate.from_json({
        "version": "v1", "revision": 1, "delta": True, "hosts": dict.fromkeys(hosts, "one"),
        "default_shard": "one",
        "shards": {"one": [{"host": "127.0.0.1", "https_port": node.layout.proxy_https_port,
                            "http_port": node.layout.proxy_http_port}]}}))
    wait_for_port(port_of(router))
    deadline = time.monotonic() + 30
    while server_status(router.runtime_socket, "tls_one") != {"one1": "UP"}:
        if time.monotonic() > deadline:
            raise RuntimeError("the router's check of the node never came UP")
        time.sleep(0.1)
    return router


def port_of(router: Router) -> int:
    """The router's TLS port."""
    return cast(int, router.listen["https_port"])


def runs_text(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" if v < 10 else f"{v:.0f}" for v in values)


def compare(figures: dict[str, object], name: str, label: str, unit: str,
            base: list[float], other: list[float], sides: tuple[str, str], goal: bool) -> None:
    """Print and keep the median of the per-round ratios other/base."""
    ratios = [o / b for o, b in zip(other, base)]
    ratio = statistics.median(ratios)
    figures[f"{name}_ratio"] = round(ratio, 3)
    print(f"{label}: {sides[0]} {statistics.median(base):.0f} {unit}, "
          f"{sides[1]} {statistics.median(other):.0f} {unit}, ratio {ratio:.3f} "
          f"(runs: {runs_text(ratios)})"
          + (f"; goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'}" if goal else ""))
    if goal:
        figures[f"{name}_goal_met"] = ratio >= GOAL


def alternate(ports: dict[str, int], args: argparse.Namespace, hosts: list[str],
              measure: Callable[[str, int], None]) -> None:
    """A warm-up (not counted: every certificate used once) on each side, then ``measure``
    each side per round, which side goes first alternating."""
    for port in ports.values():
        handshakes_per_second(port, hosts, 1, args.clients)
    for round_ in range(args.rounds):
        for side in sorted(ports, reverse=bool(round_ % 2)):
            measure(side, ports[side])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--map-entries", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4,
                        help="processes opening new connections")
    args = parser.parse_args()
    print_conditions()
    hosts = [f"h{n}.bench.example" for n in range(args.hosts)]
    figures: dict[str, object] = {"hosts": args.hosts, "map_entries": args.map_entries,
                                  "clients": args.clients}
    rates: dict[str, list[float]] = {k: [] for k in ("hs_direct", "hs_router", "ka_direct",
                                                     "ka_router", "hs_small", "hs_big")}
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "hosts.keys"
        write_keys(keys, ((host, "/") for host in hosts))
        upstream, address = fast_upstream(Path(tmp))
        node = EdgeNode(Path(tmp) / "node", http_port=free_port(), https_port=free_port(),
                        proxy_https_port=free_port(), proxy_http_port=free_port())
        routers: list[Router] = []
        try:
            node.apply(DesiredState(tuple(Route(host, f"pub_{n}", self_signed(host, _KEY)[1])
                                          for n, host in enumerate(hosts)),
                                    (address,), ("127.0.0.1:9",)))

            def both(side: str, port: int) -> None:
                rates[f"hs_{side}"].append(handshakes_per_second(port, hosts, args.seconds,
                                                                 args.clients))
                if side in ("direct", "router"):
                    rates[f"ka_{side}"].append(keepalive_rate(port, keys, args.seconds))

            empty = start_router(Path(tmp) / "empty", node, [], 0)
            routers.append(empty)
            memory = {"empty": memory_kib(empty)}
            empty.stop()
            small = start_router(Path(tmp) / "small", node, hosts, 0)
            routers.append(small)
            memory["small"] = memory_kib(small)
            ports = {"direct": node.layout.https_port, "router": port_of(small)}
            alternate(ports, args, hosts, both)
            started = time.monotonic()
            big = start_router(Path(tmp) / "big", node, hosts, args.map_entries)
            routers.append(big)
            figures["big_map_start_s"] = round(time.monotonic() - started, 1)
            memory["big"] = memory_kib(big)
            alternate({"small": port_of(small), "big": port_of(big)},
                      args, hosts, both)
        finally:
            for router in routers:
                router.stop()
            node.stop()
            upstream.stop()
    report(args, figures, rates, memory)
    record("router_overhead", figures)


def report(args: argparse.Namespace, figures: dict[str, object],
           rates: dict[str, list[float]], memory: dict[str, tuple[int, int]]) -> None:
    for key, values in rates.items():
        figures[f"{key}_per_s"] = round(statistics.median(values))
    compare(figures, "handshake", f"TLS handshakes/s over {args.hosts:,} hosts, router/direct",
            "conn/s", rates["hs_direct"], rates["hs_router"], ("direct", "router"), True)
    compare(figures, "keepalive", f"kept-alive requests/s over {args.hosts:,} hosts, "
            "router/direct", "req/s", rates["ka_direct"], rates["ka_router"], ("direct", "router"),
            True)
    compare(figures, "big_map_handshake", f"handshakes/s through the router, "
            f"{args.map_entries + args.hosts:,}-entry map / {args.hosts:,}-entry map",
            "conn/s", rates["hs_small"], rates["hs_big"], ("small map", "big map"), False)
    for name, (rss, pss) in memory.items():
        figures[f"rss_{name}_mib"] = round(rss / 1024, 1)
        figures[f"pss_{name}_mib"] = round(pss / 1024, 1)
        print(f"router HAProxy (master + worker), {name} map: RSS {rss / 1024:.1f} MiB, "
              f"PSS {pss / 1024:.1f} MiB")
    extra = (memory["big"][1] - memory["small"][1]) * 1024 / max(1, args.map_entries)
    figures["pss_bytes_per_entry"] = round(extra)
    print(f"map memory: {extra:.0f} bytes (PSS) per hostname over {args.map_entries:,} more "
          f"entries; big map loaded and router up in {figures['big_map_start_s']} s")


if __name__ == "__main__":
    main()
