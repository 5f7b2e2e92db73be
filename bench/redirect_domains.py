"""Redirect domains per second, as a ratio of HAProxy's own redirect ceiling (issue 17).

Usage: python bench/redirect_domains.py [--routes 1000] [--seconds 5] [--rounds 3]
  ceiling   HAProxy answering a fixed `http-request redirect` by itself over HTTPS, with the
            edge's TLS settings (the same config as bench/shortlinks_throughput.py)
  edge      an edge node (EdgeNode, the rendered haproxy.cfg) with ``--routes`` routes, every
            one a redirect domain answered from the domain_redirects map, path and query kept
Rounds alternate between the two, so each has its own ratio on a shared, noisy machine; wrk
-t1 -c50 with keep-alive, as the other redirect figures. Needs wrk. Goal: >= 0.85.
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

from bench.shortlinks_throughput import ceiling  # noqa: E402
from bench.conditions import print_conditions, record  # noqa: E402
from edge.node import EdgeNode  # noqa: E402
from edge.state import DesiredState, Route  # noqa: E402
from kit import route_extras  # noqa: E402
from kit.procs import free_port  # noqa: E402
from kit.x509 import self_signed  # noqa: E402

HOST = "old0.example.test"


def wrk(url: str, seconds: int) -> tuple[float, int]:
    output = subprocess.run(["wrk", "-t1", "-c50", f"-d{seconds}s", "-H", f"Host: {HOST}", url],
                            capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return rate, int(bad.group(1)) if bad else 0


def edge(directory: Path, routes: int) -> EdgeNode:
    """A node whose routes all redirect to the last one (one certificate shared, as only the
    maps matter)."""
    node = EdgeNode(directory / "edge", http_port=free_port(), https_port=free_port())
    pem = self_signed(HOST)[1]
    redirect = route_extras.encode("main.example.test", 308)
    target = Route("main.example.test", "pub_1", pem)  # redirected to only while routed
    node.apply(DesiredState(tuple(Route(f"old{n}.example.test", "pub_1", pem, redirect)
                                  for n in range(routes - 1)) + (target,),
                            ("127.0.0.1:9",), ("127.0.0.1:9",)))
    return node


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print_conditions()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        node = edge(directory, args.routes)
        fixed, _, https = ceiling(directory, node.layout.default_cert)
        ratios, ceilings, rates = [], [], []
        try:
            for _ in range(args.rounds):
                top, top_bad = wrk(f"https://127.0.0.1:{https}/p/1?x=1", args.seconds)
                rate, bad = wrk(f"https://127.0.0.1:{node.layout.https_port}/p/1?x=1",
                                args.seconds)
                if bad or top_bad:
                    raise RuntimeError(f"{bad} redirect-domain and {top_bad} ceiling answers "
                                       "were not 3xx")
                ceilings.append(top)
                rates.append(rate)
                ratios.append(rate / top)
        finally:
            node.stop()
            fixed.stop()
    print(f"redirect domains ({args.routes} routes, all redirects; wrk -t1 -c50 "
          f"-d{args.seconds}s, HTTPS keep-alive, {args.rounds} alternating rounds):")
    print(f"  ceiling (HAProxy fixed redirect): median {statistics.median(ceilings):,.0f} req/s")
    print(f"  redirect domain from the map:     median {statistics.median(rates):,.0f} req/s")
    print(f"  ratio by round: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f} (goal >= 0.85)")
    record("redirect_domains", {
        "routes": args.routes, "seconds": args.seconds, "rounds": args.rounds,
        "ceiling_rps_median": round(statistics.median(ceilings)),
        "redirect_rps_median": round(statistics.median(rates)),
        "ratios": [round(r, 3) for r in ratios], "ratio_median": round(statistics.median(ratios), 3),
        "goal": ">= 0.85"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
