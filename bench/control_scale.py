"""The control plane at scale: N active domains with certificates, nothing due.

Usage: python bench/control_scale.py --domains 100000 [--backend sqlite|dynamodb]
(dynamodb starts dynalite from node_modules on a free loopback port.)

Seeds N active domains, each with a certificate (one self-signed certificate reused, so seeding
stays minutes, not hours; untimed), reconciles the edge state once (what every worker round did
before: the baseline), then measures an idle worker round, one domain's activation until the
state an agent's next poll gets holds its route, and the process's peak RSS. The last line is:
steady_round_ms=<x> connect_to_state_ms=<y> rss_mb=<z> store_requests_per_idle_round=<k>
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from certs.store import CertificateStore  # noqa: E402
from control.wiring import Services  # noqa: E402
from domains.service import ACTIVE  # noqa: E402
from kit.clock import iso  # noqa: E402
from kit.procs import ManagedProcess, free_port, wait_for_port  # noqa: E402
from kit.settings import load_settings  # noqa: E402
from kit.x509 import self_signed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def seed(services: Services, count: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert, _ = self_signed("bench.test", key, days=90)
    certificates: CertificateStore = services.certificates
    now = time.time()
    for n in range(count):
        hostname = f"s{n:07d}.bench.test"
        services.domains.table.put({
            "hostname": hostname, "publication_id": f"pub_{n % 997}", "status": ACTIVE,
            "token": "seeded", "claim": f"seed{n}", "claimed_at": now, "created_at": iso(now), "updated_at": iso(now),
            "dns_records": [], "validation_errors": [], "dns_seen": {}, "attempts": 0,
            "next_attempt_at": now + 3600 + n % 600})
        certificates.save([hostname], cert, key_pem)
        if n and n % 10_000 == 0:
            print(f"seeded {n:,} domains", flush=True)


def timed_ms(step: object) -> float:
    started = time.perf_counter()
    step()  # type: ignore[operator]
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=10_000)
    parser.add_argument("--backend", choices=["sqlite", "dynamodb"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overrides: dict[str, object] = {}
        dynalite = None
        if args.backend == "dynamodb":
            port = free_port()
            dynalite = ManagedProcess("dynalite", [
                str(ROOT / "node_modules" / ".bin" / "dynalite"), "--host", "127.0.0.1",
                "--port", str(port), "--path", f"{tmp}/dynalite"], Path(tmp) / "dynalite.log")
            wait_for_port(port, process=dynalite)
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")  # dynalite checks none
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            overrides = {"storage_backend": "dynamodb",
                         "dynamodb_endpoint_url": f"http://127.0.0.1:{port}"}
        try:
            settings = load_settings(env={}, api_token="bench-token-0123456789",
                                     edge_token="bench-edge-0123456789",
                                     encryption_keys=Fernet.generate_key().decode(),
                                     data_dir=tmp, max_pending_domains=0, **overrides)
            services = Services.from_settings(settings)
            seed(services, args.domains)
            first = timed_ms(services.lifecycle.publish_routes)  # writes every route once
            full = timed_ms(services.lifecycle.publish_routes)  # reads them all, writes nothing
            print(f"first publication {first:.0f} ms; baseline: a reconciliation with nothing "
                  f"to change (what every worker round did before) {full:.0f} ms")
            services.lifecycle.tick()
            rounds, requests = [], []
            for _ in range(args.rounds):
                before = services.backend.requests
                rounds.append(timed_ms(services.lifecycle.tick))
                requests.append(services.backend.requests - before)
            steady = statistics.median(rounds)
            print(f"idle round: median {steady:.2f} ms, max {max(rounds):.2f} ms over "
                  f"{args.rounds} rounds; {full / steady:,.0f}x faster than the baseline")
            hostname = "s0000007.bench.test"
            domain = services.domains.get(hostname)
            services.lifecycle.suspend(hostname)  # off the edge, then back on: one activation
            assert hostname not in {r["hostname"] for r in services.edge_state.load()["routes"]}
            agent_revision = services.edge_state.meta()["revision"]  # type: ignore[index]
            started = time.perf_counter()
            services.lifecycle.resume(hostname)
            # What GET /api/v1/edge/state?since=<revision> answers the agent's next poll.
            delta = services.edge_state.changes_since(agent_revision)
            connect_ms = (time.perf_counter() - started) * 1000
            assert delta is not None and [c["hostname"] for c in delta["changes"]] == [hostname]
            assert domain["status"] == ACTIVE
            snapshot_ms = timed_ms(services.edge_state.load)
            print(f"activation -> in the agent's next answer (a delta): {connect_ms:.1f} ms "
                  f"({full / connect_ms:,.0f}x faster than a full reconciliation); a full "
                  f"snapshot for a new agent {snapshot_ms:.0f} ms")
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            services.close()
        finally:
            if dynalite is not None:
                dynalite.stop()
    print(f"steady_round_ms={steady:.2f} connect_to_state_ms={connect_ms:.1f} "
          f"rss_mb={rss_mb:.0f} store_requests_per_idle_round={max(requests)}")


if __name__ == "__main__":
    main()
