"""`edgectl`: serve (control service), agent (beside HAProxy), plan, shortlinks, keys,
sso, admin, demo; the operator's commands are in ``edgectl.ops``. Each registers itself."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from edge import protocol
from edgectl import migrate, ops
from edgectl.admin_commands import register as register_admin
from edgectl.backup_commands import register as register_backup
from edgectl.webhook_commands import register as register_webhooks
from kit import logs, procs
from kit.settings import CONTROL_SERVICE, EDGE_AGENT, Settings, SettingsError, load_settings
from shortlinks.serve import SERVERS

if TYPE_CHECKING:
    from control.wiring import Services
    from edge.agent import EdgeAgent
    from edge.node import EdgeNode

log = logging.getLogger("edgectl")
DISTRIBUTION = "edge-router"
Run = Callable[[argparse.Namespace, Settings], int]
AGENT_GRACE, AGENT_LONGEST = 1.5, 60.0
"""Seconds an agent may take to stop; a change of the node under way finishes first, up to
the longest (a kill mid-change leaves files ahead of what HAProxy serves)."""
SHORTLINKS_GRACE = 4.5
"""Seconds the short-link app may take to stop: it answers the requests it has begun, then
writes its last visit counts (shortlinks.serve.STOP_SECONDS, plus a margin)."""


@dataclasses.dataclass(frozen=True)
class Command:
    run: Run
    help: str
    required: tuple[str, ...] | None
    """The settings it cannot run without; None: it reads no settings at all."""
    arguments: Callable[[argparse.ArgumentParser], object]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, required: tuple[str, ...] | None = CONTROL_SERVICE,
            arguments: Callable[[argparse.ArgumentParser], object] = lambda parser: None
            ) -> Callable[[Run], Run]:
    """Register ``edgectl <name>``; ``arguments`` adds its options to its parser."""
    def register(run: Run) -> Run:
        COMMANDS[name] = Command(run, help, required, arguments)
        return run
    return register


@contextlib.contextmanager
def _services(settings: Settings) -> Iterator[Services]:
    from control.wiring import Services
    services = Services.from_settings(settings)
    try:
        yield services
    finally:
        services.close()


@command("serve", "run the control service and its worker")
def serve(args: argparse.Namespace, settings: Settings) -> int:
    from edgectl.serving import serve as serve_control  # as every process command: on use
    return serve_control(settings)


def _shortlinks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", choices=SERVERS, default="waitress",
                        help="werkzeug's development server is for debugging only")
    parser.add_argument("--workers", type=int, default=0,
                        help="waitress processes on one socket (default: one per core)")
    parser.add_argument("--threads", type=int, default=4, help="threads per waitress process")


@command("shortlinks", "run the short-link redirect app", arguments=_shortlinks_arguments)
def shortlinks(args: argparse.Namespace, settings: Settings) -> int:
    """The redirect app for the short domains (behind HAProxy in production)."""
    from shortlinks.serve import serve as serve_links
    log.info("short links on http://%s:%d (%s)", settings.listen_host,
             settings.shortlinks_port, args.server)
    serve_links(settings, procs.stop_on_signals(SHORTLINKS_GRACE), args.server,
                workers=args.workers, threads=args.threads)
    return 0


def _node(settings: Settings) -> EdgeNode:
    from edge.node import EdgeNode
    # The control replicas serve the edge (ACME, SSO, publisher pages) on the listener the
    # agent uses: TLS there means TLS for HAProxy's control backend too.
    tls = any(url.startswith("https://") for url in settings.control_urls)
    return EdgeNode(Path(settings.edge_dir), haproxy_bin=settings.haproxy_bin,
                    bind=settings.edge_bind, http_port=settings.edge_http_port,
                    https_port=settings.edge_https_port, stats_port=settings.edge_stats_port,
                    stats_bind=settings.edge_metrics_bind,
                    redirect_capacity=settings.edge_redirect_capacity,
                    proxy_https_port=settings.edge_proxy_https_port,
                    proxy_http_port=settings.edge_proxy_http_port,
                    control_ca=(settings.control_ca_bundle or "@system-ca") if tls else "")


def _agent(settings: Settings, node: EdgeNode, node_id: str | None = None,
           shard: str | None = None) -> EdgeAgent:
    from edge.agent import EdgeAgent
    from edge.shards import shard_name
    return EdgeAgent(node, settings.control_urls, settings.edge_token, node_id,
                     shard=shard_name(shard or settings.edge_shard),
                     watch=settings.edge_watch_seconds, ca_bundle=settings.control_ca_bundle,
                     allow_insecure=settings.allow_insecure_control,
                     client_cert=(settings.control_client_cert, settings.control_client_key)
                     if settings.control_client_cert else None)


def _agent_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["run", "stop-node"], default="run",
                        help="run (the default): sync the node until SIGTERM, then leave "
                             "HAProxy serving for the next agent; stop-node: stop this "
                             "node's agent, if one runs, and its HAProxy (a node retired)")
    parser.add_argument("--node-id")
    parser.add_argument("--role", choices=["edge", "router"], default="edge",
                        help="edge (the default): a node serving its shard's sites; router: "
                             "the shard router in front of the shards (TLS by SNI, HTTP by Host)")
    parser.add_argument("--shard", help="the edge shard this node serves (default: the "
                                        "edge_shard setting)")


@command("agent", "run the edge agent beside HAProxy", required=EDGE_AGENT,
         arguments=_agent_arguments)
def agent(args: argparse.Namespace, settings: Settings) -> int:
    if args.role == "router":
        from edge.router_agent import run_router
        return run_router(settings, args.action, args.node_id)
    from edge.errors import EdgeError
    from edge.haproxy import NodeLock, stop_node
    from edge.metrics import serve_metrics
    node = _node(settings)
    lock = NodeLock(node.directory)
    try:
        if args.action == "stop-node":
            print(stop_node(node.directory, node.haproxy))
            return 0
        lock.acquire()  # held until this process ends
        edge_agent = _agent(settings, node, args.node_id, args.shard)
    except EdgeError as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return 1
    # A signal ends a long poll at once, but never a change of the node half made.
    stop = procs.stop_on_signals(AGENT_GRACE, interrupt=lambda: not edge_agent.applying,
                                 busy=lambda: edge_agent.applying, longest=AGENT_LONGEST)
    if settings.edge_metrics_port:
        bind = settings.edge_metrics_bind or settings.edge_bind
        port = serve_metrics(node.runtime, bind, settings.edge_metrics_port)
        log.info("requests per publication at http://%s:%d/metrics", bind, port)
    try:
        edge_agent.run(settings.worker_interval, stop)
    except SystemExit:
        pass
    log.info("agent stopped; HAProxy goes on serving version %s", node.applied_version)
    return 0


@command("plan", "print the changes the local edge node would apply", required=EDGE_AGENT,
         arguments=lambda parser: setattr(parser, "epilog", ops.PLAN_SETTINGS))
def plan(args: argparse.Namespace, settings: Settings) -> int:
    """Print what the local node would change to reach the control service's desired state."""
    import requests

    from edge.errors import EdgeError
    from edge.plan import UnsafePlan
    from edge.state import DesiredState
    node = _node(settings)
    try:
        desired = _agent(settings, node).fetch()  # a new agent asks for a whole state
    except (requests.RequestException, EdgeError) as exc:
        return ops.agent_failed(exc, settings.control_address)  # says why in one sentence
    if desired is None:
        print("the control service has published no edge state yet")
        return 1
    assert isinstance(desired, DesiredState)
    node_plan = node.plan(desired)
    print(f"node at {node.applied_version}, desired {desired.version}")
    print("\n".join(node_plan.describe()))
    try:
        node_plan.raise_if_unsafe()
    except UnsafePlan as exc:
        print(f"refused: {exc}")
        return 1
    return 0


@command("keys", "encryption keys", arguments=lambda parser: parser.add_argument(
    "action", choices=["generate", "rotate"],
    help="generate: print a new key; rotate: re-encrypt every stored key under the first of "
         "EDGE_ENCRYPTION_KEYS (put the new key first, keep the old ones after it until this "
         "has run)"))
def keys(args: argparse.Namespace, settings: Settings) -> int:
    with _services(settings) as services:
        print(f"re-encrypted {services.reencrypt_keys()} stored keys under the newest key")
    return 0


@command("sso", "single sign-on", arguments=lambda parser: parser.add_argument(
    "action", choices=["rotate-key"],
    help="add a new session signing key; it signs after sso_key_activation_seconds, and the "
         "previous key stays valid"))
def rotate_sso_key(args: argparse.Namespace, settings: Settings) -> int:
    with _services(settings) as services:
        if services.sso is None:
            print("edgectl: single sign-on is off (set EDGE_SSO_PLATFORM_URL)", file=sys.stderr)
            return 2
        kid = services.sso.keys.rotate()
        services.publisher.refresh()  # the edges learn the new public key now
    print(f"new SSO signing key {kid}; it signs in {settings.sso_key_activation_seconds:.0f}s")
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hostname", default="blog.example.test")
    parser.add_argument("--once", action="store_true",
                        help="stop after the domain is served (for scripts)")
    parser.add_argument("--directory", type=Path,
                        help="where its processes keep their files and demo.json "
                             "(default: a new temporary directory)")


@command("demo", "everything on loopback, with Pebble", required=None,
         arguments=_demo_arguments)
def demo(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here, not above: the dev tools never load into serve, agent or shortlinks.
    from devtools.demo import run_demo
    return run_demo(args.hostname, once=args.once, directory=args.directory)


# The commands declared beside their code: backup and restore, migrate, the operator's.
register_backup(command)
register_admin(command)
register_webhooks(command)
command("migrate", migrate.HELP, required=(), arguments=migrate.arguments)(migrate.run)
ops.register(command)  # status, domains, nodes, links, certs, config


def package_version() -> str:
    """The installed distribution's version (pyproject's), or "unknown" when run from a tree
    that was never installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgectl", description=ops.DESCRIPTION,
                                     epilog=ops.EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML settings file (else $EDGE_CONFIG; the operator "
                        "commands also read ~/.config/edgectl/config.toml)")
    parser.add_argument("--log-level", type=str.upper, choices=logs.LEVELS,
                        help="overrides the log_level setting (default INFO)")
    parser.add_argument("--log-format", choices=logs.FORMATS,
                        help="overrides the log_format setting (default auto: text on a "
                             "terminal, else JSON lines)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}"
                        f" (edge protocol {protocol.PROTOCOL}, store schema {migrate.SCHEMA})")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, registered in COMMANDS.items():
        registered.arguments(subparsers.add_parser(
            name, help=registered.help, description=registered.help, epilog=ops.needs(
                registered.required), formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    procs.limit_malloc_arenas()  # before any thread: a long-running process's RSS stays flat
    # One set-up for every subcommand: first from the flags (so reading the settings logs
    # alike), then again once the settings say otherwise.
    logs.configure(args.log_format or "auto", args.log_level or "INFO")
    logging.captureWarnings(True)  # library warnings as log lines, not bare text between them
    chosen = COMMANDS[args.command]
    if args.command == "keys" and args.action == "generate":
        from cryptography.fernet import Fernet
        print(Fernet.generate_key().decode())
        return 0
    try:
        settings = Settings() if chosen.required is None else load_settings(
            config_file=args.config, required=chosen.required)
        logs.configure(args.log_format or settings.log_format,
                       args.log_level or settings.log_level)
        return chosen.run(args, settings)
    except SettingsError as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
