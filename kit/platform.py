"""Who is signed in on the platform: the platform owns its users, we only ask.

Two ways, chosen by settings: an introspection URL on the app fleet (we pass the visitor's
cookies on; it answers ``{"user": ..., "publications": [...]}`` or 401), or the platform's own
session cookie, an HS256 token with ``sub``, ``exp`` and optionally ``publications``, verified
with a shared key. SSO (edge/sso.py) and the publisher settings page both use this.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Protocol
from urllib.parse import quote, urlsplit

import jwt
import requests

from kit.errors import EdgeRouterError
from kit.settings import Settings

USER_ID = re.compile(r"[A-Za-z0-9_.@:+-]{1,128}")
"""A user id travels to the apps in a header: nothing outside this shape is accepted."""


class PlatformUnavailable(EdgeRouterError):
    """The platform could not say who is signed in (down, or an answer we cannot read)."""


@dataclasses.dataclass(frozen=True)
class PlatformUser:
    id: str
    publications: tuple[str, ...] = ()


class PlatformIdentity(Protocol):
    def user(self, cookies: Mapping[str, str], cookie_header: str,
             timeout: float | None = None) -> PlatformUser | None:
        """The signed-in platform user of a request, or None for an anonymous visitor;
        ``timeout`` bounds a call to the platform when there is one (None: the identity's)."""


def _user_from(claims: Mapping[str, Any], field: str) -> PlatformUser | None:
    user = claims.get(field)
    publications = claims.get("publications") or []
    if not isinstance(user, str) or not USER_ID.fullmatch(user) \
            or not isinstance(publications, list):
        return None
    return PlatformUser(user, tuple(str(p) for p in publications))


class IntrospectionIdentity:
    def __init__(self, url: str, session: requests.Session | None = None,
                 timeout: float = 5.0) -> None:
        self._url = url
        self._session = session or requests.Session()
        self._timeout = timeout

    def user(self, cookies: Mapping[str, str], cookie_header: str,
             timeout: float | None = None) -> PlatformUser | None:
        if not cookie_header:
            return None
        try:
            response = self._session.get(self._url, headers={"Cookie": cookie_header},
                                         timeout=timeout or self._timeout,
                                         allow_redirects=False)
        except requests.RequestException as exc:
            raise PlatformUnavailable(f"session introspection failed: {exc}") from None
        if response.status_code in (401, 403):
            return None
        if response.status_code != 200:
            raise PlatformUnavailable(f"session introspection answered {response.status_code}")
        try:
            claims = response.json()
        except ValueError:
            raise PlatformUnavailable("session introspection answered no JSON") from None
        return _user_from(claims, "user") if isinstance(claims, dict) else None


class SignedCookieIdentity:
    def __init__(self, cookie: str, key: str) -> None:
        self._cookie = cookie
        self._key = key

    def user(self, cookies: Mapping[str, str], cookie_header: str,
             timeout: float | None = None) -> PlatformUser | None:
        token = cookies.get(self._cookie)
        if not token:
            return None
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"],
                                options={"require": ["exp", "sub"]})
        except jwt.InvalidTokenError:
            return None
        return _user_from(claims, "sub")  # the verified subject, never another claim


@dataclasses.dataclass(frozen=True)
class Platform:
    """The platform we serve: its own domain's base URL, its sign-in page, and who is signed
    in there (``identity`` None: single sign-on and the settings page are off)."""

    url: str
    login_url: str
    identity: PlatformIdentity | None

    @classmethod
    def from_settings(cls, settings: Settings) -> "Platform":
        identity: PlatformIdentity | None = None
        if settings.sso_introspection_url:
            identity = IntrospectionIdentity(settings.sso_introspection_url)
        elif settings.sso_platform_cookie:
            identity = SignedCookieIdentity(settings.sso_platform_cookie,
                                            settings.sso_platform_cookie_key)
        return cls(settings.sso_platform_url, settings.sso_platform_login_url, identity)

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "") if self.url else ""

    def sign_in_url(self, path: str) -> str:
        """The platform's sign-in page, sending the visitor back to ``path`` on the platform
        domain (a fixed base: never an open redirect)."""
        separator = "&" if "?" in self.login_url else "?"
        return f"{self.login_url}{separator}return_to={quote(self.url + path, safe='')}"
