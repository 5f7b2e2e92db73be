"""One edge node: route, certificate and redirect changes hot through the runtime API; anything
else as a new release: render, check, swap in, reload.

Releases live in ``<dir>/releases/<n>-<version>/``; ``<dir>/current`` is a symlink swapped
atomically, and HAProxy always runs ``current/haproxy.cfg``. A release HAProxy refuses is
deleted before it ever becomes current, so the node keeps serving the last good one, and a
restart serves exactly what ``current`` points at.

A hot change costs what changed, not what the node serves: it is checked alone, sent to
HAProxy in one runtime-API batch, and appended to the release's journal (edge/journal.py), not
written into maps of 100,000 lines. The journal is folded into the files before HAProxy reads
them again (start, reload), past ``compact_after`` changes, and when the agent is idle.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from edge import journal
from edge.errors import EdgeError
from edge.haproxy import ConfigRejected, HAProxy
from edge.plan import (MAX_DELETE_SHARE, MIN_EXISTING_FOR_SHARE, Change, Plan, UnsafePlan,
                       check_pem, make_plan)
from edge.render import (EXTRAS_MAPS, NodeLayout, cert_file, crt_list_text, extras_texts,
                         hosts_map_text, meta_keys, render, route_extras_entries,
                         route_meta_keys, validate, validate_config, validate_redirect,
                         validate_route)
from edge.runtime import Batch, RuntimeAPI, RuntimeCommandFailed
from edge.state import DesiredState, EdgeConfig, Route, StateDelta
from kit.files import PUBLIC, SECRET, fsync_directory, replace_durably, write_atomic
from kit.x509 import self_signed

log = logging.getLogger(__name__)
KEEP_RELEASES = 3
COLD_SLICE = 500
"""A node starting with more routes serves this many first and adds the rest hot."""
COMPACT_AFTER = 20000
"""Journal changes after which the node folds them into its files."""
CHUNK = 1000
"""Route changes per runtime-API connection when many stream in (a cold start): the first
are served while the next are sent."""
BATCH = 5000
"""Redirect changes per runtime-API connection."""
LOAD_BASE_SECONDS = 30.0
LOAD_SECONDS_PER_CERT = 0.005
"""How long HAProxy may take to start or reload: it parses every certificate of the release
first (1.1-1.5 ms each measured here with OpenSSL 3.0, so about 150 s at 100,000); a fixed
limit would call a large node's start or reload failed while it is still loading."""


class EdgeNode:
    def __init__(self, directory: Path, *, haproxy_bin: str = "haproxy", bind: str = "127.0.0.1",
                 http_port: int = 80, https_port: int = 443, stats_port: int = 0,
                 templates: Path | None = None, cold_slice: int = COLD_SLICE,
                 control_ca: str = "", compact_after: int = COMPACT_AFTER,
                 redirect_capacity: int = 1_000_000) -> None:
        self.directory = directory.absolute()
        self.cold_slice = cold_slice
        self.templates = templates
        (self.directory / "releases").mkdir(parents=True, exist_ok=True)
        sockets = _socket_dir(self.directory)
        self.layout = NodeLayout(bind=bind, http_port=http_port, https_port=https_port,
                                 runtime_socket=sockets / "admin.sock",
                                 default_cert=self.directory / "default.pem",
                                 stats_port=stats_port, control_ca=control_ca,
                                 redirect_capacity=redirect_capacity)
        self.current = self.directory / "current"
        self.haproxy = HAProxy(haproxy_bin, self.current / "haproxy.cfg",
                               sockets / "master.sock", self.directory / "haproxy.log")
        self.runtime = RuntimeAPI(self.layout.runtime_socket)
        self.last_error: str | None = None
        self.hot_applies = 0
        self.reloads = 0
        self._served: dict[str, Route] | None = None
        self._map_checked = False
        self.compact_after = compact_after
        self._applied: str | None = None
        """The version served, once read (VERSION, then the journal's last change)."""
        self._journaled = 0
        """Changes in the current release's journal (not yet folded into its files)."""
        self._structure_served: str | None = None
        self._meta_served: frozenset[str] | None = None
        """The metadata keys the running haproxy.cfg has a header line for (``META_KEYS``)."""
        self.last_change = time.monotonic()
        self._unservable = False
        """The current release's files failed to start: no version counts as served, so the
        next apply writes a new release instead of starting the same files again."""
        _ensure_default_cert(self.layout.default_cert)

    @property
    def applied_version(self) -> str | None:
        if self._unservable:
            return None
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
        if self._served is not None:
            return self._served
        map_file = self.current / "hosts.map"
        publications = {}
        for line in filter(None, map_file.read_text().splitlines() if map_file.exists() else []):
            hostname, _, publication_id = line.partition(" ")
            publications[hostname] = publication_id
        extras = dict(_entries(self.current / "routes.extras"))
        if self.current.exists():
            release = self.current.resolve()
            for hostname, publication in journal.replay(release)[1].items():
                if publication is None:
                    publications.pop(hostname, None)
                else:
                    publications[hostname] = publication
            for hostname, changed in journal.replay_extras(release).items():
                if changed is None:
                    extras.pop(hostname, None)
                else:
                    extras[hostname] = changed
        self._served = {hostname: Route(hostname, publication_id, (
            self.current / "certs" / cert_file(hostname)).read_text(), extras.get(hostname, ""))
            for hostname, publication_id in publications.items()}
        return self._served

    def existing_redirects(self) -> dict[str, str]:
        """``key -> map value`` of the redirects served (files and journal): read in full only
        when a whole state is applied, never for a delta."""
        redirects: dict[str, str] = {}
        map_file = self.current / "redirects.map"
        if map_file.exists():
            with open(map_file, encoding="utf-8") as lines:
                for line in lines:
                    key, _, value = line.rstrip("\n").partition(" ")
                    if key:
                        redirects[key] = value
        if self.current.exists():
            for key, change in journal.replay(self.current.resolve())[2].items():
                if change is None:
                    redirects.pop(key, None)
                else:
                    redirects[key] = change
        return redirects

    def plan(self, state: DesiredState) -> Plan:
        return make_plan(self.existing_routes(), {r.hostname: r for r in state.routes})

    def apply(self, state: DesiredState, force: bool = False) -> bool:
        """Serve ``state``; False if it was already served. Raises (keeping the old state) if refused.

        Route and certificate changes go through the runtime API with no reload; anything
        structural (servers, templates, a node that is not running) takes a checked reload.
        """
        if state.version == self.applied_version and self.haproxy.running:
            return False
        plan = self.plan(state)
        cold = not self.haproxy.running and 0 < self.cold_slice < len(state.routes)
        desired = {r.key: r.value for r in state.redirects}
        existing = self.existing_redirects() if self.current.exists() else {}
        try:
            plan.raise_if_unsafe(force)
            dropped = sum(1 for key in existing if key not in desired)
            if not force and len(existing) >= MIN_EXISTING_FOR_SHARE \
                    and dropped > len(existing) * MAX_DELETE_SHARE:
                raise UnsafePlan(f"plan removes {dropped} of {len(existing)} short links "
                                 f"(more than {MAX_DELETE_SHARE:.0%}); refused unless forced")
            if not cold:
                plan.check_certificates()
            validate(state)
        except Exception as exc:
            self.last_error = str(exc)
            raise
        if cold:
            plan = self._start_with_first_slice(state)
            existing = desired  # its release holds every link: only certificates stream in
        if self._can_hot_apply(state.config) and not self._new_meta_keys(state.routes):
            redirects: dict[str, str | None] = {
                key: value for key, value in desired.items() if existing.get(key) != value}
            redirects.update((key, None) for key in existing if key not in desired)
            try:
                self._hot_apply(plan.changes, redirects, state.version, check=cold)
                self.compact()  # a whole state costs O(N) anyway: leave no journal behind
                return True
            except (RuntimeCommandFailed, OSError) as exc:
                log.warning("hot apply failed, falling back to a reload: %s", exc)
                self._forget()
        self._apply_release(state)
        self._served = {r.hostname: r for r in state.routes}
        self._map_checked = True
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
        existing = self.existing_routes()
        changes = []
        for hostname, route in sorted(delta.routes.items()):
            old = existing.get(hostname)
            if route is None:
                if old is not None:
                    changes.append(Change("delete", hostname, old, None))
            elif old is None:
                changes.append(Change("create", hostname, None, route))
            elif old != route:
                changes.append(Change("update", hostname, old, route))
        plan = Plan(changes, len(existing))
        try:
            plan.raise_if_unsafe(force)
            plan.check_certificates()
            validate_config(delta.config)
            pools = {name for name, _ in delta.config.origin_pools}
            for route in delta.routes.values():
                if route is not None:
                    validate_route(route, pools)
            for redirect in delta.redirects.values():
                if redirect is not None:
                    validate_redirect(redirect)
        except Exception as exc:
            self.last_error = str(exc)
            raise
        redirects = {key: r.value if r is not None else None for key, r in delta.redirects.items()}
        try:
            self._hot_apply(changes, redirects, delta.version)
        except (RuntimeCommandFailed, OSError) as exc:
            log.warning("hot change failed, reloading from the files: %s", exc)
            self._forget()
            self.compact()
            self.haproxy.reload(_load_timeout(self._routes_in_files()))
            self.reloads += 1
        if self._journaled > self.compact_after:
            self.compact()
        return True

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
        marker = self.current / "STRUCTURE"
        if self._structure_served is None and marker.exists():
            self._structure_served = marker.read_text()
        if not (self.haproxy.running and self._structure_served == self._structure(config)):
            return False
        if not self._map_checked:  # once per process: does HAProxy serve what the files say?
            existing = {h: r.publication_id for h, r in self.existing_routes().items()}
            release = self.current.resolve()
            self._map_checked = True
            return (self.runtime.show_map(release / "hosts.map") == existing
                    and self.runtime.crt_list_names(release / "crt-list") == set(existing))
        return True

    def _structure(self, config: EdgeConfig) -> str:
        """What a hot apply cannot change: servers, templates and where the node listens."""
        templates = self.templates or Path(str(resources.files("haproxy_templates")))
        digest = hashlib.sha256(repr((config.app_servers, config.control_servers,
                                      config.sso_keys, sorted(config.short_domains),
                                      config.shortlink_servers, self.layout,
                                      config.origin_pools)).encode())
        for template in sorted(templates.glob("*.j2")):
            digest.update(template.read_bytes())
        return digest.hexdigest()

    def _hot_apply(self, changes: list[Change], redirects: dict[str, str | None],
                   version: str, check: bool = False) -> None:
        """Certificates and maps through the runtime API, ``CHUNK`` route changes per batch
        (each served as soon as it is sent), each chunk then one journal line. The journal
        comes after HAProxy: a crash before it leaves HAProxy ahead of the files, which a
        restarted agent sees (the map check) and repairs with a reload from the files. Only
        the last chunk names ``version``; the others keep the version served, so a stream cut
        short is taken up again by the next apply. ``check``: each chunk's certificates are
        checked just before it goes (a cold start, whose first slice must not wait for the
        check of 100,000 certificates)."""
        release = self.current.resolve()
        chunks = [changes[n:n + CHUNK] for n in range(0, len(changes), CHUNK)] or [[]]
        # Pipelined: HAProxy takes chunk n while this thread checks and writes chunk n + 1.
        sending: tuple[concurrent.futures.Future[None], tuple[Any, ...]] | None = None
        with concurrent.futures.ThreadPoolExecutor(1, "edge-runtime") as sender:
            try:
                for number, chunk in enumerate(chunks):
                    last = number == len(chunks) - 1
                    if check:
                        Plan(chunk, 0).check_certificates()
                    stamp = version if last else (self.applied_version or version)
                    routes: dict[str, str | None] = {
                        c.hostname: c.desired.publication_id if c.desired is not None else None
                        for c in chunk}
                    links = redirects if last else {}
                    extras = {c.hostname: c.desired.extras for c in chunk
                              if c.desired is not None and _extras_changed(c)}
                    self._write_certs(release, [c.desired for c in chunk
                                                if c.cert_changed and c.desired is not None])
                    if sending is not None:
                        current, sending = sending, None
                        self._sent(release, *current)
                    sending = (sender.submit(self._send_changes, release, chunk, links),
                               (chunk, routes, links, extras, stamp))
            finally:
                if sending is not None:  # what HAProxy was given is journaled, come what may
                    self._sent(release, *sending)
        self.hot_applies += 1
        log.info("edge hot-applied version %s: %d route and %d redirect changes", version,
                 len(changes), len(redirects))

    def _sent(self, release: Path, sent: "concurrent.futures.Future[None]",
              chunk: tuple[Any, ...]) -> None:
        """Once a chunk is in HAProxy, its journal line (also if HAProxy refused part of it:
        the reload that follows serves the files)."""
        changes, routes, links, extras, stamp = chunk
        try:
            sent.result()
        finally:
            journal.append(release, stamp, routes, links, extras)
        self._commit_served(changes, routes, links, stamp)

    def _send_changes(self, release: Path, changes: list[Change],
                      redirects: dict[str, str | None]) -> None:
        """Changes in chunks, each one batch grouped by kind (every new certificate store,
        then each upload and its commit, then the crt-list lines and the maps). A route's
        extras entries go in before its host (a new redirect domain never serves its site for
        an instant) and leave after it; only the changed routes' entries are touched."""
        hosts_map, crt_list = release / "hosts.map", release / "crt-list"
        for start in range(0, len(changes), CHUNK):
            batch = self.runtime.batch()
            chunk = changes[start:start + CHUNK]
            uploads = [c for c in chunk if c.cert_changed and c.desired is not None]
            for change in uploads:
                if change.existing is None:
                    batch.new_cert(release / "certs" / cert_file(change.hostname))
            for change in uploads:  # one transaction at a time: each set, then its commit
                assert change.desired is not None
                batch.set_cert(release / "certs" / cert_file(change.hostname),
                               change.desired.pem)
                batch.commit_cert(release / "certs" / cert_file(change.hostname))
            for change in uploads:
                if change.existing is None:
                    batch.add_crt_list_entry(crt_list, release / "certs" /
                                             cert_file(change.hostname), change.hostname)
            for change in chunk:
                if change.desired is not None and _extras_changed(change):
                    self._send_extras(batch, release, change.existing, change.desired)
            for change in chunk:
                if change.desired is None:
                    batch.del_map(hosts_map, change.hostname)
                    batch.delete_cert(crt_list, release / "certs" / cert_file(change.hostname))
                elif change.existing is None or \
                        change.existing.publication_id != change.desired.publication_id:
                    batch.set_map(hosts_map, change.hostname, change.desired.publication_id,
                                  exists=change.existing is not None)
            for change in chunk:
                if change.desired is None and _extras_changed(change):
                    self._send_extras(batch, release, change.existing, None)
            batch.send()
        # A changed link leaves the map for an instant and comes back: meanwhile the Python
        # path answers it, which serves every link (HAProxy 2.6 has no add-or-set).
        redirects_map = release / "redirects.map"
        keys = sorted(redirects)
        for start in range(0, len(keys), BATCH):
            batch = self.runtime.batch()
            for key in keys[start:start + BATCH]:
                batch.del_map(redirects_map, key, missing_ok=True)
            for key in keys[start:start + BATCH]:
                if redirects[key] is not None:
                    batch.add_map(redirects_map, key, str(redirects[key]))
            batch.send()

    @staticmethod
    def _send_extras(batch: Batch, release: Path, old: Route | None, new: Route | None) -> None:
        """One route's extras maps from ``old``'s entries to ``new``'s: each changed entry
        deleted (if there) then added, as redirects (HAProxy 2.6 has no add-or-set)."""
        before = route_extras_entries(old) if old is not None else {}
        after = route_extras_entries(new) if new is not None else {}
        for name in EXTRAS_MAPS:
            gone, wanted = before.get(name, {}), after.get(name, {})
            for key in sorted(set(gone) | set(wanted)):
                if gone.get(key) != wanted.get(key):
                    batch.del_map(release / name, key, missing_ok=True)
            for key, value in sorted(wanted.items()):
                if gone.get(key) != value:
                    batch.add_map(release / name, key, value)

    def _commit_served(self, changes: list[Change], routes: dict[str, str | None],
                       redirects: dict[str, str | None], version: str) -> None:
        served = self.existing_routes()
        self._journaled += len(routes) + len(redirects)
        for change in changes:
            if change.desired is None:
                served.pop(change.hostname, None)
            else:
                served[change.hostname] = change.desired
        self._applied = version
        self.last_error = None
        self.last_change = time.monotonic()

    def _write_certs(self, release: Path, routes: list[Route]) -> None:
        """Each new certificate file, durable before HAProxy serves it (a restart must find
        it). Many at once (a cold start) are written plainly and synced once."""
        if len(routes) <= 50:
            for route in routes:
                write_atomic(release / "certs" / cert_file(route.hostname), route.pem, SECRET,
                             sync_directory=False)
        else:
            for route in routes:
                path = release / "certs" / cert_file(route.hostname)
                tmp = path.with_name(f".{path.name}.tmp")
                descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                     SECRET)
                try:
                    os.write(descriptor, route.pem.encode())
                finally:
                    os.close(descriptor)
                os.replace(tmp, path)
            os.sync()
        if routes:
            fsync_directory(release / "certs")

    def compact(self) -> bool:
        """Fold the journal into the release's files (rewritten whole, atomically), so HAProxy
        reads the served state from them; True if there was anything to fold."""
        if not self.current.exists():
            return False
        release = self.current.resolve()
        version, routes, redirects, count = journal.replay(release)
        if not count or version is None:
            return False
        served = sorted(self.existing_routes().values(), key=lambda r: r.hostname)
        write_atomic(release / "hosts.map", hosts_map_text(served), PUBLIC, sync_directory=False)
        write_atomic(release / "crt-list", crt_list_text(served, release), PUBLIC,
                     sync_directory=False)
        journal.fold_redirects(release / "redirects.map", redirects)
        if journal.replay_extras(release):  # the routes' extras: few, rewritten whole
            for name, content in extras_texts(served).items():
                write_atomic(release / name, content, PUBLIC, sync_directory=False)
        write_atomic(release / "VERSION", version + "\n", PUBLIC, sync_directory=False)
        fsync_directory(release)
        journal.drop(release)
        still = self.existing_routes()
        for hostname, publication in routes.items():
            if publication is None and hostname not in still:  # no file names it any more
                (release / "certs" / cert_file(hostname)).unlink(missing_ok=True)
        self._journaled = 0
        log.info("edge journal folded into the files (%d changes, version %s)", count, version)
        return True

    def compact_if_idle(self, idle: float = 10.0) -> bool:
        """Fold the journal once no change came for ``idle`` seconds (debounced)."""
        if self._journaled and time.monotonic() - self.last_change >= idle:
            return self.compact()
        return False

    def _apply_release(self, state: DesiredState, meta: list[str] | None = None) -> None:
        self.compact()  # HAProxy is about to read the files
        started = False
        if state.version != self.applied_version:
            release = self._write_release(state, meta)
            previous = self.current.resolve() if self.current.exists() else None
            try:
                if self.haproxy.running:
                    self.haproxy.check(release / "haproxy.cfg")
                self._swap(release)
                self._forget()
                self._unservable = False
                self._journaled = 0
                if not self.haproxy.running:
                    # Nothing serves yet: starting is the check (a separate `haproxy -c`
                    # would parse every certificate twice before the first is served).
                    self._start_checked(release, len(state.routes))
                    started = True
            except Exception as exc:
                if self.current.exists() and self.current.resolve() == release:
                    if previous is not None:
                        self._swap(previous)
                    else:
                        self.current.unlink()
                    self._forget()
                shutil.rmtree(release, ignore_errors=True)
                self.last_error = str(exc)
                raise
        if started:
            pass
        elif self.haproxy.running:
            self.haproxy.reload(_load_timeout(len(state.routes)))
        else:
            self.haproxy.start(_load_timeout(len(state.routes)))
        self.last_error = None
        self.reloads += 1
        self._prune()
        log.info("edge now serves version %s (%d routes)", state.version, len(state.routes))

    def _start_checked(self, release: Path, routes: int) -> None:
        try:
            self.haproxy.start(_load_timeout(routes))
        except EdgeError as exc:
            raise ConfigRejected(release / "haproxy.cfg", str(exc)) from exc

    def start(self) -> None:
        """Serve whatever was applied last (after a restart of the node)."""
        if self.applied_version and not self.haproxy.running:
            self.compact()
            try:
                self.haproxy.start(_load_timeout(self._routes_in_files()))
            except EdgeError as exc:
                self._unservable = True
                self.last_error = f"HAProxy did not start from the files: {exc}"
                raise

    def _routes_in_files(self) -> int:
        """Routes of the current release's files (its journal folded first: a line each)."""
        with open(self.current / "hosts.map", "rb") as lines:
            return sum(1 for line in lines if line.strip())

    def stop(self) -> None:
        self.haproxy.stop()

    def _write_release(self, state: DesiredState, meta: list[str] | None = None) -> Path:
        number = len(list((self.directory / "releases").iterdir()))
        stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S%f")
        release = self.directory / "releases" / f"{stamp}-{number}-{state.version}"
        (release / "certs").mkdir(parents=True)
        os.chmod(release / "certs", 0o700)
        meta = meta_keys(state.routes) if meta is None else meta
        files = render(state, self.layout, release, self.templates, meta)
        files.update({"VERSION": state.version + "\n",
                      "STRUCTURE": self._structure(state.config),
                      "META_KEYS": json.dumps(meta)})
        for name, content in files.items():
            path = release / name
            path.parent.mkdir(exist_ok=True)
            # Written plainly into the new folder (nobody reads it before the swap), synced
            # all at once below: one fsync per certificate took 6 ms each here.
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 SECRET if name.startswith("certs/") else PUBLIC)
            try:
                os.write(descriptor, content.encode())
            finally:
                os.close(descriptor)
        os.sync()  # every file's data, before the swap makes the release current
        for directory in {(release / name).parent for name in files} | {release.parent}:
            fsync_directory(directory)
        return release

    def _swap(self, release: Path) -> None:
        link = self.directory / "current.new"
        link.unlink(missing_ok=True)
        link.symlink_to(release.relative_to(self.directory))
        replace_durably(link, self.current)

    def _prune(self) -> None:
        keep = {self.current.resolve()}
        releases = sorted((self.directory / "releases").iterdir())
        for old in releases[:-KEEP_RELEASES]:
            if old.resolve() not in keep:
                shutil.rmtree(old, ignore_errors=True)


def _load_timeout(routes: int) -> float:
    return LOAD_BASE_SECONDS + LOAD_SECONDS_PER_CERT * routes


def _extras_changed(change: Change) -> bool:
    return (change.existing.extras if change.existing is not None else "") != \
        (change.desired.extras if change.desired is not None else "")


def _entries(path: Path) -> list[tuple[str, str]]:
    """The ``key value`` lines of a map-like file (none if it does not exist)."""
    if not path.exists():
        return []
    return [(key, value) for key, _, value in
            (line.partition(" ") for line in path.read_text().splitlines() if line)]


def _ensure_default_cert(path: Path) -> None:
    """A self-signed certificate HAProxy serves for unknown SNI (it needs one to bind TLS)."""
    if not path.exists():
        write_atomic(path, self_signed("edge-default.invalid", days=3650)[1], SECRET)


SOCKET_PATH_MAX = 96
"""HAProxy refuses a UNIX socket path longer than 97 bytes (sun_path)."""


def _socket_dir(directory: Path) -> Path:
    """Where the node's UNIX sockets live: its own directory, or, when that path is too long
    for a socket, a short private directory named after it (``/tmp/edge-<hash>``, mode 0700,
    refused if another user made it)."""
    if len(str(directory / "master.sock")) <= SOCKET_PATH_MAX:
        return directory
    name = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"edge-{name}"
    short.mkdir(mode=0o700, exist_ok=True)
    info = short.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise EdgeError(f"{short} is not a private directory of this user; remove it")
    return short
