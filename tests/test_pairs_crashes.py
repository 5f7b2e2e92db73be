"""A www/apex pair is one publisher action and two domains: a process killed at any drain step
of the pair's connect or removal (tests/test_outbox_crashes.py's Process) loses neither domain
and leaves neither behind, once a new process drained what it left."""
from __future__ import annotations

from domains import pairs
from kit.settings import Settings
from tests.conftest import FakeClock
from tests.test_outbox_crashes import Killed, Process, restart


def connect_pair(settings: Settings, clock: FakeClock, die_at: int, apex: str) -> int:
    """The publisher connects ``apex``; the process dies at drain step ``die_at``; a new one
    drains, and the publisher asks again if it got no answer. Returns the steps seen."""
    process = Process(settings, clock, die_at)
    try:
        pairs.connect(process.services.domains, apex, "pub_1", None, {})
        return process.steps
    except Killed:
        process.services.close()
    restarted = restart(settings, clock)
    try:
        restarted.services.domains.drain_outboxes()
        pairs.connect(restarted.services.domains, apex, "pub_1", None, {})
        return die_at
    finally:
        restarted.services.close()


def remove_pair(settings: Settings, clock: FakeClock, die_at: int, hostname: str) -> int:
    process = Process(settings, clock, die_at)
    try:
        process.lifecycle.remove(hostname)
        return process.steps
    except Killed:
        process.services.close()
    restarted = restart(settings, clock)
    try:
        restarted.services.domains.drain_outboxes()
        if restarted.services.domains.find(hostname) is not None:
            restarted.lifecycle.remove(hostname)  # the publisher asks again
        return die_at
    finally:
        restarted.services.close()


def test_a_pair_survives_a_kill_at_any_step(settings: Settings, clock: FakeClock) -> None:
    total = connect_pair(settings, clock, 0, "pair0.test")
    assert total >= 4, total
    for step in range(1, total + 1):
        connect_pair(settings, clock, step, f"pair{step}.test")
    services = Process(settings, clock).services
    try:
        for step in range(total + 1):
            apex, www = f"pair{step}.test", f"www.pair{step}.test"
            primary, companion = services.domains.get(apex), services.domains.get(www)
            assert (primary["pair"], companion["pair"]) == (www, apex), step
            assert companion["redirect_to"] == apex and not primary.get("outbox"), step
    finally:
        services.close()

    removal = remove_pair(settings, clock, 0, "www.pair0.test")
    assert removal >= 4, removal
    for step in range(1, min(removal, total) + 1):
        remove_pair(settings, clock, step, f"pair{step}.test")
    services = Process(settings, clock).services
    try:
        for step in range(min(removal, total) + 1):
            for name in (f"pair{step}.test", f"www.pair{step}.test"):
                assert services.domains.find(name) is None, (step, name)
    finally:
        services.close()
