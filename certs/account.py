"""Our account at one ACME CA: registered on first use (with External Account Binding when the
CA asks for it), its key kept encrypted in the store, so every replica signs as the same
account and a restart does not register a new one."""
from __future__ import annotations

import logging
import threading
from typing import Any, cast

import josepy as jose
from acme import errors, messages
from acme.client import ClientV2

from certs.keys import generate_key, key_from_pem, key_to_pem
from certs.network import PatientNetwork
from kit.vault import KeyVault
from store import ABSENT, VERSION, ConflictError, Item, Table, TableSpec, rewrite_field

log = logging.getLogger(__name__)

ACCOUNTS = TableSpec("acme_accounts", key="directory_url")


class AcmeAccount:
    def __init__(self, directory_url: str, table: Table, vault: KeyVault, *,
                 ca_bundle: str = "", email: str = "",
                 eab: tuple[str, str] | None = None) -> None:
        self.directory_url = directory_url
        self._table = table
        self._vault = vault
        self._verify: str | bool = ca_bundle or True
        self._email = email
        self._eab = eab
        self._client: ClientV2 | None = None
        self._lock = threading.Lock()

    def client(self) -> ClientV2:
        """The CA's client, signed in as our account (registered the first time)."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> ClientV2:
        stored = self._stored_key()
        key = jose.JWKRSA(key=key_from_pem(self._vault.decrypt(stored["key_enc"])))
        # verify_ssl goes to requests, which takes a CA bundle path as well as a bool.
        net = PatientNetwork(key, user_agent="edge-router",
                             verify_ssl=self._verify)  # type: ignore[arg-type]
        directory = ClientV2.get_directory(self.directory_url, net)
        acme = ClientV2(directory, net)
        if stored.get("uri"):
            net.account = messages.RegistrationResource(uri=stored["uri"],
                                                        body=messages.Registration())
        else:
            uri = self._register(acme, key)
            try:
                self._table.put({**stored, "uri": uri}, expected_version=stored[VERSION])
            except ConflictError:
                pass  # another replica registered the same key: the CA gave it this account
        return acme

    def _stored_key(self) -> Item:
        """The account key every replica signs with, stored (conditionally) before the CA hears
        of it: replicas starting together would otherwise each register an account and the
        last write would win, leaving the others' certificates under an account whose key is
        kept nowhere (they could not be revoked). The loser of the write uses the winner's key,
        and registering a known key again gives back the same account."""
        stored = self._table.get(self.directory_url)
        if stored is not None:
            return stored
        key_enc = self._vault.encrypt(key_to_pem(cast(Any, generate_key("rsa2048"))))
        try:
            return self._table.put({"directory_url": self.directory_url, "key_enc": key_enc},
                                   expected_version=ABSENT)
        except ConflictError:
            won = self._table.get(self.directory_url)
            if won is None:  # forgotten again meanwhile: a rare race, the next attempt retries
                raise
            return won

    def _register(self, acme: ClientV2, key: jose.JWKRSA) -> str:
        """Register ``key`` with the CA (or find the account it already has); its URI."""
        binding: dict[str, Any] = {}
        if self._eab:  # External Account Binding, as ZeroSSL and other CAs require
            binding["external_account_binding"] = messages.ExternalAccountBinding.from_data(
                account_public_key=key.public_key(), kid=self._eab[0], hmac_key=self._eab[1],
                directory=acme.directory)
        registration = messages.NewRegistration.from_data(
            email=self._email or None, terms_of_service_agreed=True, **binding)
        try:
            return str(acme.new_account(registration).uri)  # it signs in as the new account
        except errors.ConflictError as existing:  # the key has an account already: that one
            acme.net.account = messages.RegistrationResource(uri=existing.location,
                                                             body=messages.Registration())
            return str(existing.location)

    def forget(self) -> None:
        """The CA no longer knows our account (its database was reset, or the account was
        deactivated): drop it, so the next attempt registers a new one instead of failing
        the same way forever."""
        with self._lock:
            account = getattr(self._client.net.account, "uri", None) if self._client else None
            self._client = None
            stored = self._table.get(self.directory_url)
            if stored is not None and stored.get("uri") == account:  # not one another replica made
                try:
                    self._table.delete(self.directory_url, expected_version=stored[VERSION])
                except ConflictError:
                    pass  # another replica replaced it meanwhile
        log.warning("the CA at %s does not know our account any more; registering a new one",
                    self.directory_url)

    def reencrypt(self) -> int:
        """Re-encrypt the stored account keys under the newest encryption key."""
        return rewrite_field(self._table, "key_enc", self._vault.rotate)

    @property
    def bad_nonce_retries(self) -> int:
        return self._client.net.retries if self._client else 0  # type: ignore[attr-defined]
