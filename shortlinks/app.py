"""The redirect app: `GET https://<short domain>/<slug>` -> a redirect, or a small 404/410 page."""
from __future__ import annotations

import html
from typing import Any, Callable, Iterable

from kit.hosts import host_without_port
from shortlinks.links import SLUG
from shortlinks.resolver import Resolver, Verdict
from shortlinks.targets import location
from store import StoreError

StartResponse = Callable[..., Any]
DAY = 86400
STATUS = {301: "301 Moved Permanently", 302: "302 Found", 307: "307 Temporary Redirect",
          308: "308 Permanent Redirect"}


def make_app(resolver: Resolver) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def page(start_response: StartResponse, status: str, message: str) -> list[bytes]:
        body = (f"<!doctype html><title>{html.escape(status)}</title>"
                f"<p>{html.escape(message)}</p>").encode()
        start_response(status, [("Content-Type", "text/html; charset=utf-8"),
                                ("Content-Length", str(len(body))),
                                ("X-Robots-Tag", "noindex"), ("Cache-Control", "no-store")])
        return [body]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        host = host_without_port(str(environ.get("HTTP_HOST", "")))
        slug = str(environ.get("PATH_INFO", "")).lstrip("/")
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            return page(start_response, "405 Method Not Allowed", "Only GET is supported.")
        if not SLUG.fullmatch(slug):
            return page(start_response, "404 Not Found", "This short link does not exist.")
        try:
            # Bounded: the raw headers wait in the visit buffer until the next flush.
            verdict = resolver.resolve(host, slug, environ.get("HTTP_USER_AGENT", "")[:512],
                                       environ.get("HTTP_REFERER", "")[:512], method == "HEAD")
        except StoreError:
            return page(start_response, "503 Service Unavailable", "Please try again soon.")
        if verdict.target is None:
            status = "404 Not Found" if verdict.status == 404 else "410 Gone"
            return page(start_response, status, verdict.reason)
        headers = [("Location", location(verdict.target)),
                   ("Cache-Control", cache_control(verdict)), ("X-Robots-Tag", "noindex"),
                   ("Content-Length", "0")]
        if verdict.vary:
            headers.append(("Vary", "User-Agent"))
        start_response(STATUS[verdict.status], headers)
        return [b""]
    return app


def cache_control(verdict: Verdict) -> str:
    """A 301/308 is kept a day by browsers and shared caches, which then replay it unasked: a
    limited link's never (each visit must be counted against its limit), an expiring one's
    no longer than it lives (as the edge's map answers it)."""
    if verdict.status in (302, 307) or verdict.lives is not None and verdict.lives < 1:
        return "private, no-store"
    return f"public, max-age={int(min(DAY, verdict.lives or DAY))}"
