"""Routing overhead: requests/s through an edge node whose host map has 100,000 entries vs one.

Usage: python bench/routing_overhead.py [--entries 100000] [--keys 10000] [--seconds 8]
       [--rounds 2]
The app fleet is a HAProxy answering 200 by itself, so the edge, not the app, is measured.
Both nodes run the same rendered config; rounds alternate between them. The baseline is the
node with one route, asked for that host. The large node is asked for that one host too (the
best case: one map entry hot in the CPU cache), then over ``--keys`` of its hosts, uniform and
Zipf (bench/wrk/spread.lua), which is what a fleet of publications sends. Needs wrk.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.conditions import print_conditions, record  # noqa: E402
from bench.wrk.load import wrk, write_keys  # noqa: E402
from edge.node import EdgeNode  # noqa: E402
from edge.state import DesiredState, Route  # noqa: E402
from kit.procs import ManagedProcess, free_port, wait_for_port  # noqa: E402
from kit.x509 import self_signed  # noqa: E402

HOST = "blog.example.test"


def fast_upstream(directory: Path) -> tuple[ManagedProcess, str]:
    port = free_port()
    config = directory / "upstream.cfg"
    config.write_text(f"""defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend upstream
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain lf-string "ok %[req.hdr(x-edge-user)]"
""")
    process = ManagedProcess("upstream", ["haproxy", "-db", "-f", str(config)],
                             directory / "upstream.log")
    wait_for_port(port, process=process)
    return process, f"127.0.0.1:{port}"


def node_with_map(directory: Path, upstream: str, extra_entries: int) -> EdgeNode:
    node = EdgeNode(directory, http_port=free_port(), https_port=free_port())
    node.apply(DesiredState((Route(HOST, "pub_1", self_signed(HOST)[1]),), (upstream,),
                            ("127.0.0.1:9",)))
    if extra_entries:
        node.stop()
        with (node.current / "hosts.map").open("a") as hosts:
            hosts.writelines(f"site{n}.example.net pub_{n}\n" for n in range(extra_entries))
        node.start()
    return node


def requests_per_second(port: int, seconds: int, *headers: str) -> float:
    extra = [arg for header in headers for arg in ("-H", header)]
    output = subprocess.run(["wrk", "-t2", "-c50", f"-d{seconds}s", "-H", f"Host: {HOST}", *extra,
                             f"https://127.0.0.1:{port}/"],
                            capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"requests failed:\n{output}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore


def spread_rate(port: int, seconds: int, keys: Path, distribution: str = "uniform") -> float:
    """requests/s over the hosts in ``keys`` (every answer must be a 200)."""
    run = wrk(f"https://127.0.0.1:{port}/", keys, distribution, seconds, 50, threads=2)
    if run.bad or run.errors:
        raise RuntimeError(f"{run.bad} answers were not 2xx/3xx, {run.errors} socket errors")
    return run.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print_conditions()
    runs: dict[str, list[float]] = {"single": [], "one host": [], "uniform": [], "zipf": []}
    with tempfile.TemporaryDirectory() as tmp:
        keys, one = Path(tmp) / "hosts.keys", Path(tmp) / "one.keys"
        write_keys(one, [(HOST, "/")])  # every side through the same Lua script
        step = max(1, (args.entries - 1) // args.keys)
        write_keys(keys, ((f"site{n}.example.net", "/")
                          for n in range(0, args.entries - 1, step)))
        upstream, address = fast_upstream(Path(tmp))
        single = node_with_map(Path(tmp) / "single", address, 0)
        large = node_with_map(Path(tmp) / "large", address, args.entries - 1)
        try:
            for _ in range(args.rounds):
                runs["single"].append(spread_rate(single.layout.https_port, args.seconds,
                                                  one, "uniform"))
                runs["one host"].append(spread_rate(large.layout.https_port, args.seconds,
                                                    one, "uniform"))
                for distribution in ("uniform", "zipf"):
                    runs[distribution].append(spread_rate(large.layout.https_port,
                                                          args.seconds, keys, distribution))
        finally:
            single.stop()
            large.stop()
            upstream.stop()
    small = statistics.median(runs["single"])
    figures: dict[str, object] = {"entries": args.entries, "keys": args.keys,
                                  "single_req_per_s": round(small)}
    print(f"1 route, its host:             {small:10.0f} req/s  "
          f"(runs: {', '.join(f'{r:.0f}' for r in runs['single'])})")
    for name, label in (("one host", "one host"),
                        ("uniform", f"{args.keys:,} hosts, uniform"),
                        ("zipf", f"{args.keys:,} hosts, Zipf")):
        rate = statistics.median(runs[name])
        ratios = [r / s for r, s in zip(runs[name], runs["single"])]
        figures[name.replace(" ", "_") + "_ratio"] = round(statistics.median(ratios), 3)
        figures[name.replace(" ", "_") + "_req_per_s"] = round(rate)
        print(f"{args.entries:,} entries, {label + ':':<18} {rate:10.0f} req/s  ratio to 1 route "
              f"{statistics.median(ratios):.3f} (runs: {', '.join(f'{r:.2f}' for r in ratios)})")
    record("routing_overhead", figures)


if __name__ == "__main__":
    main()
