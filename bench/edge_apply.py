"""Certificate stored -> served by an edge node: hot apply (runtime API) vs a reload.

Usage: python bench/edge_apply.py [--certs 2000] [--hot 30] [--reloads 3]
Prints latencies (p50/p99/max) of both paths measured in this run and their ratio.
"""
from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.sample_app import SampleApp  # noqa: E402
from bench.conditions import print_conditions, record  # noqa: E402
from edge.node import EdgeNode  # noqa: E402
from edge.state import DesiredState, Route  # noqa: E402
from kit.procs import free_port  # noqa: E402
from kit.x509 import self_signed  # noqa: E402

_KEY = ec.generate_private_key(ec.SECP256R1())  # one key for all: signing speed is not measured


def pem_for(hostname: str) -> str:
    return self_signed(hostname, _KEY)[1]


def served_name(port: int, hostname: str) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def time_until_served(node: EdgeNode, desired: DesiredState, hostname: str) -> float:
    started = time.perf_counter()
    node.apply(desired)
    while served_name(node.layout.https_port, hostname) != hostname:
        if time.perf_counter() - started > 120:
            raise TimeoutError(hostname)
        time.sleep(0.005)
    return time.perf_counter() - started


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"p50 {statistics.median(ordered) * 1000:8.1f} ms  p99 {p99 * 1000:8.1f} ms  "
            f"max {ordered[-1] * 1000:8.1f} ms  (n={len(ordered)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--certs", type=int, default=2000)
    parser.add_argument("--hot", type=int, default=30)
    parser.add_argument("--reloads", type=int, default=3)
    args = parser.parse_args()
    print_conditions()
    app, spare = SampleApp("bench", 0), SampleApp("spare", 0)
    with tempfile.TemporaryDirectory() as tmp:
        node = EdgeNode(Path(tmp) / "edge", http_port=free_port(), https_port=free_port())
        try:
            routes = [Route(f"site{n}.bench.test", f"pub_{n}", pem_for(f"site{n}.bench.test"))
                      for n in range(args.certs)]
            base = DesiredState(tuple(routes), (app.address,), ("127.0.0.1:9",))
            started = time.perf_counter()
            node.apply(base)
            print(f"cold start with {args.certs} certificates: "
                  f"{time.perf_counter() - started:.2f} s")
            hot: list[float] = []
            for n in range(args.hot):
                name = f"hot{n}.bench.test"
                routes.append(Route(name, "pub_hot", pem_for(name)))
                hot.append(time_until_served(node, DesiredState(
                    tuple(routes), base.app_servers, base.control_servers), name))
            assert node.reloads == 1, "hot applies must not reload"
            reload: list[float] = []
            for n in range(args.reloads):
                name = f"reload{n}.bench.test"
                routes.append(Route(name, "pub_reload", pem_for(name)))
                servers = (app.address, spare.address) if n % 2 == 0 else (app.address,)
                reload.append(time_until_served(node, DesiredState(
                    tuple(routes), servers, base.control_servers), name))
        finally:
            node.stop()
            app.stop()
            spare.stop()
    print(f"hot apply (runtime API, no reload): {summary(hot)}")
    print(f"reload (render, haproxy -c, USR2):  {summary(reload)}")
    ratio = statistics.median(reload) / statistics.median(hot)
    print(f"ratio reload/hot at p50: {ratio:.0f}x")
    record("edge_apply", {"certificates": args.certs, "hot_ms": milliseconds(hot),
                          "reload_ms": milliseconds(reload), "reload_over_hot_p50": round(ratio, 1)})


def milliseconds(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"n": len(ordered), "p50": round(statistics.median(ordered) * 1000, 1),
            "p99": round(p99 * 1000, 1), "max": round(ordered[-1] * 1000, 1)}


if __name__ == "__main__":
    main()
