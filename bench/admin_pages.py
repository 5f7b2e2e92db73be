"""Dashboard pages with 10,000 domains in SQLite: do they stay fast?

Usage: python bench/admin_pages.py [--domains 10000] [--certificates 1000] [--rounds 20]
Prints: the median and p95 time of each page through Flask's test client, and its ratio to
/healthz (one store read) in the same run. The overview is shown twice: its first request
computes its figures (kept counts, the failing and expiry indexes, and the links table; then
cached for 30 s), the next ones read the cache.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from admin.web import Admin  # noqa: E402
from admin_app import create_app  # noqa: E402
from bench.conditions import print_conditions, record  # noqa: E402
from control.wiring import Services  # noqa: E402
from domains.service import STATUSES  # noqa: E402
from kit.clock import iso  # noqa: E402
from kit.settings import load_settings  # noqa: E402
from kit.web import provided  # noqa: E402

PASSWORD = "bench password 0123"


def seed_domains(services: Services, count: int) -> None:
    """Domain items as the lifecycle leaves them (written directly: seeding is not timed)."""
    now = time.time()
    for n in range(count):
        status = STATUSES[n % len(STATUSES)]
        error = "TXT record missing" if n % 7 == 0 else None
        services.domains.table.put({
            "hostname": f"site{n:05d}.bench.test", "publication_id": f"pub_{n % 500}",
            "status": status, "claim": f"claim{n}", "claimed_at": now, "token": "t",
            "created_at": iso(now), "updated_at": iso(now), "dns_records": [],
            "last_error": error, "validation_errors": [], "dns_seen": {}, "attempts": 1,
            "next_attempt_at": now + 3600})


def seed_certificates(services: Services, count: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    now = datetime.datetime.now(datetime.timezone.utc)
    for n in range(count):
        host = f"site{n:05d}.bench.test"
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(n + 1).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1 + n % 90))
                .sign(key, hashes.SHA256()))
        services.certificates.save([host], cert.public_bytes(serialization.Encoding.PEM)
                                   .decode(), key_pem)


def timed(call: Callable[[], Any], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        answer = call()
        times.append(time.perf_counter() - start)
        assert answer.status_code == 200, answer.status_code
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=10_000)
    parser.add_argument("--certificates", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print_conditions()
    figures: dict[str, Any] = {"domains": args.domains, "certificates": args.certificates,
                               "rounds": args.rounds, "pages_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(env={}, api_token="bench-token-0123456789",
                                 edge_token="bench-edge-0123456789",
                                 encryption_keys=Fernet.generate_key().decode(),
                                 data_dir=tmp, admin_cookie_secure=False)
        services = Services.from_settings(settings)
        start = time.perf_counter()
        seed_domains(services, args.domains)
        seed_certificates(services, args.certificates)
        print(f"seeded {args.domains} domains, {args.certificates} certificates in "
              f"{time.perf_counter() - start:.1f} s")
        app = create_app(services)
        provided(app, Admin).users.create("bench", PASSWORD)
        client = app.test_client()
        page = client.get("/admin/login").get_data(as_text=True)
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        client.post("/admin/login", data={"csrf_token": token, "username": "bench",
                                          "password": PASSWORD})
        first = timed(lambda: client.get("/admin/"), 1)[0]
        baseline = statistics.median(timed(lambda: client.get("/healthz"), args.rounds))
        print(f"{'page':<58} {'median':>9} {'p95':>9} {'x healthz':>10}")
        print(f"{'/admin/ (first: computes its figures)':<58} {first * 1000:>7.1f}ms"
              f" {'':>9} {first / baseline:>9.0f}x")
        middle, one = f"site{args.domains // 2:05d}", f"site{args.domains * 4242 // 10000:05d}"
        for path in ("/healthz", "/admin/", "/admin/domains", "/admin/domains?status=active",
                     f"/admin/domains?status=active&cursor={middle}.bench.test",
                     f"/admin/domains?q={one}.bench.test", "/admin/domains?q=pub_42",
                     f"/admin/domains/{one}.bench.test", "/admin/certificates",
                     "/admin/links", "/admin/nodes", "/admin/audit"):
            times = sorted(timed(lambda: client.get(path), args.rounds))
            median, p95 = statistics.median(times), times[int(len(times) * 0.95) - 1]
            print(f"{path:<58} {median * 1000:>7.1f}ms {p95 * 1000:>7.1f}ms"
                  f" {median / baseline:>9.1f}x")
            figures["pages_ms"][path] = {"median": round(median * 1000, 2),
                                         "p95": round(p95 * 1000, 2),
                                         "x_healthz": round(median / baseline, 1)}
        figures["overview_first_ms"] = round(first * 1000, 1)
        services.close()
    record("admin_pages", figures)


if __name__ == "__main__":
    main()
