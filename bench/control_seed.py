"""Seeding a fleet of active domains through the product's own write paths, for
``bench/control_scale.py``.

Each domain is connected (``DomainService.connect``: its item, its event, its kept counts),
given a certificate (``CertificateStore.save``; one self-signed certificate's PEM is reused so
that seeding stays minutes, with the CA's renewal answer remembered as the issuer does, so no CA
is asked) and moved to ``active`` (``DomainService.transition``, with its event). Its route is
published by serve's reconciliation at start, the product's batch path (one read of every
active domain) rather than one edge-state commit per domain. The two domains whose change is
timed go the long way instead: ``verified``, then ``Lifecycle.issue``, which finds the
certificate held and takes the ``issued`` step, publishing the route through the outbox.
Slices of the fleet can be seeded by parallel processes (each opens the store as a replica
does): worth it on DynamoDB, not on SQLite, whose writers take one lock.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from control.wiring import Services
from domains.service import ACTIVE, VERIFIED
from kit.settings import Settings
from kit.x509 import self_signed
from store import ConflictError

ZONE = "bench.test"
LATENCY_PUBLICATION = "pub_latency"
QUIET = 10 * 86400.0


def hostname(n: int) -> str:
    return f"s{n:07d}.{ZONE}"


def publication(n: int) -> str:
    return f"pub_{n % 997}"


def _certificate() -> tuple[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert, _ = self_signed(ZONE, key, days=90)
    return cert, key_pem


def seed_one(services: Services, name: str, publication_id: str, cert: str, key_pem: bytes,
             publish: bool = False) -> dict[str, Any]:
    """One domain from connect to active; returns it. Its first recheck falls due in ten days.

    ``publish``: through ``verified`` and the issue step, whose outbox publishes its route
    (one edge-state commit per domain, as in production); else straight to ``active``, its
    route left to serve's reconciliation at start (the product's batch path: one read of
    every active domain). The second is how the fleet is seeded: half the store requests."""
    domain, _ = services.domains.connect(name, publication_id, actor="bench")
    stored = services.certificates.save([name], cert, key_pem)
    services.certificates.remember_renewal(stored, None, time.time() + QUIET)
    if not publish:  # its route comes with serve's reconciliation at start, in one batch
        return services.domains.transition(domain, ACTIVE, "seeded: DNS checked, certificate "
                                           "stored", actor="bench", last_error=None,
                                           next_attempt_at=time.time() + QUIET)
    domain = services.lifecycle.issue(_verified(services, domain))  # the "issued" step
    assert domain["status"] == ACTIVE, domain
    return domain


def _verified(services: Services, domain: dict[str, Any]) -> dict[str, Any]:
    """``domain`` verified and not due, so a worker running on the store leaves it to the
    bench. That worker may have taken the domain's first DNS step meanwhile (a lease, a
    retry: the chaos of a loaded machine): a conflict reads the domain again."""
    def verify(current: dict[str, Any]) -> dict[str, Any]:
        return services.domains.transition(current, VERIFIED, "seeded: DNS checked by the bench",
                                           actor="bench", last_error=None,
                                           next_attempt_at=time.time() + QUIET)
    for _ in range(9):
        try:
            return verify(domain)
        except ConflictError:
            domain = services.domains.get(domain["hostname"])
    return verify(domain)  # a tenth conflict is raised


def _seed_slice(settings: Settings, numbers: range, progress: Any,
                out: Path | None = None) -> dict[str, str]:
    cert, key_pem = _certificate()
    services = Services.from_settings(settings)
    tokens = {}
    try:
        for count, n in enumerate(numbers, 1):
            domain = seed_one(services, hostname(n), publication(n), cert, key_pem)
            tokens[domain["hostname"]] = domain["token"]
            if count % 500 == 0 and progress is not None:
                with progress.get_lock():
                    progress.value += 500
    finally:
        services.close()
    if out is not None:
        out.write_text(json.dumps(tokens))
    return tokens


def seed(settings: Settings, count: int, processes: int) -> dict[str, str]:
    """Seed ``count`` active domains in ``processes`` parallel processes; hostname -> token
    (the ownership TXT value a DNS server must answer for its rechecks)."""
    # Seeding does not cap pending claims (a bench publication holds 100 domains), and the
    # fleet is quiet: the first rechecks fall due in ten days (the steady fleet reschedules).
    settings = dataclasses.replace(settings, max_pending_domains=0, recheck_seconds=QUIET)
    processes = max(1, min(processes, count // 1000 or 1))
    slices = [range(start, count, processes) for start in range(processes)]
    if processes == 1:
        return _seed_slice(settings, slices[0], None)
    context = multiprocessing.get_context("fork")
    progress = context.Value("q", 0)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seed-") as folder:
        outs = [Path(folder) / f"{n}.json" for n in range(processes)]
        workers = [context.Process(target=_seed_slice, args=(settings, numbers, progress, out))
                   for numbers, out in zip(slices, outs)]
        for worker in workers:
            worker.start()
        said = time.monotonic()
        while any(worker.is_alive() for worker in workers):
            time.sleep(0.5)
            if time.monotonic() - said >= 30:
                said = time.monotonic()
                rate = progress.value / (said - started)
                print(f"  seeded {progress.value:,} of {count:,} ({rate:,.0f}/s)", flush=True)
        for worker in workers:
            worker.join()
            if worker.exitcode != 0:
                raise RuntimeError(f"a seeding process failed (exit code {worker.exitcode})")
        return {name: token for out in outs for name, token in json.loads(out.read_text()).items()}


def seed_latency_pair(settings: Settings) -> tuple[str, str]:
    """Two active domains of one small publication: the first is redirected to the second
    and back through the publisher API to time a change."""
    cert, key_pem = _certificate()
    services = Services.from_settings(dataclasses.replace(settings, recheck_seconds=QUIET))
    try:
        pair = tuple(seed_one(services, f"latency-{n}.{ZONE}", LATENCY_PUBLICATION, cert,
                              key_pem, publish=True)["hostname"] for n in (1, 2))
    finally:
        services.close()
    return pair[0], pair[1]
