"""Values from the control feed that could smuggle commands into HAProxy's runtime API or
lines into a node's files, against a real HAProxy: each is refused before it is sent, and
what HAProxy serves stays as it was (a security review's repros, defence in depth)."""
from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devtools.probe import https_get
from devtools.sample_app import SampleApp
from edge.node import EdgeNode
from edge.plan import CertificateRejected, check_pem
from edge.render import RenderError, validate_route
from edge.runtime import UnsafeCommand
from edge.state import Redirect, Route, StateDelta
from kit import route_extras
from kit.x509 import build_certificate, cert_to_pem, key_to_pem
from kit.x509 import self_signed as self_signed_pem
from tests.test_edge_node import app, state  # noqa: F401 (app: the fixture, shared)


def served(node: EdgeNode, app: SampleApp) -> tuple[str, Path, Path]:
    """One route applied; (its PEM, the hosts map, its certificate file) as HAProxy knows them."""
    pem = self_signed_pem("one.example.test")[1]
    node.apply(state(app, Route("one.example.test", "pub_1", pem)))
    release = node.current.resolve()
    assert node.runtime.show_map(release / "hosts.map") == {"one.example.test": "pub_1"}
    return pem, release / "hosts.map", release / "certs" / "one.example.test.pem"


def smuggling(pem: str, hosts_map: Path, blank: str = "\n") -> str:
    """The review's repro: the certificate, an empty line (where a runtime-API payload ends),
    a command of the sender's choosing, then the key."""
    cert, _, key = pem.partition("-----BEGIN PRIVATE KEY-----")
    return (f"{cert.rstrip()}\n{blank}set map {hosts_map} one.example.test INJECTED\n"
            f"-----BEGIN PRIVATE KEY-----{key}")


def test_a_pem_with_text_outside_its_blocks_is_refused(node: EdgeNode, app: SampleApp) -> None:
    pem, hosts_map, _ = served(node, app)
    evil = smuggling(pem, hosts_map)
    with pytest.raises(CertificateRejected, match="outside its PEM blocks"):
        check_pem(Route("one.example.test", "pub_1", evil))
    with pytest.raises(CertificateRejected):
        node.apply(state(app, Route("one.example.test", "pub_1", evil)))
    assert node.runtime.show_map(hosts_map) == {"one.example.test": "pub_1"}
    spaced = "\n\n" + pem.replace("-----\n-----", "-----\n\n\n-----") + "\n\n"
    check_pem(Route("one.example.test", "pub_1", spaced))  # whitespace between blocks is fine


@pytest.mark.parametrize("blank", ["\n", "\r\n"])
def test_a_certificate_upload_never_carries_an_empty_line(node: EdgeNode, app: SampleApp,
                                                          blank: str) -> None:
    """The upload itself drops empty lines and carriage returns (HAProxy reads "\\r\\n" as
    "\\n"): the smuggled command stays text of the PEM, which the certificate store ignores."""
    pem, hosts_map, cert_path = served(node, app)
    batch = node.runtime.batch()
    batch.set_cert(cert_path, smuggling(pem, hosts_map, blank))
    batch.commit_cert(cert_path)
    assert batch.send() == 2
    assert node.runtime.show_map(hosts_map) == {"one.example.test": "pub_1"}


@pytest.mark.parametrize("payload", ["two.example.test pub_2\n\nset map {map} {key} INJECTED",
                                     "two.example.test pub_2\r\n\r\nset map {map} {key} INJECTED",
                                     "\nset map {map} {key} INJECTED"])
def test_the_sender_refuses_a_payload_with_an_empty_line(node: EdgeNode, app: SampleApp,
                                                         payload: str) -> None:
    _, hosts_map, _ = served(node, app)
    text = payload.format(map=hosts_map, key="one.example.test")
    with pytest.raises(UnsafeCommand):
        node.runtime.command(f"add map {hosts_map}", text)
    with pytest.raises(UnsafeCommand):
        node.runtime.run_batch([(f"add map {hosts_map}", text)])
    assert node.runtime.show_map(hosts_map) == {"one.example.test": "pub_1"}


def _authority(name: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
               issuer: x509.Name | None) -> x509.Certificate:
    """A CA certificate that may sign one more CA below it (kit.x509's may not)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                signer.public_key()), critical=False)
            .sign(signer, hashes.SHA256()))


def test_a_chain_with_blank_lines_between_its_certificates_still_applies_hot(
        node: EdgeNode, app: SampleApp) -> None:
    """A CA may answer a chain with empty lines between its certificates (and CRLF line ends):
    the node serves it, intermediate included, with no reload."""
    served(node, app)
    root_key, middle_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in "abc")
    root = _authority("test root", root_key, root_key, None)
    middle = _authority("test intermediate", middle_key, root_key, root.subject)
    leaf = build_certificate("one.example.test", leaf_key, signer=middle_key,
                             issuer=middle.subject, names=["one.example.test"])
    chain = (cert_to_pem(leaf) + "\n\n" + cert_to_pem(middle).replace("\n", "\r\n") + "\r\n\n"
             + key_to_pem(leaf_key))
    reloads, hot = node.reloads, node.hot_applies
    node.apply(state(app, Route("one.example.test", "pub_1", chain)))
    assert (node.reloads, node.hot_applies) == (reloads, hot + 1), "hot, no fallback reload"
    probe = https_get(node.layout.https_port, "one.example.test", cadata=cert_to_pem(root))
    assert (probe.status, probe.json()["publication_id"]) == (200, "pub_1")


def test_a_removed_redirect_key_cannot_inject_commands(node: EdgeNode, app: SampleApp) -> None:
    """The review's repro: a removed link's key is sent to ``del map`` as it is."""
    _, hosts_map, _ = served(node, app)
    base = node.applied_version or ""
    config = state(app).config
    evil = f"x.test/a\nset\tmap\t{hosts_map}\tone.example.test\tINJECTED"
    link = Redirect("x.test", "a", 302, "https://e.com/a")
    for routes, redirects in (({}, {evil: None}),
                              ({}, {"x.test/a b": None}),
                              ({}, {"x.test/b": link}),  # not the key of its redirect
                              ({"one.example.test\nx": None}, {}),
                              ({"two.example.test\nx": Route("two.example.test", "pub_2",
                                                             self_signed_pem("two")[1])}, {})):
        delta = StateDelta(base, "1" * 16, config, routes, redirects)
        assert node.can_apply_delta(delta)
        with pytest.raises(RenderError, match="is not keyed by"):
            node.apply_delta(delta)
        assert node.runtime.show_map(hosts_map) == {"one.example.test": "pub_1"}
        assert node.applied_version == base


@pytest.mark.parametrize("key", ["x.test/a\nset map {map} one.example.test INJECTED",
                                 "x.test/a\rb", "x.test/a\tb", "x.test/a\x00b", "x.test/\x7f"])
def test_a_runtime_argument_with_a_control_character_is_refused(node: EdgeNode, app: SampleApp,
                                                                key: str) -> None:
    _, hosts_map, _ = served(node, app)
    batch = node.runtime.batch()
    with pytest.raises(UnsafeCommand):
        batch.del_map(hosts_map, key.format(map=hosts_map), missing_ok=True)
        batch.send()
    with pytest.raises(UnsafeCommand):
        batch.set_map(hosts_map, "one.example.test", key.format(map=hosts_map), exists=True)
        batch.send()
    with pytest.raises(UnsafeCommand):
        batch.add_map(hosts_map, key.format(map=hosts_map), "pub_2")
        batch.send()
    assert node.runtime.show_map(hosts_map) == {"one.example.test": "pub_1"}


@pytest.mark.parametrize("extras", [
    '{"redirect":{"code":308,"to":"a.example.test","x":"\u2028two.example.test pub_2"}}',
    '{"redirect":{"code":308,"to":"a.example.test","x":1}}',
    '{"pool":"canary" }',
    '{"pool":\n"canary"}',
    '{"pool":"\\u0063anary"}',
    '{"redirect":{"to":"a.example.test","code":308}}',
    '{"redirect":{"code":308.0,"to":"a.example.test"}}',
    '{"meta":{}}'])
def test_extras_that_are_not_canonical_are_refused(extras: str) -> None:
    """Extras are one line of ``routes.extras``, which is read back with ``splitlines``: only
    their canonical text (ASCII JSON, escaped) goes there."""
    with pytest.raises(RenderError):
        validate_route(Route("b.example.test", "pub_1", "", extras), ["canary"])


def test_canonical_extras_are_accepted_and_hold_no_line_break() -> None:
    for extras in (route_extras.encode("a.example.test", 301), route_extras.encode(
            pool="canary", meta={"plan": "pro", "a": "b"})):
        validate_route(Route("b.example.test", "pub_1", "", extras), ["canary"])
        assert extras.isascii() and extras.splitlines() == [extras]
    assert route_extras.encode(meta={"k": "\u2028"}).isascii(), "json escapes the rest"
    with pytest.raises(route_extras.ExtrasError, match="only a target and a code"):
        route_extras.decode('{"redirect":{"code":308,"to":"a.example.test","x":1}}')
