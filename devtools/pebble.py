"""Pebble (a test ACME CA) and pebble-challtestsrv (its programmable DNS), for the demo and tests.

Pebble needs a TLS certificate for its own listener, so we make a throwaway CA for it here.
challtestsrv is started with empty HTTP/TLS challenge listeners and no default AAAA answer:
otherwise it grabs ports on all interfaces and Pebble validates over IPv6 first.

Pebble reuses no valid authorization here (``PEBBLE_AUTHZREUSE`` 0, where its default is 50%;
``env`` may ask for it). Pebble 2.4 can deadlock its whole store when it does: a new order
looking for an authorization to reuse holds the store's read lock and waits for one
authorization's, while a POST to that authorization holds it and waits for the store's read
lock behind a writer (another new order adding itself). Clients issuing in parallel on one
Pebble meet it: 3 wedges in 17 runs of 280 parallel issuances, none in 28 without reuse (the
goroutine dump of a wedged Pebble shows the three). Let's Encrypt reuses authorizations, so
``test_a_valid_authorization_the_ca_reuses_is_not_answered_again`` asks for it, alone.
"""
from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from certs.keys import key_to_pem
from kit.files import PUBLIC, SECRET, write_atomic
from kit.procs import ManagedProcess, free_port, retry_taken_ports, wait_for_port
from kit.x509 import build_certificate, cert_to_pem


def make_listener_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a ``localhost``/``127.0.0.1`` certificate signed by it: (ca, cert, key) paths."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build_certificate("edge test listener CA", ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_certificate("localhost", key, signer=ca_key, issuer=ca.subject,
                             names=["localhost", "127.0.0.1"])
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "listener-ca.pem", directory / "listener.pem", directory / "listener.key"
    write_atomic(paths[0], cert_to_pem(ca), PUBLIC)
    write_atomic(paths[1], cert_to_pem(cert), PUBLIC)
    write_atomic(paths[2], key_to_pem(key), SECRET)
    return paths


class PebbleStack:
    """Pebble plus challtestsrv on free loopback ports; ``http_port`` is where HTTP-01 is probed."""

    def __init__(self, directory: Path, http_port: int, eab_keys: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, validity_seconds: int | None = None,
                 dns_server: str | None = None) -> None:
        """``dns_server`` (``ip:port``) replaces challtestsrv as the DNS Pebble validates with."""
        for binary in ("pebble", "pebble-challtestsrv"):
            if shutil.which(binary) is None:
                raise RuntimeError(f"{binary} is not installed (apt-get install pebble)")
        self.directory = directory
        self.http_port = http_port
        self.listener_ca, self._cert, self._key = make_listener_cert(directory)
        self.pebble: ManagedProcess | None = None
        self.challtestsrv: ManagedProcess | None = None
        # Each server binds ports chosen just before: start both again on new ones if another
        # process took one meanwhile.
        retry_taken_ports(lambda: self._start(eab_keys, env, validity_seconds, dns_server))

    def _start(self, eab_keys: dict[str, str] | None, env: dict[str, str] | None,
               validity_seconds: int | None, dns_server: str | None) -> None:
        directory = self.directory
        self.acme_port, self.mgmt_port = free_port(), free_port()
        self.dns_port, self.dns_mgmt_port = free_port(), free_port()
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(self._cert), "privateKey": str(self._key),
            "httpPort": self.http_port, "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(eab_keys),
            **({"externalAccountMACKeys": eab_keys} if eab_keys else {}),
            **({"certificateValidityPeriod": validity_seconds} if validity_seconds else {}),
        }}
        config_path = directory / "pebble.json"
        write_atomic(config_path, json.dumps(config), PUBLIC)
        self.challtestsrv = ManagedProcess("challtestsrv", [
            "pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns_port}",
            "-management", f"127.0.0.1:{self.dns_mgmt_port}", "-http01", "", "-https01", "",
            "-tlsalpn01", "", "-defaultIPv6", ""], directory / "challtestsrv.log")
        self.pebble = None
        try:
            wait_for_port(self.dns_mgmt_port, process=self.challtestsrv)
            self.pebble = ManagedProcess(
                "pebble", ["pebble", "-config", str(config_path),
                           "-dnsserver", dns_server or f"127.0.0.1:{self.dns_port}"],
                directory / "pebble.log",
                env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0", **(env or {})})
            wait_for_port(self.acme_port, process=self.pebble)
            wait_for_port(self.mgmt_port, process=self.pebble)
            self.root_path = directory / "pebble-root.pem"
            write_atomic(self.root_path, self._management_get("/roots/0"), PUBLIC)
        except BaseException:
            self.stop()
            raise

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    def _management_get(self, path: str) -> str:
        context = ssl.create_default_context(cafile=str(self.listener_ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt_port}{path}",
                                    context=context, timeout=10) as response:
            return str(response.read().decode())

    def certificate_status(self, serial_hex: str) -> str:
        """Pebble's view of a certificate it issued: "Valid" or "Revoked"."""
        return str(json.loads(self._management_get(f"/cert-status-by-serial/{serial_hex}"))
                   ["Status"])

    def dns(self, path: str, body: dict[str, object]) -> None:
        """Call challtestsrv's management API, e.g. ``dns("/set-txt", {...})``."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.dns_mgmt_port}{path}",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def set_txt(self, name: str, value: str) -> None:
        self.dns("/set-txt", {"host": name.rstrip(".") + ".", "value": value})

    def set_cname(self, name: str, target: str) -> None:
        self.dns("/set-cname", {"host": name.rstrip(".") + ".", "target": target.rstrip(".") + "."})

    def stop(self) -> None:
        for process in (self.pebble, self.challtestsrv):
            if process is not None:
                process.stop()
