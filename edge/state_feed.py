"""What edge agents read of the desired state: the changes since their revision, a full
snapshot, and the certificates they download (edge/control_api.py serves them).

Every read settles the version item first (a replica that died after committing leaves its
outbox for the next reader to apply), so what it answers agrees with the version it names.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from edge import feed_log
from edge.protocol import PROTOCOL, downgrade, meta_version, same_form
from edge.state import DIGEST_MODULUS, EdgeConfig, redirect_hash, routes_digest, state_version
from edge.state_changes import FEED, StateChanges, cert_key, route_ref
from kit.vault import KeyVault
from store import Item, StoreError, Table, every

READS = 10
BACKOFF = 0.01
"""Seconds before the second read of a lagging index, doubling (at most 0.2) up to ``READS``
reads, about a second in all: DynamoDB's index lag is milliseconds, seconds under load."""


class FeedLagging(StoreError):
    """The feed index has not shown every change of the range yet: the agent asks again
    (a 503, as for a store that does not answer) rather than miss one."""


class StateFeed:
    def __init__(self, changes: StateChanges, routes: Table, certs: Table, vault: KeyVault,
                 redirects: Table | None = None) -> None:
        self._changes = changes
        self.routes = routes
        self.certs = certs
        self.redirects = redirects
        self._vault = vault
        self._cache: tuple[dict[str, Any], int, EdgeConfig] | None = None
        self._lock = threading.Lock()

    def _settled_meta(self) -> Item | None:
        return self._changes.settled(self._changes.meta())

    def changes_since(self, since: int, protocol: int = PROTOCOL) -> dict[str, Any] | None:
        """The wire form (in ``protocol``'s, edge/protocol.py) as a delta: the routes and links
        written after revision ``since`` (removed ones as ``{"hostname", "removed": true}``) and
        the config. None when ``since`` is older than the last compaction or the feed's log, or
        newer than the state: the caller sends a snapshot instead. Reads the version item and
        the changed items only, again (with a short backoff) until they are all that the log
        names (edge/feed_log.py): a lagging index gives a later answer, never a delta that
        lacks a change; :class:`FeedLagging` if it lags longer."""
        for attempt in range(READS):
            found = self._settled_meta()
            if found is None or not int(found.get("compacted_revision") or 0) <= since \
                    <= int(found["revision"]):
                return None
            meta: Item = found
            revision = int(meta["revision"])
            log = feed_log.window(meta)
            if log is not None and not feed_log.covers(log, since):
                return None
            changed, links = self._feed(since, meta)
            newer = any(int(item["revision"]) > revision for item in changed + links)
            changed = [item for item in changed if int(item["revision"]) <= revision]
            links = [item for item in links if int(item["revision"]) <= revision]
            if log is None and (not newer or attempt >= 2):
                break  # the release before's version item: as that release answered
            if log is not None and feed_log.complete(
                    log, since, (int(item["revision"]) for item in changed + links)):
                break  # exactly the changes this version names
            # The index lags, or a newer change landed meanwhile (it may have overwritten one
            # of ours): read the version and the index again.
            if not newer and attempt < READS - 1:
                time.sleep(min(BACKOFF * 2 ** attempt, 0.2))
        else:
            raise FeedLagging(f"the edge feed index lacks changes after revision {since}; "
                              "ask again shortly")
        doc = {"version": meta["edge_version"], "revision": int(meta["revision"]),
               "delta": True, "since": since,
               "changes": [{"hostname": item["hostname"], "removed": True}
                           if item.get("removed") else vars(route_ref(item)) for item in changed],
               "redirect_changes": [[item["key"], None if item.get("removed")
                                     else item["value"]] for item in links],
               "redirects_digest": meta.get("redirects_digest") or "0" * 32,
               **(meta.get("config") or {}),
               "force": meta.get("forced_version") == meta["edge_version"]}
        return downgrade(doc, protocol, int(meta.get("routes_digest") or "0", 16),
                         EdgeConfig.from_json(meta.get("config") or {}))

    def _feed(self, since: int, meta: Item) -> tuple[list[Item], list[Item]]:
        """The route and link items written after revision ``since``: read by key when the
        version item names them (edge/feed_log.py), else as the feed index shows them."""
        keys = feed_log.keys_since(meta, since)
        if keys is not None:
            found = list(self.routes.get_many(keys[0]).values()) if keys[0] else []
            return found, list(self.redirects.get_many(keys[1]).values()) \
                if keys[1] and self.redirects is not None else []
        changed = list(every(lambda cursor: self.routes.query_range(
            "feed", FEED, lower=since + 0.5, limit=500, cursor=cursor)))
        table = self.redirects
        links = list(every(lambda cursor: table.query_range(
            "feed", FEED, lower=since + 0.5, limit=500, cursor=cursor))) \
            if table is not None else []
        return changed, links

    def load(self, protocol: int = PROTOCOL) -> dict[str, Any] | None:
        """The wire form (no keys, in ``protocol``'s) as a full snapshot. One read when the
        version has not moved; the route items are read again only when it has (once per
        change per replica)."""
        meta = self._settled_meta()
        if meta is None:
            return None
        with self._lock:
            if self._cache is None or self._cache[0]["version"] != meta["edge_version"]:
                summary, digest, config = self._snapshot(meta)
                if summary["version"] != meta["edge_version"]:
                    # caught mid-change: do not cache, the next poll catches up
                    return downgrade(summary, protocol, digest, config)
                self._cache = summary, digest, config
            summary, digest, config = self._cache
        doc = {**summary, "force": meta.get("forced_version") == meta["edge_version"]}
        return downgrade(doc, protocol, digest, config)

    def _snapshot(self, meta: Item) -> tuple[dict[str, Any], int, EdgeConfig]:
        refs = [route_ref(item) for item in every(
            lambda cursor: self.routes.scan(limit=500, cursor=cursor))
                if not item.get("removed")]
        config = EdgeConfig.from_json(meta.get("config") or {})
        table = self.redirects
        links = sorted((item["key"], item["value"]) for item in every(
            lambda cursor: table.scan(limit=1000, cursor=cursor))
            if not item.get("removed")) if table is not None else []
        rdigest = sum(redirect_hash(k, v) for k, v in links) % DIGEST_MODULUS
        digest = routes_digest(refs)
        return {"version": state_version(digest, config, rdigest),
                "revision": int(meta["revision"]),
                "routes": [vars(r) for r in sorted(refs, key=lambda r: r.hostname)],
                "redirects": [list(link) for link in links],
                "redirects_digest": f"{rdigest:032x}",
                **config.to_json()}, digest, config

    def current_form(self, have: str | None, protocol: int) -> str | None:
        """The version ``have`` of an agent of ``protocol`` names, in the newest form: the
        current version if ``have`` is the current state in that protocol's form (so its long
        poll waits), else ``have``."""
        if have is None or same_form(protocol):
            return have
        meta = self._changes.meta()
        if meta is not None and have == meta_version(meta, protocol):
            return str(meta["edge_version"])
        return have

    def certificate(self, hostname: str, cert_sha256: str | None = None) -> dict[str, str] | None:
        """The certificate and key an agent downloads: the only place a key is decrypted.
        By hostname and fingerprint (what a route names); without a fingerprint (an agent of
        the release before), the one the host's route names now."""
        if cert_sha256 is None:
            route = self.routes.get(hostname)
            cert_sha256 = None if route is None or route.get("removed") \
                else str(route["cert_sha256"])
        item = self.certs.get(cert_key(hostname, cert_sha256)) if cert_sha256 else None
        if item is None:  # stored by the release before, under its hostname alone
            item = self.certs.get(hostname)
            if item is None or cert_sha256 not in (None, item["cert_sha256"]):
                return None
        return self._download(hostname, item)

    def certificates(self, wanted: list[tuple[str, str]]
                     ) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
        """What :meth:`certificate` answers for each (hostname, fingerprint), in one batch
        read of the store per ``store.BATCH_GET`` of them (plus one for those stored only by
        the release before, under their hostname alone): the downloads found, in the order
        asked, and the pairs not stored."""
        stored = self.certs.get_many([cert_key(host, sha) for host, sha in wanted])
        bare_keys = [host for host, sha in wanted if cert_key(host, sha) not in stored]
        bare = self.certs.get_many(bare_keys) if bare_keys else {}
        found, missing = [], []
        for host, sha in wanted:
            item = stored.get(cert_key(host, sha)) or bare.get(host)
            if item is None or item["cert_sha256"] != sha:
                missing.append((host, sha))
            else:
                found.append(self._download(host, item))
        return found, missing

    def _download(self, hostname: str, item: Item) -> dict[str, str]:
        return {"hostname": hostname, "cert_sha256": item["cert_sha256"],
                "pem": self._vault.decrypt(item["pem_enc"]).decode()}
