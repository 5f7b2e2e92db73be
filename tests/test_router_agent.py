"""The router agent's bookkeeping of the router feed (edge/router_agent.py): what it asks for
and which answers it takes. Its end-to-end run against the control service's feed belongs with
that feed (GET /api/v1/edge/router); here the agent meets a feed in a format it does not read,
from a real HTTP server."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request

from edge.router import Router, RouterError
from edge.router_agent import (FEED_PATH, MAX_WAIT, FeedFormatRefused, FeedOutOfStep,
                               RouterAgent, RouterFeed)
from edge.router_feed import FORMAT, FORMAT_HEADER
from tests.conftest import serving

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


def test_the_current_format_is_taken_and_an_answer_without_one_is_format_1() -> None:
    feed = RouterFeed()
    assert feed.take({**answer("v1", 1, False, {}), "format": FORMAT}).version == "v1"
    assert feed.take(answer("v1", 1, False, {})).version == "v1", "the form before the field"
    for unknown in (FORMAT + 1, 0, "1", None):
        with pytest.raises(FeedFormatRefused, match="keeps serving the map it holds"):
            feed.take({**answer("v1", 1, False, {}), "format": unknown})


def test_an_unknown_future_format_is_refused_logged_and_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A control service that answers in a format newer than the agent reads (one that did
    not honour Router-Format): the agent applies nothing, logs why, and reports it."""
    asked: list[str | None] = []
    reports: list[dict[str, Any]] = []
    app = Flask("feed")

    @app.get(FEED_PATH)
    def feed() -> Any:
        asked.append(request.headers.get(FORMAT_HEADER))
        return jsonify({**answer("v2", 3, False, {"a.example.test": "one"}),
                        "format": FORMAT + 1})

    @app.post(f"{FEED_PATH}/nodes/<node>")
    def report(node: str) -> Any:
        reports.append(request.get_json())
        return jsonify(ok=True)

    router = Router(tmp_path / "router")
    with serving(app) as url, caplog.at_level(logging.ERROR, "edge.router_agent"):
        agent = RouterAgent(router, url, "edge-token-0123456789", "r1")
        with pytest.raises(FeedFormatRefused):
            agent.sync()
    assert asked == [str(FORMAT)], "the agent names the format it reads"
    assert f"answered in format {FORMAT + 1}" in caplog.text
    assert reports[-1]["error"] and "reads formats" in reports[-1]["error"]
    assert router.applied_version is None and not router.hosts(), "nothing applied"
    assert agent.feed.params(watch=0) == {}, "nothing held"
