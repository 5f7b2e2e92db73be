"""What every agent (an edge node's, a router's) shares in talking to the control service: its
replicas, asked in turn until one answers and kept while it does; one session with the edge
token, the CA to trust and a client certificate; and the flag a stop waits on while the agent
changes its node, rather than cut a change half made."""
from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any, Iterator, Sequence

import requests

from edge.errors import EdgeError
from kit.hosts import plain_http_off_host

log = logging.getLogger(__name__)


class ControlClient:
    def __init__(self, control_url: str | Sequence[str], token: str, *,
                 node_id: str | None = None, session: requests.Session | None = None,
                 ca_bundle: str = "", allow_insecure: bool = False,
                 client_cert: tuple[str, str] | None = None,
                 carried: str = "its edge token") -> None:
        """``carried``: what a plain-HTTP URL to another host would send in clear (refused
        unless ``allow_insecure``)."""
        urls = [control_url] if isinstance(control_url, str) else list(control_url)
        self._urls = [url.rstrip("/") for url in urls]
        """Every control replica; requests go to the first that answers, and stay there."""
        insecure = [url for url in self._urls if plain_http_off_host(url)]
        if insecure and not allow_insecure:
            raise EdgeError(f"{insecure[0]} is plain HTTP to another host: the agent would "
                            f"send {carried} in clear (use https://)")
        self._session = session or requests.Session()
        self._verify: str | bool = ca_bundle or True
        """Per request: requests lets REQUESTS_CA_BUNDLE override a session's ``verify``."""
        self._session.cert = client_cert  # (certificate, key) files for mTLS, if asked
        self._session.headers["Authorization"] = f"Bearer {token}"
        self.node_id = node_id or socket.gethostname()
        self.applying = False
        """The node is being changed (files, HAProxy): a stop waits for that, not a long poll."""

    @contextlib.contextmanager
    def _applying(self) -> Iterator[None]:
        self.applying = True
        try:
            yield
        finally:
            self.applying = False

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Ask the current control replica; one that does not answer (or answers 502-504)
        sends the request on to the next, which becomes the current one."""
        for attempt in range(len(self._urls)):
            last = attempt == len(self._urls) - 1
            try:
                response = self._session.request(method, self._urls[0] + path,
                                                 verify=self._verify, **kwargs)
                if response.status_code not in (502, 503, 504) or last:
                    return response
            except (requests.ConnectionError, requests.Timeout):
                if last:
                    raise
            log.info("control replica %s is away; trying %s", self._urls[0],
                     self._urls[1 % len(self._urls)])
            self._urls.append(self._urls.pop(0))
        raise AssertionError("unreachable")
