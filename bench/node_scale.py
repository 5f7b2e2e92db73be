"""An edge node at platform scale: 100,000 routes (each its own certificate).

Usage: python bench/node_scale.py [--routes 100000] [--changes 300] [--first 500]
Prints, measured in this run:
- the node's part of a cold start, given the whole state with every certificate already in
  memory: time until the first slice is served, and until every route is (the rest streamed in
  through runtime-API batches). A real cold start (a fresh agent downloading the certificates
  from a control service over HTTP) is bench/cold_start.py;
- one-route changes at that size through EdgeNode.apply_delta (what the agent calls for a
  delta): p50/p99/max of a publication move (map only), a renewal (certificate swapped), a new
  route (certificate + crt-list + map) and a removal, each until HAProxy has taken it;
- folding the journal into the files (what the node does when idle or before a reload);
- RSS of HAProxy (master + worker) and of this process (which holds what the agent holds).
The baseline of the ratio is the same change applied as a whole state (EdgeNode.apply, what a
node did before deltas), measured here too. The cold start's baseline is HAProxy's own floor:
a bare HAProxy with the edge's TLS settings taking ``--floor`` of the same certificates over
its runtime API (new, set and commit ssl cert, add ssl crt-list, 1,000 per connection) with
nothing else around it, per certificate, scaled to ``--routes``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import conditions  # noqa: E402
from bench.shortlinks_throughput import bare_haproxy  # noqa: E402
from edge.hotapply import CHUNK  # noqa: E402
from edge.node import EdgeNode  # noqa: E402
from edge.runtime import RuntimeAPI  # noqa: E402
from edge.state import DesiredState, Route, StateDelta  # noqa: E402
from kit.procs import free_port  # noqa: E402
from kit.x509 import self_signed  # noqa: E402

KEY = ec.generate_private_key(ec.SECP256R1())  # one key: signing speed is not measured


def served_name(port: int, hostname: str) -> str | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=hostname) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
            f"max {ordered[-1] * 1000:7.1f} ms  (n={len(ordered)})")


def route(n: int, publication: str = "pub_1") -> Route:
    hostname = f"h{n:06d}.example.test"
    return Route(hostname, publication, self_signed(hostname, KEY)[1])


def cold_start(node: EdgeNode, state: DesiredState, first: str, last: str) -> float:
    started = time.perf_counter()
    times: dict[str, float] = {}

    def watch() -> None:
        # Each probe is a TLS handshake HAProxy answers beside the stream: every 20 ms for the
        # first slice, then every 200 ms (the last one's time is known to 0.2 s).
        for name, hostname, pause in (("first", first, 0.02), ("last", last, 0.2)):
            while served_name(node.layout.https_port, hostname) != hostname:
                if time.perf_counter() - started > 1800:
                    return
                time.sleep(pause)
            times[name] = time.perf_counter() - started

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    node.apply(state)
    applied = time.perf_counter() - started
    watcher.join(1800)
    print(f"node apply from memory (not a cold start: see bench/cold_start.py), "
          f"{len(state.routes):,} certificates: first {node.cold_slice} served "
          f"{times.get('first', float('nan')):.2f} s, all served "
          f"{times.get('last', float('nan')):.2f} s (apply returned {applied:.2f} s)")
    return times.get("last", float("nan"))


def haproxy_floor(directory: Path, routes: list[Route], default_cert: Path) -> float:
    """Seconds per certificate HAProxy itself takes over its runtime API (see the docstring)."""
    port, crt_list, sock = free_port(), directory / "floor.crt-list", directory / "floor.sock"
    crt_list.write_text("")
    process = bare_haproxy(directory, "floor", port, f"""    bind 127.0.0.1:{port} ssl crt \
{default_cert} crt-list {crt_list} alpn h2,http/1.1
    http-request return status 200
""", global_lines=f"    stats socket {sock} level admin\n")
    try:
        api = RuntimeAPI(sock)
        started = time.perf_counter()
        for start in range(0, len(routes), CHUNK):
            batch = api.batch()
            chunk = routes[start:start + CHUNK]
            for route in chunk:
                batch.new_cert(directory / route.hostname)
            for route in chunk:
                batch.set_cert(directory / route.hostname, route.pem)
                batch.commit_cert(directory / route.hostname)
            for route in chunk:
                batch.add_crt_list_entry(crt_list, directory / route.hostname, route.hostname)
            batch.send()
        return (time.perf_counter() - started) / len(routes)
    finally:
        process.stop()


def one_route_changes(node: EdgeNode, state: DesiredState, count: int) -> dict[str, list[float]]:
    routes = {r.hostname: r for r in state.routes}
    config = state.config
    samples: dict[str, list[float]] = {"move": [], "renew": [], "add": [], "remove": []}
    fresh = [route(900_000 + n) for n in range(count)]
    renewals = [Route(r.hostname, r.publication_id, self_signed(r.hostname, KEY)[1])
                for r in list(routes.values())[1000:1000 + count]]
    for n in range(count):
        kind = ("move", "renew", "add", "remove")[n % 4]
        if kind == "move":
            old = list(routes.values())[n]
            new: Route | None = Route(old.hostname, f"pub_{n}", old.pem)
            hostname = old.hostname
        elif kind == "renew":
            new = renewals[n]
            hostname = new.hostname
        elif kind == "add":
            new = fresh[n]
            hostname = new.hostname
        else:
            hostname, new = fresh[n - 1].hostname, None
        base = node.applied_version
        assert base is not None
        delta = StateDelta(base, f"{n:016x}", config, {hostname: new}, {})
        started = time.perf_counter()
        assert node.can_apply_delta(delta)
        node.apply_delta(delta)
        samples[kind].append(time.perf_counter() - started)
        if kind == "add" and n % 20 == 2:  # taken by HAProxy when apply_delta returns
            assert served_name(node.layout.https_port, hostname) == hostname
        if new is None:
            routes.pop(hostname, None)
        else:
            routes[hostname] = new
    return samples


def whole_state_change(node: EdgeNode, state: DesiredState, times: int) -> list[float]:
    """The baseline: the same one-route change handed over as a whole state."""
    samples = []
    routes = list(state.routes)
    for n in range(times):
        moved = Route(routes[n].hostname, f"pub_whole_{n}", routes[n].pem)
        changed = DesiredState(tuple([moved] + routes[n + 1:] + routes[:n]), state.app_servers,
                               state.control_servers)
        started = time.perf_counter()
        node.apply(changed)
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--first", type=int, default=500)
    parser.add_argument("--whole", type=int, default=5, help="baseline whole-state applies")
    parser.add_argument("--cold-only", action="store_true", help="only the cold start")
    parser.add_argument("--floor", type=int, default=10_000,
                        help="certificates for HAProxy's own floor (0: not measured)")
    args = parser.parse_args()
    conditions.print_conditions()
    figures: dict[str, object] = {"routes": args.routes}
    started = time.perf_counter()
    routes = [route(n) for n in range(args.routes)]
    print(f"{args.routes:,} certificates made in {time.perf_counter() - started:.1f} s "
          "(not part of any figure)")
    with tempfile.TemporaryDirectory(prefix="node-scale-") as tmp:
        node = EdgeNode(Path(tmp) / "edge", http_port=free_port(), https_port=free_port(),
                        cold_slice=args.first)
        state = DesiredState(tuple(routes), ("127.0.0.1:9",), ("127.0.0.1:9",))
        # An agent hands its node the version it checked (the digest it keeps by each change):
        # computed here before the clock starts, as the agent does before it applies.
        state = dataclasses.replace(state, known_version=state.version)
        try:
            floor = haproxy_floor(Path(tmp), routes[:args.floor], node.layout.default_cert) \
                if args.floor else 0.0  # first, alone: nothing else runs yet
            all_served = cold_start(node, state, routes[args.first - 1].hostname,
                                    routes[-1].hostname)
            figures.update(apply_from_memory_all_served_s=round(all_served, 2),
                           floor_runtime_api_ms_per_cert=round(floor * 1000, 3))
            if floor:
                print(f"HAProxy's own floor ({args.floor:,} certificates, bare HAProxy, "
                      f"runtime API only): {floor * 1000:.3f} ms per certificate, "
                      f"{floor * args.routes:.1f} s for {args.routes:,}; cold start all served "
                      f"/ floor: {all_served / (floor * args.routes):.2f}")
            if args.cold_only:
                conditions.record("node_scale", figures)
                return
            workers = node.haproxy.workers()
            assert node.haproxy.pid is not None
            haproxy_rss = rss_mb(node.haproxy.pid) + sum(rss_mb(pid) for pid in workers)
            samples = one_route_changes(node, state, args.changes)
            for kind, found in samples.items():
                print(f"one-route change ({kind:6}) at {args.routes:,} routes: "
                      f"{percentiles(found)}")
            every = [s for found in samples.values() for s in found]
            print(f"one-route change (all   ) at {args.routes:,} routes: {percentiles(every)}")
            fold_started = time.perf_counter()
            node.compact()
            print(f"journal folded into the files in {time.perf_counter() - fold_started:.2f} s")
            served = sorted(node.existing_routes().values(), key=lambda r: r.hostname)
            whole = whole_state_change(node, DesiredState(
                tuple(served), ("127.0.0.1:9",), ("127.0.0.1:9",)), args.whole)
            print(f"baseline, the same change as a whole state (EdgeNode.apply): "
                  f"{percentiles(whole)}")
            print(f"ratio whole-state / delta p50: "
                  f"{statistics.median(whole) / statistics.median(every):.0f}x")
            figures.update(delta_p50_ms=round(statistics.median(every) * 1000, 2),
                           whole_state_p50_ms=round(statistics.median(whole) * 1000, 2),
                           haproxy_rss_mb=round(haproxy_rss))
            print(f"RSS: HAProxy {haproxy_rss:.0f} MB (master + worker), this process "
                  f"{rss_mb(os.getpid()):.0f} MB now, "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB at most")
        finally:
            node.stop()
    print(f"load average {os.getloadavg()[0]:.2f} (2 cores shared)")
    conditions.record("node_scale", figures)


if __name__ == "__main__":
    main()
