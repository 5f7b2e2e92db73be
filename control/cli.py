"""`edgectl`: serve (control service), agent (beside HAProxy), plan, demo, keys, admin."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet
from werkzeug.serving import make_server

from control.settings import (CONTROL_SERVICE, EDGE_AGENT, Settings, SettingsError,
                              load_settings)

if TYPE_CHECKING:
    from edge.node import EdgeNode

log = logging.getLogger("edgectl")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def serve(settings: Settings) -> None:
    from admin_app import create_app
    from control.wiring import Services
    from control.worker import PlatformCertificates, start_worker

    services = Services.from_settings(settings)
    app = create_app(services)
    server = make_server(settings.listen_host, settings.listen_port, app, threaded=True)
    stop = _stop_on_signals()
    platform = PlatformCertificates(services.publisher.platform_hosts, services.issuer,
                                    services.certificates, services.lifecycle,
                                    settings.retry_base_seconds)
    worker = start_worker([services.lifecycle.tick, platform.tick], settings.worker_interval,
                          stop)
    if services.webhooks.enabled:
        services.webhooks.start(stop)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    log.info("control service on http://%s:%d", settings.listen_host, server.server_port)
    stop.wait()
    server.shutdown()
    worker.join(timeout=30)
    services.close()


def shortlinks(settings: Settings, server: str, workers: int, threads: int) -> None:
    """The redirect app for the short domains (behind HAProxy in production)."""
    from shortlinks.serve import serve as serve_links

    log.info("short links on http://%s:%d (%s)", settings.listen_host,
             settings.shortlinks_port, server)
    serve_links(settings, _stop_on_signals(), server, workers=workers, threads=threads)


def tokens(settings: Settings, action: str, subject: str, label: str) -> int:
    """Create (printed once), list or revoke a publication's API tokens."""
    from control.wiring import Services

    services = Services.from_settings(settings)
    try:
        if action == "create":
            try:
                token, item = services.tokens.create(subject, label)
            except ValueError as exc:
                print(f"edgectl: {exc}", file=sys.stderr)
                return 2
            print(f"token {item['token_id']} for {subject} (shown once, store it now):")
            print(token)
        elif action == "list":
            for item in services.tokens.list_for(subject):
                print(f"{item['token_id']}  {item['label']}")
        elif not services.tokens.revoke(subject):
            print(f"no token {subject}", file=sys.stderr)
            return 1
    finally:
        services.close()
    return 0


def _node(settings: Settings) -> "EdgeNode":
    from edge.node import EdgeNode

    return EdgeNode(Path(settings.edge_dir), haproxy_bin=settings.haproxy_bin,
                    bind=settings.edge_bind, http_port=settings.edge_http_port,
                    https_port=settings.edge_https_port, stats_port=settings.edge_stats_port)


def agent(settings: Settings, node_id: str | None) -> None:
    from edge.agent import EdgeAgent

    node = _node(settings)
    stop = _stop_on_signals()
    try:
        EdgeAgent(node, settings.control_address, settings.edge_token, node_id).run(
            settings.worker_interval, stop)
    finally:
        node.stop()


def plan(settings: Settings) -> int:
    """Print what the local node would change to reach the control service's desired state."""
    from edge.agent import EdgeAgent

    node = _node(settings)
    desired = EdgeAgent(node, settings.control_address, settings.edge_token).fetch()
    if desired is None:
        print("the control service has published no edge state yet")
        return 1
    node_plan = node.plan(desired)
    print(f"node at {node.applied_version}, desired {desired.version}")
    print("\n".join(node_plan.describe()))
    try:
        node_plan.raise_if_unsafe()
    except Exception as exc:
        print(f"refused: {exc}")
        return 1
    return 0


def rotate_sso_key(settings: Settings) -> int:
    from control.wiring import Services

    services = Services.from_settings(settings)
    try:
        if services.sso is None:
            print("edgectl: single sign-on is off (set EDGE_SSO_PLATFORM_URL)", file=sys.stderr)
            return 2
        kid = services.sso.keys.rotate()
        services.lifecycle.publish_routes()  # the edges learn the new public key now
        print(f"new SSO signing key {kid}; it signs in {settings.sso_key_activation_seconds:.0f}s")
        return 0
    finally:
        services.close()


def create_admin(settings: Settings, username: str, password_stdin: bool) -> int:
    """`edgectl admin create-user`: the password from a prompt (typed twice) or stdin."""
    import getpass

    from admin.accounts import ADMIN_USERS, AccountError, Users
    from store import open_backend

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("edgectl: the passwords differ", file=sys.stderr)
            return 2
    backend = open_backend(settings)
    try:
        Users(backend.table(ADMIN_USERS)).create(username, password)
    except AccountError as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return 2
    finally:
        backend.close()
    print(f"admin user {username.strip().lower()} created; sign in at "
          f"{settings.control_address}/admin/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgectl", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (else $EDGE_CONFIG)")
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the control service and its worker")
    agent_parser = commands.add_parser("agent", help="run the edge agent beside HAProxy")
    agent_parser.add_argument("--node-id")
    commands.add_parser("plan", help="print the changes the local edge node would apply")
    links_server = commands.add_parser("shortlinks", help="run the short-link redirect app")
    links_server.add_argument("--server", choices=["waitress", "werkzeug"], default="waitress",
                              help="werkzeug's development server is for debugging only")
    links_server.add_argument("--workers", type=int, default=0,
                              help="waitress processes on one socket (default: one per core)")
    links_server.add_argument("--threads", type=int, default=4,
                              help="threads per waitress process")
    links_parser = commands.add_parser("links", help="short links in bulk")
    links_parser.add_argument("action", choices=["import"])
    links_parser.add_argument("file", help="CSV with domain,target,owner[,slug,code,max_visits]")
    tokens_parser = commands.add_parser(
        "tokens", help="per-publication API tokens (they see only that publication's links)")
    tokens_parser.add_argument("action", choices=["create", "list", "revoke"])
    tokens_parser.add_argument("subject", help="create/list: a publication id; revoke: a token id")
    tokens_parser.add_argument("--label", default="")
    demo_parser = commands.add_parser("demo", help="everything on loopback, with Pebble")
    demo_parser.add_argument("--hostname", default="blog.example.test")
    demo_parser.add_argument("--once", action="store_true",
                             help="stop after the domain is served (for scripts)")
    keys = commands.add_parser("keys", help="encryption keys")
    keys.add_argument("action", choices=["generate", "rotate"],
                      help="generate: print a new key; rotate: re-encrypt every stored key "
                           "under the first of EDGE_ENCRYPTION_KEYS (put the new key first, "
                           "keep the old ones after it until this has run)")
    sso = commands.add_parser("sso", help="single sign-on")
    sso.add_argument("action", choices=["rotate-key"],
                     help="add a new session signing key; it signs after "
                          "sso_key_activation_seconds, and the previous key stays valid")
    admin_parser = commands.add_parser("admin", help="dashboard accounts")
    admin_actions = admin_parser.add_subparsers(dest="action", required=True)
    create_user = admin_actions.add_parser("create-user", help="add an admin account")
    create_user.add_argument("username")
    create_user.add_argument("--password-stdin", action="store_true",
                             help="read the password from the first line of stdin")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "keys" and args.action == "generate":
        print(Fernet.generate_key().decode())
        return 0
    if args.command == "demo":
        from control.demo import run_demo
        return run_demo(args.hostname, once=args.once)
    try:
        required = EDGE_AGENT if args.command in ("agent", "plan") else CONTROL_SERVICE
        settings = load_settings(config_file=args.config, required=required)
    except SettingsError as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return 2
    if args.command == "admin":
        return create_admin(settings, args.username, args.password_stdin)
    if args.command == "keys":
        from control.wiring import Services
        services = Services.from_settings(settings)
        try:
            print(f"re-encrypted {services.reencrypt_keys()} stored keys under the newest key")
        finally:
            services.close()
    elif args.command == "sso":
        return rotate_sso_key(settings)
    elif args.command == "serve":
        serve(settings)
    elif args.command == "plan":
        return plan(settings)
    elif args.command == "shortlinks":
        shortlinks(settings, args.server, args.workers, args.threads)
    elif args.command == "tokens":
        return tokens(settings, args.action, args.subject, args.label)
    elif args.command == "links":
        from control.wiring import Services
        from shortlinks.bulk import run_import
        services = Services.from_settings(settings)
        try:
            return run_import(services.links, args.file)
        finally:
            services.close()
    else:
        agent(settings, args.node_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
