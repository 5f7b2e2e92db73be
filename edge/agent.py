"""`edgectl agent`: beside each HAProxy node, pull the desired state, apply it, report back.

Only changes cross the wire: the agent asks for the routes changed since the revision it
holds (a full snapshot the first time, or when it is too far behind), routes name their
certificates by fingerprint, and it downloads just the certificates its node does not serve
yet. With ``watch``, each request waits on the control service until the state moves (a long
poll), so a change reaches the node at once rather than a poll interval later.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Sequence
from urllib.parse import quote

import requests

from edge.errors import EdgeError
from edge.node import EdgeNode
from edge.state import (DIGEST_MODULUS, DesiredState, EdgeConfig, Redirect, Route, RouteRef,
                        fingerprint, pools_of, route_hash, routes_digest, state_version)
from edge.visits import HotVisitMeter
from kit.backoff import jittered_backoff
from kit.hosts import plain_http_off_host

log = logging.getLogger(__name__)


def _route_ref(ref: dict[str, Any]) -> RouteRef:
    return RouteRef(ref["hostname"], ref["publication_id"], ref["cert_sha256"],
                    ref.get("extras") or "")


class StateUnavailable(EdgeError):
    """The control service's answer could not be turned into a state to apply."""


MAX_BACKOFF = 30.0


class EdgeAgent:
    def __init__(self, node: EdgeNode, control_url: str | Sequence[str], token: str,
                 node_id: str | None = None, session: requests.Session | None = None,
                 watch: float = 0.0, ca_bundle: str = "", allow_insecure: bool = False,
                 client_cert: tuple[str, str] | None = None) -> None:
        self.node = node
        urls = [control_url] if isinstance(control_url, str) else list(control_url)
        self._urls = [url.rstrip("/") for url in urls]
        """Every control replica; requests go to the first that answers, and stay there."""
        insecure = [url for url in self._urls if plain_http_off_host(url)]
        if insecure and not allow_insecure:
            raise EdgeError(f"{insecure[0]} is plain HTTP to another host: the agent would "
                            "fetch private keys in clear (use https://)")
        self._session = session or requests.Session()
        self._verify: str | bool = ca_bundle or True
        """Per request: requests lets REQUESTS_CA_BUNDLE override a session's ``verify``."""
        self._session.cert = client_cert  # (certificate, key) files for mTLS, if asked
        self._session.headers["Authorization"] = f"Bearer {token}"
        self.node_id = node_id or socket.gethostname()
        self.downloads = 0
        self._force = False
        self.watch = watch
        self._routes: dict[str, dict[str, str]] | None = None
        """The routes of the last state fetched, by hostname, at ``self._revision``."""
        self._revision: int | None = None
        self._digest: int | None = None
        """The routes digest of ``self._routes``, kept by each delta like the control service's."""
        self.visits = HotVisitMeter(node.runtime, node.directory / "hot_visits.json")

    def fetch(self, have: str | None = None) -> DesiredState | None:
        """The desired state with every certificate in it, or None if unchanged or unpublished."""
        params: dict[str, str | float | int] = {}
        if have:
            params.update(have=have, wait=self.watch)
        if self._routes is not None and self._revision is not None:
            params["since"] = self._revision
        response = self._request("GET", "/api/v1/edge/state", params=params,
                                 timeout=30 + self.watch)
        if response.status_code in (304, 404):
            return None
        response.raise_for_status()
        doc = response.json()
        self._force = bool(doc.get("force"))
        if doc.get("delta") and self._routes is not None and self._digest is not None:
            refs, digest = dict(self._routes), self._digest
            for change in doc["changes"]:  # the digest follows the changes: O(changes)
                old = refs.pop(change["hostname"], None)
                if old is not None:
                    digest -= route_hash(_route_ref(old))
                if not change.get("removed"):
                    refs[change["hostname"]] = change
                    digest += route_hash(_route_ref(change))
            digest %= DIGEST_MODULUS
        else:
            refs = {ref["hostname"]: ref for ref in doc["routes"]}
            digest = routes_digest(_route_ref(ref) for ref in refs.values())
        redirects = tuple(Redirect(**r) for r in doc.get("redirects", []))
        config = EdgeConfig(tuple(doc["app_servers"]), tuple(doc["control_servers"]), redirects,
                            tuple(doc.get("sso_keys", [])), tuple(doc.get("short_domains", [])),
                            tuple(doc.get("shortlink_servers", [])),
                            pools_of(doc.get("origin_pools")))
        if state_version(digest, config) != doc["version"]:
            self._routes = self._revision = self._digest = None  # start again from a snapshot
            raise StateUnavailable(f"state changed while fetching ({doc['version']}); retrying")
        served = self.node.existing_routes()
        routes = []
        for ref in sorted(refs.values(), key=lambda r: r["hostname"]):
            current = served.get(ref["hostname"])
            extras = ref.get("extras") or ""
            if current is not None and current.publication_id == ref["publication_id"] \
                    and current.ref.cert_sha256 == ref["cert_sha256"] \
                    and current.extras == extras:
                routes.append(current)  # the same object: its fingerprint is not computed again
                continue
            pem = current.pem if current is not None and \
                current.ref.cert_sha256 == ref["cert_sha256"] else \
                self._download(ref["hostname"], ref["cert_sha256"])
            routes.append(Route(ref["hostname"], ref["publication_id"], pem, extras))
        desired = DesiredState(tuple(routes), config.app_servers, config.control_servers,
                               redirects, sso_keys=config.sso_keys,
                               short_domains=config.short_domains,
                               shortlink_servers=config.shortlink_servers,
                               origin_pools=config.origin_pools,
                               known_version=doc["version"])
        self._routes, self._revision, self._digest = refs, doc.get("revision"), digest
        return desired

    def _download(self, hostname: str, cert_sha256: str) -> str:
        response = self._request("GET", f"/api/v1/edge/certs/{quote(hostname)}", timeout=30)
        response.raise_for_status()
        pem = str(response.json()["pem"])
        if fingerprint(pem) != cert_sha256:
            raise StateUnavailable(f"certificate of {hostname} changed while fetching")
        self.downloads += 1
        return pem

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Ask the current control replica; one that does not answer (or answers 502-504)
        sends the request on to the next, which becomes the current one."""
        for attempt in range(len(self._urls)):
            try:
                response = self._session.request(method, self._urls[0] + path,
                                                 verify=self._verify, **kwargs)
                if response.status_code not in (502, 503, 504) or attempt == len(self._urls) - 1:
                    return response
            except (requests.ConnectionError, requests.Timeout):
                if attempt == len(self._urls) - 1:
                    raise
            log.info("control replica %s is away; trying %s", self._urls[0],
                     self._urls[1 % len(self._urls)])
            self._urls.append(self._urls.pop(0))
        raise AssertionError("unreachable")

    def sync(self) -> bool:
        """One round: fetch, apply if changed, report. True if something new was applied."""
        try:
            have = self.node.applied_version if self.node.haproxy.running else None
            desired = self.fetch(have)
            if desired is None:
                self.node.start()
                return False
            return self.node.apply(desired, force=self._force)
        finally:
            self._report()

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
        self.node.start()
        failures = 0
        while not stop.is_set():
            applied, started = False, time.monotonic()
            try:
                applied = self.sync()
                if failures:
                    log.warning("edge sync works again after %d failed rounds", failures)
                failures = 0
            except Exception as exc:  # keep serving the last good state whatever happens
                failures += 1
                if failures == 1:
                    log.warning("edge sync failed (retrying with backoff): %s", exc)
            try:
                self.report_visits()
            except Exception as exc:  # the visits stay pending for the next round
                log.info("reporting hot link visits failed: %s", exc)
            waited = time.monotonic() - started
            if failures:
                stop.wait(jittered_backoff(failures, interval, MAX_BACKOFF))
            elif not (self.watch and (applied or waited >= self.watch / 2)):
                # Watching, a round that applied a change, or whose long poll waited, goes
                # straight back to the long poll: a pause would hold the next change (a
                # certificate upload, say) up to ``interval``. The long poll paces the rounds
                # (it answers when the state moves, or after ``watch``); a round that came
                # back early for another reason (a server that does not wait) still pauses.
                stop.wait(interval)
