"""A short link changed while its host waits for its move (the publish step copies the host's
route and links from the old shard to the new one): the copy must not bring back a link
deleted meanwhile, nor an old target over a new one. A link change commits in the host's
assigned shard, the new one, where the copy lands later."""
from __future__ import annotations

from control.wiring import Services
from edge.shards import ShardNode
from edge.state import Redirect
from tests.conftest import FakeClock
from tests.test_shard_moves import CONFIG, HOSTS, mover_of, moving, report_in_sync, until_done


def _links(services: Services, shard: str) -> dict[str, str]:
    loaded = services.edge_shards.store(shard).load()
    return {key: value.split("|")[-1] for key, value in (loaded or {}).get("redirects", [])}


def test_links_changed_while_their_host_waits_to_move_stay_changed(
        moving: Services, clock: FakeClock) -> None:  # noqa: F811
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    links = {host: Redirect(host, "go", 302, f"https://old.example/{host}") for host in HOSTS}
    state.change({}, CONFIG, {link.key: link for link in links.values()})
    services.shards.put_shard("c", [ShardNode("127.0.0.4", 8443, 8080)])
    shards = services.shards.load()
    moved = [host for host in HOSTS if shards.assign(host) == "c"]
    assert len(moved) >= 2
    deleted, edited = moved[0], moved[1]
    mover = mover_of(services)
    assert mover.discover(*services.shards.current())  # the moves wait to be published
    # Meanwhile one link is deleted and another gets a new target (as link_changed does).
    new = Redirect(edited, "go", 302, "https://new.example/")
    state.change({}, redirects={links[deleted].key: None, links[edited].key: new})
    mover.tick()  # publish: copies what the old shards hold
    report_in_sync(services, "c")
    clock.advance(3)
    mover.tick()
    clock.advance(31)
    until_done(mover)
    assert state.router.holding(deleted) == "c"
    on_c = _links(services, "c")
    assert links[deleted].key not in on_c, "a deleted link stays deleted"
    assert on_c[links[edited].key] == "https://new.example/", "the new target stays"
    assert all(links[deleted].key not in _links(services, shard) for shard in ("a", "b"))
