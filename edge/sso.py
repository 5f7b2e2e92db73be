"""Single sign-on across custom domains with first-party cookies only.

A custom domain has no cookie of the platform's, so the visitor takes a round trip:
``/_edge/sso/login`` on the custom domain sets a state nonce cookie and goes to the platform's
``/_edge/sso/authorize``, which finds the signed-in platform user and comes back with a one-time
code bound to user, host and state; ``/_edge/sso/callback`` on the custom domain consumes the code
and sets the custom domain's own session cookie: an ES256 token whose audience is that host.
HAProxy verifies that cookie on every request with the public keys (edge nodes never hold the
private key) and forwards the user in ``X-Edge-User``.
"""
from __future__ import annotations

import base64
import hmac
import re
import secrets
import time
from typing import Callable
from urllib.parse import unquote, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.errors import EdgeError
from kit.hosts import HOSTNAME_LABEL
from kit.vault import KeyVault
from store import (ABSENT, VERSION, ConflictError, Item, Table, TableSpec, all_items,
                   rewrite_field)

SSO_KEYS = TableSpec("sso_keys", key="kid")
SSO_CODES = TableSpec("sso_codes", key="code", expiring=True)
SESSION_COOKIE = "__Host-edge_session"
STATE_COOKIE = "__Host-edge_sso_state"
TRIED_COOKIE = "__Host-edge_sso_tried"
"""No silent attempt while it is there: after a sign-in its value is the session's ``exp`` and it
lasts as long (so a session the edge refuses costs one attempt per session, never a loop); after
a silent attempt that found nobody, or a logout, it is ``1`` for the browser session."""
LOGOUT_COOKIE = "__Host-edge_sso_logout"
"""The confirmation page's token (SameSite=Strict): its form's POST signs out from any browser."""
CODE_SECONDS = 60.0
STATE_SECONDS = 600
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_LABEL = HOSTNAME_LABEL.pattern
HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+")
"""A plain DNS name: anything else could make a URL we build point somewhere else."""
_PATH_CHARS = re.compile(r"[\x21-\x7e]*")  # printable ASCII, no spaces or controls
SESSION_VERSION = 1
"""The session token's ``v`` claim. A token without one (the release before) is version 1; the
edge ignores a token of a version it does not know (haproxy.cfg.j2)."""
CODE_VERSION = 1
"""A one-time code item's ``v``; an item without one (the release before) is version 1."""
STATE_VERSION = 1
"""The state cookie's format. Version 1 is written unmarked, the only form the release before
reads; a ``v<N>.`` prefix names a version (``v1.`` is read as the unmarked form), so a later
release may write one once every replica reads it."""
_STATE_PREFIX = re.compile(r"v([0-9]{1,4})\.")
_NEWER = ("This sign-in was started by a newer release of the sign-in service; "
          "please sign in again in a moment.")


class SsoRefused(EdgeError):
    """A handshake step that must stop here; the message is safe to show the visitor."""


class SignInPaused(SsoRefused):
    """The domain is served, but its DNS may send visitors to a server that is not ours (it
    still awaits its traffic, or its re-check is failing), which would collect their one-time
    codes: no code is made for it, none is traded and no session is signed until its DNS
    points at the edge."""


def return_path(rd: str | None) -> str:
    """``rd`` when it is a path on the same host; anything that could leave the site is refused.

    Browsers read ``/\\evil``, ``//evil`` and their percent-encoded forms as other hosts, so
    the decoded form is checked too.
    """
    if not rd:
        return "/"
    if len(rd) > 2000:
        raise SsoRefused("The return path is too long.")
    for form in (rd, unquote(rd), unquote(unquote(rd))):
        parts = urlsplit(form)
        if not form.startswith("/") or form.startswith("//") or "\\" in form \
                or not _PATH_CHARS.fullmatch(form) or parts.scheme or parts.netloc:
            raise SsoRefused("The return address must be a path on this site.")
    return rd


def nonce(value: str | None) -> str:
    if not value or not _NONCE.fullmatch(value):
        raise SsoRefused("The sign-in request is malformed.")
    return value


def silent_attempt_due(tried: str | None, now: float) -> bool:
    """Whether ``login?prompt=none`` may go to the platform, given the ``TRIED_COOKIE``: when
    there is none, or it holds a session's expiry that has passed. ``1`` (a silent attempt found
    nobody, or a logout) and anything unreadable mean not in this browser session."""
    if not tried:
        return True
    return tried.isdigit() and len(tried) <= 12 and 1 < int(tried) <= now


class SigningKeys:
    """ES256 keys in a table, private halves encrypted. The newest two are published to the edge;
    a new key signs only after ``activation`` seconds, by when edge nodes normally verify it.
    A node that lags longer ignores the sessions signed meanwhile: their readers browse it
    anonymously until the session expires (``TRIED_COOKIE`` stops a retry loop), never signed
    out of the sessions they had."""

    def __init__(self, table: Table, vault: KeyVault, activation: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self._vault = vault
        self._activation = activation
        self._clock = clock

    def rotate(self) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        now = self._clock()
        kid = f"{int(now * 1000):015d}-{secrets.token_hex(3)}"
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        self.table.put({"kid": kid, "created_at": now, "public_pem": public.decode(),
                        "private_enc": self._vault.encrypt(private)}, expected_version=ABSENT)
        return kid

    def _newest(self) -> list[Item]:
        items = sorted(all_items(self.table), key=lambda i: str(i["kid"]), reverse=True)[:2]
        if not items:
            self.rotate()
            return self._newest()
        return items

    def public_pems(self) -> tuple[str, ...]:
        return tuple(str(item["public_pem"]) for item in self._newest())

    def signer(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        newest, *older = self._newest()
        ready = not older or newest["created_at"] <= self._clock() - self._activation
        item = newest if ready else older[0]
        key = serialization.load_pem_private_key(self._vault.decrypt(item["private_enc"]), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return str(item["kid"]), key

    def reencrypt(self) -> int:
        return rewrite_field(self.table, "private_enc", self._vault.rotate)


class SingleSignOn:
    """The handshake's decisions; the Flask views (edge/sso_views.py) only carry HTTP."""

    def __init__(self, keys: SigningKeys, codes: Table,
                 publication_of: Callable[[str], tuple[str, bool] | None], *,
                 platform_url: str, https_port: int = 443, session_seconds: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.codes = codes
        self._publication_of = publication_of
        self.platform_url = platform_url
        self.platform_host = urlsplit(platform_url).hostname or ""
        self._port = "" if https_port == 443 else f":{https_port}"
        self.session_seconds = session_seconds
        self._clock = clock

    def require_custom_domain(self, host: str, *, paused_ok: bool = False) -> str:
        self.publication(host, paused_ok=paused_ok)
        return host

    def publication(self, host: str, *, paused_ok: bool = False) -> str:
        """The publication of an active custom domain; anything else is refused, and so is a
        domain whose DNS re-check is failing (:class:`SignInPaused`) unless ``paused_ok`` (for
        steps that hand out nothing, like coming back anonymous)."""
        found = self._publication_of(host) if HOSTNAME.fullmatch(host) \
            and host != self.platform_host else None
        if found is None:
            raise SsoRefused("Sign-in is not available on this address.")
        publication, failing = found
        if failing and not paused_ok:
            raise SignInPaused("Sign-in is paused on this address until its DNS settings point "
                               "here; you can keep reading without signing in.")
        return publication

    def authorize_url(self, host: str, state: str, silent: bool = False) -> str:
        return (f"{self.platform_url}/_edge/sso/authorize?host={host}&state={state}"
                + ("&prompt=none" if silent else ""))

    def callback_url(self, host: str, state: str, code: str = "") -> str:
        """Back to the custom domain: with a code, or without one after a silent attempt."""
        answer = f"code={code}" if code else "error=login_required"
        url = f"https://{host}{self._port}/_edge/sso/callback?{answer}&state={state}"
        if urlsplit(url).hostname != host:  # belt and braces: the code goes to that host only
            raise SsoRefused("Sign-in is not available on this address.")
        return url

    def mint_code(self, user: str, host: str, state: str) -> str:
        self.require_custom_domain(host)
        code = secrets.token_urlsafe(32)
        self.codes.put({"code": code, "v": CODE_VERSION, "user": user, "host": host,
                        "state": nonce(state), "expires_at": self._clock() + CODE_SECONDS},
                       expected_version=ABSENT)
        return code

    def take_code(self, code: str) -> Item:
        """The code's item, deleted from the table: a code is burnt by the first callback that
        carries it, whatever that callback's outcome, so a refused one cannot be replayed."""
        item = self.codes.get(code) if _NONCE.fullmatch(code) else None
        if item is None or item["expires_at"] <= self._clock():
            raise SsoRefused("This sign-in link has expired or was already used.")
        try:
            used = self.codes.delete(code, expected_version=item[VERSION])
        except ConflictError:
            used = False
        if not used:
            raise SsoRefused("This sign-in link was already used.")
        version = item.get("v", 1)
        if not isinstance(version, (int, float)) or version > CODE_VERSION:
            raise SsoRefused(_NEWER)
        return item

    def code_user(self, item: Item, host: str, state: str) -> str:
        """The user a taken code was minted for, if it was minted for this host and state."""
        if item["host"] != host or \
                not hmac.compare_digest(str(item["state"]).encode(), state.encode()):
            raise SsoRefused("This sign-in link was made for another request.")
        return str(item["user"])

    def session_token(self, user: str, host: str) -> tuple[str, int]:
        """(token, its ``exp``). Bound to the host and to its publication now: should the
        domain pass to another publication, the edge ignores sessions made before."""
        kid, key = self.keys.signer()
        now = int(self._clock())
        expires = now + int(self.session_seconds)
        return jwt.encode({"v": SESSION_VERSION, "sub": user, "aud": host,
                           "pub": self.publication(host), "iat": now, "exp": expires},
                          key, algorithm="ES256", headers={"kid": kid}), expires

    def silent_attempt_due(self, tried: str | None) -> bool:
        return silent_attempt_due(tried, self._clock())


def state_cookie(state: str, rd: str) -> str:
    return f"{state}.{base64.urlsafe_b64encode(rd.encode()).decode()}"


def read_state_cookie(value: str | None) -> tuple[str, str]:
    """(state, return path) from the state cookie; the path is checked again, never trusted."""
    value = value or ""
    marked = _STATE_PREFIX.match(value)
    if marked:
        if int(marked.group(1)) != STATE_VERSION:
            raise SsoRefused(_NEWER if int(marked.group(1)) > STATE_VERSION
                             else "The sign-in request is malformed.")
        value = value[marked.end():]
    state, _, encoded = value.partition(".")
    try:
        rd = base64.urlsafe_b64decode(encoded.encode()).decode()
    except ValueError:
        raise SsoRefused("The sign-in request is malformed.") from None
    return nonce(state), return_path(rd)
