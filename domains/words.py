"""A domain's status in plain words, the one mapping the publisher's and the admin's pages use
(the API keeps the codes: programs read those)."""
from __future__ import annotations

import datetime

from markupsafe import Markup

from dnsops.hostnames import unicode_form
from domains.repository import (ACTIVE, AWAITING_TRAFFIC, ISSUING, PENDING_DNS, REMOVING,
                                SUSPENDED, VERIFIED)

STATUS_WORDS = {
    PENDING_DNS: "Waiting for DNS",
    VERIFIED: "DNS verified",
    ISSUING: "Getting a certificate",
    AWAITING_TRAFFIC: "Ready, waiting for traffic",
    ACTIVE: "Live",
    SUSPENDED: "Suspended",
    REMOVING: "Being removed",
}


def status_words(status: object) -> str:
    """``"Waiting for DNS"`` for ``pending_dns``; a status we do not know, as it is."""
    return STATUS_WORDS.get(str(status), str(status).replace("_", " "))


def plural(count: int, one: str, many: str | None = None) -> str:
    """``"1 link"``, ``"2 links"``, ``"0 links"``."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


def ago(seconds: float) -> str:
    """How long ago (``seconds`` > 0) or ahead (< 0) a moment is: ``"5 s ago"``, ``"in 3 min"``;
    the pages' scripts say the same (publisher/static/publisher.js, ``ago``)."""
    size = abs(seconds)
    if size < 5:
        return "just now" if seconds >= 0 else "in a moment"
    for unit, length in (("day", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if size >= length:
            count = int(size // length)
            text = plural(count, unit) if unit == "day" else f"{count} {unit}"
            return f"{text} ago" if seconds > 0 else f"in {text}"
    return "just now"  # unreachable: size >= 5 matched "s"


def moment(when: str | None, now: float) -> dict[str, str] | None:
    """An ISO 8601 time as the pages show it: ``iso`` (for ``<time datetime>``), ``exact``
    (``2025-05-01 12:00:03 UTC``, on hover) and ``ago`` (the text); None for None."""
    if not when:
        return None
    at = datetime.datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.timezone.utc)
    at = at.astimezone(datetime.timezone.utc)
    return {"iso": at.isoformat(timespec="seconds"),
            "exact": at.strftime("%Y-%m-%d %H:%M:%S UTC"), "ago": ago(now - at.timestamp())}


def time_tag(when: str | None, now: float, element_id: str = "") -> Markup:
    """``<time datetime title>`` with the relative text; the scripts keep the text current."""
    shown = moment(when, now)
    if shown is None:
        return Markup("")
    ident = Markup(' id="{}"').format(element_id) if element_id else Markup("")
    return Markup('<time{} datetime="{}" title="{}" data-relative>{}</time>').format(
        ident, shown["iso"], shown["exact"], shown["ago"])


def host_tag(hostname: str) -> Markup:
    """A hostname as people read it, with its xn-- form beside it when it has one; both may
    wrap anywhere (a long name must not widen a phone's screen)."""
    shown = unicode_form(hostname)
    if shown == hostname:
        return Markup('<span class="host">{}</span>').format(hostname)
    return Markup('<span class="host">{}</span> <span class="host ace">({})</span>'
                  ).format(shown, hostname)
