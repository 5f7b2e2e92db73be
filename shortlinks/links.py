"""Short links: one item per (short domain, slug), created without ever overwriting one."""
from __future__ import annotations

import re
import secrets
import string
import time
from typing import Any, Callable, Iterable, Iterator

from shortlinks.changes import LINK_CHANGES, open_counter, record_change
from shortlinks.errors import (InvalidLink, LinkBusy, LinkNotFound,  # the part's errors,
                               NotYours, ShortlinkError, SlugTaken)  # all caught from here too
from shortlinks.stats import VisitStats
from shortlinks.targets import RULES, ascii_target, check_rules
from shortlinks.totals import LinkTotals
from store import (ABSENT, BATCH_GET, VERSION, Backend, ConflictError, Item, Page, RangeIndex,
                   Table, TableSpec, all_items, every)

LINKS = TableSpec("short_links", key="id", indexes=("owner",),
                  ranges=(RangeIndex("domain", key="domain", sort="created_at", keys_only=True),),
                  optional=("domain",))
"""``domain``: a short domain's links (keys only: a visit's counter or a link's edit does not
write it), what removing a short domain reads instead of every link."""
BY_DOMAIN = "links_by_domain"
"""The ``short_link_changes`` item :func:`index_links` writes once every link is in the
``domain`` index (links the release before wrote are not, its writes do not set the index's
attributes): until then a domain's links are found by reading every link."""
ALPHABET = string.ascii_letters + string.digits
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED = {"api", "admin", "healthz", "metrics", "static", "robots.txt", "favicon.ico",
            "_edge", ".well-known", "login", "logout"}
CODES = (301, 302, 307, 308)
MAX_VISITS = 10**12
"""The highest visit limit: each visit's conditional ADD compares the count with it."""
DomainOwner = Callable[[str], "tuple[str, bool] | None"]
"""A connected domain's (publication id, verified), or None when nobody has connected it: the
domains part answers (wired in ``control/``)."""
LinkChanged = Callable[[str, str], None]


def link_id(domain: str, slug: str) -> str:
    return f"{domain.lower()}/{slug}"


def short_url(link: Item) -> str:
    """The address visitors use: https on the link's short domain (its QR code says the same)."""
    return f"https://{link['domain']}/{link['slug']}"


class LinkService:
    def __init__(self, table: Table, short_domains: Iterable[str], slug_length: int = 7,
                 default_code: int = 302, changes: Table | None = None,
                 domain_owner: DomainOwner | None = None,
                 stats: VisitStats | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self._clock = clock
        self.stats = stats
        self.changes = changes
        self._domain_owner = domain_owner
        self._listeners: list[LinkChanged] = []
        if changes is not None:
            open_counter(changes)
        self._domains = {d.lower() for d in short_domains}
        self._slug_length = slug_length
        self._default_code = default_code
        self.totals = LinkTotals(changes) if changes is not None else None
        """Totals and the top links kept on each change (:mod:`shortlinks.totals`)."""
        if self.totals is not None:
            self.totals.open(self.each)

    def validate_target(self, target: Any) -> str:
        """The target as the ASCII URI it is stored and served as (see :func:`ascii_target`);
        a target on one of our short domains, however it is spelt, is a loop and refused."""
        url, host = ascii_target(target)
        if host.rstrip(".") in self._domains:
            raise InvalidLink("target", "a short link cannot point at a short domain (a loop)")
        return url

    def _validate(self, domain: Any, slug: Any, code: Any) -> tuple[str, int]:
        if not isinstance(domain, str) or domain.lower() not in self._domains:
            raise InvalidLink("domain", "not one of our short domains")
        if slug is not None and (not isinstance(slug, str) or not SLUG.fullmatch(slug)):
            raise InvalidLink("slug", "1-64 letters, digits, '-' or '_', starting with a "
                                      "letter or digit")
        if isinstance(slug, str) and slug.lower() in RESERVED:
            raise InvalidLink("slug", f"{slug!r} is reserved")
        code = self._default_code if code is None else code
        if code not in CODES or isinstance(code, bool):
            raise InvalidLink("code", "one of 301, 302, 307, 308")
        return domain.lower(), code

    def subscribe(self, listener: LinkChanged) -> None:
        """Call ``listener(domain, slug)`` after a link is made, updated or deleted (caches and
        the edge's map follow at once; the change counter tells other processes)."""
        self._listeners.append(listener)

    def check_publication_domain(self, domain: Any, publication_id: str) -> None:
        """A publication's token creates links only on short domains connected and verified
        for it. A domain nobody has connected is not free for the taking: its links would stay
        when its owner connects it. Links on shared short domains are the platform's to make."""
        owner = self._holder(domain) if isinstance(domain, str) else None
        if owner is None:
            raise NotYours(f"{domain} is not connected for this publication; connect it first, "
                           "or ask the platform to make links on shared short domains")
        if owner[0] != publication_id:
            raise NotYours(f"{domain} belongs to another publication")
        if not owner[1]:
            raise NotYours(f"{domain} is not verified yet: links can be made once its DNS "
                           "records prove it is yours")

    def _holder(self, domain: str) -> tuple[str, bool] | None:
        """(publication, verified) of whoever has connected ``domain`` now, if anyone."""
        return self._domain_owner(domain) if self._domain_owner else None

    def create(self, domain: Any, target: Any, owner: str, slug: Any = None, code: Any = None,
               valid_until: Any = None, max_visits: Any = None,
               rules: dict[str, Any] | None = None) -> Item:
        """``rules``: ``expired_url``, ``device_targets`` (``{"ios"|"android"|"desktop":
        url}``) and ``utm`` (``{"utm_source": ..., ...}``), each optional."""
        domain, code = self._validate(domain, slug, code)
        target = self.validate_target(target)
        _check_limits({"valid_until": valid_until, "max_visits": max_visits})
        checked = check_rules({name: value for name, value in (rules or {}).items()
                               if value is not None}, target, self.validate_target)
        now = self._clock()
        for _ in range(10 if slug is None else 1):
            chosen = slug or "".join(secrets.choice(ALPHABET) for _ in range(self._slug_length))
            item = {"id": link_id(domain, chosen), "domain": domain, "slug": chosen,
                    "target": target, "owner": owner, "code": code, "disabled": False,
                    "valid_until": valid_until, "max_visits": max_visits,
                    "created_at": now, "updated_at": now, **checked}
            try:
                made = self.table.put(item, expected_version=ABSENT)
                self._changed(made["id"])
                if self.totals is not None:
                    self.totals.add(links=1)
                self._notify(domain, chosen)  # last: the redirect app answers one not in the map
                return made
            except ConflictError:
                if slug is not None:  # perhaps a repeat whose first did not say it was made
                    self._changed(item["id"])
                    raise SlugTaken(f"{domain}/{slug} is already taken") from None
        raise SlugTaken("no free random slug after 10 tries; use a longer slug length")

    def get(self, domain: str, slug: str) -> Item:
        item = self.table.get(link_id(domain, slug))
        if item is None:
            raise LinkNotFound(f"{domain}/{slug} does not exist")
        return item

    def list_for(self, owner: str, limit: int = 100, cursor: str | None = None) -> Page:
        return self.table.query("owner", owner, limit=limit, cursor=cursor)

    def update(self, domain: str, slug: str, changes: dict[str, Any]) -> Item:
        link = self.get(domain, slug)
        if link.get("released") and self._domain_owner \
                and self._holder(link["domain"]) != (link["owner"], True):
            raise NotYours(f"{domain}/{slug} was disabled when its short domain was removed or "
                           "changed hands: it can only be deleted (or changed again once its "
                           "owner holds the domain)")
        allowed = {"target", "code", "valid_until", "max_visits", "disabled", *RULES}
        if set(changes) - allowed:
            raise InvalidLink(sorted(set(changes) - allowed)[0], "cannot be changed")
        changes = dict(changes)
        if "target" in changes:
            changes["target"] = self.validate_target(changes["target"])
        if "code" in changes:
            if changes["code"] is None:  # stored, the resolver's int(None) failed every visit
                raise InvalidLink("code", "one of 301, 302, 307, 308")
            self._validate(domain, None, changes["code"])
        if "disabled" in changes and not isinstance(changes["disabled"], bool):
            raise InvalidLink("disabled", "must be true or false")
        _check_limits(changes)
        rules = {name: changes[name] if name in changes else link.get(name) for name in RULES}
        checked = check_rules({k: v for k, v in rules.items() if v is not None},
                              str(changes.get("target", link["target"])), self.validate_target)
        changes.update({name: checked.get(name) for name in RULES if name in changes})
        kept = {key: value for key, value in link.items() if key != "released"}  # held again
        updated = self.table.put({**kept, **changes, "updated_at": self._clock()},
                                 expected_version=link["version"])
        try:
            self._changed(updated["id"])
            if self.totals is not None \
                    and bool(updated.get("disabled")) != bool(link.get("disabled")):
                self.totals.add(disabled=1 if updated.get("disabled") else -1)
        finally:  # a link disabled must leave the map whatever the counters do
            self._notify(updated["domain"], updated["slug"])
        return updated

    def _notify(self, domain: str, slug: str) -> None:
        for listener in self._listeners:
            listener(domain, slug)

    def _changed(self, key: str | list[str]) -> None:
        """Tell other processes the link (or the links) changed (:func:`record_change`)."""
        if self.changes is not None:
            record_change(self.changes, key)

    def each(self) -> Iterator[Item]:
        """Every link, page by page (a full read: for a reconciliation, never on a timer)."""
        return every(lambda cursor: self.table.scan(limit=500, cursor=cursor))

    def add_visits(self, counts: dict[str, int]) -> int:
        """Visits counted elsewhere (HAProxy, for the links its map serves), ``domain/slug ->
        n``, added to existing links as atomic ADDs; unknown links are skipped. Returns how
        many were added."""
        added = 0
        now: dict[str, int] = {}
        for key, count in counts.items():
            # In one step with the existence check: a link deleted meanwhile gets no orphan
            # counter (on DynamoDB an ADD would create a bare item that never expires).
            total = self.table.increment(key, "visits", count, existing_only=True) \
                if count > 0 else None
            if total is not None:
                added += count
                now[key] = total
                if self.stats is not None:  # today's count (a failure loses only these); a
                    self.stats.add(key, {"visits": count},  # day item is made for a link only
                                   still=lambda: self.table.get(key) is not None)
        if self.totals is not None and added:
            self.totals.add(visits=added)
            self.totals.visited(now)
        return added

    def visit_stats(self, domain: str, slug: str, days: int) -> dict[str, Any]:
        """The link's last ``days`` days (see :meth:`VisitStats.read`): one query."""
        if self.stats is None:
            raise LinkNotFound("visit statistics are not kept here")
        return self.stats.read(link_id(domain, slug), days)

    def summary(self, top: int) -> dict[str, Any]:
        """Totals and the ``top`` most-visited links: the kept totals (two reads and one per
        top link), else a full read (no change table: cache the answer)."""
        if self.totals is not None:
            found = [self.table.get(key) for key, _ in self.totals.top()[:top]]
            return {**self.totals.totals(), "top": [link for link in found if link]}
        links = all_items(self.table)
        links.sort(key=lambda link: int(link.get("visits") or 0), reverse=True)
        return {"links": len(links), "disabled": sum(1 for x in links if x.get("disabled")),
                "visits": sum(int(x.get("visits") or 0) for x in links), "top": links[:top]}

    def browse(self, limit: int = 50, cursor: str | None = None) -> Page:
        """One page of every link (a paginated scan), for the dashboard's list."""
        return self.table.scan(limit=limit, cursor=cursor)

    @property
    def short_domains(self) -> list[str]:
        return sorted(self._domains)

    def is_short_domain(self, domain: str) -> bool:
        return domain.lower() in self._domains

    def links_on(self, domain: str) -> Iterator[Item]:
        """Every link on ``domain``: a query of the ``domain`` index and a batch read per
        ``BATCH_GET`` links once every link is in it (see ``BY_DOMAIN``), so the cost follows
        that domain's links; before, or on a store that lacks the index, every link is read."""
        if "domain" in self.table.lacking or self.changes is None \
                or self.changes.get(BY_DOMAIN) is None:
            return (link for link in list(self.each()) if link.get("domain") == domain)
        return self._indexed(domain)

    def _indexed(self, domain: str) -> Iterator[Item]:
        for keys in _pages(self.table, domain):
            found = self.table.get_many(keys)
            yield from (found[key] for key in keys
                        if key in found and found[key].get("domain") == domain)

    def disable_domain(self, domain: str) -> int:
        """Disable every link on ``domain``, marked ``released`` (its owner removed it, or lost
        it: the next owner must not serve them, and their owner cannot enable them again while
        it does not hold the domain). Returns how many were disabled. Each link leaves the map
        as it is released, or as a repeat (the outbox's, after a failure) finds it released."""
        disabled = 0
        found = list(self.links_on(domain))
        try:
            for link in found:
                disabled += self._release(link)
                self._notify(str(link["domain"]), str(link["slug"]))
        finally:  # what was disabled is counted whatever failed; a repeat moves the counter
            if disabled and self.totals is not None:
                self.totals.add(disabled=disabled)
            if found:
                self._changed([str(link["id"]) for link in found])
        return disabled

    def _release(self, link: Item | None, attempts: int = 10) -> int:
        """``link`` disabled and marked released, read again after each edit that won the race
        (a takeover's drain comes once: its owner's edits must not keep a link out of it).
        1 if it was enabled before. The caller tells the map."""
        for _ in range(attempts):
            if link is None or link.get("disabled") and link.get("released"):
                return 0
            try:
                self.table.put({**link, "disabled": True, "released": True,
                                "updated_at": self._clock()}, expected_version=link["version"])
            except ConflictError:
                link = self.table.get(str(link["id"]))
                continue
            return 0 if link.get("disabled") else 1
        raise LinkBusy(f"{link['id'] if link else '?'} kept changing while its domain left")

    def delete(self, domain: str, slug: str) -> None:
        """Delete the link (the totals lose it once), then :meth:`gone`, even if that fails."""
        link = self._delete(link_id(domain, slug))
        try:
            if link is not None and self.totals is not None:  # a repeat finds none to take
                self.totals.add(links=-1, disabled=-1 if link.get("disabled") else 0,
                                visits=-int(link.get("visits") or 0))
        finally:
            self.gone(domain, slug)
        if link is None:
            raise LinkNotFound(f"{domain}/{slug} does not exist")

    def gone(self, domain: str, slug: str) -> None:
        """What follows a delete, each step harmless to repeat, so a delete asked again (its
        first may have failed midway) finishes it: the edge's map and the change counter are
        told the link is gone (each whatever the other does); its top entry and days go."""
        key = link_id(domain, slug)
        try:
            self._notify(domain.lower(), slug)
        finally:
            self._changed(key)
        if self.totals is not None:
            self.totals.forget(key)
        if self.stats is not None:
            self.stats.forget(key)

    def _delete(self, key: str, attempts: int = 5) -> Item | None:
        """Delete the link as read (conditional on its version), so the totals lose what was
        deleted, not a copy an edit or a delete and re-make replaced meanwhile: the deleted
        item, or None if there was none. Raises LinkBusy if edits won every attempt."""
        for attempt in range(attempts):
            link = self.table.get(key)
            if link is None:
                return None
            try:
                return link if self.table.delete(key, expected_version=link[VERSION]) else None
            except ConflictError:
                if attempt == attempts - 1:
                    raise LinkBusy(f"{key} changed while it was being deleted; try again") \
                        from None
        return None


def _pages(table: Table, domain: str) -> Iterator[list[str]]:
    """The keys of ``domain``'s links in the ``domain`` index, ``BATCH_GET`` at a time."""
    cursor = None
    while True:
        page = table.query_range("domain", domain, limit=BATCH_GET, cursor=cursor)
        if page.items:
            yield [str(item["id"]) for item in page.items]
        cursor = page.next_cursor
        if not cursor:
            return


def index_links(backend: Backend) -> int:
    """Put the links the ``domain`` index lacks into it (written by the release before, whose
    writes do not set its attributes), then record that it holds every link (``BY_DOMAIN``).
    Reads every link once and each domain's index entries once; rewrites only those missing,
    each conditional on its version (one changed meanwhile was indexed by that change).
    Returns how many it rewrote; 0 on a store that lacks the index (it stays unused)."""
    links, changes = backend.table(LINKS), backend.table(LINK_CHANGES)
    if "domain" in links.lacking:
        return 0
    indexed: dict[str, set[str]] = {}
    rewritten = 0
    for link in all_items(links):
        domain = str(link.get("domain"))
        if domain not in indexed:
            indexed[domain] = {key for keys in _pages(links, domain) for key in keys}
        if link["id"] in indexed[domain]:
            continue
        try:
            links.put(link, expected_version=link[VERSION])
            rewritten += 1
        except ConflictError:
            pass
    changes.put({"name": BY_DOMAIN, "complete": True})
    return rewritten


def is_plain(link: Item) -> bool:
    """Whether the edge may answer ``link`` from its map: enabled and with no visit limit (each
    visit must pass the resolver to be counted exactly). Its rules all fit the map: UTM
    parameters make fixed URLs, device targets are picked by HAProxy from the User-Agent as
    :func:`device_of` does, and an expiry is fine: HAProxy stops answering at that second and
    the Python path takes over (with the ``expired_url``, if any)."""
    return not link.get("disabled") and link.get("max_visits") is None


def _check_limits(values: dict[str, Any]) -> None:
    for name in ("valid_until", "max_visits"):
        value = values.get(name)
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, (int, float)) or not value >= 0):
            raise InvalidLink(name, "must be a positive number or null")
    if (values.get("max_visits") or 0) > MAX_VISITS:  # DynamoDB's numbers hold 38 digits
        raise InvalidLink("max_visits", f"at most {MAX_VISITS:,} (or null: no limit)")
