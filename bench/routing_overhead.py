"""Routing overhead: requests/s through an edge node whose host map has 100,000 entries vs one.

Usage: python bench/routing_overhead.py [--entries 100000] [--seconds 8] [--rounds 2]
The app fleet is a HAProxy answering 200 by itself, so the edge, not the app, is measured.
Both nodes run the same rendered config; rounds alternate between them. Needs wrk.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        upstream, address = fast_upstream(Path(tmp))
        single = node_with_map(Path(tmp) / "single", address, 0)
        large = node_with_map(Path(tmp) / "large", address, args.entries - 1)
        try:
            small_runs, large_runs = [], []
            for _ in range(args.rounds):
                small_runs.append(requests_per_second(single.layout.https_port, args.seconds))
                large_runs.append(requests_per_second(large.layout.https_port, args.seconds))
        finally:
            single.stop()
            large.stop()
            upstream.stop()
    small, big = statistics.median(small_runs), statistics.median(large_runs)
    print(f"1 route:              {small:10.0f} req/s  (runs: {', '.join(f'{r:.0f}' for r in small_runs)})")
    print(f"{args.entries:,} map entries: {big:10.0f} req/s  (runs: {', '.join(f'{r:.0f}' for r in large_runs)})")
    print(f"ratio large/single: {big / small:.3f}")


if __name__ == "__main__":
    main()
