"""`edgectl agent`: beside each HAProxy node, pull the desired state, apply it, report back.

Only changes cross the wire: the agent asks for the routes changed since the revision it
holds (a full snapshot the first time, or when it is too far behind), routes name their
certificates by fingerprint, and it downloads just the certificates its node does not serve
yet. With ``watch``, each request waits on the control service until the state moves (a long
poll), so a change reaches the node at once rather than a poll interval later.

The agent does not own HAProxy's life: when it stops, HAProxy goes on serving the last state
applied, and the next agent adopts it (``edge/haproxy.py``). Stopping the node is an act of its
own (``stop_node`` in ``edge/haproxy.py``). One agent runs per node directory (``NodeLock``).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Iterable, Sequence

import requests

from edge.control_client import ControlClient
from edge.downloads import CertificateDownloads, StateUnavailable
from edge.errors import EdgeError
from edge.node import EdgeNode
from edge.protocol import CERT_BATCH_KEY, HEADER as PROTOCOL_HEADER, PROTOCOL, batch_size
from edge.shards import DEFAULT_SHARD
from edge.state import (DIGEST_MODULUS, DesiredState, EdgeConfig, Redirect, Route, RouteRef,
                        StateDelta, pools_of, redirect_hash, route_hash, routes_digest,
                        state_version)
from edge.visits import HotVisitMeter
from kit.backoff import sync_rounds

log = logging.getLogger(__name__)


def _route_ref(ref: dict[str, Any]) -> RouteRef:
    return RouteRef(ref["hostname"], ref["publication_id"], ref["cert_sha256"],
                    ref.get("extras") or "")


MAX_BACKOFF = 30.0
LAGGING_ROUNDS = 5
"""Rounds the feed may answer "not yet" (503) before the agent takes a snapshot instead."""
SYNC_FILE = "agent_sync.json"
SHARDED_PATHS = ("/api/v1/edge/state", "/api/v1/edge/certs", "/api/v1/edge/nodes/")


class EdgeAgent(ControlClient):
    def __init__(self, node: EdgeNode, control_url: str | Sequence[str], token: str,
                 node_id: str | None = None, session: requests.Session | None = None,
                 watch: float = 0.0, ca_bundle: str = "", allow_insecure: bool = False,
                 client_cert: tuple[str, str] | None = None, shard: str = DEFAULT_SHARD,
                 batches: bool = True) -> None:
        super().__init__(control_url, token, node_id=node_id, session=session,
                         ca_bundle=ca_bundle, allow_insecure=allow_insecure,
                         client_cert=client_cert, carried="private keys")
        self.node = node
        self.shard = shard  # the edge shard the node serves: the state the agent asks for
        self._session.headers[PROTOCOL_HEADER] = str(PROTOCOL)  # the feed's form it reads
        self.certificates = CertificateDownloads(self._request)
        self.batches = batches
        """Whether certificates come in the batches a state offers (False: one GET each, as
        against a control service that offers none)."""
        self._pems: dict[str, str] = {}
        """Certificates downloaded for the state being fetched, by hostname."""
        self._force = False
        self.watch = watch
        self._routes: dict[str, dict[str, str]] | None = None
        """The routes of the last state fetched, by hostname, at ``self._revision``."""
        self._revision: int | None = None
        self._digest: int | None = None
        """The routes digest of ``self._routes``, kept by each delta like the control service's."""
        self._version: str | None = None
        """The version ``self._revision`` names: the base of the next delta."""
        self._links: dict[str, int] | None = None
        """The hash of each link applied (``redirect_hash``), for the redirects digest."""
        self._links_digest: int | None = None
        self._lagging = 0
        self.snapshots = 0
        """Full states fetched: the first, and any recovery from a delta that did not add up."""
        self._resumed = False
        self.visits = HotVisitMeter(node.runtime, node.directory / "hot_visits.json")

    def fetch(self, have: str | None = None) -> DesiredState | StateDelta | None:
        """What changed since the revision the agent holds (a :class:`StateDelta`), or the
        whole desired state with every certificate in it the first time; None if unchanged or
        unpublished. A delta costs its changes: the routes and redirects digests are checked by
        updating them with the changed routes and links only. The agent keeps a hash per link
        for that (not its target: 1,000,000 links stay in HAProxy and on disk), so a delta
        that lacks a change is noticed whatever it changed."""
        if self._routes is None and have and not self._resumed:
            self._resume(have)
        params: dict[str, str | float | int] = {}
        if have:
            params.update(have=have, wait=self.watch)
        if self._routes is not None and self._revision is not None:
            params["since"] = self._revision
        # A snapshot of a million links takes the control service a while to read and send.
        response = self._request("GET", "/api/v1/edge/state", params=params,
                                 timeout=30 + self.watch if "since" in params else 300)
        if response.status_code in (304, 404):
            return None
        if response.status_code == 503 and "since" in params:
            self._lagging += 1  # the feed's index lags: ask for the same delta again, but
            if self._lagging >= LAGGING_ROUNDS:  # not for ever (a snapshot needs no index)
                log.warning("the edge feed lagged %d rounds; taking a snapshot", self._lagging)
                self.reset()
        else:
            self._lagging = 0
        if response.status_code == 426:  # a control service older than this agent
            raise StateUnavailable(str(response.json().get("error")))
        response.raise_for_status()
        doc = response.json()
        self._force = bool(doc.get("force"))
        config = EdgeConfig(tuple(doc["app_servers"]), tuple(doc["control_servers"]),
                            tuple(doc.get("sso_keys", [])), tuple(doc.get("short_domains", [])),
                            tuple(doc.get("shortlink_servers", [])),
                            pools_of(doc.get("origin_pools")))
        if doc.get("delta") and self._routes is not None and self._digest is not None \
                and self._version is not None and self._links is not None:
            return self._delta(doc, config)
        refs = {ref["hostname"]: ref for ref in doc["routes"]}
        digest = routes_digest(_route_ref(ref) for ref in refs.values())
        links = {key: redirect_hash(key, value) for key, value in doc.get("redirects", [])}
        if state_version(digest, config, self._checked(doc, sum(links.values()))) \
                != doc["version"]:
            self.reset()
            raise StateUnavailable(f"state changed while fetching ({doc['version']}); retrying")
        served = self._download(refs.values(), doc)
        routes = [self._route(ref, served)
                  for ref in sorted(refs.values(), key=lambda r: r["hostname"])]
        self._pems = {}
        desired = DesiredState(tuple(routes), config.app_servers, config.control_servers,
                               tuple(Redirect.from_map(key, value)
                                     for key, value in doc.get("redirects", [])),
                               sso_keys=config.sso_keys, short_domains=config.short_domains,
                               shortlink_servers=config.shortlink_servers,
                               origin_pools=config.origin_pools,
                               known_version=doc["version"])
        self._routes, self._revision, self._digest = refs, doc.get("revision"), digest
        self._version, self._links = doc["version"], links
        self.snapshots += 1
        return desired

    def _delta(self, doc: dict[str, Any], config: EdgeConfig) -> StateDelta:
        assert self._routes is not None and self._digest is not None and self._version
        assert self._links is not None
        digest = self._digest
        for change in doc["changes"]:  # the digest follows the changes: O(changes)
            old = self._routes.get(change["hostname"])
            if old is not None:
                digest -= route_hash(_route_ref(old))
            if not change.get("removed"):
                digest += route_hash(_route_ref(change))
        digest %= DIGEST_MODULUS
        links = {key: None if value is None else redirect_hash(key, value)
                 for key, value in doc.get("redirect_changes", [])}
        rdigest = (self._rdigest() + sum(hash_ or 0 for hash_ in links.values())
                   - sum(self._links.get(key, 0) for key in links)) % DIGEST_MODULUS
        if state_version(digest, config, self._checked(doc, rdigest)) != doc["version"]:
            self.reset()  # start again from a snapshot
            raise StateUnavailable(f"state changed while fetching ({doc['version']}); retrying")
        served = self._download([c for c in doc["changes"] if not c.get("removed")], doc)
        routes: dict[str, Route | None] = {}
        for change in doc["changes"]:
            routes[change["hostname"]] = None if change.get("removed") \
                else self._route(change, served)
        self._pems = {}
        for change in doc["changes"]:  # only once every certificate is here
            if change.get("removed"):
                self._routes.pop(change["hostname"], None)
            else:
                self._routes[change["hostname"]] = change
        for key, hash_ in links.items():
            if hash_ is None:
                self._links.pop(key, None)
            else:
                self._links[key] = hash_
        self._links_digest = rdigest
        delta = StateDelta(self._version, doc["version"], config, routes, {
            key: None if value is None else Redirect.from_map(key, value)
            for key, value in doc.get("redirect_changes", [])})
        self._revision, self._digest, self._version = doc["revision"], digest, doc["version"]
        return delta

    def _checked(self, doc: dict[str, Any], rdigest: int) -> int:
        """The redirects digest to check the version with: the one computed from the links
        applied; an agent that speaks protocol 0 (no header: the release before, as tests
        play it) is sent a tag of the digest instead, which only the control service can
        compute, so it takes the answer's, as that release did."""
        if self._session.headers.get(PROTOCOL_HEADER):
            return rdigest % DIGEST_MODULUS
        return int(doc.get("redirects_digest") or "0", 16)

    def _rdigest(self) -> int:
        if self._links_digest is None:
            self._links_digest = sum((self._links or {}).values()) % DIGEST_MODULUS
        return self._links_digest

    @property
    def downloads(self) -> int:
        """Certificates downloaded so far, in batches or one at a time."""
        return self.certificates.count

    def _download(self, refs: Iterable[dict[str, str]], doc: dict[str, Any]
                  ) -> dict[str, Route]:
        """Download, in batches if the control service offers them, the certificates of
        ``refs`` the node does not serve yet; returns what it serves."""
        served = self.node.existing_routes()
        wanted = [(ref["hostname"], ref["cert_sha256"]) for ref in refs
                  if (current := served.get(ref["hostname"])) is None
                  or current.ref.cert_sha256 != ref["cert_sha256"]]
        per_batch = batch_size(doc.get(CERT_BATCH_KEY)) if self.batches else 0
        self._pems = self.certificates.fetch(wanted, per_batch)
        return served

    def _route(self, ref: dict[str, str], served: dict[str, Route]) -> Route:
        """The route ``ref`` names, reusing what the node serves (the same object, whose
        fingerprint is not computed again) or the certificate just downloaded."""
        current = served.get(ref["hostname"])
        extras = ref.get("extras") or ""
        if current is not None and current.ref.cert_sha256 == ref["cert_sha256"]:
            if current.publication_id == ref["publication_id"] and current.extras == extras:
                return current
            return Route(ref["hostname"], ref["publication_id"], current.pem, extras)
        pem = self._pems.get(ref["hostname"]) \
            or self.certificates.one(ref["hostname"], ref["cert_sha256"])
        return Route(ref["hostname"], ref["publication_id"], pem, extras)

    def _resume(self, applied: str) -> None:
        """After a restart, go on with deltas from the revision the node's state came from
        (kept in ``agent_sync.json``) rather than a snapshot of a million links; the routes
        digest is rebuilt from what the node serves, so the next delta is checked as ever."""
        self._resumed = True
        try:
            doc = json.loads((self.node.directory / SYNC_FILE).read_text())
            revision, version = int(doc["revision"]), str(doc["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if (version, doc.get("protocol"), doc.get("shard", DEFAULT_SHARD)) \
                != (applied, PROTOCOL, self.shard):  # another form or shard: a snapshot
            return
        refs = {hostname: {"hostname": hostname, "publication_id": route.publication_id,
                           "cert_sha256": route.ref.cert_sha256, "extras": route.extras}
                for hostname, route in self.node.existing_routes().items()}
        self._routes, self._revision, self._version = refs, revision, version
        self._digest = routes_digest(_route_ref(ref) for ref in refs.values())
        self._links = {key: redirect_hash(key, value)
                       for key, value in self.node.existing_redirects().items()}

    def _remember(self) -> None:
        """Where the node's state came from (not synced: a lost or stale file only means a
        snapshot, as the version must match)."""
        if self._revision is None or self._version != self.node.applied_version:
            return
        path = self.node.directory / SYNC_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"revision": self._revision, "version": self._version,
                                   "protocol": PROTOCOL, "shard": self.shard}))
        os.replace(tmp, path)

    def reset(self) -> None:
        """Forget the state held: the next fetch asks for a snapshot."""
        self._routes = self._revision = self._digest = self._version = None
        self._links = self._links_digest = None

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """As any agent asks (ControlClient), naming its shard to the shards' feeds."""
        if self.shard != DEFAULT_SHARD and path.startswith(SHARDED_PATHS):  # else as ever
            kwargs["params"] = {**(kwargs.get("params") or {}), "shard": self.shard}
        return super()._request(method, path, **kwargs)

    def sync(self) -> bool:
        """One round: fetch, apply if changed, report. True if something new was applied."""
        try:
            self._serve_files()
            rendered = self.node.own_files_served
            if not rendered:  # new templates or settings: a whole state, rendered with them
                self.reset()
            have = self.node.applied_version if self.node.haproxy.running and rendered else None
            desired = self.fetch(have)
            if desired is None:
                with self._applying():
                    self.node.start()
                    self.node.compact_if_idle()
                return False
            if isinstance(desired, StateDelta):
                if self.node.can_apply_delta(desired):
                    try:
                        with self._applying():
                            applied = self.node.apply_delta(desired, force=self._force)
                            self._remember()
                    except Exception:
                        self.reset()  # the node stays where it was: resume from a snapshot
                        raise
                    return applied
                self.reset()  # the node is not at the delta's base (a reload, a restart)
                desired = self.fetch(None)
                if desired is None or isinstance(desired, StateDelta):
                    return False
            with self._applying():
                applied = self.node.apply(desired, force=self._force)
                self._remember()
            return applied
        finally:
            self._report()

    def _serve_files(self) -> None:
        """Before asking the control service, which may be away: files that fail to start are
        reported, and the state is applied anew once it answers."""
        with self._applying():
            self.node.start_if_down()

    def _report(self) -> None:
        self._request("POST", f"/api/v1/edge/nodes/{self.node_id}", timeout=10, json={
            "applied_version": self.node.applied_version, "error": self.node.last_error,
            "haproxy_running": self.node.haproxy.running})

    def report_visits(self, batch: int = 1000) -> int:
        """Send the visits HAProxy counted for hot links since the last report (kept and sent
        again if the control service does not take them); returns how many were delivered."""
        if not self.node.haproxy.running:
            return 0
        self.visits.read()
        delivered = 0
        while (report := self.visits.next_report(batch)) is not None:
            report_id, counts = report
            response = self._request("POST", "/api/v1/edge/visits", timeout=10,
                                     json={"report_id": report_id, "visits": counts})
            response.raise_for_status()
            self.visits.delivered(report_id)
            delivered += sum(counts.values())
        return delivered

    def run(self, interval: float, stop: threading.Event) -> None:
        """Sync until ``stop``; while the control service is away, wait longer each time
        (jittered, at most ``MAX_BACKOFF``) and say so once, not every round."""
        try:  # serve the last applied state from the files while the control service answers
            with self._applying():
                self.node.start()
        except EdgeError as exc:  # reported by the first sync, which applies the state anew
            log.warning("%s", exc)
        try:  # seen at once: the first sync may wait a whole long poll before it reports
            self._report()
        except Exception as exc:  # the first sync says it, with backoff
            log.info("the first report failed: %s", exc)
        visits = threading.Thread(target=self._report_visits_until, args=(interval, stop),
                                  name="edge-visits", daemon=True)
        visits.start()
        try:
            sync_rounds(self.sync, stop, interval, self.watch, "edge", MAX_BACKOFF)
        finally:  # a report cut short is sent again, under its id, by the next agent
            visits.join(timeout=2)

    def _report_visits_until(self, interval: float, stop: threading.Event) -> None:
        """Every ``interval``, beside the syncs: reading HAProxy's visit table takes a while
        when many links were visited (about 200 ms for 100,000), and a change must not wait
        behind it."""
        while not stop.wait(interval):
            try:
                self.report_visits()
            except Exception as exc:  # the visits stay pending for the next round
                log.info("reporting map-served link visits failed: %s", exc)
