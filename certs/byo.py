"""Bring your own certificate: a publisher's PEM chain and key, checked before we store it.

Every refusal is an :class:`UploadRejected` whose message is one sentence a publisher can act
on. The input is hostile until proven otherwise: sizes are capped before anything is parsed,
only PEM blocks of the expected types are read, and what we keep is re-serialized from the
parsed objects (no bytes of the upload reach HAProxy as sent: a blank line inside a PEM would
end the runtime API's payload early).

The chain must build from the leaf to its last certificate, each signed by the next, under
the WebPKI profile (``cryptography.x509.verification``): the last certificate is the trust
anchor (a root, or the topmost intermediate when the root is left out). A lone certificate
must build to one of the system's trusted roots (certifi's bundle).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import logging
import re
import warnings

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import DNSName, PolicyBuilder, Store, VerificationError

from certs.errors import CertsError
from kit.x509 import PrivateKey

log = logging.getLogger(__name__)
MAX_CHAIN_CHARS = 64 * 1024
MAX_KEY_CHARS = 16 * 1024
MAX_CHAIN_CERTS = 8
MAX_SERVED_CHARS = 14 * 1024
"""The chain and key as the edge serves them: HAProxy takes a certificate change over its
runtime API in one buffer (``tune.bufsize``, 16 KiB, with the command's path); a larger one
could never change hot, and each upload of it would reload every node of its shard."""
ACCEPTED_KEYS = "ECDSA P-256 or P-384, or RSA of 2048 to 4096 bits"
_KIND = re.compile(r"[A-Z0-9 ]{1,40}")
BEGIN = "-----BEGIN "


class UploadRejected(CertsError):
    """An uploaded certificate or key we will not serve; the message says why."""

    def __init__(self, message: str, field: str = "certificate",
                 code: str = "invalid_certificate") -> None:
        super().__init__(message)
        self.field = field
        self.code = code


@dataclasses.dataclass(frozen=True)
class UploadedChain:
    """A checked upload, re-serialized: the chain (leaf first) and the key in PKCS#8."""

    hostname: str
    fullchain_pem: str
    key_pem: str = dataclasses.field(repr=False)
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    serving_end: datetime.datetime
    """The first expiry among the certificate and its intermediates (see :func:`serving_end`)."""
    serial: str
    issuer: str

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf's DER, as browsers and ``openssl x509 -fingerprint`` show it."""
        leaf = x509.load_pem_x509_certificate(self.fullchain_pem.encode())
        return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def validate(hostname: str, chain_pem: object, key_pem: object, *,
             now: datetime.datetime, min_remaining: datetime.timedelta,
             private_roots: bool = False) -> UploadedChain:
    """The upload for ``hostname`` (normalized: lowercase A-labels, maybe ``*.`` first), or
    :class:`UploadRejected`. ``min_remaining``: it must stay valid longer than this (the
    fallback window: a certificate inside it would never be served). ``private_roots``: a
    chain may end at a root of its own (a private CA its visitors trust)."""
    try:
        return _validate(hostname, chain_pem, key_pem, now, min_remaining, private_roots)
    except UploadRejected:
        raise
    except Exception as exc:  # a corner of the parsers hostile input reached: still a 400
        log.warning("an uploaded certificate failed a check unexpectedly (%s)",
                    type(exc).__name__)  # its text may quote the upload: not logged
        raise UploadRejected("the certificate or its key could not be read; check that both "
                             "are PEM files as your CA gave them", code="not_pem") from None


def _validate(hostname: str, chain_pem: object, key_pem: object, now: datetime.datetime,
              min_remaining: datetime.timedelta, private_roots: bool) -> UploadedChain:
    chain = _certificates(chain_pem)
    key = _private_key(key_pem)
    leaf = chain[0]
    _check_key(key, leaf)
    names = _dns_names(leaf)
    if not any(covers(name, hostname) for name in names):
        raise UploadRejected(f"the certificate names {_short(', '.join(names)) or 'no DNS name'}"
                             f", none of which covers {hostname}", code="names_mismatch")
    _check_dates(chain, now, min_remaining)
    _check_chain(chain, hostname, now, private_roots)
    pem = "".join(cert.public_bytes(serialization.Encoding.PEM).decode() for cert in chain)
    key_text = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    if len(pem) + len(key_text) > MAX_SERVED_CHARS:
        raise UploadRejected(f"the chain and key come to {(len(pem) + len(key_text)) / 1024:.1f}"
                             f" KiB as the edge serves them, and it takes at most "
                             f"{MAX_SERVED_CHARS // 1024} KiB: leave out the root, and any "
                             "intermediate your CA does not list", code="too_large_to_serve")
    return UploadedChain(
        hostname=hostname, fullchain_pem=pem, names=tuple(names), key_pem=key_text,
        not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
        serving_end=serving_end(chain),
        serial=format(leaf.serial_number, "x"), issuer=_name(leaf.issuer, 400))


def covers(name: str, hostname: str) -> bool:
    """Whether a certificate's DNS name serves ``hostname`` (RFC 6125: a wildcard stands for
    exactly one whole left-most label; a wildcard host needs the same wildcard)."""
    name = name.lower().rstrip(".")
    if name == hostname:
        return True
    if not name.startswith("*.") or hostname.startswith("*."):
        return False
    label, _, parent = hostname.partition(".")
    return bool(label) and parent == name[2:]


def _blocks(text: object, field: str, limit: int, what: str) -> list[tuple[str, str]]:
    if not isinstance(text, str) or not text.strip():
        raise UploadRejected(f"{field} is empty: paste the PEM text of the {what}",
                             field=field, code="missing")
    if len(text) > limit:
        raise UploadRejected(f"{field} is larger than {limit // 1024} KiB; a {what} is a few "
                             "KiB at most", field=field, code="too_long")
    blocks = _split(text)
    if not blocks:
        raise UploadRejected(f"{field} is not PEM text (blocks from -----BEGIN ...----- to "
                             "-----END ...-----)", field=field, code="not_pem")
    return blocks


def _split(text: str) -> list[tuple[str, str]] | None:
    """(type, body) of each PEM block, or None if any is malformed. One pass over the text
    (a regular expression with a back-reference took seconds on 64 KiB of BEGIN lines)."""
    blocks: list[tuple[str, str]] = []
    position = text.find(BEGIN)
    while position >= 0:
        head_end = text.find("-----", position + len(BEGIN))
        kind = text[position + len(BEGIN):head_end]
        if head_end < 0 or not _KIND.fullmatch(kind):
            return None
        end_marker = f"-----END {kind}-----"
        end = text.find(end_marker, head_end + 5)
        if end < 0 or BEGIN in text[head_end + 5:end]:
            return None
        blocks.append((kind, text[head_end + 5:end]))
        position = text.find(BEGIN, end + len(end_marker))
    return blocks


def _certificates(text: object) -> list[x509.Certificate]:
    blocks = _blocks(text, "certificate", MAX_CHAIN_CHARS, "certificate chain")
    kinds = {kind for kind, _ in blocks}
    if any("PRIVATE KEY" in kind for kind in kinds):
        raise UploadRejected("certificate holds a private key: send the key in private_key, "
                             "and only certificates here", code="key_in_chain")
    if kinds != {"CERTIFICATE"}:
        raise UploadRejected(f"certificate holds a {sorted(kinds - {'CERTIFICATE'})[0]} block; "
                             "send only CERTIFICATE blocks, your certificate first",
                             code="not_pem")
    if len(blocks) > MAX_CHAIN_CERTS:
        raise UploadRejected(f"certificate holds {len(blocks)} certificates; a chain has at "
                             f"most {MAX_CHAIN_CERTS}", code="too_long")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a serial RFC 5280 forbids: refused, not warned about
        try:
            chain = x509.load_pem_x509_certificates(str(text).encode())
        except Exception:  # ValueError, InvalidVersion...
            chain = []
        for cert in chain:  # fields parse lazily: read each one we use, once, here
            try:
                (cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                 cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc,
                 list(cert.extensions), cert.signature_hash_algorithm, cert.public_key())
            except Exception:  # hostile DER reaches odd corners of the parser (a KeyError)
                chain = []
                break
    if not chain:
        raise UploadRejected("certificate holds a CERTIFICATE block that does not parse as an "
                             "X.509 certificate", code="not_pem")
    return chain


def _private_key(text: object) -> PrivateKey:
    blocks = _blocks(text, "private_key", MAX_KEY_CHARS, "private key")
    keys = [(kind, body) for kind, body in blocks if "PRIVATE KEY" in kind]
    if len(keys) != 1 or len(blocks) != 1:
        raise UploadRejected(f"private_key must hold exactly one private key; it holds "
                             f"{len(keys)} key(s) in {len(blocks)} PEM block(s)",
                             field="private_key", code="one_key")
    kind, body = keys[0]
    if kind == "ENCRYPTED PRIVATE KEY" or "ENCRYPTED" in body.split("\n\n")[0]:
        raise UploadRejected("the private key is encrypted; send it without a passphrase "
                             "(we encrypt it at rest ourselves)", field="private_key",
                             code="encrypted_key")
    try:
        key = serialization.load_pem_private_key(str(text).encode(), password=None)
    except Exception:  # ValueError, TypeError, UnsupportedAlgorithm, or odder on hostile DER
        raise UploadRejected("private_key does not parse as a PEM private key",
                             field="private_key", code="not_pem") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) \
            and isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1)):
        return key
    if isinstance(key, rsa.RSAPrivateKey) and 2048 <= key.key_size <= 4096:
        return key
    raise UploadRejected(f"the key type is not accepted: use {ACCEPTED_KEYS}",
                         field="private_key", code="key_type")


def _spki(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_key(key: PrivateKey, leaf: x509.Certificate) -> None:
    try:
        leaf_key = _spki(leaf.public_key())
    except (ValueError, UnsupportedAlgorithm):
        raise UploadRejected("the certificate's public key is of a type we cannot use: use "
                             + ACCEPTED_KEYS, code="key_type") from None
    if _spki(key.public_key()) != leaf_key:
        raise UploadRejected("the private key does not belong to the first certificate of the "
                             "chain (send your certificate first, then its intermediates)",
                             field="private_key", code="key_mismatch")


def _dns_names(leaf: x509.Certificate) -> list[str]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []  # browsers ignore the common name: no SAN serves no host
    except ValueError:
        raise UploadRejected("the certificate's subjectAltName does not parse",
                             code="names_mismatch") from None
    return [str(name) for name in san.get_values_for_type(x509.DNSName)]


def _day(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _check_dates(chain: list[x509.Certificate], now: datetime.datetime,
                 min_remaining: datetime.timedelta) -> None:
    for position, cert in enumerate(chain):
        which = "the certificate" if position == 0 else \
            f"certificate {position + 1} of the chain ({_subject(cert)})"
        if cert.not_valid_after_utc <= now:
            raise UploadRejected(f"{which} expired on {_day(cert.not_valid_after_utc)}",
                                 code="expired")
        if cert.not_valid_before_utc > now:
            raise UploadRejected(f"{which} is not valid before "
                                 f"{_day(cert.not_valid_before_utc)}", code="not_yet_valid")
    end = serving_end(chain)
    if end - now <= min_remaining:
        which = "the certificate" if end == chain[0].not_valid_after_utc else "its chain"
        raise UploadRejected(
            f"{which} expires on {_day(end)}, within "
            f"{min_remaining.total_seconds() / 86400:g} days, when we serve our own instead; "
            "upload one valid longer", code="expiring")


def serving_end(chain: list[x509.Certificate]) -> datetime.datetime:
    """When the chain stops working for visitors: the first expiry among the certificate and
    its intermediates (a root at the end is the browser's own copy that counts)."""
    last = chain[-1]
    served = chain[:-1] if len(chain) > 1 and last.subject == last.issuer else chain
    return min(cert.not_valid_after_utc for cert in served)


def _check_chain(chain: list[x509.Certificate], hostname: str, now: datetime.datetime,
                 private_roots: bool) -> None:
    """Each certificate signed by the next, and a path to a root of certifi's bundle (the
    browsers'), or with ``private_roots`` to the chain's own last certificate."""
    for position, (cert, issuer) in enumerate(zip(chain, chain[1:]), start=1):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise UploadRejected(
                f"certificate {position} of the chain ({_subject(cert)}) is not "
                f"signed by certificate {position + 1} ({_subject(issuer)}); "
                "order the chain from your certificate up to its root", code="broken_chain") \
                from None
    problem = _path_problem(chain, hostname, now, _system_roots())
    if problem is None:
        return
    if len(chain) == 1:
        raise UploadRejected("the certificate alone does not lead to a trusted root: add "
                             "its intermediate certificates after it", code="broken_chain")
    own_root = _path_problem(chain, hostname, now, [chain[-1]])
    if own_root is not None:
        raise UploadRejected(f"the chain does not build: {own_root}", code="broken_chain")
    if not private_roots:
        raise UploadRejected(f"the chain ends at {_subject(chain[-1])}, which browsers do not "
                             "trust: upload a certificate from a public CA", code="untrusted_root")


def _path_problem(chain: list[x509.Certificate], hostname: str, now: datetime.datetime,
                  anchors: list[x509.Certificate]) -> str | None:
    """Why ``chain`` does not build a WebPKI path to one of ``anchors``, or None."""
    # A wildcard host is checked as one of the names it stands for (the names check is ours).
    subject = hostname.replace("*", "wildcard-check", 1)
    verifier = PolicyBuilder().store(Store(anchors)).time(now).build_server_verifier(
        DNSName(subject))
    try:
        verifier.verify(chain[0], chain[1:])
    except (VerificationError, ValueError) as exc:
        return _reason(exc)
    return None


def _reason(exc: Exception) -> str:
    text = str(exc).removeprefix("validation failed: ")
    return _short(re.sub(r"\s*\(encountered processing .*\)$", "", text, flags=re.S))


def _short(text: str, limit: int = 120) -> str:
    """Text from the upload (a subject, the verifier's words) kept to one short line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _subject(cert: x509.Certificate) -> str:
    return _name(cert.subject)


def _name(name: x509.Name, limit: int = 120) -> str:
    try:
        return _short(name.rfc4514_string(), limit)
    except ValueError:
        return "a name that does not parse"


@functools.lru_cache(maxsize=1)
def _system_roots() -> list[x509.Certificate]:
    import certifi

    with open(certifi.where(), "rb") as bundle, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few old roots have serials RFC 5280 disallows
        return x509.load_pem_x509_certificates(bundle.read())
