"""Checking 10,000 domains against a local authoritative server (knotd): goal at most 20 s.

Usage: python bench/dns_check.py [--domains 10000] [--threads 32]
Prints: the DNS checks alone (sequential baseline on a sample, then concurrent), and a full
worker round (lease, check, transition, event in SQLite) over every domain, as ratios.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from control.wiring import Services  # noqa: E402
from dnsops.dnscheck import DnsChecker  # noqa: E402
from domains.service import VERIFIED  # noqa: E402
from kit.settings import load_settings  # noqa: E402
from devtools.dns_server import KnotServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--sample", type=int, default=500)
    args = parser.parse_args()
    names = [f"site{n}.bench.test" for n in range(args.domains)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(env={}, api_token="bench-token-0123456789",
                                 edge_token="bench-edge-0123456789",
                                 encryption_keys=Fernet.generate_key().decode(),
                                 data_dir=tmp, edge_cname_target="edge.platform.test",
                                 max_pending_domains=0)  # one publication, 10,000 claims
        services = Services.from_settings(settings)
        tokens = {}
        for name in names:
            domain, _ = services.domains.connect(name, "pub_1")
            tokens[name] = domain["token"]
        zone = "".join(f"{n.split('.')[0]} CNAME edge.platform.test.\n"
                       f"_edge-challenge.{n.split('.')[0]} TXT \"{tokens[n]}\"\n" for n in names)
        knot = KnotServer(Path(tmp) / "knot", {"bench.test": zone})
        try:
            settings = dataclasses.replace(settings, dns_servers=["127.0.0.1"],
                                           dns_port=knot.port, dns_concurrency=args.threads)
            checker = DnsChecker.from_settings(settings)
            started = time.perf_counter()
            for name in names[:args.sample]:
                assert checker.check(name, tokens[name]).ok
            sequential_rate = args.sample / (time.perf_counter() - started)
            started = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                results = list(pool.map(lambda n: checker.check(n, tokens[n]).ok, names))
            concurrent = time.perf_counter() - started
            assert all(results)
            print(f"DNS checks, sequential: {sequential_rate:8.0f} domains/s "
                  f"(sample of {args.sample})")
            print(f"DNS checks, {args.threads} threads: {args.domains / concurrent:8.0f} "
                  f"domains/s, {args.domains:,} in {concurrent:.1f} s "
                  f"({args.domains / concurrent / sequential_rate:.1f}x sequential)")

            services.close()
            services = Services.from_settings(settings)
            started = time.perf_counter()
            lifecycle = services.lifecycle  # the verify step of a worker round, over every domain
            lifecycle._each(lifecycle.verify, services.domains.due("pending_dns"))
            round_time = time.perf_counter() - started
            verified = len(services.domains.with_status(VERIFIED))
            print(f"worker round, {args.threads} threads (lease, check, transition, event; "
                  f"SQLite): {args.domains:,} "
                  f"domains in {round_time:.1f} s, {verified:,} verified "
                  f"(goal: at most 20 s -> {'met' if round_time <= 20 else 'missed'})")
        finally:
            knot.stop()
            services.close()


if __name__ == "__main__":
    main()
