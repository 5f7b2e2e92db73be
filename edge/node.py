"""One edge node: route, certificate and redirect changes hot through the runtime API
(edge/hotapply.py); anything else as a new release (edge/releases.py): render, check, swap in,
reload.

A release HAProxy refuses is deleted before it ever becomes current, so the node keeps serving
the last good one, and a restart serves exactly what ``current`` points at. A hot change is
journaled in the current release; the journal is folded into its files before HAProxy reads
them again (start, reload), past ``compact_after`` changes, and when the agent is idle.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable, Iterator

from edge import hotapply, journal, releases
from edge.errors import EdgeError
from edge.haproxy import ConfigRejected, HAProxy
from edge.journaled import Journaled as Journaled
from edge.node_health import NodeHealth
from edge.plan import Change, Plan, check_pem, make_plan
from edge.releases import Releases
from edge.render import NodeLayout, meta_keys, render, route_meta_keys, template_bytes
from edge.runtime import RuntimeAPI, RuntimeCommandFailed
from edge.state import DesiredState, EdgeConfig, Route, StateDelta

log = logging.getLogger(__name__)
COLD_SLICE = 500
"""A node starting with more routes serves this many first and adds the rest hot."""
COMPACT_AFTER = 20000
"""Journal changes after which the node folds them into its files."""
LOAD_BASE_SECONDS = 30.0
LOAD_SECONDS_PER_CERT = 0.005
"""How long HAProxy may take to start or reload: it parses every certificate of the release
first (1.1-1.5 ms each measured here with OpenSSL 3.0, so about 150 s at 100,000); a fixed
limit would call a large node's start or reload failed while it is still loading."""


class EdgeNode(Journaled):
    def __init__(self, directory: Path, *, haproxy_bin: str = "haproxy", bind: str = "127.0.0.1",
                 http_port: int = 80, https_port: int = 443, stats_port: int = 0,
                 templates: Path | None = None, cold_slice: int = COLD_SLICE,
                 control_ca: str = "", compact_after: int = COMPACT_AFTER,
                 redirect_capacity: int = 1_000_000, proxy_https_port: int = 0,
                 proxy_http_port: int = 0, stats_bind: str = "") -> None:
        super().__init__(compact_after)
        self.directory = directory.absolute()
        self.cold_slice = cold_slice
        self._templates = templates
        self._template_bytes = template_bytes(templates)
        """Read once: part of the structure every hot change is compared with."""
        self.releases = Releases(self.directory)
        self.current = self.releases.current
        self.haproxy = HAProxy(haproxy_bin, self.current / "haproxy.cfg", self.directory)
        self.layout = NodeLayout(bind=bind, http_port=http_port, https_port=https_port,
                                 runtime_socket=self.haproxy.runtime_socket,
                                 default_cert=self.directory / "default.pem",
                                 stats_port=stats_port, stats_bind=stats_bind,
                                 control_ca=control_ca, redirect_capacity=redirect_capacity,
                                 proxy_https_port=proxy_https_port,
                                 proxy_http_port=proxy_http_port)
        self.runtime = RuntimeAPI(self.layout.runtime_socket)
        self.last_error: str | None = None
        self.hot_applies = 0
        self.reloads = 0
        self._served: dict[str, Route] | None = None
        self._map_checked = False
        self._applied: str | None = None
        """The version served, once read (VERSION, then the journal's last change)."""
        self._structure_served: str | None = None
        self._meta_served: frozenset[str] | None = None
        """The metadata keys the running haproxy.cfg has a header line for (``META_KEYS``)."""
        self._unservable = False
        """The current release's files failed to start: no version counts as served, so the
        next apply writes a new release instead of starting the same files again."""
        self._files_ahead = False
        self._confirmed: str | None = None
        """With ``_files_ahead``: a reload of the files failed after a hot change HAProxy
        refused, so HAProxy serves ``_confirmed`` at best (reported as applied) and the next
        apply renders a new release rather than change a HAProxy that does not serve them."""
        releases.ensure_default_cert(self.layout.default_cert)
        self.health = NodeHealth(self.layout.health_map, self.runtime,
                                 served=self.applied_version is not None,
                                 checked=bool(proxy_http_port))
        """What the shard routers' health check reads: ready once a whole state is served."""

    @property
    def templates(self) -> Path | None:
        """The HAProxy templates this node renders (None: the packaged ones)."""
        return self._templates

    @property
    def applied_version(self) -> str | None:
        if self._unservable:
            return None
        if self._files_ahead:
            return self._confirmed
        if self._applied is None:
            marker = self.current / "VERSION"
            if not marker.exists():
                return None
            version, _, _, self._journaled = journal.replay(self.current.resolve())
            self._applied = version or marker.read_text().strip()
        return self._applied

    def _forget(self) -> None:
        """What is served is re-read from the files (``current`` moved, or a change failed)."""
        self._served = self._applied = self._structure_served = self._meta_served = None

    def existing_routes(self) -> dict[str, Route]:
        """Routes the current release serves: read from its files and journal once, then kept
        in memory and changed in place."""
        if self._served is None:
            self._served = releases.read_routes(self.releases.served())
        return self._served

    def existing_redirects(self) -> dict[str, str]:
        """``key -> map value`` of the redirects served (files and journal): read in full only
        when a whole state is applied, never for a delta."""
        return releases.read_redirects(self.releases.served())

    def plan(self, state: DesiredState) -> Plan:
        return make_plan(self.existing_routes(), {r.hostname: r for r in state.routes})

    @contextlib.contextmanager
    def _refusal_noted(self) -> Iterator[None]:
        """A refused change (raised) is the node's last error."""
        try:
            yield
        except Exception as exc:
            self.last_error = str(exc)
            raise

    def apply(self, state: DesiredState, force: bool = False) -> bool:
        """Serve ``state``; False if it was already served. Raises (keeping the old state) if
        refused.

        Route and certificate changes go through the runtime API with no reload; anything
        structural (servers, templates, a node that is not running) takes a checked reload.
        """
        if state.version == self.applied_version and self.haproxy.running \
                and not self._files_ahead and self.own_files_served:
            return False
        plan = self.plan(state)
        cold = not self.haproxy.running and 0 < self.cold_slice < len(state.routes)
        existing = self.existing_redirects()
        links = hotapply.redirect_changes(existing, {r.key: r.value for r in state.redirects})
        with self._refusal_noted():
            hotapply.check_state(plan, state, links, len(existing), force, certificates=not cold)
        if cold:
            self.health.mark(False, running=False)  # until the last certificate is in
            plan = self._start_with_first_slice(state)
            links = {}  # its release holds every link: only certificates stream in
        if self._can_hot_apply(state.config) and not self._new_meta_keys(state.routes):
            confirmed = self.applied_version
            try:
                self._hot_apply(plan.changes, links, state.version, check=cold)
                self.compact()  # a whole state costs O(N) anyway: leave no journal behind
                self.health.mark(True, running=True)
                return True
            except (RuntimeCommandFailed, OSError) as exc:
                log.warning("hot apply failed, falling back to a new release: %s", exc)
                self._forget()  # HAProxy may hold part of it: it serves what it confirmed
                self._files_ahead, self._confirmed = True, confirmed
        self._apply_release(state)
        self._served = {r.hostname: r for r in state.routes}
        self._map_checked = True
        self.health.mark(True, running=True)
        return True

    def can_apply_delta(self, delta: StateDelta) -> bool:
        """Whether ``delta`` applies hot: the node serves its base, and its config is the one
        the running HAProxy was rendered with."""
        return (self.haproxy.running and self.applied_version == delta.base
                and self._can_hot_apply(delta.config)
                and not self._new_meta_keys(r for r in delta.routes.values() if r is not None))

    def _new_meta_keys(self, routes: Iterable[Route]) -> set[str]:
        """Metadata keys of ``routes`` the running haproxy.cfg has no header line for (each
        key is one line: a new one takes a reload, its values are hot). Checked against the
        keys the current release was rendered with, kept in its ``META_KEYS``."""
        if self._meta_served is None:
            marker = self.current / "META_KEYS"
            self._meta_served = frozenset(
                json.loads(marker.read_text()) if marker.exists() else ())
        new: set[str] = set()
        for route in routes:
            if route.extras:
                new |= route_meta_keys(route) - self._meta_served
        return new

    def apply_delta(self, delta: StateDelta, force: bool = False) -> bool:
        """Serve ``delta`` (see :meth:`can_apply_delta`, which the caller checks) in time and
        file writes proportional to its changes; on a refused runtime command, a reload from
        the files (which hold the change). Raises, keeping the old state, if refused."""
        if delta.version == self.applied_version:
            return False
        with self._refusal_noted():
            plan = hotapply.plan_delta(self.existing_routes(), delta, force)
        links = {key: r.value if r is not None else None for key, r in delta.redirects.items()}
        confirmed = self.applied_version
        try:
            self._hot_apply(plan.changes, links, delta.version)
        except (RuntimeCommandFailed, OSError) as exc:
            log.warning("hot change failed, reloading from the files: %s", exc)
            self._reload_files(confirmed)
        self._compact_if_long()
        self.health.mark(True, running=True)  # a delta applies on a whole state
        return True

    def _reload_files(self, confirmed: str | None) -> None:
        """Serve the files (which hold a change HAProxy refused hot) by a reload; until one
        succeeds, HAProxy serves ``confirmed`` at best (``_files_ahead``)."""
        self._forget()
        self._files_ahead, self._confirmed = True, confirmed
        with self._refusal_noted():
            self.compact()
            self.haproxy.reload(_load_timeout(releases.routes_in_files(self.current)))
        self._forget()
        self._files_ahead = False
        self.reloads += 1

    def _start_with_first_slice(self, state: DesiredState) -> Plan:
        """Cold start: HAProxy's load time grows faster than linearly with certificates, so
        start with a slice (served within about a second) and stream the rest in hot."""
        head = sorted(state.routes, key=lambda r: r.hostname)[:self.cold_slice]
        for route in head:
            check_pem(route)
        # Its haproxy.cfg has a header line for every metadata key of the whole state: the
        # routes that stream in after it carry theirs.
        self._apply_release(dataclasses.replace(state, routes=tuple(head), known_version=None),
                            meta_keys(state.routes))
        self._served = {r.hostname: r for r in head}
        self._map_checked = True
        return self.plan(state)

    def _can_hot_apply(self, config: EdgeConfig) -> bool:
        if self._files_ahead:  # HAProxy does not serve the files: a new release first
            return False
        marker = self.current / "STRUCTURE"
        if self._structure_served is None and marker.exists():
            self._structure_served = marker.read_text()
        if not (self.haproxy.running and self._structure_served == self._structure(config)):
            return False
        if not self._map_checked:  # once per process: does HAProxy serve what the files say?
            self._map_checked = True
            if not self._serves_files():  # else unknown: a new release repairs it
                self._files_ahead, self._confirmed = True, None
                return False
        return True

    def _serves_files(self) -> bool:
        return hotapply.serves(self.runtime, self.current.resolve(), self.existing_routes())

    @property
    def own_files_served(self) -> bool:
        """Whether the release served was rendered with this node's templates and listening
        settings. An upgrade brings new templates, an operator a new port: until a release
        is rendered with them, HAProxy serves the old ones, and a node whose state did not
        change would never render one (its agent asks for a whole state instead)."""
        marker = self.current / "OWN_FILES"
        return marker.exists() and marker.read_text() == self._own_files()

    def _own_files(self) -> str:
        return hashlib.sha256(repr(self.layout).encode() + self._template_bytes).hexdigest()

    def _structure(self, config: EdgeConfig) -> str:
        """What a hot apply cannot change: servers, templates and where the node listens."""
        digest = hashlib.sha256(repr((config.app_servers, config.control_servers,
                                      config.sso_keys, sorted(config.short_domains),
                                      config.shortlink_servers, self.layout,
                                      config.origin_pools)).encode())
        digest.update(self._template_bytes)
        return digest.hexdigest()

    def _hot_apply(self, changes: list[Change], redirects: journal.Changes, version: str,
                   check: bool = False) -> None:
        hotapply.hot_apply(self.runtime, self.current.resolve(), changes, redirects, version,
                           self.applied_version, self._commit_served, check)
        self.hot_applies += 1
        log.info("edge hot-applied version %s: %d route and %d redirect changes", version,
                 len(changes), len(redirects))

    def _commit_served(self, changes: list[Change], routes: journal.Changes,
                       redirects: journal.Changes, version: str) -> None:
        served = self.existing_routes()
        self._noted(len(routes) + len(redirects))
        for change in changes:
            if change.desired is None:
                served.pop(change.hostname, None)
            else:
                served[change.hostname] = change.desired
        self._applied = version
        self.last_error = None

    def compact(self) -> bool:
        """Fold the journal into the release's files (rewritten whole, atomically), so HAProxy
        reads the served state from them; True if there was anything to fold."""
        release = self.releases.served()
        if release is None or not releases.compact(release, self.existing_routes):
            return False
        self._journaled = 0
        return True

    def _apply_release(self, state: DesiredState, meta: list[str] | None = None) -> None:
        self.compact()  # HAProxy is about to read the files
        timeout = _load_timeout(len(state.routes))
        with self._refusal_noted():
            if state.version != self.applied_version or self._files_ahead \
                    or not self.own_files_served:
                self._swap_in(self._write_release(state, meta), len(state.routes))
            elif self.haproxy.running:
                self.haproxy.reload(timeout)
            else:
                self.haproxy.start(timeout)
        self.last_error = None
        self.reloads += 1
        self.releases.prune()
        log.info("edge now serves version %s (%d routes)", state.version, len(state.routes))

    def _swap_in(self, release: Path, routes: int) -> None:
        """Make ``release`` current and have HAProxy serve it: reloaded, or started if nothing
        runs. A release HAProxy refuses, or a reload that fails (its old workers serve on),
        is discarded: the previous release current again, what HAProxy serves."""
        previous = self.releases.served()
        try:
            if not self.haproxy.running:  # a master a killed agent left: reloaded, not doubled
                self.haproxy.adopt(_load_timeout(routes))
            running = self.haproxy.running
            if running:
                self.haproxy.check(release / "haproxy.cfg")
            self.releases.swap(release)
            self._forget()
            self._unservable = False
            self._journaled = 0
            if running:
                self.haproxy.reload(_load_timeout(routes))
            else:  # starting is the check: a separate `haproxy -c` would parse every
                self._start_checked(release, routes)  # certificate twice before the first
            self._files_ahead = False
        except Exception:
            if self.current.exists() and self.current.resolve() == release:
                self._forget()
            self.releases.discard(release, previous)
            raise

    def _start_checked(self, release: Path, routes: int) -> None:
        try:
            self.haproxy.start(_load_timeout(routes))
        except EdgeError as exc:
            raise ConfigRejected(release / "haproxy.cfg", str(exc)) from exc

    def start(self) -> None:
        """Serve whatever was applied last (after a restart of the node), or adopt the HAProxy
        a previous agent left, reloaded if it reads another release than ``current``."""
        if self.applied_version and not self.haproxy.running:
            self.compact()
            timeout = _load_timeout(releases.routes_in_files(self.current))
            try:
                self.haproxy.start(timeout)
            except EdgeError as exc:
                self._unservable = True
                self.last_error = f"HAProxy did not start from the files: {exc}"
                raise
            if self.haproxy.adopted is not None and not (hotapply.reads_release(
                    self.runtime, self.current.resolve()) and self._serves_files()):
                self._reload_files(None)  # what it serves is not known until then
            elif self._files_ahead:  # started from them: it serves the files now
                self._files_ahead = False
                self._forget()

    def stop(self) -> None:
        self.haproxy.stop()

    def _write_release(self, state: DesiredState, meta: list[str] | None = None) -> Path:
        release = self.releases.folder_for(state.version)
        meta = meta_keys(state.routes) if meta is None else meta
        files = render(state, self.layout, release, self._templates, meta)
        files.update({"VERSION": state.version + "\n",
                      "STRUCTURE": self._structure(state.config),
                      "OWN_FILES": self._own_files(),
                      "META_KEYS": json.dumps(meta)})
        self.releases.write(release, files)
        return release


def _load_timeout(routes: int) -> float:
    return LOAD_BASE_SECONDS + LOAD_SECONDS_PER_CERT * routes
