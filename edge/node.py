"""One edge node: route and certificate changes hot through the runtime API; anything else as a
new release: render, check, swap in, reload.

Releases live in ``<dir>/releases/<n>-<version>/``; ``<dir>/current`` is a symlink swapped
atomically, and HAProxy always runs ``current/haproxy.cfg``. A release HAProxy refuses is
deleted before it ever becomes current, so the node keeps serving the last good one, and a
restart serves exactly what ``current`` points at.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from importlib import resources
from pathlib import Path

from edge.errors import EdgeError
from edge.haproxy import HAProxy
from edge.plan import Plan, make_plan
from edge.render import (NodeLayout, cert_file, extras_maps, meta_keys, render, render_lists,
                         validate)
from edge.runtime import RuntimeAPI, RuntimeCommandFailed
from edge.state import DesiredState, Route
from kit.files import PUBLIC, SECRET, fsync_directory, replace_durably, write_atomic
from kit.x509 import self_signed

log = logging.getLogger(__name__)
KEEP_RELEASES = 3
COLD_SLICE = 500
"""A node starting with more routes serves this many first and adds the rest hot."""


class EdgeNode:
    def __init__(self, directory: Path, *, haproxy_bin: str = "haproxy", bind: str = "127.0.0.1",
                 http_port: int = 80, https_port: int = 443, stats_port: int = 0,
                 templates: Path | None = None, cold_slice: int = COLD_SLICE,
                 control_ca: str = "") -> None:
        self.directory = directory.absolute()
        self.cold_slice = cold_slice
        self.templates = templates
        (self.directory / "releases").mkdir(parents=True, exist_ok=True)
        sockets = _socket_dir(self.directory)
        self.layout = NodeLayout(bind=bind, http_port=http_port, https_port=https_port,
                                 runtime_socket=sockets / "admin.sock",
                                 default_cert=self.directory / "default.pem",
                                 stats_port=stats_port, control_ca=control_ca)
        self.current = self.directory / "current"
        self.haproxy = HAProxy(haproxy_bin, self.current / "haproxy.cfg",
                               sockets / "master.sock", self.directory / "haproxy.log")
        self.runtime = RuntimeAPI(self.layout.runtime_socket)
        self.last_error: str | None = None
        self.hot_applies = 0
        self.reloads = 0
        self._served: dict[str, Route] | None = None
        self._map_checked = False
        _ensure_default_cert(self.layout.default_cert)

    @property
    def applied_version(self) -> str | None:
        marker = self.current / "VERSION"
        return marker.read_text().strip() if marker.exists() else None

    def existing_routes(self) -> dict[str, Route]:
        """Routes the current release serves: read from its files once, then kept in memory."""
        if self._served is not None:
            return self._served
        map_file = self.current / "hosts.map"
        extras = dict(_entries(self.current / "routes.extras"))
        routes = {}
        for line in filter(None, map_file.read_text().splitlines() if map_file.exists() else []):
            hostname, _, publication_id = line.partition(" ")
            pem = (self.current / "certs" / cert_file(hostname)).read_text()
            routes[hostname] = Route(hostname, publication_id, pem, extras.get(hostname, ""))
        self._served = routes
        return routes

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
        try:
            plan.raise_if_unsafe(force)
            plan.check_certificates()
            validate(state)
        except Exception as exc:
            self.last_error = str(exc)
            raise
        self._served = None  # whatever happens next, re-read what is served
        if not self.haproxy.running and 0 < self.cold_slice < len(state.routes):
            plan = self._start_with_first_slice(state)
        if self._can_hot_apply(state):
            try:
                self._hot_apply(plan, state)
                self.last_error = None
                self.hot_applies += 1
                self._served = {r.hostname: r for r in state.routes}
                return True
            except (RuntimeCommandFailed, OSError) as exc:
                log.warning("hot apply failed, falling back to a reload: %s", exc)
        self._apply_release(state)
        self._served = {r.hostname: r for r in state.routes}
        self._map_checked = True
        return True

    def _start_with_first_slice(self, state: DesiredState) -> Plan:
        """Cold start: HAProxy's load time grows faster than linearly with certificates, so
        start with a slice (served within about a second) and stream the rest in hot."""
        head = sorted(state.routes, key=lambda r: r.hostname)[:self.cold_slice]
        self._apply_release(dataclasses.replace(state, routes=tuple(head), known_version=None))
        self._served = {r.hostname: r for r in head}
        self._map_checked = True
        return self.plan(state)

    def _can_hot_apply(self, state: DesiredState) -> bool:
        marker = self.current / "STRUCTURE"
        if not (self.haproxy.running and marker.exists()
                and marker.read_text() == self._structure(state)):
            return False
        if not self._map_checked:  # once per process: does HAProxy serve what the files say?
            existing = {h: r.publication_id for h, r in self.existing_routes().items()}
            release = self.current.resolve()
            self._map_checked = True
            return (self.runtime.show_map(release / "hosts.map") == existing
                    and self.runtime.crt_list_names(release / "crt-list") == set(existing))
        return True

    def _structure(self, state: DesiredState) -> str:
        """What a hot apply cannot change: servers, templates and where the node listens."""
        templates = self.templates or Path(str(resources.files("haproxy_templates")))
        digest = hashlib.sha256(repr((state.app_servers, state.control_servers,
                                      state.sso_keys, sorted(state.short_domains),
                                      state.shortlink_servers, self.layout,
                                      # a header line per metadata key; values are hot
                                      state.origin_pools, meta_keys(state))).encode())
        for template in sorted(templates.glob("*.j2")):
            digest.update(template.read_bytes())
        return digest.hexdigest()

    def _hot_apply(self, plan: Plan, state: DesiredState) -> None:
        release = self.current.resolve()
        files = render_lists(state, release)
        hosts_map, crt_list = release / "hosts.map", release / "crt-list"
        removed = []
        for change in plan.changes:
            cert_path = release / "certs" / cert_file(change.hostname)
            if change.desired is None:
                self.runtime.del_map(hosts_map, change.hostname)
                self.runtime.delete_cert(crt_list, cert_path)
                removed.append(cert_path)
                continue
            if change.cert_changed:
                write_atomic(cert_path, change.desired.pem, SECRET)
                self.runtime.upload_cert(cert_path, change.desired.pem, new=change.existing is None)
                if change.existing is None:
                    self.runtime.add_crt_list_entry(crt_list, cert_path, change.hostname)
            if change.existing is None or \
                    change.existing.publication_id != change.desired.publication_id:
                self.runtime.set_map(hosts_map, change.hostname, change.desired.publication_id,
                                     exists=change.existing is not None)
        self._hot_redirects(release / "redirects.map", state)
        for name, entries in extras_maps(state).items():
            self._hot_map(release / name, entries)
        for name, content in files.items():
            write_atomic(release / name, content, PUBLIC)
        write_atomic(release / "VERSION", state.version + "\n", PUBLIC)
        for cert_path in removed:  # only once no file names them any more
            cert_path.unlink(missing_ok=True)
        log.info("edge hot-applied version %s: %s", state.version, "; ".join(plan.describe()))

    def _hot_redirects(self, redirects_map: Path, state: DesiredState) -> None:
        """Hot short links: the map entries HAProxy answers from, changed in place."""
        self._hot_map(redirects_map, {r.key: r.value for r in state.redirects})

    def _hot_map(self, map_file: Path, desired: dict[str, str]) -> None:
        """Make the map HAProxy holds for ``map_file`` (as the file says) ``desired``."""
        existing = dict(_entries(map_file))
        for key in sorted(set(existing) - set(desired)):
            self.runtime.del_map(map_file, key)
        for key, value in sorted(desired.items()):
            if existing.get(key) != value:
                self.runtime.set_map(map_file, key, value, exists=key in existing)

    def _apply_release(self, state: DesiredState) -> None:
        if state.version != self.applied_version:
            release = self._write_release(state)
            try:
                self.haproxy.check(release / "haproxy.cfg")
            except Exception as exc:
                shutil.rmtree(release, ignore_errors=True)
                self.last_error = str(exc)
                raise
            self._swap(release)
        if self.haproxy.running:
            self.haproxy.reload()
        else:
            self.haproxy.start()
        self.last_error = None
        self.reloads += 1
        self._prune()
        log.info("edge now serves version %s (%d routes)", state.version, len(state.routes))

    def start(self) -> None:
        """Serve whatever was applied last (after a restart of the node)."""
        if self.applied_version and not self.haproxy.running:
            self.haproxy.start()

    def stop(self) -> None:
        self.haproxy.stop()

    def _write_release(self, state: DesiredState) -> Path:
        number = len(list((self.directory / "releases").iterdir()))
        stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S%f")
        release = self.directory / "releases" / f"{stamp}-{number}-{state.version}"
        (release / "certs").mkdir(parents=True)
        os.chmod(release / "certs", 0o700)
        files = render(state, self.layout, release, self.templates)
        files.update({"VERSION": state.version + "\n", "STRUCTURE": self._structure(state)})
        for name, content in files.items():
            path = release / name
            path.parent.mkdir(exist_ok=True)
            # Each file is synced, its directory once below: the swap is what makes it current.
            write_atomic(path, content, SECRET if name.startswith("certs/") else PUBLIC,
                         sync_directory=False)
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
