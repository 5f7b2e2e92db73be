"""The bench's seeding (bench/control_seed.py) beside a live worker: the shard tests and the
latency bench publish domains through it while their serve's worker runs on the same store."""
from __future__ import annotations

import time

from bench import control_seed
from control.wiring import Services
from domains.service import VERIFIED


def test_a_domain_the_worker_stepped_on_meanwhile_is_verified_out_of_its_way(
        services: Services) -> None:
    domain, _ = services.domains.connect("race.seed.example.test", "pub_1", actor="bench")
    assert services.domains.lease(domain, "worker-1", 60) is not None  # its first DNS step
    verified = control_seed._verified(services, domain)  # from the domain as read before it
    assert verified["status"] == VERIFIED
    assert verified["next_attempt_at"] > time.time() + 86400
    assert "race.seed.example.test" not in [
        d["hostname"] for d in services.domains.repository.due(VERIFIED)], \
        "a worker's round leaves it to the bench"
