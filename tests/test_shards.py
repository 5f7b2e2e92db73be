"""Assigning hostnames to edge shards (edge/shards.py): balanced, stable, and moving only what
a change of the shard list must move."""
from __future__ import annotations

import collections

import pytest

from edge.errors import EdgeError
from edge.shards import DEFAULT_SHARD, ShardNode, ShardSet, assign, shard_name, valid_shard_name

HOSTS = [f"site{i}.example.com" for i in range(30_000)]


def test_hostnames_spread_evenly_over_the_shards() -> None:
    counts = collections.Counter(assign(h, ["a", "b", "c"]) for h in HOSTS)
    assert set(counts) == {"a", "b", "c"}
    assert all(abs(n - len(HOSTS) / 3) < 0.03 * len(HOSTS) for n in counts.values()), counts


def test_adding_a_shard_moves_about_a_quarter_and_only_onto_it() -> None:
    before = {h: assign(h, ["a", "b", "c"]) for h in HOSTS}
    after = {h: assign(h, ["a", "b", "c", "d"]) for h in HOSTS}
    moved = [h for h in HOSTS if before[h] != after[h]]
    assert all(after[h] == "d" for h in moved)
    assert 0.22 < len(moved) / len(HOSTS) < 0.28


def test_removing_a_shard_moves_only_its_hostnames() -> None:
    before = {h: assign(h, ["a", "b", "c", "d"]) for h in HOSTS}
    after = {h: assign(h, ["a", "b", "c"]) for h in HOSTS}
    assert all(before[h] == "d" for h in HOSTS if before[h] != after[h])


def test_the_assignment_is_the_same_in_every_process_and_release() -> None:
    # A contract: replicas of two releases must agree, so these may never change.
    assert [assign(h, ["a", "b", "c"]) for h in
            ("blog.example.com", "www.acme.com", "news.example.org")] == ["b", "c", "b"]
    assert assign("blog.example.com", ["c", "b", "a", "a"]) == "b", "order and repeats ignored"


def test_an_override_wins_only_if_its_shard_exists() -> None:
    assert assign("blog.example.com", ["a", "b", "c"], {"blog.example.com": "a"}) == "a"
    assert assign("blog.example.com", ["a", "b", "c"], {"blog.example.com": "gone"}) == "b"


def test_no_shard_configured_is_the_default_one() -> None:
    assert assign("blog.example.com", []) == DEFAULT_SHARD


def test_shard_names_are_safe_in_keys_backends_and_maps() -> None:
    assert valid_shard_name("eu-1") and valid_shard_name(DEFAULT_SHARD)
    assert not any(map(valid_shard_name, ["", "EU", "1eu", "a b", "a/b", "a" * 40, "a|b"]))


def test_a_shard_name_with_a_trailing_newline_is_refused() -> None:
    """``$`` matches before a final newline: "eu\n" passed, and the router's haproxy.cfg then
    failed its check, so the router refused every later update."""
    assert not any(map(valid_shard_name, ["eu\n", "eu\r\n", "\neu", "eu\nbackend x"]))
    with pytest.raises(EdgeError, match="is not a shard name"):
        shard_name("eu\n")


def test_a_shard_set_assigns_by_its_shards_and_overrides() -> None:
    assert ShardSet().names == [DEFAULT_SHARD] and ShardSet().assign("x.example.com") == "default"
    shards = ShardSet({"a": (ShardNode("10.0.0.1", 8443, 8080),), "b": (), "c": ()}, {"blog.example.com": "c"})
    assert shards.assign("blog.example.com") == "c"
    assert shards.assign("news.example.org") == assign("news.example.org", ["a", "b", "c"])
    node = ShardNode("10.0.0.1", 8443, 8080)
    assert ShardNode.from_json(node.to_json()) == node


def test_a_wildcard_is_where_routers_send_unknown_hostnames() -> None:
    wildcards = [f"*.w{n}.example" for n in range(50)]
    assert {assign(host, ["a", "b", DEFAULT_SHARD]) for host in wildcards} == {DEFAULT_SHARD}
    assert {assign(host, ["c", "b"]) for host in wildcards} == {"b"}, "the first, as routers"
    assert {assign(f"x.w{n}.example", ["a", "b", DEFAULT_SHARD]) for n in range(50)} == \
        {"a", "b", DEFAULT_SHARD}, "their exact siblings are hashed as any hostname"
