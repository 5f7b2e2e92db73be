"""Render a desired state into the files of one HAProxy release: config, host map, crt-list, certs."""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from importlib import resources
from pathlib import Path
from typing import Iterable

import jinja2

from edge.errors import EdgeError
from edge.state import DesiredState, EdgeConfig, Redirect, Route, StateDelta
from kit import route_extras

# Values land in haproxy.cfg and map files: anything outside these shapes could inject config.
_HOSTNAME = re.compile(r"(\*\.)?[a-z0-9.-]{1,253}")
_PUBLICATION = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TARGET = re.compile(r"https?://[\x21-\x7e]{1,2040}")  # printable, no spaces
_PUBLIC_KEY = re.compile(r"-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/=\n]+-----END PUBLIC KEY-----")
_SERVER = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,300}:[0-9]{1,5}$")


class RenderError(EdgeError, ValueError):
    """The desired state holds a value that must never reach HAProxy's files."""


@dataclasses.dataclass(frozen=True)
class NodeLayout:
    """Where one node listens and keeps its files; each release renders into its own folder."""

    bind: str
    http_port: int
    https_port: int
    runtime_socket: Path
    default_cert: Path
    stats_port: int = 0
    """HAProxy's Prometheus exporter at /metrics; 0 turns it off."""
    stats_bind: str = ""
    """The address it listens on (empty: ``bind``)."""
    control_ca: str = ""
    """The CA file HAProxy verifies the control replicas' TLS with (``@system-ca``: the
    system's); empty: they speak plain HTTP."""
    redirect_capacity: int = 1_000_000
    """Entries of the stick table counting visits of map-served links: the whole map (an entry
    takes memory only once its link is visited)."""
    proxy_https_port: int = 0
    proxy_http_port: int = 0
    """The binds a shard router (edge/router.py) forwards to, which take a PROXY v2 header
    first: TLS (unterminated, by SNI) and plain HTTP; 0 turns each off."""

    @property
    def health_map(self) -> Path:
        """What the routers' health check answers from (edge/node_health.py): in the node's
        directory, beside the default certificate, outside every release."""
        return self.default_cert.with_name("health.map")


@functools.lru_cache(maxsize=8)
def _environment(templates: Path | None) -> jinja2.Environment:
    folder = template_folder(templates)
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              autoescape=False)


def template_folder(templates: Path | None) -> Path:
    """``templates``, or the packaged ones."""
    return templates or Path(str(resources.files("haproxy_templates")))


ROUTER_TEMPLATE = "router.cfg.j2"
"""The shard router's (edge/router.py): no part of an edge node's structure."""


def template_bytes(templates: Path | None) -> bytes:
    """The template files' content in name order: what part of a node's structure they are
    (a change of them takes a reload)."""
    return b"".join(template.read_bytes()
                    for template in sorted(template_folder(templates).glob("*.j2"))
                    if template.name != ROUTER_TEMPLATE)


def validate_route(route: Route, pools: Iterable[str] = ()) -> None:
    """One route, extras included: ``pools`` are the configured origin pools' names."""
    if not _HOSTNAME.fullmatch(route.hostname) or ".." in route.hostname:
        raise RenderError(f"route hostname {route.hostname!r} is not a normalized hostname")
    if not _PUBLICATION.fullmatch(route.publication_id):
        raise RenderError(f"publication id {route.publication_id!r} has unsafe characters")
    if route.extras:
        _validate_extras(route, pools)


def validate_redirect(redirect: Redirect) -> None:
    if not map_safe(redirect):
        raise RenderError(f"redirect {redirect.key!r} has unsafe values")


def validate(state: DesiredState) -> None:
    validate_values(state.config, state.routes, state.redirects)


def validate_values(config: EdgeConfig, routes: Iterable[Route],
                    redirects: Iterable[Redirect]) -> None:
    """The config and these routes and redirects: a whole state's, or a delta's changes."""
    validate_config(config)
    pools = {name for name, _ in config.origin_pools}
    for route in routes:
        validate_route(route, pools)
    for redirect in redirects:
        validate_redirect(redirect)


def validate_delta(delta: StateDelta) -> None:
    """A delta's config and changed values, and its keys: each a normalized hostname or a
    ``host/slug`` map key, the very one of its route or redirect. A removed one's key too, as
    it reaches HAProxy's runtime API as it is."""
    validate_values(delta.config, (r for r in delta.routes.values() if r is not None),
                    (r for r in delta.redirects.values() if r is not None))
    for hostname, route in delta.routes.items():
        if not _HOSTNAME.fullmatch(hostname) or ".." in hostname or \
                (route is not None and route.hostname != hostname):
            raise RenderError(f"route change {hostname!r:.300} is not keyed by its hostname")
    for key, redirect in delta.redirects.items():
        host, _, slug = key.partition("/")
        if not (_HOSTNAME.fullmatch(host) and _SLUG.fullmatch(slug)) or \
                (redirect is not None and redirect.key != key):
            raise RenderError(f"redirect change {key!r:.300} is not keyed by host/slug")


def validate_config(config: EdgeConfig) -> None:
    """What is neither a route nor a redirect: short domains, servers, SSO keys, pools."""
    for host in config.short_domains:
        if not _HOSTNAME.fullmatch(host) or ".." in host or host.startswith("*"):
            raise RenderError(f"short domain {host!r} is not a normalized hostname")
    if config.short_domains and not config.shortlink_servers:
        raise RenderError("short domains need at least one short-link server")
    for server in config.app_servers + config.control_servers + config.shortlink_servers:
        if not _SERVER.fullmatch(server):
            raise RenderError(f"server {server!r} must be host:port")
    for pem in config.sso_keys:
        if not _PUBLIC_KEY.fullmatch(pem.strip()):
            raise RenderError("an SSO key is not a PEM public key")
    if not config.control_servers:
        raise RenderError("at least one control server is needed for ACME challenges")
    for name, servers in config.origin_pools:
        if not route_extras.POOL_NAME.fullmatch(name) or not servers:
            raise RenderError(f"origin pool {name!r} needs a plain name and servers")
        for server in servers:
            if not _SERVER.fullmatch(server):
                raise RenderError(f"server {server!r} of pool {name} must be host:port")


def _validate_extras(route: Route, pools: Iterable[str]) -> None:
    try:
        extras = route_extras.decode(route.extras)
    except route_extras.ExtrasError as exc:
        raise RenderError(f"route {route.hostname}: {exc}") from None
    if route.extras != route_extras.canonical(extras):  # one line of routes.extras, never two
        raise RenderError(f"route {route.hostname}: extras are not in their canonical form")
    target = (extras.get("redirect") or {}).get("to")
    if target is not None and (not _HOSTNAME.fullmatch(target) or ".." in target
                               or target.startswith("*") or target == route.hostname):
        raise RenderError(f"route {route.hostname} redirects to {target!r}, not a hostname")
    if extras.get("pool") is not None and extras["pool"] not in pools:
        raise RenderError(f"route {route.hostname} names origin pool {extras['pool']!r}, "
                          "which is not configured")


def map_safe(redirect: Redirect) -> bool:
    """Whether HAProxy may serve this redirect from its map; others stay on the Python path."""
    return bool(_HOSTNAME.fullmatch(redirect.host) and _SLUG.fullmatch(redirect.slug)
                and redirect.code in (301, 302, 307, 308) and len(redirect.devices) in (0, 3)
                and all(_TARGET.fullmatch(url) for url in (redirect.target, *redirect.devices))
                and isinstance(redirect.expires, int) and 0 <= redirect.expires < 2 ** 40)


def render(state: DesiredState, layout: NodeLayout, release_dir: Path,
           templates: Path | None = None, meta: list[str] | None = None) -> dict[str, str]:
    """File name (relative to ``release_dir``) -> content; ``templates`` overrides the packaged
    ones; ``meta``: the metadata keys to give a header line (default: the routes')."""
    validate(state)
    env = _environment(templates)
    files = {
        "haproxy.cfg": env.get_template("haproxy.cfg.j2").render(
            version=state.version, bind=layout.bind, http_port=layout.http_port,
            https_port=layout.https_port, runtime_socket=layout.runtime_socket,
            proxy_https_port=layout.proxy_https_port, proxy_http_port=layout.proxy_http_port,
            default_cert=layout.default_cert, stats_port=layout.stats_port,
            stats_bind=layout.stats_bind or layout.bind, crt_list=release_dir / "crt-list",
            health_map=layout.health_map,
            hosts_map=release_dir / "hosts.map", redirects_map=release_dir / "redirects.map",
            app_servers=state.app_servers, short_domains=sorted(state.short_domains),
            shortlink_servers=state.shortlink_servers,
            control_servers=[(server, _server_name(server)) for server in state.control_servers],
            control_ca=layout.control_ca, redirect_capacity=layout.redirect_capacity,
            origin_pools=state.origin_pools,
            domain_redirects_map=release_dir / "domain_redirects.map",
            pools_map=release_dir / "pools.map", meta_map=release_dir / "meta.map",
            meta_keys=meta_keys(state.routes) if meta is None else meta,
            sso_keys=[release_dir / f"sso/key{n}.pem" for n in range(len(state.sso_keys))]),
        **render_lists(state, release_dir),
    }
    for route in state.routes:
        files[f"certs/{cert_file(route.hostname)}"] = route.pem
    for n, pem in enumerate(state.sso_keys):
        files[f"sso/key{n}.pem"] = pem
    return files


def _server_name(server: str) -> str:
    """The DNS name of ``host:port`` for HAProxy's ``verifyhost``; empty for an address."""
    host = server.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
        return ""
    except ValueError:
        return host


def cert_file(hostname: str) -> str:
    """A route's certificate file name (no ``*`` in paths: ``*.x`` becomes ``_wildcard.x``)."""
    return hostname.replace("*", "_wildcard") + ".pem"


EXTRAS_MAPS = ("domain_redirects.map", "pools.map", "meta.map")
"""The map files of the routes' extras, keyed by route (meta.map: ``route/key``)."""


def route_meta_keys(route: Route) -> set[str]:
    return set(route_extras.decode(route.extras)["meta"]) if '"meta"' in route.extras else set()


def meta_keys(routes: Iterable[Route]) -> list[str]:
    """Every metadata key some route carries: each is one header line in haproxy.cfg (HAProxy
    takes no header name from a variable), while the values live in a map, changed hot."""
    keys: set[str] = set()
    for route in routes:
        keys |= route_meta_keys(route)
    return sorted(keys)


def route_extras_entries(route: Route) -> dict[str, dict[str, str]]:
    """One route's entries in each extras map (a map name -> key -> value): what a hot change
    of that route deletes and adds, and what the files hold for it."""
    entries: dict[str, dict[str, str]] = {name: {} for name in EXTRAS_MAPS}
    if not route.extras:
        return entries
    extras = route_extras.decode(route.extras)
    if "redirect" in extras:
        redirect = extras["redirect"]
        entries["domain_redirects.map"][route.hostname] = f"{redirect['code']}|{redirect['to']}"
    if "pool" in extras:
        entries["pools.map"][route.hostname] = f"pool_{extras['pool']}"
    for key, value in (extras.get("meta") or {}).items():
        if value:
            entries["meta.map"][f"{route.hostname}/{key}"] = value
    return entries


def extras_maps(routes: Iterable[Route]) -> dict[str, dict[str, str]]:
    """The map files of the routes' extras, as key -> value: domain redirects (``code|host``),
    origin pools (the backend's name) and metadata (``route/key`` -> value)."""
    maps: dict[str, dict[str, str]] = {name: {} for name in EXTRAS_MAPS}
    for route in routes:
        if route.extras:
            for name, entries in route_extras_entries(route).items():
                maps[name].update(entries)
    return maps


def render_lists(state: DesiredState, release_dir: Path) -> dict[str, str]:
    """The host map, the redirects map, the crt-list and the extras' maps. Plain formatting,
    not templates: these are HAProxy's data formats (jinja took 270 ms for them at 100,000
    routes, this about 75 ms); a hot change appends to the node's journal instead
    (edge/journal.py)."""
    routes = sorted(state.routes, key=lambda r: r.hostname)
    return {"hosts.map": hosts_map_text(routes),
            "redirects.map": "".join(f"{r.key} {r.value}\n"
                                     for r in sorted(state.redirects, key=lambda r: r.key)),
            "crt-list": crt_list_text(routes, release_dir),
            **extras_texts(routes)}


def extras_texts(routes: Iterable[Route]) -> dict[str, str]:
    """``routes.extras`` (each route's extras, read back on a restart) and the extras' maps."""
    routes = [r for r in routes if r.extras]
    return {**{name: "".join(f"{key} {value}\n" for key, value in sorted(entries.items()))
               for name, entries in extras_maps(routes).items()},
            "routes.extras": "".join(f"{r.hostname} {r.extras}\n"
                                     for r in sorted(routes, key=lambda r: r.hostname))}


def hosts_map_text(routes: Iterable[Route]) -> str:
    return "".join(f"{r.hostname} {r.publication_id}\n" for r in routes)


def crt_list_text(routes: Iterable[Route], release_dir: Path) -> str:
    cert_dir = str(release_dir / "certs")
    return "".join(f"{cert_dir}/{cert_file(r.hostname)} [alpn h2,http/1.1] {r.hostname}\n"
                   for r in routes)
