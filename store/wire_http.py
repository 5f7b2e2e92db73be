"""HTTP/1.1 POSTs to one endpoint over kept-alive connections, for the store's DynamoDB client
(store/dynamo_wire.py).

urllib3 sends through http.client, which parses every answer's header block with the email
package: some 40% of the store client's CPU a request. DynamoDB's answers are small, carry a
Content-Length and need three of their headers, so this reads them by hand. What urllib3 did
for the client, this does too: a pool of idle connections (a connection the server has closed
meanwhile is not reused), timeouts to connect and to read, TLS verified against the system's
CA store (or the bundle botocore is given) with the endpoint's name, and the proxy the
environment names, as botocore does (``HTTPS_PROXY``/``HTTP_PROXY`` by the endpoint's scheme,
unless ``NO_PROXY`` spares its host): an https endpoint through a ``CONNECT`` tunnel, an http
one in the proxy's absolute form. A proxy named ``https://`` is reached over TLS too
(verified against the same certificates, with the proxy's name), and an https endpoint's TLS
then runs inside the proxy's (urllib3's ``SSLTransport``, as botocore's urllib3 does).
"""
from __future__ import annotations

import base64
import io
import select
import socket
import ssl
import threading
import urllib.request
from typing import NamedTuple, cast
from urllib.parse import unquote, urlsplit

from urllib3.util.ssltransport import SSLTransport

MAX_LINE = 65536


class Answer(NamedTuple):
    status: int
    reason: str
    headers: dict[str, str]
    """Names lower-cased."""
    body: bytes


class ConnectFailed(Exception):
    """No connection: refused, unreachable, or TLS refused."""


class ConnectTimedOut(ConnectFailed):
    pass


class TLSRefused(ConnectFailed):
    """The TLS handshake failed: most often a certificate the system's store does not trust."""


class ReadTimedOut(Exception):
    """Connected and sent, no whole answer within the read timeout."""


class Broken(Exception):
    """The connection failed after the request was sent, or what came back was not HTTP."""


class _Connection:
    __slots__ = ("sock", "reader")

    def __init__(self, sock: socket.socket | SSLTransport) -> None:
        self.sock = sock
        self.reader = cast(io.BufferedReader, sock.makefile("rb"))  # SSLTransport's: one too

    def dropped(self) -> bool:
        """Whether the server closed it while it was idle (readable with nothing asked: its
        end of file, or bytes no request asked for). Never reused then."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class KeptConnections:
    def __init__(self, endpoint_url: str, connect_timeout: float, read_timeout: float,
                 maxsize: int, ca_bundle: str | None = None) -> None:
        """``ca_bundle``: the certificates an https endpoint (and an https proxy) is verified
        against, in place of the system's store (botocore's ``AWS_CA_BUNDLE``)."""
        parts = urlsplit(endpoint_url)
        tls = parts.scheme == "https"
        self._hostname = parts.hostname or ""
        self._address = (self._hostname, parts.port or (443 if tls else 80))
        self._context = ssl.create_default_context(cafile=ca_bundle) if tls else None
        self._target = b"/"
        self._proxy: tuple[str, int] | None = None
        self._proxy_context: ssl.SSLContext | None = None
        self._proxy_headers = b""
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(self._hostname):
            found = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if found.scheme == "https":
                self._proxy_context = ssl.create_default_context(cafile=ca_bundle)
            self._proxy = (found.hostname or "", found.port or (443 if self._proxy_context
                                                                 else 80))
            if found.username is not None:
                secret = f"{unquote(found.username)}:{unquote(found.password or '')}"
                self._proxy_headers = (b"proxy-authorization: Basic "
                                       + base64.b64encode(secret.encode()) + b"\r\n")
            if not tls:  # the proxy forwards each request: it needs the whole URL
                self._target = f"http://{parts.netloc}/".encode()
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._maxsize = maxsize
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def post(self, headers: dict[str, str], body: bytes) -> Answer:
        """POST ``body`` to ``/`` with ``headers`` (Host among them) and a Content-Length."""
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = b"".join([b"POST ", self._target, b" HTTP/1.1\r\n", head.encode("latin-1"),
                            b"" if self._context else self._proxy_headers,
                            b"content-length: %d\r\n\r\n" % len(body), body])
        connection = self._idle_connection() or self._connect()
        try:
            connection.sock.sendall(request)
            answer, keep = _read_answer(connection.reader)
        except TimeoutError:
            connection.close()
            raise ReadTimedOut(f"no answer from {self._address[0]} within "
                               f"{self._read_timeout:g} s") from None
        except (OSError, ValueError, IndexError, Broken) as exc:
            connection.close()
            raise Broken(str(exc) or type(exc).__name__) from None
        if keep:
            with self._lock:
                if len(self._idle) < self._maxsize:
                    self._idle.append(connection)
                    return answer
        connection.close()
        return answer

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _idle_connection(self) -> _Connection | None:
        while True:
            with self._lock:
                if not self._idle:
                    return None
                connection = self._idle.pop()
            if not connection.dropped():
                return connection
            connection.close()

    def _connect(self) -> _Connection:
        address = self._proxy or self._address
        try:
            sock = socket.create_connection(address, timeout=self._connect_timeout)
        except TimeoutError:
            raise ConnectTimedOut(f"connecting to {address[0]}:{address[1]} took "
                                  f"over {self._connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectFailed(str(exc)) from None
        wrapped: socket.socket | SSLTransport = sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._proxy_context is not None:
                sock = wrapped = self._proxy_tls(sock)
            if self._proxy is not None and self._context is not None:
                self._tunnel(sock)
            if self._context is not None and self._proxy_context is not None:
                wrapped = SSLTransport(sock, self._context, self._hostname)
            elif self._context is not None:
                wrapped = self._context.wrap_socket(sock, server_hostname=self._hostname)
        except TimeoutError:
            sock.close()
            raise ConnectTimedOut(f"TLS with {self._address[0]} took over "
                                  f"{self._connect_timeout:g} s") from None
        except ConnectFailed:  # the proxy refused the tunnel
            sock.close()
            raise
        except ssl.SSLError as exc:
            sock.close()
            raise TLSRefused(str(exc)) from None
        except OSError as exc:
            sock.close()
            raise ConnectFailed(str(exc)) from None
        wrapped.settimeout(self._read_timeout)
        return _Connection(wrapped)

    def _proxy_tls(self, sock: socket.socket) -> ssl.SSLSocket:
        """TLS with an ``https://`` proxy; a handshake it fails names the proxy, not the
        endpoint."""
        assert self._proxy is not None and self._proxy_context is not None
        try:
            return self._proxy_context.wrap_socket(sock, server_hostname=self._proxy[0])
        except ssl.SSLError as exc:
            raise TLSRefused(f"the proxy {self._proxy[0]}:{self._proxy[1]}: {exc}") from None

    def _tunnel(self, sock: socket.socket) -> None:
        """``CONNECT`` through the proxy to the endpoint; TLS then goes end to end."""
        host, port = self._address
        sock.sendall(b"CONNECT %s:%d HTTP/1.1\r\nhost: %s:%d\r\n%s\r\n" % (
            host.encode("idna"), port, host.encode("idna"), port, self._proxy_headers))
        proxy = ":".join(map(str, self._proxy or ()))
        reader = sock.makefile("rb")
        try:
            answer, _ = _read_answer(reader, with_body=False)
        except (Broken, ValueError, IndexError) as exc:
            raise ConnectFailed(f"the proxy {proxy}: {exc}") from None
        finally:
            reader.close()
        if answer.status != 200:
            raise ConnectFailed(f"the proxy {proxy} refused to reach {host}:{port}: "
                                f"{answer.status} {answer.reason}")


def read_message(reader: io.BufferedReader, with_body: bool = True,
                 to_end: bool = False) -> tuple[bytes, dict[str, str], bytes] | None:
    """One HTTP/1.1 message off a kept connection: its first line, its header fields (names
    lower-cased) and its body, by Content-Length or chunked; with neither, none, or (``to_end``:
    an answer) what comes until the connection closes. None when the peer closed it first.
    (The tests' DynamoDB nemesis reads its requests and dynalite's answers with it too.)"""
    first = reader.readline(MAX_LINE + 1)
    if not first:
        return None
    headers: dict[str, str] = {}
    while True:
        line = reader.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            break
        if not line or len(line) > MAX_LINE:
            raise Broken("the message's headers were cut or too long")
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if not with_body:
        return first, headers, b""
    if "content-length" in headers:
        length = int(headers["content-length"])
        body = reader.read(length) if length else b""
        if len(body) < length:
            raise Broken("the message's body was cut")
        return first, headers, body
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return first, headers, _chunks(reader)
    return first, headers, reader.read() if to_end else b""


def _read_answer(reader: io.BufferedReader, with_body: bool = True) -> tuple[Answer, bool]:
    """The answer, and whether its connection may carry another request (``with_body``: False
    for a proxy's answer to ``CONNECT``, which has none)."""
    message = read_message(reader, with_body, to_end=True)
    if message is None:
        raise Broken("the connection closed before an answer")
    first, headers, body = message
    version, status, *reason = first.split(None, 2)
    if not version.startswith(b"HTTP/"):
        raise Broken(f"not an HTTP answer: {first[:40]!r}")
    framed = not with_body or "content-length" in headers or \
        "chunked" in headers.get("transfer-encoding", "").lower()
    keep = framed and version == b"HTTP/1.1" and \
        headers.get("connection", "").lower() != "close"
    return Answer(int(status), reason[0].strip().decode("latin-1") if reason else "", headers,
                  body), keep


def _chunks(reader: io.BufferedReader) -> bytes:
    body = bytearray()
    while size := int(reader.readline(MAX_LINE + 1).split(b";")[0], 16):
        body += reader.read(size)
        reader.readline(MAX_LINE + 1)
    while reader.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
        pass  # trailer fields
    return bytes(body)
