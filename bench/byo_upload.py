"""Certificate upload -> served by the edge (goal: at most 1 s), against the edge's normal
hot certificate change measured in the same run.

Every process of the product runs on loopback (control service, agent, HAProxy, Pebble: the
demo's LocalStack). One domain is connected and served with Pebble's certificate; then, each
round, a LocalCA certificate is uploaded (``PUT /api/v1/domains/<host>/certificate``) and the
time until HAProxy hands it out in a TLS handshake is measured; then it is removed (``DELETE``)
and the time until Pebble's is served again is the baseline: the same route change and hot
apply, without the upload's validation and encryption.

Each change waits ``--gap`` seconds after the previous one was served (``--gap 0``: back to
back, the agent just done with the previous change).

Usage: python bench/byo_upload.py [--rounds 20] [--gap 1.0]
"""
from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.demo import LocalStack  # noqa: E402
from bench.conditions import print_conditions, record  # noqa: E402
from kit.x509 import LocalCA  # noqa: E402

HOST = "byo-bench.example.test"


def served_sha(port: int) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()


def until_served(port: int, sha: str, started: float) -> float:
    while served_sha(port) != sha:
        if time.perf_counter() - started > 60:
            raise TimeoutError(sha)
        time.sleep(0.002)
    return time.perf_counter() - started


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    return (f"p50 {statistics.median(ordered) * 1000:7.1f} ms  "
            f"p90 {ordered[int(len(ordered) * 0.9) - 1] * 1000:7.1f} ms  "
            f"max {ordered[-1] * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--gap", type=float, default=1.0)
    args = parser.parse_args()
    print_conditions()
    with tempfile.TemporaryDirectory(prefix="byo-bench-") as directory:
        stack = LocalStack(Path(directory))
        try:
            created = stack.api("POST", "/api/v1/domains",
                                json={"hostname": HOST, "publication_id": "pub_bench"})
            stack.create_records(created.json()["dns_records"])
            stack.wait_active(HOST)
            acme = stack.wait_served(HOST).certificate.fingerprint(hashes.SHA256()).hex()
            ca = LocalCA()
            uploads = [ca.issue([HOST]) for _ in range(args.rounds)]
            put_answer, upload_served, removal_served = [], [], []
            for cert, key in uploads:
                sha = x509.load_pem_x509_certificate(cert.encode()).fingerprint(
                    hashes.SHA256()).hex()
                time.sleep(args.gap)
                started = time.perf_counter()
                answer = stack.api("PUT", f"/api/v1/domains/{HOST}/certificate",
                                   json={"certificate": cert + ca.pem, "private_key": key})
                assert answer.status_code == 200, answer.text
                put_answer.append(time.perf_counter() - started)
                upload_served.append(until_served(stack.edge_https_port, sha, started))
                time.sleep(args.gap)
                started = time.perf_counter()
                assert stack.api("DELETE", f"/api/v1/domains/{HOST}/certificate").ok
                removal_served.append(until_served(stack.edge_https_port, acme, started))
        finally:
            stack.stop()
    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.rounds} rounds, "
          f"{args.gap:g} s between changes")
    print(f"PUT answered                      {summary(put_answer)}")
    print(f"upload -> served by the edge      {summary(upload_served)}")
    print(f"removal -> ours served (baseline) {summary(removal_served)}")
    ratio = statistics.median(upload_served) / statistics.median(removal_served)
    print(f"upload / baseline (p50)           {ratio:.2f}x; goal <= 1 s: "
          f"{'met' if max(upload_served) <= 1.0 else 'NOT met'} (max "
          f"{max(upload_served) * 1000:.0f} ms)")
    record("byo_upload", {"rounds": args.rounds, "gap_s": args.gap,
                          "put_answered_ms": milliseconds(put_answer),
                          "upload_served_ms": milliseconds(upload_served),
                          "removal_served_ms": milliseconds(removal_served),
                          "upload_over_baseline_p50": round(ratio, 2),
                          "goal_met": max(upload_served) <= 1.0})


def milliseconds(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(ordered), "p50": round(statistics.median(ordered) * 1000, 1),
            "p90": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 1),
            "max": round(ordered[-1] * 1000, 1)}


if __name__ == "__main__":
    main()
