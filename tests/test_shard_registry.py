"""The shard registry (edge/shard_registry.py) on each backend: what it refuses, that racing
admins both land, that a read costs one request, and that a writer dying mid-change loses
nothing."""
from __future__ import annotations

import threading

import pytest

from edge.shard_registry import (CONFIG, EDGE_SHARDS, MAX_OVERRIDES, ShardRefused, ShardRegistry,
                                 bucket_of)
from edge.shards import ShardNode
from edge.state import EdgeConfig
from kit.settings import Settings
from kit.x509 import self_signed
from store import Backend
from tests.conftest import ServicesWith

A1, A2 = ShardNode("10.0.0.1", 8443, 8080), ShardNode("10.0.0.2", 8443, 8080)
B1 = ShardNode("edge-b1.internal", 9443, 9080)


@pytest.fixture
def registry(backend: Backend) -> ShardRegistry:
    return ShardRegistry(backend.table(EDGE_SHARDS))


def refused(call: object, *args: object) -> ShardRefused:
    with pytest.raises(ShardRefused) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


def test_no_shard_configured_is_the_default_one(registry: ShardRegistry) -> None:
    assert registry.load().names == ["default"] and registry.current()[0] == 0


def test_shards_and_overrides_are_kept_and_assigned_by(registry: ShardRegistry,
                                                       backend: Backend) -> None:
    registry.put_shard("a", [A1, A2])
    registry.put_shard("b", [B1])
    registry.pin("blog.example.com", "a")
    fresh = ShardRegistry(backend.table(EDGE_SHARDS)).load()  # another replica
    assert fresh.shards == {"a": (A1, A2), "b": (B1,)}
    assert fresh.overrides == {"blog.example.com": "a"} and fresh.assign("blog.example.com") == "a"
    registry.pin("blog.example.com", "b")
    registry.put_shard("a", [A1])  # replace its nodes
    current = registry.load()
    assert current.shards["a"] == (A1,) and current.assign("blog.example.com") == "b"
    registry.unpin("blog.example.com")
    registry.remove_shard("b")
    assert registry.load().overrides == {} and registry.load().names == ["a"]


def test_bad_input_is_refused_with_a_sentence(registry: ShardRegistry) -> None:
    assert refused(registry.put_shard, "EU", [A1]).field == "name"
    assert refused(registry.put_shard, "a", []).field == "nodes"
    assert refused(registry.put_shard, "a", [ShardNode("not a host", 1, 2)]).field == "nodes.0.host"
    assert "1 to 65535" in str(refused(registry.put_shard, "a", [ShardNode("10.0.0.1", 0, 80)]))
    assert refused(registry.put_shard, "a", [ShardNode("::1", 70000, 80)]).field == \
        "nodes.0.https_port"
    assert refused(registry.put_shard, "a", [A1, A1]).field == "nodes.1.https_port"
    registry.put_shard("a", [A1])
    taken = refused(registry.put_shard, "b", [ShardNode("10.0.0.1", 8443, 7080)])
    assert "already a node of shard a" in str(taken)
    assert refused(registry.pin, "Blog.Example.com", "a").field == "hostname"
    assert refused(registry.pin, "blog.example.com.", "a").field == "hostname"
    gone = refused(registry.pin, "blog.example.com", "nope")
    assert gone.status == 404 and "no shard nope" in str(gone)
    assert refused(registry.unpin, "blog.example.com").status == 404
    assert refused(registry.remove_shard, "nope").status == 404


def test_a_shard_with_pinned_hostnames_is_not_removed(registry: ShardRegistry) -> None:
    registry.put_shard("a", [A1])
    registry.put_shard("b", [B1])
    registry.pin("blog.example.com", "a")
    registry.pin("news.example.org", "a")
    refusal = refused(registry.remove_shard, "a")
    assert refusal.status == 409 and "2 hostname(s) are pinned to shard a" in str(refusal)
    registry.pin("blog.example.com", "b")  # moving a pin frees its old shard
    registry.unpin("news.example.org")
    registry.remove_shard("a")
    assert registry.load().names == ["b"]


def test_a_change_naming_a_stale_revision_is_refused(registry: ShardRegistry) -> None:
    read, _ = registry.current()
    registry.put_shard("a", [A1])
    stale = refused(registry.put_shard, "b", [B1], read)
    assert stale.status == 409 and "changed the shards" in str(stale)
    registry.put_shard("b", [B1], registry.current()[0])


def test_racing_admins_both_land(backend: Backend) -> None:
    first, second = (ShardRegistry(backend.table(EDGE_SHARDS)) for _ in range(2))
    first.put_shard("a", [A1])
    hostnames = [f"site{i}.example.com" for i in range(24)]

    def pin(registry: ShardRegistry, names: list[str]) -> None:
        for name in names:
            registry.pin(name, "a")

    threads = [threading.Thread(target=pin, args=(r, hostnames[i::2]))
               for i, r in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(first.load().overrides) == set(hostnames)
    assert "24 hostname(s)" in str(refused(second.remove_shard, "a"))


def test_a_load_with_nothing_changed_is_one_request(registry: ShardRegistry,
                                                    backend: Backend) -> None:
    registry.put_shard("a", [A1])
    registry.pin("blog.example.com", "a")
    registry.load()
    before = backend.requests
    assert registry.load().overrides == {"blog.example.com": "a"}
    assert backend.requests - before == 1
    ShardRegistry(backend.table(EDGE_SHARDS)).pin("news.example.org", "a")  # another replica
    assert registry.load().overrides == {"blog.example.com": "a", "news.example.org": "a"}


def test_a_writer_that_died_after_committing_loses_nothing(registry: ShardRegistry,
                                                           backend: Backend) -> None:
    registry.put_shard("a", [A1])
    table = backend.table(EDGE_SHARDS)
    config = table.get(CONFIG)
    assert config is not None
    # What a replica leaves when it dies between the commit and the copy into the bucket:
    table.put({**config, "revision": config["revision"] + 1, "pinned": {"a": 1}, "overrides": 1,
               "pending": {"hostname": "blog.example.com", "shard": "a",
                           "revision": config["revision"] + 1}},
              expected_version=config["version"])
    assert registry.load().overrides == {"blog.example.com": "a"}
    assert table.get(bucket_of("blog.example.com")) is None
    registry.put_shard("b", [B1])  # the next writer copies it first
    assert (table.get(bucket_of("blog.example.com")) or {})["overrides"] == \
        {"blog.example.com": "a"}
    assert "1 hostname(s)" in str(refused(registry.remove_shard, "a"))


def test_the_overrides_are_bounded(registry: ShardRegistry, backend: Backend) -> None:
    registry.put_shard("a", [A1])
    table = backend.table(EDGE_SHARDS)
    config = table.get(CONFIG)
    assert config is not None
    table.put({**config, "overrides": MAX_OVERRIDES}, expected_version=config["version"])
    assert "at most 10,000 hostnames" in str(refused(registry.pin, "blog.example.com", "a"))


def test_the_default_shard_is_registered_first_and_never_removed(
        settings: Settings, services_with: ServicesWith) -> None:
    """Routers send the default shard every hostname they have no entry for (all of its
    own): a first shard added beside an unregistered default shard that holds hostnames would
    take them all at once, and a default shard drained would hand them to another first."""
    services = services_with(base=settings)
    registry = services.shards
    assert registry is not None
    services.edge_shards.change({"a.example.test": ("pub_1", self_signed("a.example.test")[1])},
                                EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",)))
    first = refused(registry.put_shard, "s1", [A1])
    assert first.status == 409 and str(first).startswith(
        "the default shard holds 1 hostname(s) and has no nodes registered: register them first")
    assert registry.load().shards == {}, "nothing changed"
    registry.put_shard("default", [A1])
    registry.put_shard("s1", [A2])
    assert registry.load().names == ["default", "s1"]
    gone = refused(registry.remove_shard, "default")
    assert gone.status == 409 and "the default shard cannot be removed" in str(gone)
    assert registry.load().draining == frozenset()
