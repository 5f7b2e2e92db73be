"""Short links: one item per (short domain, slug), created without ever overwriting one."""
from __future__ import annotations

import ipaddress
import re
import secrets
import string
import time
import unicodedata
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import idna

from kit.errors import EdgeRouterError
from shortlinks.stats import VisitStats
from shortlinks.totals import LinkTotals
from store import ABSENT, ConflictError, Item, Page, Table, TableSpec, all_items, every

LINKS = TableSpec("short_links", key="id", indexes=("owner",))
LINK_CHANGES = TableSpec("short_link_changes", key="name")
"""One item, ``generation``, whose counter ``n`` moves on every change to any link: resolvers in
other processes check it about once a second and drop what they cached before it moved."""
GENERATION = "generation"
ALPHABET = string.ascii_letters + string.digits
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED = {"api", "admin", "healthz", "metrics", "static", "robots.txt", "favicon.ico",
            "_edge", ".well-known", "login", "logout"}
CODES = (301, 302, 307, 308)
MAX_TARGET = 2048
DEVICES = ("ios", "android", "desktop")
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
MAX_UTM = 200
RULES = ("expired_url", "device_targets", "utm")
"""A link's rules: where an expired or exhausted link sends visitors instead of a 410, a target
per device (by User-Agent), and UTM parameters appended to its targets."""
DomainOwner = Callable[[str], "tuple[str, bool] | None"]
"""A connected domain's (publication id, verified), or None when nobody has connected it: the
domains part answers (wired in ``control/``)."""
LinkChanged = Callable[[str, str], None]


class ShortlinkError(EdgeRouterError):
    """Root of the short-link errors; ``status`` is the HTTP answer the API gives."""

    status = 400


class InvalidLink(ShortlinkError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class SlugTaken(ShortlinkError):
    status = 409


class LinkNotFound(ShortlinkError):
    status = 404


class NotYours(ShortlinkError):
    status = 403


def _ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


_REFUSED_CATEGORIES = {"Cc", "Zs", "Zl", "Zp"}
"""Controls (C0, DEL, C1), spaces and the line/paragraph separators U+2028/U+2029."""
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SUB_DELIMS = "!$&'()*+,;="
_PATH_SAFE = _SUB_DELIMS + ":@/%"
_QUERY_SAFE = _PATH_SAFE + "?"
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


def _percent_encode(part: str, safe: str) -> str:
    """RFC 3986: UTF-8 percent-encoding of all but unreserved and ``safe`` characters; escapes
    already there stay, a ``%`` that starts none becomes ``%25``."""
    return quote(_LONE_PERCENT.sub("%25", part), safe=safe)


def ascii_target(target: Any) -> tuple[str, str]:
    """(the target as an ASCII URI, its host in IDNA form) or InvalidLink with a reason.

    A Location header is ASCII: waitress cannot send anything else, and raw Latin-1 bytes are
    read differently by each client. So the host is IDNA-encoded as a browser reads it (UTS 46:
    full-width letters, the Kelvin sign, the ideographic full stops all mapped), and the path,
    query and fragment are percent-encoded as UTF-8.
    """
    if not isinstance(target, str) or not target.strip():
        raise InvalidLink("target", "a URL is required")
    if len(target) > MAX_TARGET:
        raise InvalidLink("target", f"longer than {MAX_TARGET} characters")
    if "\\" in target or any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in target):
        raise InvalidLink("target", "must not contain spaces, backslashes, control characters "
                                    "or line separators (U+2028, U+2029)")
    try:
        parts = urlsplit(target)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError as exc:
        raise InvalidLink("target", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidLink("target", "only http and https URLs can be short-linked")
    if not parts.hostname:
        raise InvalidLink("target", "the URL needs a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidLink("target", "credentials in the URL are not allowed")
    if "%" in parts.netloc:
        raise InvalidLink("target", "the host must not be percent-encoded")
    if _ip_address(parts.hostname):
        host, netloc = "", f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    else:
        try:  # the host as a browser reads it (UTS 46), to catch loops however they are spelt:
            # map first (U+3002, U+FF0E and U+FF61 are dots), then drop the trailing dot
            mapped = idna.uts46_remap(parts.hostname, std3_rules=False, transitional=False)
            host = idna.encode(mapped.rstrip(".")).decode().lower()
        except (idna.IDNAError, ValueError):
            raise InvalidLink("target", "the host is not a valid domain name") from None
        host += "." if mapped.endswith(".") else ""
        netloc = host
    if port is not None:
        netloc += f":{port}"
    url = urlunsplit((parts.scheme, netloc, _percent_encode(parts.path, _PATH_SAFE),
                      _percent_encode(parts.query, _QUERY_SAFE),
                      _percent_encode(parts.fragment, _QUERY_SAFE)))
    if len(url) > MAX_TARGET:
        raise InvalidLink("target", f"longer than {MAX_TARGET} characters once encoded")
    return url, host


def location(target: str) -> str:
    """A stored target as a Location header can carry it: ASCII, however old the link (links
    stored before targets were normalised may hold any character)."""
    if target.isascii() and target.isprintable() and " " not in target:
        return target  # every character in _PRINTABLE (checked in C: this runs per redirect)
    escaped = "".join(quote(c) if unicodedata.category(c) in _REFUSED_CATEGORIES else c
                      for c in target)
    try:
        return ascii_target(escaped)[0]
    except InvalidLink:
        return quote(escaped, safe=_PRINTABLE)


def link_id(domain: str, slug: str) -> str:
    return f"{domain.lower()}/{slug}"


def device_of(agent: str) -> str:
    """``ios``, ``android`` or ``desktop`` from a User-Agent (the tokens the platforms' own
    browsers and webviews send; anything else, an unknown agent included, is desktop)."""
    if "Android" in agent:
        return "android"
    if "iPhone" in agent or "iPad" in agent or "iPod" in agent:
        return "ios"
    return "desktop"


def with_utm(url: str, utm: dict[str, str] | None) -> str:
    """``url`` with the UTM parameters of ``utm`` set (replacing any of the same name already
    in its query; the rest of the query and the fragment stay as they are)."""
    if not utm:
        return url
    base, hash_, fragment = url.partition("#")
    path, _, query = base.partition("?")
    kept = [part for part in query.split("&")
            if part and part.partition("=")[0] not in utm]
    kept += [f"{name}={quote(str(utm[name]), safe='')}" for name in UTM_FIELDS if name in utm]
    return f"{path}?{'&'.join(kept)}{hash_}{fragment}"


def locations(link: Item) -> dict[str, str]:
    """Where ``link`` sends a visitor, by device (``""``: the default): computed once when the
    resolver reads the item, not per visit."""
    found = {"": with_utm(str(link["target"]), link.get("utm"))}
    for device, url in (link.get("device_targets") or {}).items():
        found[device] = with_utm(str(url), link.get("utm"))
    return found


class LinkService:
    def __init__(self, table: Table, short_domains: Iterable[str], slug_length: int = 7,
                 default_code: int = 302, changes: Table | None = None,
                 domain_owner: DomainOwner | None = None,
                 stats: VisitStats | None = None) -> None:
        self.table = table
        self.stats = stats
        self.changes = changes
        self._domain_owner = domain_owner
        self._listeners: list[LinkChanged] = []
        if changes is not None and changes.get(GENERATION) is None:
            try:
                changes.put({"name": GENERATION}, expected_version=ABSENT)
            except ConflictError:
                pass  # another process made it first
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
        owner = self._domain_owner(domain) if self._domain_owner and isinstance(domain, str) \
            else None
        if owner is None:
            raise NotYours(f"{domain} is not connected for this publication; connect it first, "
                           "or ask the platform to make links on shared short domains")
        if owner[0] != publication_id:
            raise NotYours(f"{domain} belongs to another publication")
        if not owner[1]:
            raise NotYours(f"{domain} is not verified yet: links can be made once its DNS "
                           "records prove it is yours")

    def create(self, domain: Any, target: Any, owner: str, slug: Any = None, code: Any = None,
               valid_until: Any = None, max_visits: Any = None,
               rules: dict[str, Any] | None = None) -> Item:
        """``rules``: ``expired_url``, ``device_targets`` (``{"ios"|"android"|"desktop":
        url}``) and ``utm`` (``{"utm_source": ..., ...}``), each optional."""
        domain, code = self._validate(domain, slug, code)
        target = self.validate_target(target)
        _check_limits({"valid_until": valid_until, "max_visits": max_visits})
        checked = self._check_rules({name: value for name, value in (rules or {}).items()
                                     if value is not None}, target)
        now = time.time()
        for _ in range(10 if slug is None else 1):
            chosen = slug or "".join(secrets.choice(ALPHABET) for _ in range(self._slug_length))
            item = {"id": link_id(domain, chosen), "domain": domain, "slug": chosen,
                    "target": target, "owner": owner, "code": code, "disabled": False,
                    "valid_until": valid_until, "max_visits": max_visits,
                    "created_at": now, "updated_at": now, **checked}
            try:
                made = self._changed(self.table.put(item, expected_version=ABSENT))
                if self.totals is not None:
                    self.totals.add(links=1)
                self._notify(domain, chosen)
                return made
            except ConflictError:
                if slug is not None:
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
        checked = self._check_rules({k: v for k, v in rules.items() if v is not None},
                                    str(changes.get("target", link["target"])))
        changes.update({name: checked.get(name) for name in RULES if name in changes})
        updated = self._changed(self.table.put({**link, **changes, "updated_at": time.time()},
                                               expected_version=link["version"]))
        if self.totals is not None and bool(updated.get("disabled")) != bool(link.get("disabled")):
            self.totals.add(disabled=1 if updated.get("disabled") else -1)
        self._notify(domain, slug)
        return updated

    def _check_rules(self, rules: dict[str, Any], target: str) -> dict[str, Any]:
        """The rules as stored: each URL validated and encoded like a target (a short domain
        refused: a loop), UTM values short strings; InvalidLink names the field."""
        unknown = set(rules) - set(RULES)
        if unknown:
            raise InvalidLink(sorted(unknown)[0], "not a rule")
        checked: dict[str, Any] = {}
        if rules.get("expired_url") is not None:
            checked["expired_url"] = self._rule_url("expired_url", rules["expired_url"])
        targets = rules.get("device_targets")
        if targets is not None:
            if not isinstance(targets, dict) or set(targets) - set(DEVICES):
                raise InvalidLink("device_targets", f"an object with any of {', '.join(DEVICES)}")
            checked["device_targets"] = {
                device: self._rule_url(f"device_targets.{device}", url)
                for device, url in targets.items() if url is not None} or None
        utm = rules.get("utm")
        if utm is not None:
            if not isinstance(utm, dict) or set(utm) - set(UTM_FIELDS):
                raise InvalidLink("utm", f"an object with any of {', '.join(UTM_FIELDS)}")
            for name, value in utm.items():
                if value is not None and (not isinstance(value, str) or not value
                                          or len(value) > MAX_UTM or not value.isprintable()):
                    raise InvalidLink(f"utm.{name}", f"1-{MAX_UTM} printable characters")
            checked["utm"] = {k: v for k, v in utm.items() if v is not None} or None
        for url in locations({"target": target, **checked}).values():
            if len(url) > MAX_TARGET:
                raise InvalidLink("utm", f"the target would be longer than {MAX_TARGET} "
                                         "characters with these parameters")
        return {name: value for name, value in checked.items() if value is not None}

    def _rule_url(self, field: str, value: Any) -> str:
        try:
            return self.validate_target(value)
        except InvalidLink as exc:
            raise InvalidLink(field, exc.reason) from None

    def _notify(self, domain: str, slug: str) -> None:
        for listener in self._listeners:
            listener(domain, slug)

    def _changed(self, item: Item) -> Item:
        if self.changes is not None:
            self.changes.increment(GENERATION, "n")
        return item

    def each(self) -> Iterator[Item]:
        """Every link, page by page (a full read: for a reconciliation, never on a timer)."""
        return every(lambda cursor: self.table.scan(limit=500, cursor=cursor))

    def add_visits(self, counts: dict[str, int]) -> int:
        """Visits counted elsewhere (HAProxy, for hot links), ``domain/slug -> n``, added to
        existing links as atomic ADDs; unknown links are skipped. Returns how many were added."""
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
                if self.stats is not None:  # today's count (a failure here loses only these)
                    self.stats.add(key, {"visits": count})
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

    def is_short_domain(self, domain: str) -> bool:
        return domain.lower() in self._domains

    def disable_domain(self, domain: str) -> int:
        """Disable every link on ``domain`` (its owner removed it: the next owner must not serve
        them); a scan, as removing a short domain is rare. Returns how many were disabled."""
        disabled = 0
        for link in all_items(self.table):
            if link.get("domain") == domain and not link.get("disabled"):
                try:
                    self.table.put({**link, "disabled": True, "updated_at": time.time()},
                                   expected_version=link["version"])
                    disabled += 1
                    self._notify(link["domain"], link["slug"])
                except (ConflictError, LinkNotFound):
                    continue  # changed or deleted meanwhile: the next removal sweeps it
        if disabled:
            self._changed({})
            if self.totals is not None:
                self.totals.add(disabled=disabled)
        return disabled

    def delete(self, domain: str, slug: str) -> None:
        link = self.table.get(link_id(domain, slug))  # what it took from the totals
        if link is None or not self.table.delete(link_id(domain, slug)):
            raise LinkNotFound(f"{domain}/{slug} does not exist")
        if self.totals is not None:
            self.totals.add(links=-1, disabled=-1 if link.get("disabled") else 0,
                            visits=-int(link.get("visits") or 0))
            self.totals.forget(link["id"])
        if self.stats is not None:
            self.stats.forget(link_id(domain, slug))
        self._changed({})
        self._notify(domain, slug)


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
                                  or not isinstance(value, (int, float)) or value < 0):
            raise InvalidLink(name, "must be a positive number or null")
