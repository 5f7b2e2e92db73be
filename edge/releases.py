"""A node's releases on disk: the files HAProxy reads, one folder per release.

Releases live in ``<dir>/releases/<stamp>-<n>-<version>/``; ``<dir>/current`` is a symlink swapped
atomically, and HAProxy always runs ``current/haproxy.cfg``. A release's files plus its journal
(edge/journal.py), replayed in order, are the state it serves; :func:`compact` folds the journal
into the files before HAProxy reads them again.
"""
from __future__ import annotations

import datetime
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from edge import journal
from edge.render import cert_file, crt_list_text, extras_texts, hosts_map_text
from edge.state import Route
from kit.files import PUBLIC, SECRET, fsync_directory, replace_durably, write_atomic
from kit.x509 import self_signed

log = logging.getLogger(__name__)
KEEP_RELEASES = 3
FEW_CERTS = 50
"""Up to this many new certificates are each made durable on their own; more (a cold start)
are written plainly and synced at once."""


class Releases:
    """The release folders of one node and the ``current`` link to the one served."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.current = directory / "current"
        (directory / "releases").mkdir(parents=True, exist_ok=True)

    def served(self) -> Path | None:
        """The folder ``current`` points at, if any."""
        return self.current.resolve() if self.current.exists() else None

    def folder_for(self, version: str) -> Path:
        """Where a new release of ``version`` goes (not created yet)."""
        number = len(list((self.directory / "releases").iterdir()))
        stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S%f")
        return self.directory / "releases" / f"{stamp}-{number}-{version}"

    def write(self, release: Path, files: dict[str, str]) -> None:
        """``files`` (name relative to ``release`` -> content) into the new folder ``release``,
        durable when this returns. Written plainly (nobody reads the folder before the swap)
        and synced all at once: one fsync per certificate took 6 ms each here. A write that
        fails (a full disk) leaves no folder behind."""
        (release / "certs").mkdir(parents=True)
        try:
            os.chmod(release / "certs", 0o700)
            for name, content in files.items():
                path = release / name
                path.parent.mkdir(exist_ok=True)
                write_atomic(path, content, SECRET if name.startswith("certs/") else PUBLIC,
                             sync_directory=False, sync_file=False)
            os.sync()  # every file's data, before the swap makes the release current
            for directory in {(release / name).parent for name in files} | {release.parent}:
                fsync_directory(directory)
        except BaseException:
            shutil.rmtree(release, ignore_errors=True)
            raise

    def swap(self, release: Path) -> None:
        """Make ``release`` current, atomically and durably."""
        link = self.directory / "current.new"
        link.unlink(missing_ok=True)
        link.symlink_to(release.relative_to(self.directory))
        replace_durably(link, self.current)

    def discard(self, release: Path, previous: Path | None) -> None:
        """A release HAProxy refused: ``current`` back to ``previous`` (if it moved), the
        folder deleted."""
        if self.current.exists() and self.current.resolve() == release:
            if previous is not None:
                self.swap(previous)
            else:
                self.current.unlink()
        shutil.rmtree(release, ignore_errors=True)

    def prune(self) -> None:
        """All but the last ``KEEP_RELEASES`` releases, never the current one."""
        keep = {self.current.resolve()}
        releases = sorted((self.directory / "releases").iterdir())
        for old in releases[:-KEEP_RELEASES]:
            if old.resolve() not in keep:
                shutil.rmtree(old, ignore_errors=True)


def read_routes(release: Path | None) -> dict[str, Route]:
    """The routes ``release`` serves: its files, then its journal replayed."""
    if release is None:
        return {}
    publications = dict(_entries(release / "hosts.map"))
    extras = dict(_entries(release / "routes.extras"))
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
    return {hostname: Route(hostname, publication_id,
                            (release / "certs" / cert_file(hostname)).read_text(),
                            extras.get(hostname, ""))
            for hostname, publication_id in publications.items()}


def read_redirects(release: Path | None) -> dict[str, str]:
    """``key -> map value`` of the redirects ``release`` serves (files and journal)."""
    redirects: dict[str, str] = {}
    if release is None:
        return redirects
    map_file = release / "redirects.map"
    if map_file.exists():
        with open(map_file, encoding="utf-8") as lines:
            for line in lines:
                key, _, value = line.rstrip("\n").partition(" ")
                if key:
                    redirects[key] = value
    for key, change in journal.replay(release)[2].items():
        if change is None:
            redirects.pop(key, None)
        else:
            redirects[key] = change
    return redirects


def routes_in_files(release: Path) -> int:
    """Routes of a release's files (its journal folded first: a line each)."""
    with open(release / "hosts.map", "rb") as lines:
        return sum(1 for line in lines if line.strip())


def write_certs(release: Path, routes: list[Route]) -> None:
    """Each new certificate file, durable before HAProxy serves it (a restart must find it).
    Many at once (a cold start) are written plainly and synced once."""
    few = len(routes) <= FEW_CERTS
    for route in routes:
        write_atomic(release / "certs" / cert_file(route.hostname), route.pem, SECRET,
                     sync_directory=False, sync_file=few)
    if not few:
        os.sync()
    if routes:
        fsync_directory(release / "certs")


def compact(release: Path, served: Callable[[], dict[str, Route]]) -> int:
    """Fold the journal into the release's files (rewritten whole, atomically), so HAProxy
    reads the served state from them; ``served``: the routes it serves (files and journal).
    How many changes were folded (0: nothing to fold)."""
    version, routes, redirects, count = journal.replay(release)
    if not count or version is None:
        if (release / journal.NAME).exists():  # only a torn line: no change it holds
            journal.drop(release)
        return 0
    ordered = sorted(served().values(), key=lambda r: r.hostname)
    write_atomic(release / "hosts.map", hosts_map_text(ordered), PUBLIC, sync_directory=False)
    write_atomic(release / "crt-list", crt_list_text(ordered, release), PUBLIC,
                 sync_directory=False)
    journal.fold_redirects(release / "redirects.map", redirects)
    if journal.replay_extras(release):  # the routes' extras: few, rewritten whole
        for name, content in extras_texts(ordered).items():
            write_atomic(release / name, content, PUBLIC, sync_directory=False)
    write_atomic(release / "VERSION", version + "\n", PUBLIC, sync_directory=False)
    fsync_directory(release)
    journal.drop(release)
    still = served()
    for hostname, publication in routes.items():
        if publication is None and hostname not in still:  # no file names it any more
            (release / "certs" / cert_file(hostname)).unlink(missing_ok=True)
    log.info("edge journal folded into the files (%d changes, version %s)", count, version)
    return count


def ensure_default_cert(path: Path) -> None:
    """A self-signed certificate HAProxy serves for unknown SNI (it needs one to bind TLS)."""
    if not path.exists():
        write_atomic(path, self_signed("edge-default.invalid", days=3650)[1], SECRET)


def _entries(path: Path) -> list[tuple[str, str]]:
    """The ``key value`` lines of a map-like file (none if it does not exist)."""
    if not path.exists():
        return []
    return [(key, value) for key, _, value in
            (line.partition(" ") for line in path.read_text().splitlines() if line)]
