"""An HTTPS GET to a loopback edge with the SNI and Host we choose (no DNS involved)."""
from __future__ import annotations

import dataclasses
import functools
import http.client
import json
import socket
import ssl
from typing import Any

from cryptography import x509


@dataclasses.dataclass
class Probe:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes
    certificate: x509.Certificate

    def json(self) -> Any:
        return json.loads(self.body.decode())


def _unverified() -> ssl.SSLContext:
    """One context for every unverified probe: a context of its own per request loaded the
    system's CA certificates each time, most of a load loop's CPU."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_UNVERIFIED = _unverified()


@functools.lru_cache(maxsize=16)
def _trusting(cadata: str) -> ssl.SSLContext:
    """One context for every probe that trusts the same CA certificates (a load loop's): each
    request parsed them again otherwise."""
    return ssl.create_default_context(cadata=cadata)


def https_get(port: int, hostname: str, path: str = "/", cafile: str | None = None,
              cadata: str | None = None, headers: dict[str, str] | None = None,
              address: str = "127.0.0.1", timeout: float = 10) -> Probe:
    """GET ``path`` from ``address:port`` as ``hostname``; verified when a CA is given."""
    if cadata is not None and cafile is None:
        context = _trusting(cadata)
    elif cafile is not None:  # read each time: a test may write a new CA to the same file
        context = ssl.create_default_context(cafile=cafile, cadata=cadata)
    else:
        context = _UNVERIFIED
    conn = http.client.HTTPSConnection(address, port, context=context, timeout=timeout)
    raw = socket.create_connection((address, port), timeout=timeout)
    conn.sock = context.wrap_socket(raw, server_hostname=hostname)
    try:
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None, "the server sent no certificate"
        conn.request("GET", path, headers={"Host": hostname, **(headers or {})})
        response = conn.getresponse()
        return Probe(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read(),
                     x509.load_der_x509_certificate(der))
    finally:
        conn.close()
