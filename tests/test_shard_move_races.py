"""A hostname a replica that read the shard set before it changed placed on the old shard,
after the move scan passed it: a replica's start (a reconciliation) hands it to the mover."""
from __future__ import annotations

from control.wiring import Services
from edge.moves import move_key
from edge.sharded_state import ShardedState
from kit.x509 import self_signed
from tests.conftest import FakeClock
from tests.test_shard_moves import (CONFIG, HOSTS, add_c, mover_of, moving,  # noqa: F401
                                    past_the_grace, report_in_sync, switch)


def test_a_reconciliation_hands_a_misplaced_hostname_to_the_mover(
        moving: Services, clock: FakeClock) -> None:  # noqa: F811 (moving)
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    old = services.shards.load()
    add_c(services)
    mover = mover_of(services)
    mover.tick()  # the scan has passed every hostname
    shards = services.shards.load()
    host = next(h for h in (f"late{n}.moves.test" for n in range(100))
                if shards.assign(h) == "c")
    pems = {h: self_signed(h)[1] for h in HOSTS + [host]}
    stale = ShardedState(state.tables, state._vault, lambda: old, clock=clock)
    stale.change({host: ("pub_1", pems[host])})
    placed = old.assign(host)
    state.reconcile({h: "pub_1" for h in HOSTS + [host]}, pems.get, CONFIG)
    assert state.router.holding(host) == placed, "no switch before c's node holds it"
    assert state.holding(placed, host) is not None
    assert mover.table.get(move_key(host)) is not None, "a move is enqueued"
    mover.tick()
    switch(services, mover, clock)
    assert state.router.holding(host) == "c"
    past_the_grace(mover, clock)
    assert state.holding(placed, host) is None and state.holding("c", host) is not None
