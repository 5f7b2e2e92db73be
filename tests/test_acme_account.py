"""One ACME account per CA for every replica, even when they start together (real Pebble)."""
from __future__ import annotations

import threading

from admin_app import create_app
from certs.account import ACCOUNTS
from control.wiring import Services
from devtools.pebble import PebbleStack
from tests.conftest import ServicesWith, on_pebble, serving


def test_replicas_starting_together_share_one_account(
        services_with: ServicesWith, pebble: PebbleStack) -> None:
    """Each replica read "no account", registered one and stored it unconditionally: the
    last write won, and the other replica's certificates were issued under an account whose
    key was kept nowhere, so no replica could revoke them when their domains went."""
    first, second = (services_with(**on_pebble(pebble)) for _ in range(2))  # one store
    barrier = threading.Barrier(2)
    signed_as: dict[str, str] = {}

    def start(name: str, replica: Services) -> None:
        barrier.wait()
        acme = replica.issuer.issuers[0]._account.client()
        signed_as[name] = acme.net.account.uri  # type: ignore[union-attr]

    threads = [threading.Thread(target=start, args=pair)
               for pair in (("first", first), ("second", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stored = first.backend.table(ACCOUNTS).get(pebble.directory_url)
    assert stored is not None
    assert signed_as["first"] == signed_as["second"] == stored["uri"]

    with serving(create_app(second), pebble.http_port):
        serial = second.issuer.issue(["account.example.test"])
    first.issuer.discard(["account.example.test"])  # a removal the other replica handles
    assert pebble.certificate_status(serial) == "Revoked"
