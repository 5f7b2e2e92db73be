"""The router agent's bookkeeping of the router feed (edge/router_agent.py): what it asks for
and which answers it takes. Its end-to-end run against the control service's feed belongs with
that feed (GET /api/v1/edge/router)."""
from __future__ import annotations

from typing import Any

import pytest

from edge.router import RouterError
from edge.router_agent import MAX_WAIT, FeedOutOfStep, RouterFeed

SHARDS = {"one": [{"host": "10.0.0.1", "https_port": 8444, "http_port": 8081}]}


def answer(version: str, revision: int | None, delta: bool,
           hosts: dict[str, str | None]) -> dict[str, Any]:
    return {"version": version, "revision": revision, "delta": delta, "hosts": hosts,
            "shards": SHARDS, "default_shard": "one"}


def test_a_snapshot_first_then_deltas_since_the_revision_held() -> None:
    feed = RouterFeed()
    assert feed.params(watch=5) == {}, "nothing held: a snapshot, no long poll"
    snapshot = feed.take(answer("v1", 7, False, {"a.example.test": "one"}))
    assert not snapshot.delta and snapshot.hosts == {"a.example.test": "one"}
    assert feed.params(watch=5) == {}, "not held until it is served"
    feed.held(snapshot)
    assert feed.params(watch=5) == {"have": "v1", "wait": 5, "since": 7}
    assert feed.params(watch=0) == {"have": "v1", "since": 7}
    assert feed.params(watch=600)["wait"] == MAX_WAIT
    delta = feed.take(answer("v2", 9, True, {"a.example.test": None, "b.example.test": "one"}))
    assert delta.delta and delta.hosts == {"a.example.test": None, "b.example.test": "one"}
    feed.held(delta)
    assert feed.params(watch=5)["since"] == 9
    assert (feed.snapshots, feed.deltas) == (1, 1)


def test_a_snapshot_is_taken_whenever_it_comes() -> None:
    feed = RouterFeed("v3", 10)
    update = feed.take(answer("v9", 2, False, {}))  # the control service could not answer a delta
    feed.held(update)
    assert feed.params(watch=0) == {"have": "v9", "since": 2}


def test_a_delta_that_does_not_follow_what_is_held_means_a_snapshot_next() -> None:
    feed = RouterFeed()
    with pytest.raises(FeedOutOfStep, match="no revision is held"):
        feed.take(answer("v2", 9, True, {"b.example.test": "one"}))
    feed = RouterFeed("v5", 12)
    with pytest.raises(FeedOutOfStep, match="goes back"):
        feed.take(answer("v4", 11, True, {"b.example.test": "one"}))
    assert feed.params(watch=5) == {}


def test_a_version_without_a_revision_long_polls_for_a_snapshot() -> None:
    feed = RouterFeed()
    feed.held(feed.take(answer("v1", None, False, {})))
    assert feed.params(watch=5) == {"have": "v1", "wait": 5}


def test_an_unsafe_answer_is_refused_before_anything_is_applied() -> None:
    feed = RouterFeed("v1", 1)
    with pytest.raises(RouterError):
        feed.take(answer("v2", 2, True, {"bad host": "one"}))
    assert feed.params(watch=0) == {"have": "v1", "since": 1}, "still held: the router is"
