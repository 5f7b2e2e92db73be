"""One edge node: render a desired state into a new release, check it, swap it in, reload.

Releases live in ``<dir>/releases/<n>-<version>/``; ``<dir>/current`` is a symlink swapped
atomically, and HAProxy always runs ``current/haproxy.cfg``. A release HAProxy refuses is
deleted before it ever becomes current, so the node keeps serving the last good one, and a
restart serves exactly what ``current`` points at.
"""
from __future__ import annotations

import datetime
import logging
import os
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.haproxy import HAProxy
from edge.render import NodeLayout, render
from edge.state import DesiredState

log = logging.getLogger(__name__)
KEEP_RELEASES = 3


class EdgeNode:
    def __init__(self, directory: Path, *, haproxy_bin: str = "haproxy", bind: str = "127.0.0.1",
                 http_port: int = 80, https_port: int = 443,
                 templates: Path | None = None) -> None:
        self.directory = directory.absolute()
        self.templates = templates
        (self.directory / "releases").mkdir(parents=True, exist_ok=True)
        self.layout = NodeLayout(bind=bind, http_port=http_port, https_port=https_port,
                                 runtime_socket=self.directory / "admin.sock",
                                 default_cert=self.directory / "default.pem")
        self.current = self.directory / "current"
        self.haproxy = HAProxy(haproxy_bin, self.current / "haproxy.cfg",
                               self.directory / "master.sock", self.directory / "haproxy.log")
        self.last_error: str | None = None
        _ensure_default_cert(self.layout.default_cert)

    @property
    def applied_version(self) -> str | None:
        marker = self.current / "VERSION"
        return marker.read_text().strip() if marker.exists() else None

    def apply(self, state: DesiredState) -> bool:
        """Serve ``state``; False if it was already served. Raises (keeping the old state) if refused."""
        if state.version == self.applied_version and self.haproxy.running:
            return False
        if state.version != self.applied_version:
            release = self._write_release(state)
            try:
                self.haproxy.check(release / "haproxy.cfg")
            except Exception as exc:
                shutil.rmtree(release, ignore_errors=True)
                self.last_error = str(exc)
                raise
            self._swap(release)
        if self.haproxy.running:
            self.haproxy.reload()
        else:
            self.haproxy.start()
        self.last_error = None
        self._prune()
        log.info("edge now serves version %s (%d routes)", state.version, len(state.routes))
        return True

    def start(self) -> None:
        """Serve whatever was applied last (after a restart of the node)."""
        if self.applied_version and not self.haproxy.running:
            self.haproxy.start()

    def stop(self) -> None:
        self.haproxy.stop()

    def _write_release(self, state: DesiredState) -> Path:
        number = len(list((self.directory / "releases").iterdir()))
        stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S%f")
        release = self.directory / "releases" / f"{stamp}-{number}-{state.version}"
        (release / "certs").mkdir(parents=True)
        os.chmod(release / "certs", 0o700)
        for name, content in render(state, self.layout, release, self.templates).items():
            path = release / name
            path.write_text(content)
            if name.startswith("certs/"):
                path.chmod(0o600)
        (release / "VERSION").write_text(state.version + "\n")
        return release

    def _swap(self, release: Path) -> None:
        link = self.directory / "current.new"
        link.unlink(missing_ok=True)
        link.symlink_to(release.relative_to(self.directory))
        os.replace(link, self.current)

    def _prune(self) -> None:
        keep = {self.current.resolve()}
        releases = sorted((self.directory / "releases").iterdir())
        for old in releases[:-KEEP_RELEASES]:
            if old.resolve() not in keep:
                shutil.rmtree(old, ignore_errors=True)


def _ensure_default_cert(path: Path) -> None:
    """A self-signed certificate HAProxy serves for unknown SNI (it needs one to bind TLS)."""
    if path.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-default.invalid")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    tmp.chmod(0o600)
    os.replace(tmp, path)
