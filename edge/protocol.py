"""The edge feed's protocol version: what an agent says it reads, and the state in that form.

During an upgrade a fleet runs two releases (replicas first, then agents), so the control
service serves each agent the form it reads. An agent sends ``Edge-Protocol: <n>``; one that
sends none speaks protocol 0, the release before the header (v0.1.0). A newer protocol than the
control service knows is refused (426): replicas are upgraded before agents.

Today protocols 0 and 1 read the same map values: v0.1.0 already reads device links
(``d<code>|...``, which came before it), so every agent gets the same state and version. The
forms below are for the next value format an older agent cannot read: each format names the
first protocol that reads it (``DEVICE_LINKS`` is the example, and the tests exercise the
forms by pretending device links are new). An older agent's state then leaves those values
out (HAProxy hands such a link to the short-link service, which answers it as the map would),
and carries its own version: the redirects digest is replaced by a tag of it, from which the
version is computed as ever. An agent upgraded later sees a new version, and its node takes
the left-out links hot.
"""
from __future__ import annotations

from typing import Any

from edge.state import EdgeConfig, redirect_hash, state_version

PROTOCOL = 1
OLDEST = 0
HEADER = "Edge-Protocol"
DEVICE_LINKS = 0
"""The first protocol whose agents read ``d<code>|...`` map values (v0.1.0 does)."""


def same_form(protocol: int) -> bool:
    """Whether agents of ``protocol`` read every map value format: then they get the newest
    form, and its version."""
    return protocol >= DEVICE_LINKS


class ProtocolRefused(ValueError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def parse(value: str | None) -> int:
    """The protocol an agent's header names (none: 0); raises :class:`ProtocolRefused`."""
    return parse_number(value, HEADER, OLDEST, PROTOCOL, (
        f"this control service speaks edge protocol {OLDEST} to {PROTOCOL}, the agent {{}}: "
        "upgrade the control replicas before the agents"))


def parse_number(value: str | None, header: str, oldest: int, newest: int,
                 too_new: str) -> int:
    """The version a client's ``header`` names (none: ``oldest``). Not a number: 400; newer
    than ``newest``: 426 with ``too_new`` (its ``{}`` is the number), so an agent upgraded
    before the replicas is told why rather than sent what it may misread."""
    if value is None or not value.strip():
        return oldest
    text = value.strip()
    if not text.isdigit() or len(text) > 6:
        raise ProtocolRefused(f"{header} must be a whole number, such as {newest}", 400)
    number = int(text)
    if number > newest:
        raise ProtocolRefused(too_new.format(number), 426)
    return max(number, oldest)


def readable(value: str, protocol: int) -> bool:
    """Whether an agent of ``protocol`` can apply this map value."""
    return protocol >= DEVICE_LINKS or not value.startswith("d")


def tagged_digest(redirects_digest: str, protocol: int) -> str:
    """The redirects digest a state carries in ``protocol``'s form (no links: none either)."""
    if same_form(protocol) or int(redirects_digest or "0", 16) == 0:
        return redirects_digest
    return f"{redirect_hash(f'edge-protocol-{protocol}', redirects_digest):032x}"


def version_for(routes_digest: int, config: EdgeConfig, redirects_digest: str,
                protocol: int) -> str:
    """The version of a state in ``protocol``'s form."""
    return state_version(routes_digest, config,
                         int(tagged_digest(redirects_digest, protocol) or "0", 16))


def downgrade(doc: dict[str, Any], protocol: int, routes_digest: int,
              config: EdgeConfig) -> dict[str, Any]:
    """``doc`` (a snapshot or a delta, in the newest form) as an agent of ``protocol`` reads
    it: map values it cannot apply left out (a delta removes them: the agent may hold the
    link's earlier plain value) and the version of that form."""
    if same_form(protocol):
        return doc
    out = dict(doc)
    if "redirects" in doc:
        out["redirects"] = [link for link in doc["redirects"] if readable(link[1], protocol)]
    if "redirect_changes" in doc:
        out["redirect_changes"] = [
            [key, value if value is None or readable(value, protocol) else None]
            for key, value in doc["redirect_changes"]]
    digest = doc.get("redirects_digest") or "0" * 32
    out["redirects_digest"] = tagged_digest(digest, protocol)
    out["version"] = version_for(routes_digest, config, digest, protocol)
    return out


def meta_version(meta: dict[str, Any], protocol: int) -> str:
    """The version the state in the version item ``meta`` has in ``protocol``'s form."""
    if same_form(protocol):
        return str(meta["edge_version"])
    return version_for(int(meta.get("routes_digest") or "0", 16),
                       EdgeConfig.from_json(meta.get("config") or {}),
                       meta.get("redirects_digest") or "0" * 32, protocol)


# --- batch certificate downloads ------------------------------------------------------------

CERT_BATCH = 1
"""The form of a batch certificate download (``POST /api/v1/edge/certs``): the request names
``{"format", "certs": [{"hostname", "sha256"}, ...]}``, the answer (gzip'd when the agent
accepts it) ``{"format", "certs": [{"hostname", "cert_sha256", "pem"}], "missing": [...]}``.
A control service that offers it says so in every state it sends (``"cert_batch": {"format",
"max"}``); an agent that sees no offer (v0.1.0 and the releases up to protocol 1 make none)
downloads one certificate per GET, as before. A format is never changed, only added: an agent
asks in the newest format both sides read."""
CERT_BATCH_MAX = 1000
"""Certificates in one batch at most: about 1.5 MB of JSON before compression."""
CERT_BATCH_KEY = "cert_batch"


def batch_offer() -> dict[str, int]:
    """What the control service adds to each state it sends."""
    return {"format": CERT_BATCH, "max": CERT_BATCH_MAX}


def batch_size(offer: Any) -> int:
    """Certificates per batch request an agent uses against a state's ``offer`` (0: the
    control service offers none, or in no format this agent reads: one GET each)."""
    if not isinstance(offer, dict):
        return 0
    form, most = offer.get("format"), offer.get("max")
    if not isinstance(form, int) or form < CERT_BATCH or not isinstance(most, int):
        return 0
    return max(0, min(most, CERT_BATCH_MAX))
