"""`edgectl admin`: the dashboard's accounts, on a host with the control service's settings
(the command opens the same store). A new password, a deleted user and ``end-sessions`` end
the user's sessions at their next request."""
from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any, Callable

from kit.settings import Settings

ASKS_PASSWORD = ("create-user", "set-password")


def _arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    for name, help in (("create-user", "add an admin account"),
                       ("set-password", "give an admin a new password (their sessions end)"),
                       ("end-sessions", "sign an admin out everywhere"),
                       ("delete-user", "delete an admin account (their sessions end)")):
        action = actions.add_parser(name, help=help)
        action.add_argument("username")
        if name in ASKS_PASSWORD:
            action.add_argument("--password-stdin", action="store_true",
                                help="read the password from the first line of stdin")
    actions.add_parser("list-users", help="the admin accounts")


def _password(args: argparse.Namespace) -> str | None:
    """From stdin's first line, or a prompt typed twice (None: the two differ)."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Password: ")
    return password if getpass.getpass("Again: ") == password else None


def _accounts(args: argparse.Namespace, settings: Settings) -> int:
    from admin.accounts import ADMIN_USERS, AccountError, Users
    from store import open_backend

    password = _password(args) if args.action in ASKS_PASSWORD else ""
    if password is None:
        print("edgectl: the passwords differ", file=sys.stderr)
        return 2
    backend = open_backend(settings)
    users = Users(backend.table(ADMIN_USERS), method=settings.admin_password_hash)
    try:
        if args.action == "list-users":
            print("\n".join(users.names()) or "no admin account yet")
            return 0
        name = args.username.strip().lower()
        if args.action == "create-user":
            users.create(name, password)
            print(f"admin user {name} created; sign in at {settings.control_address}/admin/")
        elif args.action == "set-password":
            users.set_password(name, password)
            print(f"new password for {name}; their sessions have ended")
        elif args.action == "end-sessions":
            users.end_sessions(name)
            print(f"every session of {name} has ended")
        else:
            users.delete(name)
            print(f"admin user {name} deleted; their sessions have ended")
    except AccountError as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return 2
    finally:
        backend.close()
    return 0


def register(command: Callable[..., Callable[[Any], Any]]) -> None:
    """Add ``edgectl admin`` to the CLI's registry (passed in: the CLI imports this module)."""
    command("admin", "dashboard accounts", arguments=_arguments)(_accounts)
