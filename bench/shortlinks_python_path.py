"""The Python path on what reaches it: links with a visit limit, and unknown, disabled and
expired slugs (a plain link is answered by the edge's map and never gets here).

Usage: python bench/shortlinks_python_path.py [--keys 10000] [--seconds 5] [--connections 50]

`edgectl shortlinks --workers 1` (one waitress process) and wrk run pinned to separate cores
(taskset), wrk spreading requests over ``--keys`` slugs of each kind (bench/wrk/spread.lua),
uniform and Zipf, after a warm-up that visits every slug once (the server's cache and its
leases are then what a process that has run a while holds). Each figure is wall requests per second with the server's CPU microseconds
per request beside it (its CPU time over the requests wrk counted), and its ratio to the
baseline measured in the same run: cached plain links over the same number of slugs, which the
server answers from memory on its I/O thread. A limited link's visits come from blocks the
process leases from the store (shortlinks/leases.py); goal: >= 5,000 req/s per process.
The links are written in bulk (the background); every visit goes through the real server.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.conditions import print_conditions, record  # noqa: E402
from bench.shortlinks_throughput import HOST, links_server, short_link_env  # noqa: E402
from bench.wrk.load import (cpu_seconds, pinned, spare_cores, warm, wrk,  # noqa: E402
                            write_keys)
from control.wiring import Services  # noqa: E402
from devtools.dynalite import start_dynalite  # noqa: E402
from kit.procs import free_port  # noqa: E402
from kit.settings import load_settings  # noqa: E402
from shortlinks.links import LINKS, link_id  # noqa: E402

KINDS = {  # slug prefix -> what the link is (None: no link)
    "plain": "cached plain link (the baseline)",
    "limited": "link with a visit limit",
    "unknown": "unknown slug",
    "disabled": "disabled link",
    "expired": "expired link",
}
EXPECTED = {"plain": 302, "limited": 302, "unknown": 404, "disabled": 410, "expired": 410}


def seed(env: dict[str, str], keys: int) -> None:
    services = Services.from_settings(load_settings(env=env))
    try:
        now = time.time()
        services.links.create(HOST, "https://example.com/first", "pub_1", slug="first")
        for kind in ("plain", "limited", "disabled", "expired"):
            for n in range(keys):
                slug = f"{kind}{n}"
                services.links.table.put({
                    "id": link_id(HOST, slug), "domain": HOST, "slug": slug,
                    "target": f"https://example.com/{slug}", "owner": "pub_1", "code": 302,
                    "disabled": kind == "disabled",
                    "valid_until": now - 60 if kind == "expired" else None,
                    "max_visits": 10**12 if kind == "limited" else None,
                    "created_at": now, "updated_at": now})
    finally:
        services.close()


def in_process(env: dict[str, str], keys: int, visits: int = 20_000) -> dict[str, float]:
    """Wall microseconds per limited-link visit in the resolver alone (no HTTP), leased vs one
    conditional ADD per visit (the path before leases), Zipf over ``keys`` links, same store."""
    import random

    from shortlinks.leases import LINK_LEASES, VisitLeases
    from shortlinks.resolver import Resolver
    from store import open_backend

    backend = open_backend(load_settings(env=env))
    try:
        table = backend.table(LINKS)
        weights = [1 / (k + 1) for k in range(keys)]
        slugs = [f"limited{k}" for k in random.choices(range(keys), weights, k=visits)]
        found = {}
        for name, leases in (("per-visit ADD", None),
                             ("leased", VisitLeases(table, backend.table(LINK_LEASES), "bench"))):
            resolver = Resolver(table, leases=leases)
            for slug in slugs[:visits // 10]:  # warm: cache (and leases)
                resolver.resolve(HOST, slug)
            started = time.perf_counter()
            for slug in slugs:
                assert resolver.resolve(HOST, slug).status == 302
            found[name] = (time.perf_counter() - started) / visits * 1e6
            if leases is not None:
                leases.close()
        return found
    finally:
        backend.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--store", choices=("sqlite", "dynalite"), default="sqlite",
                        help="dynalite: DynamoDB's wire protocol on loopback, as in production")
    args = parser.parse_args()
    conditions = print_conditions()
    server_core, load_core = spare_cores()
    print(f"server on core {server_core}, wrk on core {load_core}; {args.keys:,} slugs of each "
          f"kind; wrk -t1 -c{args.connections} -d{args.seconds}s", flush=True)
    directory = Path(tempfile.mkdtemp(prefix="bench-python-path-"))
    env = short_link_env(directory)
    dynalite = start_dynalite(directory, path=directory / "db") if args.store == "dynalite" else None
    if dynalite is not None:
        env.update(EDGE_STORAGE_BACKEND="dynamodb", AWS_ACCESS_KEY_ID="bench",
                   AWS_SECRET_ACCESS_KEY="bench", EDGE_DYNAMODB_ENDPOINT_URL=dynalite[1])
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    print(f"store: {args.store}", flush=True)
    started = time.monotonic()
    seed(env, args.keys)
    print(f"seeded {4 * args.keys:,} links in bulk in {time.monotonic() - started:.0f} s",
          flush=True)
    port = free_port()
    argv = pinned([sys.executable, "-m", "edgectl", "--log-level", "WARNING", "shortlinks",
                   "--workers", "1"], server_core)
    server = links_server(directory, env, "shortlinks", argv, port)
    figures: dict[str, dict[str, float]] = {}  # name -> its figures
    bad = 0
    try:
        for kind in KINDS:
            keys = directory / f"{kind}.keys"
            write_keys(keys, ((HOST, f"/{kind}{n}") for n in range(args.keys)))
            url = f"http://127.0.0.1:{port}"
            warm(url, keys, args.keys, load_core, args.connections)  # every slug seen once
            for distribution in ("uniform", "zipf"):
                cpu = cpu_seconds(server.pid)
                run = wrk(url, keys, distribution, args.seconds, args.connections,
                          core=load_core)
                used = cpu_seconds(server.pid) - cpu
                wrong = run.bad if EXPECTED[kind] < 400 else 0
                bad += wrong + run.errors
                figures[f"{kind}_{distribution}"] = {
                    "req_per_s": round(run.rate), "cpu_us_per_request":
                    round(used / max(run.requests, 1) * 1e6, 1)}
                print(f"  {KINDS[kind] + ', ' + distribution:<44} {run.rate:>8,.0f} req/s  "
                      f"{used / max(run.requests, 1) * 1e6:>6.0f} CPU us/request  "
                      f"(non-3xx {run.bad}, socket errors {run.errors})", flush=True)
    finally:
        server.stop()
    try:
        resolver_only = in_process(env, args.keys, 20_000 if dynalite is None else 4_000)
    finally:
        if dynalite is not None:
            dynalite[0].stop()
        shutil.rmtree(directory, ignore_errors=True)
    print("\nthe resolver alone, a limited link's visit (Zipf, in-process, wall us per visit): "
          + ", ".join(f"{name} {us:.0f}" for name, us in resolver_only.items())
          + f"; leased / per-visit ADD {resolver_only['leased'] / resolver_only['per-visit ADD']:.3f}")
    figures["resolver_wall_us"] = {name: round(us, 1) for name, us in resolver_only.items()}
    print("\nratios to the cached plain links of the same distribution (same run):")
    for name, figure in figures.items():
        if "req_per_s" not in figure:
            continue
        baseline = figures["plain_" + name.rpartition("_")[2]]
        figure["ratio"] = round(figure["req_per_s"] / baseline["req_per_s"], 3)
        print(f"  {name:<20} {figure['ratio']:.3f}")
    limited = min(figures["limited_uniform"]["req_per_s"], figures["limited_zipf"]["req_per_s"])
    print(f"\nlink with a visit limit: {limited:,.0f} req/s per process at worst "
          f"(goal >= 5,000; per-visit ADDs measured 484 before leases)")
    record("shortlinks_python_path", {"keys": args.keys, "seconds": args.seconds,
                                      "connections": args.connections,
                                      "server_core": server_core, "load_core": load_core,
                                      **figures})
    del conditions
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
