"""Checking 10,000 domains against a local authoritative server (knotd): goal at most 20 s.

Usage: python bench/dns_check.py [--domains 10000] [--threads 32]
Prints: the DNS checks alone (sequential baseline on a sample, then concurrent), and the worker's
verify step (lease, check, transition, event in SQLite) run round after round, each on what
``due()`` hands it (at most 1,000), until every domain is verified: the count is asserted, and
the goal is on the time of all the rounds together.
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

from bench import conditions  # noqa: E402
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
    conditions.print_conditions()
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
            round_time, rounds = verify_all(services, args.domains)
            verified = sum(1 for _ in services.domains.each_with_status(VERIFIED, 500))
            met = round_time <= 20
            print(f"worker rounds, {args.threads} threads (lease, check, transition, event; "
                  f"SQLite): {verified:,} of {args.domains:,} domains verified in {rounds} "
                  f"rounds, {round_time:.1f} s (goal: at most 20 s -> "
                  f"{'met' if met else 'missed'})")
            conditions.record("dns_check", {
                "domains": args.domains, "verified": verified, "rounds": rounds,
                "checks_sequential_per_s": round(sequential_rate),
                "checks_concurrent_per_s": round(args.domains / concurrent),
                "verify_rounds_s": round(round_time, 2), "goal_s": 20, "goal_met": met})
            if verified != args.domains:
                sys.exit(f"only {verified:,} of {args.domains:,} domains were verified")
        finally:
            knot.stop()
            services.close()


def verify_all(services: Services, expected: int) -> tuple[float, int]:
    """The verify step of the worker, round after round on what is due (at most 1,000 each),
    until none is due (one that failed waits for its backoff: the count tells): (seconds,
    rounds). Stops with a sentence if the rounds outnumber what ``expected`` domains need."""
    lifecycle = services.lifecycle
    started, rounds = time.perf_counter(), 0
    while due := services.domains.due("pending_dns"):
        rounds += 1
        if rounds > expected // len(due) + expected // 1000 + 3:
            sys.exit(f"{rounds} rounds and {len(due)} domains still due: the rounds do not end")
        lifecycle._each(lifecycle.verify, due)
    return time.perf_counter() - started, rounds


if __name__ == "__main__":
    main()
