"""A node's hot path: route, certificate and redirect changes through HAProxy's runtime API.

A hot change costs what changed, not what the node serves: it is checked alone (the plan of
edge/plan.py, the values of edge/render.py), sent to HAProxy in runtime-API batches, and
appended to the release's journal (edge/journal.py), not written into maps of 100,000 lines.
"""
from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any, Callable

from edge import journal, releases
from edge.plan import Change, Plan, make_delta_plan, refuse_mass_delete
from edge.render import EXTRAS_MAPS, cert_file, route_extras_entries, validate, validate_delta
from edge.runtime import Batch, RuntimeAPI, RuntimeCommandFailed
from edge.state import DesiredState, Route, StateDelta

CHUNK = 1000
"""Route changes per runtime-API connection when many stream in (a cold start): the first
are served while the next are sent."""
BATCH = 5000
"""Redirect changes per runtime-API connection."""
Committed = Callable[[list[Change], journal.Changes, journal.Changes, str], None]
"""Told of each chunk once HAProxy has it and it is journaled: its changes, the route and
redirect changes journaled, and the version the journal line names."""


def redirect_changes(existing: dict[str, str], desired: dict[str, str]) -> journal.Changes:
    """``key -> new map value`` (None: removed) from the served redirects to ``desired``."""
    changes: journal.Changes = {
        key: value for key, value in desired.items() if existing.get(key) != value}
    changes.update((key, None) for key in existing if key not in desired)
    return changes


def check_state(plan: Plan, state: DesiredState, links: journal.Changes, served_links: int,
                force: bool, certificates: bool = True) -> None:
    """Refuse (raise) a whole state: too many routes or short links dropped at once, a
    certificate HAProxy could not load (``certificates``), a value unsafe for its files."""
    plan.raise_if_unsafe(force)
    refuse_mass_delete(sum(1 for value in links.values() if value is None), served_links,
                       "short links", force)
    if certificates:
        plan.check_certificates()
    validate(state)


def plan_delta(existing: dict[str, Route], delta: StateDelta, force: bool) -> Plan:
    """The route changes of ``delta``, refused (raises) as a whole state would be."""
    plan = make_delta_plan(existing, delta.routes)
    plan.raise_if_unsafe(force)
    plan.check_certificates()
    validate_delta(delta)  # its removed keys too: they reach the runtime API as they are
    return plan


def hot_apply(runtime: RuntimeAPI, release: Path, changes: list[Change],
              redirects: journal.Changes, version: str, served_version: str | None,
              committed: Committed, check: bool = False) -> None:
    """Certificates and maps through the runtime API, ``CHUNK`` route changes per batch
    (each served as soon as it is sent), each chunk then one journal line. The journal
    comes after HAProxy: a crash before it leaves HAProxy ahead of the files, which a
    restarted agent sees (the map check) and repairs with a reload from the files. Only
    the last chunk names ``version``; the others keep ``served_version``, so a stream cut
    short is taken up again by the next apply. ``check``: each chunk's certificates are
    checked just before it goes (a cold start, whose first slice must not wait for the
    check of 100,000 certificates)."""
    chunks = [changes[n:n + CHUNK] for n in range(0, len(changes), CHUNK)] or [[]]
    # Pipelined: HAProxy takes chunk n while this thread checks and writes chunk n + 1.
    sending: tuple[concurrent.futures.Future[None], tuple[Any, ...]] | None = None
    with concurrent.futures.ThreadPoolExecutor(1, "edge-runtime") as sender:
        try:
            for number, chunk in enumerate(chunks):
                last = number == len(chunks) - 1
                if check:
                    Plan(chunk, 0).check_certificates()
                routes: journal.Changes = {
                    c.hostname: c.desired.publication_id if c.desired is not None else None
                    for c in chunk}
                links = redirects if last else {}
                extras = {c.hostname: c.desired.extras for c in chunk
                          if c.desired is not None and extras_changed(c)}
                releases.write_certs(release, [c.desired for c in chunk
                                               if c.cert_changed and c.desired is not None])
                if sending is not None:
                    current, sending = sending, None
                    _sent(release, committed, *current)
                stamp = version if last else (served_version or version)
                sending = (sender.submit(send_changes, runtime, release, chunk, links),
                           (chunk, routes, links, extras, stamp))
        finally:
            if sending is not None:  # what HAProxy was given is journaled, come what may
                _sent(release, committed, *sending)


def _sent(release: Path, committed: Committed, sent: "concurrent.futures.Future[None]",
          chunk: tuple[Any, ...]) -> None:
    """Once a chunk is in HAProxy, its journal line (also if HAProxy refused part of it:
    the reload that follows serves the files)."""
    changes, routes, links, extras, stamp = chunk
    try:
        sent.result()
    finally:
        journal.append(release, stamp, routes, links, extras)
    committed(changes, routes, links, stamp)


def send_changes(runtime: RuntimeAPI, release: Path, changes: list[Change],
                 redirects: journal.Changes) -> None:
    """Route changes in chunks of ``CHUNK``, then the redirects in batches of ``BATCH``."""
    for start in range(0, len(changes), CHUNK):
        batch = runtime.batch()
        _add_routes(batch, release, changes[start:start + CHUNK])
        batch.send()
    # A changed link leaves the map for an instant and comes back: meanwhile the Python
    # path answers it, which serves every link (HAProxy 2.6 has no add-or-set).
    redirects_map = release / "redirects.map"
    keys = sorted(redirects)
    for start in range(0, len(keys), BATCH):
        batch = runtime.batch()
        for key in keys[start:start + BATCH]:
            batch.del_map(redirects_map, key, missing_ok=True)
        for key in keys[start:start + BATCH]:
            value = redirects[key]
            if value is not None:
                batch.add_map(redirects_map, key, value)
        batch.send()


def _add_routes(batch: Batch, release: Path, chunk: list[Change]) -> None:
    """One chunk's changes, grouped by kind: every new certificate store, then each upload
    and its commit, then the crt-list lines and the maps. A route's extras entries go in
    before its host (a new redirect domain never serves its site for an instant) and leave
    after it; only the changed routes' entries are touched."""
    hosts_map, crt_list, certs = release / "hosts.map", release / "crt-list", release / "certs"
    uploads = [c for c in chunk if c.cert_changed and c.desired is not None]
    for change in uploads:
        if change.existing is None:
            batch.new_cert(certs / cert_file(change.hostname))
    for change in uploads:  # one transaction at a time: each set, then its commit
        assert change.desired is not None
        batch.set_cert(certs / cert_file(change.hostname), change.desired.pem)
        batch.commit_cert(certs / cert_file(change.hostname))
    for change in uploads:
        if change.existing is None:
            batch.add_crt_list_entry(crt_list, certs / cert_file(change.hostname),
                                     change.hostname)
    for change in chunk:
        if change.desired is not None and extras_changed(change):
            _add_extras(batch, release, change.existing, change.desired)
    for change in chunk:
        if change.desired is None:
            batch.del_map(hosts_map, change.hostname)
            batch.delete_cert(crt_list, certs / cert_file(change.hostname))
        elif change.existing is None or \
                change.existing.publication_id != change.desired.publication_id:
            batch.set_map(hosts_map, change.hostname, change.desired.publication_id,
                          exists=change.existing is not None)
    for change in chunk:
        if change.desired is None and extras_changed(change):
            _add_extras(batch, release, change.existing, None)


def _add_extras(batch: Batch, release: Path, old: Route | None, new: Route | None) -> None:
    """One route's extras maps from ``old``'s entries to ``new``'s: an entry in both with a
    new value is set in place (a request never finds it missing), one only in ``old``
    deleted, one only in ``new`` added (HAProxy 2.6 has no add-or-set)."""
    before = route_extras_entries(old) if old is not None else {}
    after = route_extras_entries(new) if new is not None else {}
    for name in EXTRAS_MAPS:
        gone, wanted = before.get(name, {}), after.get(name, {})
        for key in sorted(set(gone) - set(wanted)):
            batch.del_map(release / name, key, missing_ok=True)
        for key, value in sorted(wanted.items()):
            if gone.get(key) != value:
                batch.set_map(release / name, key, value, exists=key in gone)


def extras_changed(change: Change) -> bool:
    return (change.existing.extras if change.existing is not None else "") != \
        (change.desired.extras if change.desired is not None else "")


def serves(runtime: RuntimeAPI, release: Path, routes: dict[str, Route]) -> bool:
    """Whether HAProxy serves the hostnames ``routes`` (what ``release``'s files and journal
    say) names: a runtime change whose journal line a crash lost is served and not in the
    files, or the other way round."""
    existing = {h: r.publication_id for h, r in routes.items()}
    try:
        return (runtime.show_map(release / "hosts.map") == existing
                and runtime.crt_list_names(release / "crt-list") == set(existing))
    except (OSError, RuntimeCommandFailed):
        return False


def reads_release(runtime: RuntimeAPI, release: Path) -> bool:
    """Whether the running HAProxy reads ``release``'s maps (an agent killed between the swap
    of ``current`` and the reload leaves one reading the release before)."""
    try:
        listing = runtime.command("show map")
    except (OSError, RuntimeCommandFailed):
        return False
    return f"({release / 'hosts.map'})" in listing
