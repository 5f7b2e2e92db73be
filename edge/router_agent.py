"""`edgectl agent --role router`: beside a shard router's HAProxy (edge/router.py), long-poll
the control service's router feed (hostname -> shard, as deltas) and apply it hot.

The feed (``GET /api/v1/edge/router``, the edge token as Bearer) answers 304 while ``have`` is
current; otherwise the hostnames changed since the revision held (``since``), or all of them
(``delta`` false) when the agent holds none or the control service cannot answer a delta.
The agent names the answer format it reads (``Router-Format``) and refuses an answer in any
other (edge/router_feed.py): it keeps serving what it holds and says why, in its log and its
report, rather than apply a form it may misread.
Like the edge agent, the router agent does not own HAProxy's life: stopped, it leaves HAProxy
serving the last map applied, and the next agent adopts it.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import requests

from edge.control_client import ControlClient
from edge.errors import EdgeError
from edge.haproxy import NodeLock, stop_node
from edge.router import Router, RouterUpdate
from edge.router_feed import FORMAT, FORMAT_HEADER, OLDEST_FORMAT
from kit.backoff import sync_rounds
from kit.procs import stop_on_signals
from kit.settings import Settings

log = logging.getLogger(__name__)

FEED_PATH = "/api/v1/edge/router"
MAX_WAIT = 30.0
"""The longest long poll the feed takes."""
MAX_BACKOFF = 30.0


class FeedOutOfStep(EdgeError):
    """An answer of the router feed does not follow from what the agent holds (a delta with
    no revision held, or one going back in time): the agent takes a snapshot next."""


class FeedFormatRefused(EdgeError):
    """An answer of the router feed is in a format this agent does not read."""


def answer_format(doc: Mapping[str, Any]) -> int:
    """The format of an answer (none: 1, the form before the field), refused unless this agent
    reads it."""
    form = doc.get("format", OLDEST_FORMAT)
    if not isinstance(form, int) or isinstance(form, bool) or not (
            OLDEST_FORMAT <= form <= FORMAT):
        raise FeedFormatRefused(
            f"the router feed answered in format {form!r}; this router agent reads formats "
            f"{OLDEST_FORMAT} to {FORMAT} and keeps serving the map it holds (a control "
            "replica should answer in the agent's format: check the replicas' release)")
    return form


class RouterFeed:
    """What the agent holds of the router feed (version and revision), and so what it asks
    for next; decides whether an answer is a delta to apply or a snapshot."""

    def __init__(self, version: str | None = None, revision: int | None = None) -> None:
        self.version = version
        self.revision = revision
        self.snapshots = 0
        self.deltas = 0

    def params(self, watch: float) -> dict[str, str | int | float]:
        """The next request's query: ``have`` (and a long poll) once a version is held,
        ``since`` once a revision is (a delta); nothing held: a snapshot."""
        params: dict[str, str | int | float] = {}
        if self.version is not None:
            params["have"] = self.version
            if watch > 0:
                params["wait"] = min(watch, MAX_WAIT)
            if self.revision is not None:
                params["since"] = self.revision
        return params

    def take(self, doc: Mapping[str, Any]) -> RouterUpdate:
        """The update an answer (200) carries, checked against what is held: a delta must
        follow the revision held, and never go back; an answer in a format this agent does
        not read is refused (:class:`FeedFormatRefused`)."""
        answer_format(doc)
        update = RouterUpdate.from_json(doc)
        if update.delta:
            if self.revision is None or self.version is None:
                self.reset()
                raise FeedOutOfStep("the router feed sent a delta, but no revision is held")
            if update.revision is not None and update.revision < self.revision:
                self.reset()
                raise FeedOutOfStep(f"the router feed's delta to revision {update.revision} "
                                    f"goes back from {self.revision}")
        return update

    def held(self, update: RouterUpdate) -> None:
        """``update`` is served: the next request asks for what changed since."""
        self.version, self.revision = update.version, update.revision
        if update.delta:
            self.deltas += 1
        else:
            self.snapshots += 1

    def reset(self) -> None:
        """Forget what is held: the next request asks for a snapshot."""
        self.version = self.revision = None


class RouterAgent(ControlClient):
    def __init__(self, router: Router, control_url: str | Sequence[str], token: str,
                 node_id: str | None = None, session: requests.Session | None = None,
                 watch: float = 0.0, ca_bundle: str = "", allow_insecure: bool = False,
                 client_cert: tuple[str, str] | None = None) -> None:
        super().__init__(control_url, token, node_id=node_id, session=session,
                         ca_bundle=ca_bundle, allow_insecure=allow_insecure,
                         client_cert=client_cert)
        self.router = router
        self._session.headers[FORMAT_HEADER] = str(FORMAT)
        self.watch = watch
        self.feed = RouterFeed(router.applied_version, router.applied_revision)

    def fetch(self) -> RouterUpdate | None:
        """The next update of the feed; None if unchanged (or nothing published yet)."""
        if not self.router.haproxy.running:
            self.feed.reset()  # nothing serves: whatever comes is applied whole
        params = self.feed.params(self.watch)
        response = self._request("GET", FEED_PATH, params=params,
                                 timeout=30 + float(params.get("wait", 0)))
        if response.status_code in (304, 404):
            return None
        response.raise_for_status()
        try:
            return self.feed.take(response.json())
        except FeedFormatRefused as exc:
            log.error("%s", exc)
            self.router.last_error = str(exc)  # reported: `edgectl nodes` shows it
            raise

    def sync(self) -> bool:
        """One round: fetch, apply, report. True if something new was applied. A round that
        fails still reports (the router's error), but raises its own error, not the report's."""
        try:
            self._serve_files()
            applied = self._apply(self.fetch())
        except Exception:
            with contextlib.suppress(Exception):
                self._report()
            raise
        self._report()
        return applied

    def _serve_files(self) -> None:
        """Before asking the control service, which may be away."""
        with self._applying():
            self.router.start_if_down()

    def _apply(self, update: RouterUpdate | None) -> bool:
        with self._applying():
            if update is None:
                self.router.start()
                self.router.compact_if_idle()
                return False
            try:
                applied = self.router.apply(update)
            except Exception:
                self.feed.reset()  # the router stays where it was: a snapshot next
                raise
            self.feed.held(update)
            return applied

    def _report(self) -> None:
        # Its own report, not an edge node's: a router is never one of a shard's nodes.
        self._request("POST", f"{FEED_PATH}/nodes/{self.node_id}", timeout=10, json={
            "applied_version": self.router.applied_version, "error": self.router.last_error,
            "haproxy_running": self.router.haproxy.running,
            "applied_revision": self.router.applied_revision})

    def run(self, interval: float, stop: threading.Event) -> None:
        """Sync until ``stop``; while the control service is away, wait longer each time
        (jittered, at most ``MAX_BACKOFF``) and say so once, not every round."""
        try:  # serve the last map applied while the control service answers
            with self._applying():
                self.router.start()
        except EdgeError as exc:
            log.warning("%s", exc)
        sync_rounds(self.sync, stop, interval, self.watch, "router", MAX_BACKOFF)


GRACE, LONGEST = 1.5, 60.0
"""Seconds the agent may take to stop; a change of the router under way finishes first, up to
the longest."""


def run_router(settings: Settings, action: str, node_id: str | None) -> int:
    """`edgectl agent --role router [run|stop-node]`: the router listens on ``edge_bind``,
    ``edge_https_port`` and ``edge_http_port`` and keeps its files in ``edge_dir``."""
    router = Router(Path(settings.edge_dir), haproxy_bin=settings.haproxy_bin,
                    bind=settings.edge_bind, https_port=settings.edge_https_port,
                    http_port=settings.edge_http_port)
    lock = NodeLock(router.directory)
    try:
        if action == "stop-node":
            print(stop_node(router.directory, router.haproxy))
            return 0
        lock.acquire()  # held until this process ends
        agent = RouterAgent(router, settings.control_urls, settings.edge_token, node_id,
                            watch=settings.edge_watch_seconds,
                            ca_bundle=settings.control_ca_bundle,
                            allow_insecure=settings.allow_insecure_control,
                            client_cert=(settings.control_client_cert,
                                         settings.control_client_key)
                            if settings.control_client_cert else None)
    except EdgeError as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return 1
    # A signal ends a long poll at once, but never a change of the router half made.
    stop = stop_on_signals(GRACE, interrupt=lambda: not agent.applying,
                           busy=lambda: agent.applying, longest=LONGEST)
    try:
        agent.run(settings.worker_interval, stop)
    except SystemExit:
        pass
    log.info("router agent stopped; HAProxy goes on serving version %s",
             router.applied_version)
    return 0
