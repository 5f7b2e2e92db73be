"""What edge agents read of the desired state: the changes since their revision, a full
snapshot, and the certificates they download (edge/control_api.py serves them).

Every read settles the version item first (a replica that died after committing leaves its
outbox for the next reader to apply), so what it answers agrees with the version it names.
"""
from __future__ import annotations

import threading
from typing import Any

from edge.state import DIGEST_MODULUS, EdgeConfig, redirect_hash, routes_digest, state_version
from edge.state_changes import FEED, StateChanges, route_ref
from kit.vault import KeyVault
from store import Item, Table, every


class StateFeed:
    def __init__(self, changes: StateChanges, routes: Table, certs: Table, vault: KeyVault,
                 redirects: Table | None = None) -> None:
        self._changes = changes
        self.routes = routes
        self.certs = certs
        self.redirects = redirects
        self._vault = vault
        self._cache: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _settled_meta(self) -> Item | None:
        return self._changes.settled(self._changes.meta())

    def changes_since(self, since: int) -> dict[str, Any] | None:
        """The wire form as a delta: the routes written after revision ``since`` (removed ones
        as ``{"hostname", "removed": true}``) and the config. None when ``since`` is older than
        the last compaction or newer than the state: the caller sends a snapshot instead.
        Reads the version item and the changed routes only."""
        for _ in range(3):
            found = self._settled_meta()
            if found is None or not int(found.get("compacted_revision") or 0) <= since \
                    <= int(found["revision"]):
                return None
            meta: Item = found
            revision = int(meta["revision"])
            changed = list(every(lambda cursor: self.routes.query_range(
                "feed", FEED, lower=since + 0.5, limit=500, cursor=cursor)))
            table = self.redirects
            links = list(every(lambda cursor: table.query_range(
                "feed", FEED, lower=since + 0.5, limit=500, cursor=cursor))) \
                if table is not None else []
            if all(int(item["revision"]) <= revision for item in changed + links):
                break  # exactly the changes this version names
            # A newer change landed meanwhile (it may have overwritten one of ours): read the
            # version again, so the delta and the version agree.
        changed = [item for item in changed if int(item["revision"]) <= revision]
        links = [item for item in links if int(item["revision"]) <= revision]
        return {"version": meta["edge_version"], "revision": int(meta["revision"]),
                "delta": True, "since": since,
                "changes": [{"hostname": item["hostname"], "removed": True}
                            if item.get("removed") else vars(route_ref(item)) for item in changed],
                "redirect_changes": [[item["key"], None if item.get("removed")
                                      else item["value"]] for item in links],
                "redirects_digest": meta.get("redirects_digest") or "0" * 32,
                **(meta.get("config") or {}),
                "force": meta.get("forced_version") == meta["edge_version"]}

    def load(self) -> dict[str, Any] | None:
        """The wire form (no keys) as a full snapshot. One read when the version has not moved;
        the route items are read again only when it has (once per change per replica)."""
        meta = self._settled_meta()
        if meta is None:
            return None
        with self._lock:
            if self._cache is None or self._cache["version"] != meta["edge_version"]:
                refs = [route_ref(item) for item in every(
                    lambda cursor: self.routes.scan(limit=500, cursor=cursor))
                        if not item.get("removed")]
                config = EdgeConfig.from_json(meta.get("config") or {})
                table = self.redirects
                links = sorted((item["key"], item["value"]) for item in every(
                    lambda cursor: table.scan(limit=1000, cursor=cursor))
                    if not item.get("removed")) if table is not None else []
                rdigest = sum(redirect_hash(k, v) for k, v in links) % DIGEST_MODULUS
                summary = {"version": state_version(routes_digest(refs), config, rdigest),
                           "revision": int(meta["revision"]),
                           "routes": [vars(r) for r in sorted(refs, key=lambda r: r.hostname)],
                           "redirects": [list(link) for link in links],
                           "redirects_digest": f"{rdigest:032x}",
                           **config.to_json()}
                if summary["version"] != meta["edge_version"]:
                    return summary  # caught mid-change: do not cache, the next poll catches up
                self._cache = summary
            return {**self._cache, "force": meta.get("forced_version") == meta["edge_version"]}

    def certificate(self, hostname: str) -> dict[str, str] | None:
        """The certificate and key an agent downloads: the only place a key is decrypted."""
        item = self.certs.get(hostname)
        if item is None:
            return None
        return {"hostname": hostname, "cert_sha256": item["cert_sha256"],
                "pem": self._vault.decrypt(item["pem_enc"]).decode()}
