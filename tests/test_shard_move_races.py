"""A hostname a replica that read the shard set before it changed placed on the old shard,
after the move scan passed it: a replica's start (a reconciliation) hands it to the mover."""
from __future__ import annotations

from control.wiring import Services
from edge.moves import move_key
from kit.x509 import self_signed
from tests.conftest import FakeClock
from tests.test_shard_moves import (CONFIG, HOSTS, misplaced_after_the_scan,  # noqa: F401
                                    moving, past_the_grace, switch)


def test_a_reconciliation_hands_a_misplaced_hostname_to_the_mover(
        moving: Services, clock: FakeClock) -> None:  # noqa: F811 (moving)
    services, state = moving, moving.edge_shards
    host, placed, mover = misplaced_after_the_scan(services, clock)
    pems = {h: self_signed(h)[1] for h in HOSTS + [host]}
    state.reconcile({h: "pub_1" for h in HOSTS + [host]}, pems.get, CONFIG)
    assert state.router.holding(host) == placed, "no switch before c's node holds it"
    assert state.holding(placed, host) is not None
    assert mover.table.get(move_key(host)) is not None, "a move is enqueued"
    mover.tick()
    switch(services, mover, clock)
    assert state.router.holding(host) == "c"
    past_the_grace(mover, clock)
    assert state.holding(placed, host) is None and state.holding("c", host) is not None
