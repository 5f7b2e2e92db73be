"""A TLS scan (testssl.sh) of a running edge: modern protocols and AEAD, forward-secret ciphers."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.node import EdgeNode
from edge.state import DesiredState, Route
from kit.x509 import self_signed

pytestmark = pytest.mark.slow


@pytest.fixture
def node(node: EdgeNode) -> EdgeNode:
    node.apply(DesiredState((Route("scan.example.test", "pub_1",
                                   self_signed("scan.example.test")[1]),),
                            ("127.0.0.1:9",), ("127.0.0.1:9",)))
    return node


def test_testssl_finds_no_old_protocols_and_no_weak_ciphers(node: EdgeNode,
                                                            tmp_path: Path) -> None:
    testssl = shutil.which("testssl") or shutil.which("testssl.sh")
    assert testssl, "testssl.sh is installed by scripts/bootstrap.sh --test"
    report = tmp_path / "scan.json"
    subprocess.run([testssl, "--quiet", "--color", "0", "--warnings", "off", "-p", "-e",
                    "--jsonfile", str(report), "--ip", "127.0.0.1",
                    f"scan.example.test:{node.layout.https_port}"],
                   check=True, capture_output=True, timeout=300)
    findings = {entry["id"]: entry["finding"] for entry in json.loads(report.read_text())}
    for protocol in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert findings[protocol] == "not offered", (protocol, findings[protocol])
    assert findings["TLS1_2"] == "offered"
    assert findings["TLS1_3"].startswith("offered")
    assert findings["ALPN_HTTP2"] == "h2"
    ciphers = [finding for key, finding in findings.items() if key.startswith("cipher_x")]
    assert ciphers, findings
    for cipher in ciphers:
        _, name, key_exchange, _, encryption, bits, *_ = cipher.split()
        assert encryption in ("AESGCM", "ChaCha20") and int(bits) >= 128, cipher
        assert key_exchange in ("ECDH", "DH"), f"no forward secrecy: {cipher}"
