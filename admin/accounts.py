"""Admin accounts: users with hashed passwords, server-side sessions and the login lockout.

Sessions live in a table, keyed by the SHA-256 of a random id that only the browser's cookie
holds: logout really ends a session, a table read reveals no usable id, and a new id is made
at every login (no session fixation). Each session carries its own CSRF token. A user's
``sessions_after`` ends every session of theirs started before it (a new password, ``edgectl
admin end-sessions``), and a deleted user's sessions end with them.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import itertools
import re
import secrets
import time
from typing import Callable, Sequence

from werkzeug.security import check_password_hash, generate_password_hash

from kit.backoff import jittered_backoff
from kit.errors import EdgeRouterError
from kit.settings import PASSWORD_HASH
from store import ABSENT, VERSION, ConflictError, Item, Table, TableSpec, all_items

ADMIN_USERS = TableSpec("admin_users", key="username")
ADMIN_SESSIONS = TableSpec("admin_sessions", key="id", expiring=True)
ADMIN_LOGIN_FAILURES = TableSpec("admin_login_failures", key="key", expiring=True)
"""Both expire (``expires_at``): the retention sweep deletes sessions nobody ended and
lockouts that passed, so neither table grows forever."""
USERNAME = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,63}")
MIN_PASSWORD, MAX_PASSWORD = 12, 1024
LOCKED_BY = {"pair": "this username from this address", "user": "this username",
             "addr": "this address"}
"""What locked a login out, by the prefix of its :meth:`LoginLimiter.keys` key."""


@functools.cache
def _dummy_hash(method: str) -> str:
    """Checked when the username is unknown, so a login takes as long whether or not it
    exists. Made at the first such login, not at import: a hash costs 0.1 s of CPU, and
    every process that imports this module (each replica, each operator command) paid it."""
    return generate_password_hash(secrets.token_hex(16), method=method)


class AccountError(EdgeRouterError):
    """A username or password that cannot be used; the message says why."""


class Users:
    def __init__(self, table: Table, clock: Callable[[], float] = time.time,
                 method: str = PASSWORD_HASH) -> None:
        self.table = table
        self._clock = clock
        self._method = method

    def create(self, username: str, password: str) -> Item:
        """A new admin; refuses a taken name, a malformed name or a short password."""
        name = username.strip().lower()
        if not USERNAME.fullmatch(name):
            raise AccountError("username: 1-64 lowercase letters, digits, '.', '_', '@' or '-'")
        now = self._clock()  # sessions of a deleted user of this name stay ended (holds)
        item = {"username": name, "created_at": now, "sessions_after": now,
                "password_hash": self._hash(password)}
        try:
            return self.table.put(item, expected_version=ABSENT)
        except ConflictError:
            raise AccountError(f"user {name!r} already exists") from None

    def _hash(self, password: str) -> str:
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise AccountError(f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        return generate_password_hash(password, method=self._method)

    def set_password(self, username: str, password: str) -> None:
        """A new password; every session of the user started before it ends."""
        self._change(username, password_hash=self._hash(password))

    def end_sessions(self, username: str) -> None:
        """End every session of the user now (a lost laptop, a departure)."""
        self._change(username)

    def _change(self, username: str, **fields: str) -> None:
        name = username.strip().lower()
        for attempt in range(1, 6):
            user = self.table.get(name)
            if user is None:
                raise AccountError(f"no user {name!r}")
            try:
                self.table.put({**user, **fields, "sessions_after": self._clock()},
                               expected_version=user[VERSION])
                return
            except ConflictError:  # changed meanwhile: read it again
                time.sleep(jittered_backoff(attempt, 0.002, 0.05))
        raise AccountError(f"user {name!r} kept changing: try again")

    def delete(self, username: str) -> None:
        """Delete the user: their sessions end with them (:meth:`holds`)."""
        name = username.strip().lower()
        if not self.table.delete(name):
            raise AccountError(f"no user {name!r}")

    def names(self) -> list[str]:
        """Every admin's username (a scan: the table holds a few accounts)."""
        return sorted(str(user["username"]) for user in all_items(self.table))

    def holds(self, session: Item) -> bool:
        """Whether ``session`` is still its user's: the user exists and ended none of their
        sessions since it started."""
        user = self.table.get(session["username"])
        return user is not None and \
            float(session["started_at"]) >= float(user.get("sessions_after") or 0)

    def verify(self, username: str, password: str) -> str | None:
        """The normalized username if the password is right, else None."""
        name = username.strip().lower()
        valid = USERNAME.fullmatch(name) and len(password) <= MAX_PASSWORD
        user = self.table.get(name) if valid else None
        if user is None:
            check_password_hash(_dummy_hash(self._method), password[:MAX_PASSWORD])
            return None
        return name if check_password_hash(user["password_hash"], password) else None


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    def __init__(self, table: Table, lifetime: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.lifetime = lifetime
        self._clock = clock

    def start(self, username: str) -> str:
        """A new session for ``username``; returns the id for the cookie (never stored)."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        self.table.put({"id": _digest(session_id), "username": username,
                        "csrf": secrets.token_urlsafe(32), "started_at": now,
                        "expires_at": now + self.lifetime})
        return session_id

    def get(self, session_id: str) -> Item | None:
        if not session_id or len(session_id) > 128:
            return None
        return self.table.get(_digest(session_id))

    def end(self, session_id: str) -> None:
        self.table.delete(_digest(session_id))


class Devices:
    """Browsers that signed a user in before: a lockout of the username from anywhere (many
    addresses guessing) does not stop them, so nobody can lock an admin out of their own
    browser (the limits per address and per username and address still hold). A device
    cookie is the username and an HMAC of it and its ``sessions_after`` under a key derived
    from each encryption key: a new password or ``end-sessions`` forgets every device."""

    CONTEXT = b"edge-admin-device-v1"

    def __init__(self, users: Users, encryption_keys: Sequence[str]) -> None:
        self.users = users
        self._keys = [hmac.new(base64.urlsafe_b64decode(key.encode()), self.CONTEXT,
                               hashlib.sha256).digest() for key in encryption_keys]

    def _sign(self, key: bytes, user: Item) -> str:
        text = f"{user['username']}|{float(user.get('sessions_after') or 0)!r}"
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    def token(self, username: str) -> str:
        user = self.users.table.get(username)
        return f"{username}:{self._sign(self._keys[0], user)}" if user and self._keys else ""

    def known(self, cookie: str | None, username: str) -> bool:
        """Whether ``cookie`` marks a browser that signed ``username`` in before."""
        name, _, signature = (cookie or "")[:200].partition(":")
        if not signature or name != username.strip().lower():
            return False
        user = self.users.table.get(name) if USERNAME.fullmatch(name) else None
        return user is not None and any(
            hmac.compare_digest(self._sign(key, user), signature) for key in self._keys)


class LimiterBusy(EdgeRouterError):
    """A login count could not be written within the limiter's deadline (a store under heavy
    contention): the login is refused rather than let through uncounted."""

    def __init__(self, key: str, seconds: float) -> None:
        super().__init__(f"login count {key!r} still contended after {seconds:.0f} s")
        self.key = key


class LoginLimiter:
    """Login attempts within ``lockout`` seconds of the first one, counted three ways:
    ``max_failures`` for one username from one address, and ``SPREAD`` times that for a username
    from anywhere (guessing from many addresses) or for an address whatever the username. So
    someone elsewhere cannot lock an admin out with a few wrong passwords, and guessing from
    many places or at many names still stops.

    An attempt is counted *before* its password is checked, in one conditional write per key
    that also checks the limit (:meth:`attempt`), so parallel guesses can never check more
    passwords than the limit allows; a right password then clears the username's counts and
    gives the address its attempt back (:meth:`succeeded`)."""

    SPREAD = 10
    DEADLINE = 30.0
    """Seconds a count may stay contended before :class:`LimiterBusy` (each lost race means
    another attempt was counted, so this only trips on a store that keeps failing writes)."""

    def __init__(self, table: Table, max_failures: int, lockout: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.max_failures = max_failures
        self.lockout = lockout
        self._clock = clock

    @staticmethod
    def keys(username: str, address: str, known_device: bool = False) -> list[str]:
        """The counts an attempt goes to; a browser that signed the user in before
        (:class:`Devices`) is not held by the username's count from anywhere."""
        user = username.strip().lower()[:64]
        return [f"pair:{user}|{address}", *([] if known_device else [f"user:{user}"]),
                f"addr:{address}"]

    def _limit(self, key: str) -> int:
        return self.max_failures * (1 if key.startswith("pair:") else self.SPREAD)

    def _wait(self, key: str, item: Item | None) -> float:
        if item is None or item["failures"] < self._limit(key):
            return 0.0
        return max(float(item["expires_at"]) - self._clock(), 1e-3)

    def locked_for(self, keys: list[str]) -> float:
        """Seconds until these keys may try again (0 when not locked)."""
        return max([0.0] + [self._wait(key, self.table.get(key)) for key in keys])

    def attempt(self, keys: list[str]) -> float:
        """Count one attempt against every key, unless one of them is at its limit: then
        nothing stays counted and the seconds until it may try again are returned. 0 means
        the attempt is counted and its password may be checked."""
        taken: list[str] = []
        for key in keys:
            wait = self._change(key, +1)
            if wait > 0:
                for earlier in taken:
                    self._change(earlier, -1)
                return wait
            taken.append(key)
        return 0.0

    def _change(self, key: str, amount: int) -> float:
        """Add ``amount`` to the key's count in one conditional write that also checks the
        limit (when adding); retried on a lost race until it lands, or
        :class:`LimiterBusy` after ``DEADLINE`` seconds. Returns the wait when locked, else 0."""
        deadline = time.monotonic() + self.DEADLINE
        for attempts in itertools.count(1):
            item = self.table.get(key)
            wait = self._wait(key, item) if amount > 0 else 0.0
            if wait > 0 or (item is None and amount < 0):
                return wait
            try:
                if item is None:
                    self.table.put({"key": key, "failures": amount,
                                    "expires_at": self._clock() + self.lockout},
                                   expected_version=ABSENT)
                else:
                    self.table.put({**item, "failures": max(0, item["failures"] + amount)},
                                   expected_version=item[VERSION])
                return 0.0
            except ConflictError:
                if time.monotonic() > deadline:
                    raise LimiterBusy(key, self.DEADLINE) from None
                time.sleep(jittered_backoff(attempts, 0.002, 0.05))
        raise AssertionError("unreachable")

    def first_refusal(self, keys: list[str]) -> str | None:
        """The key that locks these keys out, if this is the first refusal of its window, else
        None: a lockout is reported once (the audit log would otherwise grow by a row at every
        refused attempt). The key's item is marked in one conditional write, so of parallel
        refusals only one reports it; the mark ends with the item (a new window is reported)."""
        for attempts in range(1, 6):
            found = ((key, self.table.get(key)) for key in keys)
            key, item = next(((key, item) for key, item in found if self._wait(key, item) > 0),
                             ("", None))  # the key :meth:`attempt` stopped at
            if item is None or item.get("reported"):
                return None
            try:
                self.table.put({**item, "reported": True}, expected_version=item[VERSION])
                return key
            except ConflictError:  # reported meanwhile, or its count moved: read it again
                time.sleep(jittered_backoff(attempts, 0.002, 0.05))
        return None

    def succeeded(self, username: str, address: str) -> None:
        """A right password clears the counts of the username, and gives the address back
        the attempt :meth:`attempt` counted (its other failures stay)."""
        pair, user, addr = self.keys(username, address)
        self.table.delete(pair)
        self.table.delete(user)
        self._change(addr, -1)
